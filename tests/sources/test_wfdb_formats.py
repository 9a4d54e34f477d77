"""WFDB completed: formats 8, 310, 311, 508/516/524 (FLAC) and multi-segment records equal wfdb.rdrecord."""

from __future__ import annotations

import numpy as np
import pytest
import wfdb

from ecgembed import read_record
from ecgembed.sources import Limits, fetch_raw
from ecgembed.sources.record import mv_scale
from tests.ecgs import STANDARD, synthetic_ecg, write_wfdb


def _reference(header) -> np.ndarray:
    rec = wfdb.rdrecord(str(header)[: -len(".hea")], physical=True)
    scale = np.array([mv_scale(u) or 1.0 for u in rec.units])[:, None]
    return rec, rec.p_signal.T * scale


def _assert_equal_to_wfdb(header):
    ref_rec, ref = _reference(header)
    ours = read_record(header)
    assert ours.sig_name == ref_rec.sig_name and ours.fs == ref_rec.fs and ours.units == ref_rec.units
    assert ours.signal.dtype == np.float64
    np.testing.assert_array_equal(ours.signal, ref)     # bit-identical, NaN where wfdb has NaN
    return ours


# --------------------------------------------------------------------------- formats wfdb cannot write
def _digital(header) -> np.ndarray:
    return wfdb.rdrecord(str(header)[:-4], physical=False).d_signal      # (n, n_sig) int


def _encode_8(d: np.ndarray) -> tuple[bytes, list[int]]:
    """First differences, int8 (the signal must change by less than 128 per sample)."""
    diffs = np.diff(d, axis=0, prepend=d[:1])
    assert np.abs(diffs).max() < 128
    return diffs.astype(np.int8).tobytes(), d[0].tolist()


def _encode_10bit(d: np.ndarray, fmt: str) -> bytes:
    """Three 10-bit samples in four bytes (formats 310 and 311), samples in frame order."""
    v = (d.reshape(-1).astype(np.int64) & 0x3FF)
    pad = (-len(v)) % 3
    v = np.concatenate([v, np.zeros(pad, np.int64)]).reshape(-1, 3)
    out = np.zeros((len(v), 4), np.int64)
    if fmt == "310":
        out[:, 0] = (v[:, 0] & 0x7F) << 1
        out[:, 1] = (v[:, 0] >> 7) | ((v[:, 2] & 0x1F) << 3)
        out[:, 2] = (v[:, 1] & 0x7F) << 1
        out[:, 3] = (v[:, 1] >> 7) | ((v[:, 2] >> 5) << 3)
    else:
        out[:, 0] = v[:, 0] & 0xFF
        out[:, 1] = (v[:, 0] >> 8) | ((v[:, 1] & 0x3F) << 2)
        out[:, 2] = (v[:, 1] >> 6) | ((v[:, 2] & 0x0F) << 4)
        out[:, 3] = v[:, 2] >> 4
    return out.astype(np.uint8).tobytes()


@pytest.mark.parametrize("fmt", ["8", "310", "311"])
@pytest.mark.parametrize("n_samples", [1000, 1001, 1002])
def test_formats_wfdb_reads_but_cannot_write(tmp_path, fmt, n_samples):
    gain = 20.0 if fmt == "8" else 100.0
    signal = synthetic_ecg(n_samples=n_samples, seed=5)
    signal[7, 3] = np.nan
    header = write_wfdb(tmp_path, "rec", signal, fmt="16", gain=gain)
    d = _digital(header)
    if fmt == "8":
        d[7, 3] = d[6, 3]                       # format 8 has no invalid value
        data, initial = _encode_8(d)
        lines = header.read_text().splitlines()
        for i, init in enumerate(initial, start=1):
            fields = lines[i].split()
            fields[1], fields[5] = "8", str(init)
            lines[i] = " ".join(fields)
        header.write_text("\n".join(lines) + "\n")
    else:
        assert np.abs(d[d != -32768]).max() < 512
        d[d == -32768] = -512                   # the 10-bit invalid value
        data = _encode_10bit(d, fmt)
        header.write_text(header.read_text().replace(" 16 100", f" {fmt} 100"))
    header.with_suffix(".dat").write_bytes(data)
    ours = _assert_equal_to_wfdb(header)
    if fmt != "8":
        assert np.isnan(ours.signal[3, 7]) and np.isfinite(ours.signal).sum() == ours.signal.size - 1


@pytest.mark.parametrize("fmt", ["508", "516", "524"])
def test_flac_formats(tmp_path, fmt):
    gain = {"508": 20.0, "516": 1000.0, "524": 100_000.0}[fmt]
    signal = synthetic_ecg(n_samples=2500, n_leads=8, seed=7)
    signal[11, 2] = np.nan
    header = write_wfdb(tmp_path, f"flac{fmt}", signal, fmt=fmt, gain=gain)
    assert header.with_suffix(".dat").read_bytes()[:4] == b"fLaC"
    ours = _assert_equal_to_wfdb(header)
    assert np.isnan(ours.signal[2, 11])


# --------------------------------------------------------------------------- multi-segment
def test_multi_segment_fixed_layout(tmp_path):
    """Segments written by wfdb.wrsamp; the master header names them (a fixed layout: no layout segment)."""
    lengths = (1500, 2000, 1500)
    for i, n in enumerate(lengths):
        wfdb.wrsamp(f"fx_{i}", fs=500, units=["mV"] * 12, sig_name=STANDARD, p_signal=synthetic_ecg(n_samples=n, seed=i),
                    fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path))
    (tmp_path / "fx.hea").write_text("fx/3 12 500 5000\n" + "".join(f"fx_{i} {n}\n" for i, n in enumerate(lengths)))
    ours = _assert_equal_to_wfdb(tmp_path / "fx.hea")
    assert ours.n_samples == 5000 and ours.format == "wfdb"


def _variable_layout(folder) -> None:
    """A layout segment, a segment with 12 leads, a gap, a segment with only some leads (reordered)."""
    one = synthetic_ecg(n_samples=2000, seed=1)
    two = synthetic_ecg(n_samples=1000, seed=2)[:, [6, 0, 1]]
    wfdb.wrsamp("vl_1", fs=500, units=["mV"] * 12, sig_name=STANDARD, p_signal=one, fmt=["16"] * 12,
                adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(folder))
    wfdb.wrsamp("vl_2", fs=500, units=["uV", "mV", "mV"], sig_name=["V1", "I", "II"], p_signal=two * [1000, 1, 1],
                fmt=["16"] * 3, adc_gain=[1.0, 1000.0, 1000.0], baseline=[0] * 3, write_dir=str(folder))
    (folder / "vl_layout.hea").write_text("vl_layout 12 500 0\n" + "".join(f"~ 0 1000/mV 16 0 0 0 0 {n}\n"
                                                                            for n in STANDARD))
    (folder / "vl.hea").write_text("vl/4 12 500 4000\nvl_layout 0\nvl_1 2000\n~ 1000\nvl_2 1000\n")


def test_multi_segment_variable_layout_with_a_gap(tmp_path):
    """wfdb leaves V1 in uV in the last segment and mV before (units None): ours is mV throughout."""
    _variable_layout(tmp_path)
    ref = wfdb.rdrecord(str(tmp_path / "vl"), physical=True)
    assert ref.units is None
    expected = ref.p_signal.T.copy()
    expected[6, 3000:] *= 1e-3
    ours = read_record(tmp_path / "vl")
    assert ours.sig_name == ref.sig_name and ours.units == ["mV"] * 12 and ours.fs == 500
    np.testing.assert_array_equal(ours.signal, expected)
    assert np.isnan(ours.signal[:, 2000:3000]).all() and np.isnan(ours.signal[2, 3000:]).all()
    assert np.isfinite(ours.signal[[0, 1, 6], 3000:]).all()


def test_multi_segment_from_s3_reads_only_the_segments_it_needs(tmp_path, s3):
    _variable_layout(tmp_path)
    root = s3.put_dir(tmp_path, "multiseg")
    np.testing.assert_array_equal(read_record(f"{root}/vl").signal, read_record(tmp_path / "vl").signal)
    raw = fetch_raw(f"{root}/vl.hea", limits=Limits(max_record_seconds=10))
    assert list(raw.files) == ["vl.hea", "vl_layout.hea", "vl_1.hea", "vl_2.hea", "vl_1.dat", "vl_2.dat"]
    short = fetch_raw(str(tmp_path / "vl.hea"), limits=Limits(max_record_seconds=10.0))
    assert short.content_sha256 == raw.content_sha256


def test_multi_segment_errors(tmp_path):
    from ecgembed import ECGError

    _variable_layout(tmp_path)
    (tmp_path / "vl_2.hea").unlink()
    with pytest.raises(ECGError, match="segment header 'vl_2.hea' does not exist") as info:
        read_record(tmp_path / "vl")
    assert info.value.error_type == "missing_file" and info.value.uri == str(tmp_path / "vl_2.hea")
    (tmp_path / "evil.hea").write_text("evil/2 12 500 2000\n../vl_1 1000\nvl_1 1000\n")
    with pytest.raises(ECGError) as info:
        read_record(tmp_path / "evil")
    assert info.value.error_type == "unsafe_path"
