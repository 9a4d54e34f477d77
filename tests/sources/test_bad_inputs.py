"""Every bad input becomes one ECGError naming the file and the problem (or a flagged record)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ecgembed import ECGError, read_record, standard_leads
from ecgembed.errors import ERROR_TYPES
from ecgembed.preprocess import melp_input, quality_flags
from tests.ecgs import synthetic_ecg, write_wfdb


@pytest.fixture
def good(tmp_path):
    return write_wfdb(tmp_path, "rec", synthetic_ecg())


def _error(uri) -> ECGError:
    with pytest.raises(ECGError) as info:
        standard_leads(read_record(uri))
    err = info.value
    assert err.error_type in ERROR_TYPES
    assert str(err).startswith(err.uri)
    return err


def test_truncated_dat(good):
    dat = good.with_suffix(".dat")
    dat.write_bytes(dat.read_bytes()[:50_001])
    err = _error(good)
    assert err.error_type == "truncated" and err.uri.endswith("rec.dat")
    assert "2083 of the 5000 samples" in err.problem


def test_header_names_a_missing_file(good):
    good.with_suffix(".dat").unlink()
    err = _error(good)
    assert err.error_type == "missing_file" and err.uri.endswith("rec.dat")
    assert "'rec.dat' named by the header does not exist" in err.problem


def test_signal_file_stored_under_another_name(good):
    """The data are intact as other.dat, but the header names rec.dat: report the name it wants."""
    good.with_suffix(".dat").rename(good.with_name("other.dat"))
    err = _error(good)
    assert err.error_type == "missing_file" and "'rec.dat'" in err.problem


def test_missing_header(tmp_path):
    err = _error(tmp_path / "nothing-here")
    assert err.error_type == "missing_file" and err.uri.endswith("nothing-here.hea")


@pytest.mark.parametrize("content, problem", [
    (b"\x89PNG\r\n\x1a\n\x00\x00binary", "binary data where a WFDB text header was expected"),
    (b"# only a comment\n", "no record line"),
    (b"rec twelve 500 5000\nrec.dat 16 1000/mV 16 0 0 0 0 I\n", "malformed number of signals 'twelve'"),
    (b"rec 3 500 5000\nrec.dat 16 1000/mV 16 0 0 0 0 I\n", "declares 3 signals but 1 signal lines follow"),
    (b"rec 1 500 5000\nrec.dat 16 gain?/mV 16 0 0 0 0 I\n", "malformed gain field"),
])
def test_garbage_header(tmp_path, content, problem):
    (tmp_path / "rec.hea").write_bytes(content)
    err = _error(tmp_path / "rec.hea")
    assert err.error_type == "bad_header" and problem in err.problem


def test_zero_length_signal(good):
    good.with_suffix(".dat").write_bytes(b"")
    good.write_text(good.read_text().replace("rec 12 500 5000", "rec 12 500"))  # length from the file
    err = _error(good)
    assert err.error_type == "empty_signal" and "holds no samples" in err.problem


def test_header_declaring_zero_samples(good):
    good.write_text(good.read_text().replace("rec 12 500 5000", "rec 12 500 0"))
    assert _error(good).error_type == "empty_signal"


def test_unknown_format_code(good):
    good.write_text(good.read_text().replace(" 16 1000", " 999 1000"))
    err = _error(good)
    assert err.error_type == "unsupported_format" and "signal format 999 of rec.dat is not supported" in err.problem


def test_flac_format_on_non_flac_bytes_is_reported_not_guessed(good):
    good.write_text(good.read_text().replace(" 16 1000", " 516 1000"))
    err = _error(good)
    assert err.error_type == "corrupt" and "not a FLAC stream" in err.problem and err.uri.endswith("rec.dat")


def test_two_lead_holter_is_not_a_12_lead_ecg(tmp_path):
    header = write_wfdb(tmp_path, "holter", synthetic_ecg(n_leads=2)[:, :2], sig_name=["MLII", "V5"])
    err = _error(header)
    assert err.error_type == "missing_leads"
    assert "missing leads I, II, III, aVR, aVF, aVL, V1, V2, V3, V4, V6" in err.problem
    assert "2 channels stored: 'MLII', 'V5'" in err.problem


def test_nan_samples_are_flagged_and_zeroed(tmp_path):
    """Policy: a few NaN samples are set to 0 before the models and counted in the flags."""
    signal = synthetic_ecg()
    signal[100:110, 3] = np.nan
    leads = standard_leads(read_record(write_wfdb(tmp_path, "nans", signal)))
    flags = quality_flags(leads.signal, leads.fs)
    assert flags.n_nonfinite == 10
    x = melp_input(leads.signal, leads.fs)
    assert np.isfinite(x).all() and x.min() == 0.0 and x.max() == pytest.approx(1.0)


def test_a_lead_with_no_finite_sample_is_an_error(tmp_path):
    signal = synthetic_ecg()
    signal[:, 7] = np.nan
    err = _error(write_wfdb(tmp_path, "deadlead", signal))
    assert err.error_type == "non_finite" and "lead V2 ('V2') has no finite sample" in err.problem


def test_not_an_ecg_file(ecg_dir, tmp_path):
    """An .xml that is no ECG export (here a Markdown file): the bytes say so, not the extension."""
    xml = shutil.copy(ecg_dir / "SOURCES.md", tmp_path / "export.xml")
    err = _error(xml)
    assert err.error_type == "not_ecg" and "'.xml'" in err.problem


def test_non_voltage_channel_as_a_lead(tmp_path):
    err = _error(write_wfdb(tmp_path, "bp", synthetic_ecg(), units=["mmHg"] + ["mV"] * 11))
    assert err.error_type == "not_ecg" and "units 'mmHg', not a voltage" in err.problem


def test_errors_survive_pickling():
    """Ray ships exceptions between processes: the fields must come back."""
    import pickle

    err = pickle.loads(pickle.dumps(ECGError("s3://b/rec.hea", "truncated", "short")))
    assert (err.uri, err.error_type, err.problem) == ("s3://b/rec.hea", "truncated", "short")
