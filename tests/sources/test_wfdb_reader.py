"""read_record equals wfdb.rdrecord on every real WFDB record, from local disk and from S3."""

from __future__ import annotations

import numpy as np
import pytest
import wfdb

from ecgembed import read_record
from ecgembed.sources.formats.wfdb import parse_header
from ecgembed.sources.record import mv_scale
from tests.ecgs import synthetic_ecg, write_wfdb


def _wfdb_reference(header_path: str):
    """wfdb's physical signal, channels first, in mV (wfdb keeps the stored unit)."""
    rec = wfdb.rdrecord(header_path[: -len(".hea")], physical=True)
    scale = np.array([mv_scale(u) or 1.0 for u in rec.units])[:, None]
    return rec, rec.p_signal.T * scale


def _all_headers(ecg_dir):
    headers = sorted(str(p) for p in ecg_dir.rglob("*.hea"))
    assert len(headers) >= 60, "the shared sample set should hold ~69 WFDB records"
    return headers


def _assert_same(ours, ref_rec, ref_signal):
    assert ours.sig_name == ref_rec.sig_name
    assert ours.units == ref_rec.units
    assert ours.fs == ref_rec.fs
    assert ours.signal.dtype == np.float64 and ours.signal.shape == ref_signal.shape
    # bit-identical: the same float64 arithmetic
    np.testing.assert_array_equal(ours.signal, ref_signal)


def test_equals_wfdb_on_every_local_record(ecg_dir):
    for header in _all_headers(ecg_dir):
        ref_rec, ref_signal = _wfdb_reference(header)
        _assert_same(read_record(header), ref_rec, ref_signal)
        # the same record named without .hea and as a file:// URI
        via_uri = read_record("file://" + header[:-4])
        assert via_uri.record_id == header.rsplit("/", 1)[1][:-4]
        np.testing.assert_array_equal(via_uri.signal, ref_signal)


def test_equals_wfdb_on_every_record_from_s3(ecg_dir, s3):
    root = s3.put_dir(ecg_dir, "sample-set")
    for header in _all_headers(ecg_dir):
        ref_rec, ref_signal = _wfdb_reference(header)
        rel = header[len(str(ecg_dir)) + 1 :]
        ours = read_record(f"{root}/{rel[:-4]}")
        _assert_same(ours, ref_rec, ref_signal)
        assert ours.uri == f"{root}/{rel}"


def test_multi_file_record_ptbdb(ecg_dir):
    """PTB s0010_re: 12 leads in .dat, Frank leads vx vy vz in .xyz, lower-case names, 1000 Hz."""
    rec = read_record(ecg_dir / "ptbdb_wfdb-python" / "s0010_re.hea")
    assert rec.sig_name[-3:] == ["vx", "vy", "vz"] and rec.sig_name[0] == "i"
    assert rec.fs == 1000 and rec.signal.shape == (15, 38400)
    assert rec.metadata["age"] == "81" and rec.metadata["sex"] == "female"


def test_header_metadata_and_lower_case_units(ecg_dir):
    rec = read_record(ecg_dir / "cinc2021_torch-ecg" / "HR06000")
    assert rec.units == ["mv"] * 12  # as stored; the signal is in mV all the same
    # fixed metadata keys (PHI-capable: written only on opt-in); every comment stays in comments
    assert rec.metadata == {"age": "59", "sex": "Female", "diagnosis": "164934002,426783006"}
    assert "Rx: Unknown" in rec.comments
    cpsc = read_record(ecg_dir / "cpsc2018_cinc2020" / "A0001.hea")
    assert cpsc.metadata["diagnosis"] == "RBBB" and cpsc.n_samples == 7500 and cpsc.duration_s == 15.0
    assert cpsc.record_id == "A0001"


def test_microvolt_units_are_converted_to_millivolts(tmp_path):
    signal = synthetic_ecg()
    write_wfdb(tmp_path, "uv", signal * 1000, units=["uV"] * 12, gain=1.0)
    write_wfdb(tmp_path, "mv", signal)
    np.testing.assert_allclose(read_record(tmp_path / "uv").signal, read_record(tmp_path / "mv").signal, atol=1e-6)


def _recode_16(header, fmt: str):
    """wfdb writes neither 61 (big-endian int16) nor 160 (offset uint16): re-encode a format-16 file."""
    dat = header.with_suffix(".dat")
    samples = np.frombuffer(dat.read_bytes(), "<i2")
    dat.write_bytes(samples.astype(">i2").tobytes() if fmt == "61" else (samples.astype(np.int32) + 32768).astype("<u2").tobytes())
    header.write_text(header.read_text().replace(" 16 ", f" {fmt} "))


@pytest.mark.parametrize("fmt", ["212", "16", "80", "24", "32", "61", "160"])
def test_storage_formats_match_wfdb(tmp_path, fmt):
    gain = {"80": 20.0, "212": 200.0}.get(fmt, 1000.0)
    signal = synthetic_ecg(n_samples=1001, seed=3)  # odd length: the last 212 triple is half used
    signal[5, 2] = np.nan                                # one invalid sample -> NaN
    header = write_wfdb(tmp_path, f"f{fmt}", signal, fmt="16" if fmt in ("61", "160") else fmt, gain=gain)
    if fmt in ("61", "160"):
        _recode_16(header, fmt)
    ref_rec, ref_signal = _wfdb_reference(str(header))
    ours = read_record(header)
    _assert_same(ours, ref_rec, ref_signal)
    assert np.isnan(ours.signal[2, 5]) and np.isfinite(ours.signal).sum() == ours.signal.size - 1


def test_header_parser_edge_cases():
    text = ("rec 2 500/1000(0) 10 12:00:00 01/01/2020\n"
            "rec.dat\t16x1+24\t(5)/uV 16 5 0 0 0 Lead I (Einthoven)\n"
            "rec.dat 16x1+24 0 16 7 0 0 0\n"
            "# Dx: AF\n")
    header = parse_header(text.encode(), "mem://rec.hea")
    first, second = header.signals
    assert header.fs == 500 and header.sig_len == 10
    assert first.byte_offset == 24 and first.adc_gain == 200.0 and first.baseline == 5 and first.units == "uV"
    assert first.name == "Lead I (Einthoven)"
    assert second.adc_gain == 200.0 and second.baseline == 7 and second.units == "mV" and second.name == ""
    assert header.comments == ("Dx: AF",)


def test_fetch_many_keeps_order_and_isolates_failures(ecg_dir, s3, tmp_path):
    from ecgembed import ECGError
    from ecgembed.sources.reader import decode_raw, fetch_many

    folder = tmp_path / "batch"
    folder.mkdir()
    for ext in (".hea", ".mat"):
        (folder / f"E07500{ext}").write_bytes((ecg_dir / "cinc2021_torch-ecg" / f"E07500{ext}").read_bytes())
    (folder / "garbage.hea").write_bytes(b"\x00\x01not a header")
    (folder / "nomat.hea").write_bytes((ecg_dir / "cinc2021_torch-ecg" / "E07501.hea").read_bytes())
    root = s3.put_dir(folder, "fetch-many")
    names = ["E07500", "missing", "garbage", "nomat", "E07500"]
    out = fetch_many([(f"{root}/{n}", f"id-{i}") for i, n in enumerate(names)])
    assert [type(o).__name__ for o in out] == ["RawRecord", "ECGError", "ECGError", "RawRecord", "RawRecord"]
    assert out[1].error_type == "missing_file" and out[2].error_type == "bad_header"
    assert out[0].record_id == "id-0" and out[0].content_sha256 == out[4].content_sha256
    ref = read_record(ecg_dir / "cinc2021_torch-ecg" / "E07500")
    np.testing.assert_array_equal(decode_raw(out[0]).signal, ref.signal)
    with pytest.raises(ECGError, match="'E07501.mat' named by the header does not exist"):
        decode_raw(out[3])
