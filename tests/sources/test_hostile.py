"""Hostile records (issue 10): nothing read outside the record's folder, no huge allocation, no hang,
no secret or patient text in a message; every case one clear ECGError."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from ecgembed import ECGError, read_record, standard_leads
from ecgembed.preprocess import melp_input, resample_ratio
from ecgembed.sources import Limits, fetch_raw
from ecgembed.sources.reader import fetch_many
from tests.ecgs import synthetic_ecg, write_wfdb

UNSAFE_NAMES = ["/etc/hostname", "../outside.dat", "s3://ecg/sample-set/x.dat", "/dev/zero",
                "https://127.0.0.1:1/x.dat", "sub/rec.dat"]


def _error(uri, limits: Limits = Limits()) -> ECGError:
    with pytest.raises(ECGError) as info:
        standard_leads(read_record(uri, limits=limits))
    return info.value


def _rename_signal_file(header, name: str) -> None:
    header.write_text(header.read_text().replace("rec.dat", name))


@pytest.fixture
def record(tmp_path):
    """A folder with a good record and a file beside the folder that no header may reach."""
    (tmp_path / "outside.dat").write_bytes((b"\x01\x00" * 12) * 5000)
    return write_wfdb(tmp_path / "rec", "rec", synthetic_ecg())


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_signal_file_names_must_be_bare_local(record, name):
    _rename_signal_file(record, name)
    err = _error(record)
    assert err.error_type == "unsafe_path" and "not a bare file name" in err.problem
    assert err.uri == str(record)


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_signal_file_names_must_be_bare_s3(record, s3, name):
    _rename_signal_file(record, name)
    root = s3.put_dir(record.parent.parent, f"hostile-{abs(hash(name))}")
    err = _error(f"{root}/rec/rec.hea")
    assert err.error_type == "unsafe_path" and err.uri == f"{root}/rec/rec.hea"


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_signal_file_names_must_be_bare_http(record, http_server, name):
    _rename_signal_file(record, name)
    base = http_server(record.parent.parent)
    err = _error(f"{base}/rec/rec.hea")
    assert err.error_type == "unsafe_path"


def test_fifo_device_and_directory_signal_files_are_refused(record):
    dat = record.with_suffix(".dat")
    dat.unlink()
    os.mkfifo(dat)                                   # a reader would block forever on open()
    err = _error(record)
    assert err.error_type == "unsafe_path" and "is a FIFO, not a regular file" in err.problem
    dat.unlink()
    dat.symlink_to("/dev/zero")                      # a reader would read until memory runs out
    assert "is a device" in _error(record).problem
    dat.unlink()
    dat.mkdir()
    assert "is a directory" in _error(record).problem


def test_directory_and_endless_files_over_http_and_s3(record, http_server, s3):
    """A server-side /dev/zero or a folder named like the signal file: an error row, no hang."""
    dat = record.with_suffix(".dat")
    dat.unlink()
    dat.symlink_to("/dev/zero")
    base = http_server(record.parent.parent)
    start = time.monotonic()
    assert _error(f"{base}/rec/rec.hea").error_type in ("truncated", "too_large", "fetch_failed")
    assert time.monotonic() - start < 60
    dat.unlink()
    dat.mkdir()
    (dat / "inner").write_bytes(b"x")
    assert _error(f"{base}/rec/rec.hea").error_type in ("truncated", "fetch_failed", "too_large")
    root = s3.put_dir(record.parent.parent, "hostile-dir")    # rec.dat is only a prefix on S3
    err = _error(f"{root}/rec/rec.hea")
    assert err.error_type == "missing_file" and "'rec.dat' named by the header does not exist" in err.problem


# --------------------------------------------------------------------------- issue 10's numeric cases
@pytest.mark.parametrize("fs, problem", [("1e-300", "1e-300 Hz is outside [50, 20000] Hz"),
                                         ("0.001", "0.001 Hz is outside"), ("0", "0 Hz is outside"),
                                         ("nan", "nan Hz is outside"), ("20001", "20001 Hz is outside")])
def test_absurd_sampling_rates(record, fs, problem):
    record.write_text(record.read_text().replace("rec 12 500 5000", f"rec 12 {fs} 5000"))
    err = _error(record)
    assert err.error_type == "bad_sampling_rate" and problem in err.problem


def test_twenty_thousand_signals_are_refused_before_allocating(tmp_path):
    header = tmp_path / "wide.hea"
    header.write_text("wide 20001 500 5000\n" + "wide.dat 16 1000/mV 16 0 0 0 0 I\n" * 20001)
    (tmp_path / "wide.dat").write_bytes(b"\x00\x00" * 100)
    err = _error(header)
    assert err.error_type == "too_large" and "20001 signals, more than the limit of 256" in err.problem


def test_too_many_signal_files(tmp_path):
    header = tmp_path / "many.hea"
    header.write_text("many 5 500 10\n" + "".join(f"f{i}.dat 16 1000/mV 16 0 0 0 0 V{i + 1}\n" for i in range(5)))
    err = _error(header, Limits(max_signal_files=3))
    assert err.error_type == "too_large" and "5 signal files" in err.problem and "--max-signal-files" in err.problem


def test_rate_499_9999_resamples_with_bounded_factors():
    """Version 1 built a 10^8-tap filter here; integer rates keep their exact factors (bit-identical)."""
    assert resample_ratio(499.9999, 500) == 1
    assert (resample_ratio(257, 500).numerator, resample_ratio(257, 500).denominator) == (500, 257)
    assert resample_ratio(19_999, 500).denominator == 19_999
    for fs in (499.9999, 123.456789, 1000.0001, 50.00001, 19_999.9):
        ratio = resample_ratio(fs, 500)
        assert max(ratio.numerator, ratio.denominator) <= 20_000
        assert abs(float(ratio) - 500 / fs) / (500 / fs) < 1e-4
    x = synthetic_ecg(n_samples=5500).T
    np.testing.assert_array_equal(melp_input(x, 499.9999), melp_input(x, 500))


def test_signal_file_far_longer_than_its_header_says(record):
    dat = record.with_suffix(".dat")
    dat.write_bytes(dat.read_bytes() + b"\x00" * 200_000)
    err = _error(record)
    assert err.error_type == "too_large" and "where the header implies 120000" in err.problem
    dat.write_bytes(dat.read_bytes()[:120_000 + 1000])          # within the margin: fine
    assert read_record(record).n_samples == 5000


def test_object_size_limit(record):
    err = _error(record, Limits(max_object_bytes=50_000))
    assert err.error_type == "too_large" and "--max-object-mb" in err.problem
    record.write_text(record.read_text().replace("rec 12 500 5000", "rec 12 500"))   # length from the file
    err = _error(record, Limits(max_object_bytes=50_000))
    assert err.error_type == "too_large" and err.uri.endswith("rec.dat")


def test_long_records_keep_the_first_seconds_and_say_so(tmp_path, s3):
    header = write_wfdb(tmp_path, "long", synthetic_ecg(n_samples=30 * 500))      # 30 s
    limits = Limits(max_record_seconds=12)
    for uri in (str(header), f"{s3.put_dir(tmp_path, 'long')}/long.hea"):
        raw = fetch_raw(uri, limits=limits)
        assert len(raw.files["long.dat"]) == 12 * 500 * 12 * 2     # only the bytes needed were fetched
        rec = read_record(uri, limits=limits)
        assert rec.n_samples == 6000 and rec.notes == ["truncated to the first 12 s of 30.0 s (--max-record-seconds)"]
        np.testing.assert_array_equal(rec.signal, read_record(header).signal[:, :6000])


# --------------------------------------------------------------------------- secrets and patient text
def test_messages_carry_no_credentials(record, http_server):
    base = http_server(record.parent.parent)
    host = base.split("://", 1)[1]
    err = _error(f"http://alice:s3cr3t@{host}/rec/missing.hea?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA1")
    assert err.error_type == "missing_file"
    for secret in ("alice", "s3cr3t", "deadbeef", "AKIA1"):
        assert secret not in str(err)
    rec = read_record(f"http://alice:s3cr3t@{host}/rec/rec.hea?token=deadbeef")
    assert rec.uri == f"http://{host}/rec/rec.hea" and rec.n_samples == 5000


def test_malformed_lines_are_quoted_short_and_comments_never(record):
    lines = record.read_text().splitlines()
    fields = lines[1].split()
    fields[4] = "zz"                                            # a malformed ADC zero
    lines[1] = " ".join(fields[:8]) + " Lead I of Jane Doe"     # the description is free text
    record.write_text("\n".join(lines + ["# Name: Jane Doe MRN 99887766"]) + "\n")
    err = _error(record)
    assert err.error_type == "bad_header" and "malformed ADC zero 'zz' in signal line 1" in err.problem
    assert "Jane" not in str(err) and "99887766" not in str(err)
    lines[0] = "rec 12 500 5000 10:00:00 Jane/Doe/1970"          # base date field holds junk: not quoted
    record.write_text("\n".join(lines) + "\n")
    assert "Jane" not in str(_error(record))


def test_unexpected_exception_in_a_format_is_an_internal_error(record, monkeypatch):
    """Fault injection: a bug in a decoder becomes an error row naming the exception, not a dead run."""
    from ecgembed.sources.formats import wfdb

    def broken(name, files, limits):
        return {}["a bug"]

    monkeypatch.setattr(wfdb, "decode", broken)
    err = _error(record)
    assert err.error_type == "internal_error" and "KeyError at test_hostile.py" in err.problem


def test_one_hostile_record_never_sinks_the_batch(record, tmp_path):
    good = write_wfdb(tmp_path / "good", "good", synthetic_ecg())
    _rename_signal_file(record, "../outside.dat")
    out = fetch_many([(str(good), "good"), (str(record), "bad"), (str(tmp_path / "nothing"), "none")])
    assert [type(o).__name__ for o in out] == ["RawRecord", "ECGError", "ECGError"]
    assert [getattr(o, "error_type", "") for o in out] == ["", "unsafe_path", "missing_file"]
