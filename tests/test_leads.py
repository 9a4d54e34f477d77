"""Lead names -> the 12 standard leads in model order; derivation of missing limb leads."""

from __future__ import annotations

import numpy as np
import pytest

from ecgembed import MODEL_ORDER, read_record, standard_leads
from ecgembed.leads import canonical_lead
from tests.ecgs import STANDARD, synthetic_ecg, write_wfdb


@pytest.mark.parametrize("stored, lead", [
    ("aVR", "aVR"), ("AVR", "aVR"), ("avr", "aVR"), ("Lead aVR", "aVR"), ("MDC_ECG_LEAD_AVR", "aVR"),
    ("Lead I (Einthoven)", "I"), ("lead_II", "II"), ("DIII", "III"), ("V1", "V1"), ("v6", "V6"),
    ("ECG V4", "V4"), (" aVF ", "aVF"),
    ("vx", None), ("STATUS", None), ("Pacemaker", None), ("MLII", None), ("-aVR", None), ("V7", None),
])
def test_canonical_lead(stored, lead):
    assert canonical_lead(stored) == lead


def test_model_order_puts_avf_before_avl(ecg_dir):
    rec = read_record(ecg_dir / "cinc2021_torch-ecg" / "E07500")
    leads = standard_leads(rec)
    assert MODEL_ORDER[3:6] == ("aVR", "aVF", "aVL")
    assert leads.source_index == (0, 1, 2, 3, 5, 4, 6, 7, 8, 9, 10, 11)  # records.json's lead_permutation
    np.testing.assert_array_equal(leads.signal[4], rec.signal[5])
    assert leads.derived == ()


def test_upper_case_and_shuffled_leads(ecg_dir):
    """muse-sinus stores I, II, III, AVF, AVL, AVR, V1-V6."""
    rec = read_record(ecg_dir / "ge-muse_EGM" / "muse-sinus")
    leads = standard_leads(rec)
    assert leads.source_index[3:6] == (5, 3, 4)
    np.testing.assert_array_equal(leads.signal[3], rec.signal[5])


def test_lower_case_names_and_extra_frank_leads_ignored(ecg_dir):
    rec = read_record(ecg_dir / "ptbdb_wfdb-python" / "s0010_re")
    leads = standard_leads(rec)
    assert leads.signal.shape == (12, 38400) and max(leads.source_index) == 11


def test_eight_lead_export_gets_limb_leads_derived(ecg_dir, tmp_path):
    """Drop III, aVR, aVL, aVF from a real record: the derived ones equal the stored ones."""
    rec = read_record(ecg_dir / "cinc2021_torch-ecg" / "E07500")
    keep = [0, 1, 6, 7, 8, 9, 10, 11]
    eight = write_wfdb(tmp_path, "eight", rec.signal[keep].T.astype(np.float64),
                       sig_name=[rec.sig_name[i] for i in keep])
    derived = standard_leads(read_record(eight))
    full = standard_leads(rec)
    assert derived.derived == ("III", "aVR", "aVF", "aVL")
    assert derived.source_index == (0, 1, -1, -1, -1, -1, 2, 3, 4, 5, 6, 7)
    # the device rounded each stored lead to 1 µV: derived and stored agree within that
    np.testing.assert_allclose(derived.signal, full.signal, atol=2.5e-3)


def test_third_einthoven_lead_from_the_other_two(tmp_path):
    signal = synthetic_ecg()
    i, iii = signal[:, 0], signal[:, 1]
    cols = [i, iii] + [signal[:, k] for k in range(6, 12)]
    leads = standard_leads(read_record(write_wfdb(tmp_path, "i_iii", np.stack(cols, 1),
                                                  sig_name=["I", "III"] + STANDARD[6:])))
    assert "II" in leads.derived
    np.testing.assert_allclose(leads.signal[1], i + iii, atol=1e-6)


def test_missing_precordial_lead_is_an_error_not_a_zero_lead(tmp_path):
    from ecgembed import ECGError

    header = write_wfdb(tmp_path, "no_v3", synthetic_ecg(n_leads=11)[:, :11],
                        sig_name=[n for n in STANDARD if n != "V3"])
    with pytest.raises(ECGError, match=r"missing leads V3 that cannot be derived") as info:
        standard_leads(read_record(header))
    assert info.value.error_type == "missing_leads"
