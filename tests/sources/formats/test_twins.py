"""The same recording in different formats gives the same model inputs and embeddings.

``hl7-aecg/Example aECG.xml``, ``ecgtoolkit/Example.dcm`` and ``ecgtoolkit/Example.scp`` hold
one 10 s, 500 Hz ECG (stored in different lead orders and codings); ``ge-muse_EGM/muse-sinus``
is a MUSE export next to a WFDB conversion whose header gain is 5x wrong.
"""

from __future__ import annotations

import numpy as np
import pytest
import wfdb

from ecgembed.leads import standard_leads
from ecgembed.models.melp import load_melp
from ecgembed.preprocess import ked_input, melp_input
from tests.sources.formats.helpers import decode_path, to_record

TWINS = ("hl7-aecg/Example aECG.xml", "ecgtoolkit/Example.dcm", "ecgtoolkit/Example.scp")


@pytest.fixture(scope="module")
def twin_leads(ecg_dir):
    out = {}
    for path in TWINS:
        fmt, decoded = decode_path(ecg_dir / path)
        out[fmt] = standard_leads(to_record(decoded))
    assert set(out) == {"aecg", "dicom", "scp"}
    return out


def test_twins_give_the_same_model_inputs(twin_leads):
    reference = twin_leads["aecg"]
    for fmt, leads in twin_leads.items():
        assert leads.fs == reference.fs == 500.0, fmt
        np.testing.assert_allclose(leads.signal, reference.signal, rtol=0, atol=1e-9, err_msg=fmt)
        np.testing.assert_allclose(melp_input(leads.signal, leads.fs), melp_input(reference.signal, reference.fs),
                                   rtol=1e-4, atol=1e-4, err_msg=fmt)
        np.testing.assert_allclose(ked_input(leads.signal, leads.fs), ked_input(reference.signal, reference.fs),
                                   rtol=1e-4, atol=1e-4, err_msg=fmt)


def test_twins_give_the_same_melp_embedding(twin_leads, melp_weights_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ECGEMBED_CACHE", str(tmp_path))
    model = load_melp(str(melp_weights_dir))
    names = sorted(twin_leads)
    batch = np.stack([melp_input(twin_leads[n].signal, twin_leads[n].fs) for n in names])   # (3, 12, 5000)
    embedding = model.embed(batch)["embedding"]                                              # (3, 256)
    for i in range(1, len(names)):
        np.testing.assert_allclose(embedding[i], embedding[0], rtol=1e-4, atol=1e-4, err_msg=names[i])


def test_muse_equals_its_wfdb_conversion_after_the_gain_fix(ecg_dir):
    _, decoded = decode_path(ecg_dir / "ge-muse_EGM" / "muse-sinus.xml")
    muse = standard_leads(to_record(decoded))
    converted = wfdb.rdrecord(str(ecg_dir / "ge-muse_EGM" / "muse-sinus"))
    assert converted.adc_gain == [200.0] * 12          # the conversion's header: digital values are uV
    fixed = to_record(decoded)                          # same channel layout, WFDB values
    fixed.sig_name, fixed.units = list(converted.sig_name), ["mV"] * 12
    fixed.signal = converted.p_signal.T / 5.0           # 200 adu/mV declared, 1000 adu/mV true
    fixed_leads = standard_leads(fixed)
    assert muse.fs == fixed_leads.fs == 500.0
    np.testing.assert_allclose(muse.signal, fixed_leads.signal, rtol=0, atol=0.0005)
