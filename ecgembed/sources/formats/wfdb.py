"""WFDB records (PhysioNet): a ``.hea`` header plus the signal files it names, decoded from bytes.

Why not ``wfdb.rdrecord``: it cannot parse from memory (it opens files itself, one request
each, and cloud paths file by file), and ~90 % of its 3.5-5.6 ms per record is header parsing
through pandas. This module parses the header with plain string operations and decodes the
samples with ``numpy.frombuffer``; tests check it equals ``wfdb.rdrecord(..., physical=True)``
on every WFDB record of the sample set.

What is decoded: formats 16, 61, 80, 160, 212, 24 and 32; any byte offset (``16+24``: the
PhysioNet/CinC ``.mat`` files are int16 after a 24-byte MATLAB header); several signals
interleaved in one file; several signal files per record (PTB ``.dat`` + ``.xyz``);
``samps_per_frame`` > 1 (averaged to one sample per frame, as ``wfdb.rdrecord`` does by
default); the format's "invalid sample" value becomes NaN. Not decoded, each with a clear
:class:`~ecgembed.errors.ECGError`: multi-segment records, skewed signals, difference
(format 8) and FLAC formats.

Header semantics follow the WFDB specification and ``wfdb`` 4.3: a gain of 0 or a missing
gain means 200 ADC units per physical unit; a missing baseline is the ADC zero (else 0);
missing units are ``mV``; missing sampling frequency is 250 Hz.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ecgembed.errors import ECGError

DEFAULT_FS = 250.0
DEFAULT_GAIN = 200.0

# fmt -> (numpy dtype of one stored sample, value added after reading, invalid-sample value).
# 212 is handled separately (two 12-bit samples in three bytes).
_SIMPLE_FORMATS: dict[str, tuple[str, int, int]] = {
    "16": ("<i2", 0, -32768),
    "61": (">i2", 0, -32768),
    "80": ("u1", -128, -128),
    "160": ("<u2", -32768, -32768),
    "32": ("<i4", 0, -(2**31)),
}
_INVALID_212, _INVALID_24 = -2048, -(2**23)
SUPPORTED_FORMATS = tuple(sorted((*_SIMPLE_FORMATS, "212", "24"), key=int))

# "1000.0(0)/mV", "200/uV", "2000", "(0)/mV" are all legal gain fields.
_GAIN_RE = re.compile(r"^(?P<gain>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)?(?:\((?P<baseline>[-+]?\d+)\))?(?:/(?P<units>\S+))?$")
# "16", "16x1", "16+24", "16x1+24", "212:3" (skew)
_FMT_RE = re.compile(r"^(?P<fmt>\d+)(?:x(?P<spf>\d+))?(?::(?P<skew>\d+))?(?:\+(?P<offset>\d+))?$")


@dataclass(frozen=True)
class SignalSpec:
    file_name: str
    fmt: str
    samps_per_frame: int
    byte_offset: int
    adc_gain: float
    baseline: int
    units: str
    adc_zero: int
    name: str


@dataclass(frozen=True)
class Header:
    record_name: str
    fs: float
    sig_len: int | None          # samples per signal; None = infer from the file size
    signals: tuple[SignalSpec, ...]
    comments: tuple[str, ...] = field(default=())

    @property
    def file_names(self) -> list[str]:
        """Signal files in the order they are first named."""
        return list(dict.fromkeys(s.file_name for s in self.signals))


def parse_header(text: bytes | str, uri: str) -> Header:
    """Parse a WFDB header; a malformed one raises ``ECGError(bad_header)`` naming the line."""
    if isinstance(text, bytes):
        if b"\x00" in text[:4096]:
            raise ECGError(uri, "bad_header", "binary data where a WFDB text header was expected")
        text = text.decode("latin-1")
    lines, comments = [], []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            comments.append(line[1:].strip())
        else:
            lines.append(line.split("#", 1)[0].strip())
    if not lines:
        raise ECGError(uri, "bad_header", "no record line (empty or comment-only header)")

    rec = lines[0].split()
    name = rec[0]
    if "/" in name:
        raise ECGError(uri, "unsupported_format", f"multi-segment record {name!r} is not supported")
    try:
        n_sig = int(rec[1]) if len(rec) > 1 else 0
        fs = float(rec[2].split("/")[0].split("(")[0]) if len(rec) > 2 else DEFAULT_FS
        sig_len = int(rec[3]) if len(rec) > 3 else None
    except ValueError:
        raise ECGError(uri, "bad_header", f"malformed record line {lines[0]!r}") from None
    if n_sig <= 0:
        raise ECGError(uri, "empty_signal", f"the header declares {n_sig} signals")
    if len(lines) - 1 < n_sig:
        raise ECGError(uri, "bad_header", f"the record line declares {n_sig} signals but {len(lines) - 1} signal lines follow")
    if not (fs > 0 and np.isfinite(fs)):
        raise ECGError(uri, "bad_sampling_rate", f"sampling frequency {fs} in the record line")
    signals = tuple(_parse_signal_line(line, uri) for line in lines[1 : 1 + n_sig])
    return Header(name, fs, sig_len, signals, tuple(comments))


def _parse_signal_line(line: str, uri: str) -> SignalSpec:
    parts = line.split(None, 8)  # the 9th field, the description, may contain spaces
    if len(parts) < 2:
        raise ECGError(uri, "bad_header", f"signal line {line!r} has no format field")
    fmt_match = _FMT_RE.match(parts[1])
    if not fmt_match:
        raise ECGError(uri, "bad_header", f"malformed format field {parts[1]!r} in signal line {line!r}")
    fmt = fmt_match["fmt"]
    if fmt not in SUPPORTED_FORMATS:
        raise ECGError(uri, "unsupported_format",
                       f"signal format {fmt} of {parts[0]} is not supported (supported: {', '.join(SUPPORTED_FORMATS)})")
    if fmt_match["skew"] and int(fmt_match["skew"]):
        raise ECGError(uri, "unsupported_format", f"skewed signals ({parts[1]}) are not supported")
    try:
        adc_zero = int(parts[4]) if len(parts) > 4 else 0
    except ValueError:
        raise ECGError(uri, "bad_header", f"malformed ADC zero in signal line {line!r}") from None
    gain, baseline, units = DEFAULT_GAIN, adc_zero, "mV"
    if len(parts) > 2:
        gain_match = _GAIN_RE.match(parts[2])
        if not gain_match:
            raise ECGError(uri, "bad_header", f"malformed gain field {parts[2]!r} in signal line {line!r}")
        if gain_match["gain"]:
            gain = float(gain_match["gain"]) or DEFAULT_GAIN
        if gain_match["baseline"]:
            baseline = int(gain_match["baseline"])
        units = gain_match["units"] or "mV"
    return SignalSpec(
        file_name=parts[0], fmt=fmt, samps_per_frame=int(fmt_match["spf"] or 1),
        byte_offset=int(fmt_match["offset"] or 0), adc_gain=gain, baseline=baseline, units=units,
        adc_zero=adc_zero, name=parts[8].strip() if len(parts) > 8 else "",
    )


def _bytes_per_sample(fmt: str) -> float:
    return 1.5 if fmt == "212" else np.dtype(_SIMPLE_FORMATS[fmt][0]).itemsize if fmt in _SIMPLE_FORMATS else 3


def decode_file(data: bytes, specs: list[SignalSpec], sig_len: int | None, uri: str) -> np.ndarray:
    """Digital samples (float64, NaN where invalid) of the signals stored in one file, (n, sig_len)."""
    fmt = specs[0].fmt
    if any(s.fmt != fmt for s in specs):
        raise ECGError(uri, "bad_header", "signals sharing one file must share one format")
    offset = specs[0].byte_offset
    spf = [s.samps_per_frame for s in specs]
    frame = sum(spf)  # stored samples per frame
    body = memoryview(data)[offset:]
    available = int(len(body) // _bytes_per_sample(fmt)) // frame  # whole frames in the file
    n_frames = available if sig_len is None else sig_len
    if n_frames == 0:
        raise ECGError(uri, "empty_signal", "the signal file holds no samples" if available == 0 else "the header declares 0 samples")
    if available < n_frames:
        raise ECGError(uri, "truncated", f"the file holds {available} of the {n_frames} samples per signal the header declares "
                                         f"({len(data)} bytes)")
    n_values = n_frames * frame
    if fmt == "212":
        values, invalid = _decode_212(body, n_values), _INVALID_212
    elif fmt == "24":
        raw = np.frombuffer(body, np.uint8, count=n_values * 3).reshape(-1, 3).astype(np.int32)
        values = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        values = np.where(values >= 1 << 23, values - (1 << 24), values)
        invalid = _INVALID_24
    else:
        dtype, shift, invalid = _SIMPLE_FORMATS[fmt]
        values = np.frombuffer(body, dtype, count=n_values)
        if shift:
            values = values.astype(np.int32) + shift
    frames = values.reshape(n_frames, frame)
    if frame == len(specs):  # one sample per frame per signal: the common case
        digital = frames.T
        bad = digital == invalid
        out = digital.astype(np.float64)
        if bad.any():
            out[bad] = np.nan
        return out
    # several samples per frame for some signal: average them per frame (wfdb's smooth_frames)
    out = np.empty((len(specs), n_frames))
    col = 0
    for i, n in enumerate(spf):
        block = frames[:, col : col + n]
        col += n
        smooth = block.astype(np.float64).mean(axis=1)
        smooth[(block == invalid).all(axis=1)] = np.nan
        out[i] = smooth
    return out


def _decode_212(body: memoryview, n_values: int) -> np.ndarray:
    """Format 212: each pair of 12-bit samples is packed into three bytes."""
    n_bytes = (n_values * 3 + 1) // 2
    raw = np.frombuffer(body, np.uint8, count=n_bytes).astype(np.int16)
    if raw.size % 3:
        raw = np.concatenate([raw, np.zeros(3 - raw.size % 3, np.int16)])
    triples = raw.reshape(-1, 3)
    first = triples[:, 0] | ((triples[:, 1] & 0x0F) << 8)
    second = triples[:, 2] | ((triples[:, 1] & 0xF0) << 4)
    out = np.empty(triples.shape[0] * 2, np.int16)
    out[0::2], out[1::2] = first, second
    out = out[:n_values]
    return np.where(out >= 2048, out - 4096, out)


@dataclass(frozen=True)
class Decoded:
    header: Header
    signal: np.ndarray      # float64 (n_sig, sig_len), physical units of each signal (NaN = invalid)


def decode(header: Header, files: Mapping[str, bytes], uri_of: Callable[[str], str]) -> Decoded:
    """Physical signals of every channel, from the header and the bytes of each signal file.

    ``files`` maps each file name of the header to its bytes (a name without bytes means the
    file is missing); ``uri_of(name)`` gives the URI used in error messages.
    """
    by_file: dict[str, list[int]] = {}
    for i, spec in enumerate(header.signals):
        by_file.setdefault(spec.file_name, []).append(i)
    signal: np.ndarray | None = None
    sig_len = header.sig_len
    for name, idx in by_file.items():
        data = files.get(name)
        if data is None:
            raise ECGError(uri_of(name), "missing_file", f"signal file {name!r} named by the header does not exist")
        block = decode_file(data, [header.signals[i] for i in idx], sig_len, uri_of(name))
        if sig_len is None:
            sig_len = block.shape[1]
        elif block.shape[1] != sig_len:
            raise ECGError(uri_of(name), "truncated", f"{block.shape[1]} samples where other files hold {sig_len}")
        if signal is None:
            signal = np.empty((len(header.signals), sig_len), np.float64)
        signal[idx] = block
    baseline = np.array([s.baseline for s in header.signals], np.float64)[:, None]
    gain = np.array([s.adc_gain for s in header.signals], np.float64)[:, None]
    signal -= baseline
    signal /= gain
    return Decoded(header, signal)
