"""WFDB records (PhysioNet): a ``.hea`` header plus the signal files it names, decoded from bytes.

Why not ``wfdb.rdrecord``: it cannot parse from memory (it opens files itself, one request
each, and cloud paths file by file), and ~90 % of its 3.5-5.6 ms per record is header parsing
through pandas. This module parses the header with plain string operations and decodes the
samples with ``numpy``; tests check it equals ``wfdb.rdrecord(..., physical=True)`` on every
WFDB record of the sample set and on records written in each storage format.

What is decoded: formats 8 (first differences), 16, 61, 80, 160, 212, 24, 32, 310, 311 (packed
10-bit) and 508/516/524 (FLAC, through ``soundfile`` on the fetched bytes, as ``wfdb`` does);
any byte offset (``16+24``: the PhysioNet/CinC ``.mat`` files are int16 after a 24-byte MATLAB
header); several signals interleaved in one file; several signal files per record (PTB ``.dat``
+ ``.xyz``); ``samps_per_frame`` > 1 (averaged to one sample per frame, as ``wfdb.rdrecord``
does by default); the format's "invalid sample" value becomes NaN; multi-segment records, fixed
and variable layout (segments concatenated, channels matched by name, gaps and channels absent
from a segment NaN, as ``wfdb``'s multi-to-single conversion; each segment is converted to mV
with its own units, where ``wfdb`` leaves mixed units unconverted and reports none). Not decoded, with a clear
:class:`~ecgembed.errors.ECGError`: skewed signals, nested multi-segment records.

Header semantics follow the WFDB specification and ``wfdb`` 4.3: a gain of 0 or a missing
gain means 200 ADC units per physical unit; a missing baseline is the ADC zero (else 0);
missing units are ``mV``; missing sampling frequency is 250 Hz; format 8 starts from the
signal line's initial value (else the ADC zero).

Limits (:class:`~.base.Limits`): the sampling rate, the number of signals and files, and the
decoded size are checked while parsing, before any signal byte is fetched. Only the first
``max_record_seconds`` are fetched (a ranged read of the bytes they need) and decoded, with a
note. A signal file more than ``size_margin_bytes`` longer than its header implies is refused
(``too_large``).
"""

from __future__ import annotations

import functools
import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ecgembed.errors import ECGError
from ecgembed.sources.formats.base import Decoded, Limits, check_fs, check_size, excerpt, samples_to_keep
from ecgembed.sources.record import parse_comments, to_mv_inplace

NAME = "wfdb"
EXTENSIONS = (".hea",)
RECORD_NAME_SUFFIX = ".hea"          # records are named without it (record ids; ``rec`` means ``rec.hea``)
COMPANION_EXTENSIONS = (".dat", ".mat")   # same-stem files with these are signal files even if another
#                                           format claims the extension (CinC ``.mat`` beside ``.hea``)
DEFAULT_FS = 250.0
DEFAULT_GAIN = 200.0

# fmt -> (numpy dtype of one stored sample, value added after reading, invalid-sample value).
_SIMPLE_FORMATS: dict[str, tuple[str, int, int | None]] = {
    "8": ("i1", 0, None),          # first differences: cumulated after reading
    "16": ("<i2", 0, -32768),
    "61": (">i2", 0, -32768),
    "80": ("u1", -128, -128),
    "160": ("<u2", -32768, -32768),
    "32": ("<i4", 0, -(2**31)),
}
_PACKED_INVALID = {"212": -2048, "24": -(2**23), "310": -512, "311": -512}
_FLAC = {"508": (8, -128), "516": (16, -32768), "524": (24, -(2**23))}   # bits, invalid value
_BYTES_PER_SAMPLE = {"212": 1.5, "24": 3, "310": 4 / 3, "311": 4 / 3}
NULL_FORMAT = "0"      # a signal with no stored samples (layout headers; all NaN when decoded)
SUPPORTED_FORMATS = tuple(sorted((NULL_FORMAT, *_SIMPLE_FORMATS, *_PACKED_INVALID, *_FLAC), key=int))

# "1000.0(0)/mV", "200/uV", "2000", "(0)/mV" are all legal gain fields.
_GAIN_RE = re.compile(r"^(?P<gain>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)?(?:\((?P<baseline>[-+]?\d+)\))?(?:/(?P<units>\S+))?$")
# "16", "16x1", "16+24", "16x1+24", "212:3" (skew)
_FMT_RE = re.compile(r"^(?P<fmt>\d+)(?:x(?P<spf>\d+))?(?::(?P<skew>\d+))?(?:\+(?P<offset>\d+))?$")
_RECORD_RE = re.compile(r"^[^\s/]+(?:/\d+)?\s+\d+(?:\s|$)")


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
    init_value: int
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
        """Signal files in the order they are first named (null signals name none)."""
        return list(dict.fromkeys(s.file_name for s in self.signals if s.fmt != NULL_FORMAT))


@dataclass(frozen=True)
class MultiHeader:
    """A multi-segment record: segment records (``~`` = a gap) and their lengths in samples."""

    record_name: str
    fs: float
    n_sig: int
    sig_len: int | None
    segments: tuple[tuple[str, int], ...]   # (segment record name, length); a first length of 0 = layout
    comments: tuple[str, ...] = field(default=())

    @property
    def layout(self) -> str | None:
        return self.segments[0][0] if self.segments and self.segments[0][1] == 0 else None


# --------------------------------------------------------------------------- protocol
def sniff(head: bytes) -> bool:
    """A WFDB header: text whose first record line is ``name[/n_seg] n_sig ...``, then a signal or
    segment line. Used for files without a ``.hea`` extension."""
    if b"\x00" in head:
        return False
    lines = [ln.strip() for ln in head.decode("latin-1").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(lines) < 2 or not _RECORD_RE.match(lines[0]):
        return False
    second = lines[1].split()
    if "/" in lines[0].split()[0]:
        return len(second) >= 2 and second[1].isdigit()
    return len(second) >= 2 and bool(_FMT_RE.match(second[1]))


def companions(primary: bytes, name: str) -> list[str]:
    """The signal files (or segment headers) the header names, in order."""
    return list(plan(name, {name: primary}, Limits()))


def plan(name: str, files: Mapping[str, bytes], limits: Limits) -> dict[str, int | None]:
    """The files still to fetch, each with the most bytes needed from its start (None: whole file).

    Single-segment: the signal files. Multi-segment: first the segment headers of the segments
    within the first ``max_record_seconds``, then (once they are fetched) their signal files.
    """
    header = parse_header(files[name], name, limits)
    if isinstance(header, Header):
        return _signal_plan(header, limits)
    out: dict[str, int | None] = {}
    for seg_name, _, _ in _needed_segments(header, limits):
        seg_file = seg_name + ".hea"
        if seg_file not in files:
            out[seg_file] = None
            continue
        seg = _segment_header(files, seg_file, limits)
        out.update(_signal_plan(seg, limits))
    return out


def decode(name: str, files: Mapping[str, bytes], limits: Limits = Limits()) -> Decoded:
    """The record's channels in physical units (mV for voltage channels), float64."""
    header = parse_header(files[name], name, limits)
    if isinstance(header, MultiHeader):
        return _decode_multi(header, name, files, limits)
    keep, notes = _keep(header, files, limits)
    signal = _physical(header, files, keep, limits)
    units = [s.units for s in header.signals]
    to_mv_inplace(signal, units)
    return Decoded(leads=[s.name for s in header.signals], signal=signal, fs=header.fs, units=units, notes=notes,
                   metadata=_metadata(header.comments), comments=list(header.comments))


# --------------------------------------------------------------------------- header
def parse_header(text: bytes | str, uri: str, limits: Limits = Limits()) -> Header | MultiHeader:
    """Parse a WFDB header; a malformed one raises ``ECGError(bad_header)`` naming the field.

    Error messages quote only the field at fault, shortened (:func:`~.base.excerpt`): never a
    whole line, never a comment (comments and descriptions can hold names or record numbers).
    The reader asks for the same header while planning fetches and decoding: results are cached
    (headers are small, and the parsed form is immutable; a large one is not kept).
    """
    if len(text) > _CACHED_HEADER_BYTES:
        return _parse_cached.__wrapped__(text, uri, limits)
    return _parse_cached(text, uri, limits)


_CACHED_HEADER_BYTES = 64 * 1024


@functools.lru_cache(maxsize=512)
def _parse_cached(text: bytes | str, uri: str, limits: Limits) -> Header | MultiHeader:
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
    name, _, n_seg = rec[0].partition("/")
    n_sig = _int(rec, 1, 0, uri, "number of signals")
    fs = DEFAULT_FS
    if len(rec) > 2:
        fs_field = rec[2].split("/")[0].split("(")[0]
        try:
            fs = float(fs_field)
        except ValueError:
            raise ECGError(uri, "bad_header", f"malformed sampling frequency {excerpt(rec[2])!r} in the record "
                                              "line") from None
    sig_len = _int(rec, 3, None, uri, "number of samples")
    if sig_len is not None and sig_len < 0:
        raise ECGError(uri, "bad_header", f"negative number of samples {sig_len}")
    if n_sig < 0:
        raise ECGError(uri, "bad_header", f"negative number of signals {n_sig}")
    if n_sig > limits.max_channels:
        raise ECGError(uri, "too_large", f"the header declares {n_sig} signals, more than the limit of "
                                         f"{limits.max_channels}")
    fs = check_fs(fs, limits, uri)
    if n_seg:
        return _parse_segments(name, n_seg, n_sig, fs, sig_len, lines, comments, uri, limits)
    if n_sig == 0:
        raise ECGError(uri, "empty_signal", "the header declares 0 signals")
    if len(lines) - 1 < n_sig:
        raise ECGError(uri, "bad_header", f"the record line declares {n_sig} signals but {len(lines) - 1} signal "
                                          "lines follow")
    signals = tuple(_parse_signal_line(line, i, uri) for i, line in enumerate(lines[1 : 1 + n_sig], start=1))
    n_files = len({s.file_name for s in signals if s.fmt != NULL_FORMAT})
    if n_files > limits.max_signal_files:
        raise ECGError(uri, "too_large", f"the header names {n_files} signal files, more than the limit of "
                                         f"{limits.max_signal_files} (--max-signal-files)")
    return Header(name, fs, sig_len, signals, tuple(comments))


def _int(fields: list[str], i: int, default, uri: str, what: str):
    return _signal_int(fields, i, default, "the record line", uri, what)


def _parse_segments(name, n_seg, n_sig, fs, sig_len, lines, comments, uri, limits) -> MultiHeader:
    count = int(n_seg)
    if count <= 0:
        raise ECGError(uri, "bad_header", f"multi-segment record with {count} segments")
    if count > 100_000:
        raise ECGError(uri, "too_large", f"{count} segments")
    if len(lines) - 1 < count:
        raise ECGError(uri, "bad_header", f"the record line declares {count} segments but {len(lines) - 1} "
                                          "segment lines follow")
    segments = []
    for i, line in enumerate(lines[1 : 1 + count], start=1):
        parts = line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            raise ECGError(uri, "bad_header", f"malformed segment line {i} (expected a name and a length)")
        if parts[0] != "~" and "/" in parts[0]:
            raise ECGError(uri, "unsafe_path", f"segment name {excerpt(parts[0])!r} is not a bare record name")
        segments.append((parts[0], int(parts[1])))
    if any(length == 0 for _, length in segments[1:]):
        raise ECGError(uri, "bad_header", "only the first segment (the layout) may have 0 samples")
    return MultiHeader(name, fs, n_sig, sig_len, tuple(segments), tuple(comments))


def _parse_signal_line(line: str, number: int, uri: str) -> SignalSpec:
    parts = line.split(None, 8)  # the 9th field, the description, may contain spaces
    where = f"signal line {number}"
    if len(parts) < 2:
        raise ECGError(uri, "bad_header", f"{where} has no format field")
    fmt_match = _FMT_RE.match(parts[1])
    if not fmt_match:
        raise ECGError(uri, "bad_header", f"malformed format field {excerpt(parts[1])!r} in {where}")
    fmt = fmt_match["fmt"]
    if fmt not in SUPPORTED_FORMATS:
        raise ECGError(uri, "unsupported_format", f"signal format {fmt} of {excerpt(parts[0])} is not supported "
                                                  f"(supported: {', '.join(SUPPORTED_FORMATS)})")
    if fmt_match["skew"] and int(fmt_match["skew"]):
        raise ECGError(uri, "unsupported_format", f"skewed signals ({excerpt(parts[1])}) are not supported")
    spf = int(fmt_match["spf"] or 1)
    if spf < 1 or spf > 1_000:
        raise ECGError(uri, "bad_header", f"{spf} samples per frame in {where}")
    adc_zero = _signal_int(parts, 4, 0, where, uri, "ADC zero")
    init_value = _signal_int(parts, 5, adc_zero, where, uri, "initial value")
    gain, baseline, units = DEFAULT_GAIN, adc_zero, "mV"
    if len(parts) > 2:
        gain_match = _GAIN_RE.match(parts[2])
        if not gain_match:
            raise ECGError(uri, "bad_header", f"malformed gain field {excerpt(parts[2])!r} in {where}")
        if gain_match["gain"]:
            gain = float(gain_match["gain"]) or DEFAULT_GAIN
        if not math.isfinite(gain):
            raise ECGError(uri, "bad_header", f"gain {excerpt(parts[2])!r} in {where} is not finite")
        if gain_match["baseline"]:
            baseline = int(gain_match["baseline"])
        units = gain_match["units"] or "mV"
    return SignalSpec(
        file_name=parts[0], fmt=fmt, samps_per_frame=spf, byte_offset=int(fmt_match["offset"] or 0),
        adc_gain=gain, baseline=baseline, units=units, adc_zero=adc_zero, init_value=init_value,
        name=parts[8].strip() if len(parts) > 8 else "",
    )


def _signal_int(parts, i, default, where, uri, what):
    if len(parts) <= i:
        return default
    try:
        return int(parts[i])
    except ValueError:
        raise ECGError(uri, "bad_header", f"malformed {what} {excerpt(parts[i])!r} in {where}") from None


def _metadata(comments: tuple[str, ...]) -> dict[str, str]:
    """The fixed metadata keys from ``key: value`` comments (PhysioNet/CinC: Age, Sex, Dx)."""
    pairs = {k.lower(): v for k, v in parse_comments(comments).items()}
    out = {}
    for key, target in (("age", "age"), ("sex", "sex"), ("dx", "diagnosis")):
        if pairs.get(key):
            out[target] = pairs[key]
    return out


# --------------------------------------------------------------------------- byte plans
def _bytes_for(fmt: str, n_values: int) -> int:
    """Bytes needed to read ``n_values`` stored samples of ``fmt`` (as ``wfdb`` computes it)."""
    if fmt == "212":
        return math.ceil(n_values * 1.5)
    if fmt == "310" and n_values % 3 == 2:   # the second sample of a group needs its 4th byte
        return 4 * math.ceil(n_values / 3)
    if fmt in ("310", "311"):
        return math.ceil(n_values * 4 / 3)
    if fmt == "24":
        return n_values * 3
    return n_values * np.dtype(_SIMPLE_FORMATS[fmt][0]).itemsize


def _by_file(header: Header) -> dict[str, list[int]]:
    """Signal indices per signal file, in header order (null signals have no file)."""
    out: dict[str, list[int]] = {}
    for i, spec in enumerate(header.signals):
        if spec.fmt != NULL_FORMAT:
            out.setdefault(spec.file_name, []).append(i)
    return out


def _signal_plan(header: Header, limits: Limits) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for file_name, idx in _by_file(header).items():
        spec = header.signals[idx[0]]
        if header.sig_len is None or spec.fmt in _FLAC:
            out[file_name] = None      # length from the file / compressed: the whole file, bounded
            continue
        frame = sum(header.signals[i].samps_per_frame for i in idx)
        keep, _ = samples_to_keep(header.sig_len, header.fs, limits)
        needed = spec.byte_offset + _bytes_for(spec.fmt, keep * frame)
        if keep == header.sig_len:   # the whole record: read a little more, to notice a file far too long
            needed += limits.size_margin_bytes + 1
        out[file_name] = needed
    return out


# --------------------------------------------------------------------------- single segment
def _keep(header: Header, files: Mapping[str, bytes], limits: Limits) -> tuple[int, list[str]]:
    """Samples per signal to decode (the header's or the file's length, capped), with notes."""
    sig_len = header.sig_len
    if sig_len is None and not _by_file(header):
        raise ECGError(header.record_name + ".hea", "empty_signal", "only null signals (format 0) and no length")
    if sig_len is None:   # infer from the first signal file, as wfdb does
        file_name, idx = next(iter(_by_file(header).items()))
        data = files.get(file_name)
        if data is None:
            raise ECGError(file_name, "missing_file", f"signal file {file_name!r} named by the header does not exist")
        spec = header.signals[idx[0]]
        if spec.fmt in _FLAC:
            sig_len = _flac_frames(data, file_name, spec) // spec.samps_per_frame
        else:
            frame = sum(header.signals[i].samps_per_frame for i in idx)
            bps = _BYTES_PER_SAMPLE.get(spec.fmt) or np.dtype(_SIMPLE_FORMATS[spec.fmt][0]).itemsize
            sig_len = int(max(len(data) - spec.byte_offset, 0) / (bps * frame))
        if sig_len == 0:
            raise ECGError(file_name, "empty_signal", "the signal file holds no samples")
    if sig_len == 0:
        raise ECGError(header.record_name + ".hea", "empty_signal", "the header declares 0 samples")
    keep, notes = samples_to_keep(sig_len, header.fs, limits)
    check_size(len(header.signals), keep, limits, header.record_name + ".hea")
    return keep, notes


def _physical(header: Header, files: Mapping[str, bytes], n_frames: int, limits: Limits,
              full_len: int | None = None) -> np.ndarray:
    """Physical values (float64, NaN where invalid) of every signal, first ``n_frames`` samples."""
    by_file = _by_file(header)
    if sum(len(idx) for idx in by_file.values()) == len(header.signals):
        signal = np.empty((len(header.signals), n_frames), np.float64)
    else:
        signal = np.full((len(header.signals), n_frames), np.nan)   # null signals stay NaN
    for file_name, idx in by_file.items():
        data = files.get(file_name)
        if data is None:
            raise ECGError(file_name, "missing_file", f"signal file {file_name!r} named by the header does not exist")
        specs = [header.signals[i] for i in idx]
        signal[idx] = decode_file(data, specs, n_frames, file_name, header.sig_len if full_len is None else full_len,
                                  limits)
    baseline = np.array([s.baseline for s in header.signals], np.float64)[:, None]
    gain = np.array([s.adc_gain for s in header.signals], np.float64)[:, None]
    signal -= baseline
    signal /= gain
    return signal


def decode_file(data: bytes, specs: list[SignalSpec], n_frames: int, uri: str, declared: int | None = None,
                limits: Limits = Limits()) -> np.ndarray:
    """Digital samples (float64, NaN where invalid) of the signals stored in one file, (n, n_frames).

    ``declared`` is the header's length (None when it gives none): a file shorter than the
    ``n_frames`` wanted is ``truncated``; one longer than ``declared`` implies by more than
    ``limits.size_margin_bytes`` is ``too_large``.
    """
    fmt = specs[0].fmt
    if any(s.fmt != fmt for s in specs):
        raise ECGError(uri, "bad_header", "signals sharing one file must share one format")
    if fmt in _FLAC:
        return _decode_flac(data, specs, n_frames, uri)
    offset = specs[0].byte_offset
    spf = [s.samps_per_frame for s in specs]
    frame = sum(spf)  # stored samples per frame
    body = memoryview(data)[offset:]
    n_values = n_frames * frame
    needed = _bytes_for(fmt, n_values)
    if len(body) < needed:
        bps = _BYTES_PER_SAMPLE.get(fmt) or np.dtype(_SIMPLE_FORMATS[fmt][0]).itemsize
        available = int(max(len(body), 0) / (bps * frame))
        if available == 0 and declared is None:
            raise ECGError(uri, "empty_signal", "the signal file holds no samples")
        raise ECGError(uri, "truncated", f"the file holds {available} of the {n_frames} samples per signal "
                                         f"the header declares ({len(data)} bytes)")
    if declared is not None and declared == n_frames:
        implied = offset + _bytes_for(fmt, declared * frame)
        if len(data) > implied + limits.size_margin_bytes:
            raise ECGError(uri, "too_large", f"the file holds more than {implied + limits.size_margin_bytes} bytes, "
                                             f"where the header implies {implied}")
    if fmt in _PACKED_INVALID:
        values, invalid = _decode_packed(body, fmt, n_values), _PACKED_INVALID[fmt]
    else:
        dtype, shift, invalid = _SIMPLE_FORMATS[fmt]
        values = np.frombuffer(body, dtype, count=n_values)
        if shift:
            values = values.astype(np.int32) + shift
    frames = values.reshape(n_frames, frame)
    if fmt == "8":
        frames = _undo_differences(frames, specs)
    return _smooth(frames, spf, invalid)


def _smooth(frames: np.ndarray, spf: list[int], invalid: int | None) -> np.ndarray:
    """(n_frames, frame) stored values -> (n_signals, n_frames) float64, averaged per frame."""
    if len(spf) == frames.shape[1]:  # one sample per frame per signal: the common case
        digital = frames.T
        out = digital.astype(np.float64)
        if invalid is not None:
            bad = digital == invalid
            if bad.any():
                out[bad] = np.nan
        return out
    # several samples per frame for some signal: average them per frame (wfdb's smooth_frames)
    out = np.empty((len(spf), frames.shape[0]))
    col = 0
    for i, n in enumerate(spf):
        block = frames[:, col : col + n]
        col += n
        smooth = block.astype(np.float64).mean(axis=1)
        if invalid is not None:
            smooth[(block == invalid).all(axis=1)] = np.nan
        out[i] = smooth
    return out


def _undo_differences(frames: np.ndarray, specs: list[SignalSpec]) -> np.ndarray:
    """Format 8: each stored value is the difference from the previous sample of its signal."""
    out = np.empty(frames.shape, np.int64)
    col = 0
    for spec in specs:
        n = spec.samps_per_frame
        block = frames[:, col : col + n].reshape(-1).astype(np.int64)   # the signal's samples in time order
        out[:, col : col + n] = (np.cumsum(block) + spec.init_value).reshape(-1, n)
        col += n
    return out


def _decode_packed(body: memoryview, fmt: str, n_values: int) -> np.ndarray:
    """Formats 212 (two 12-bit samples in 3 bytes), 310/311 (three 10-bit in 4), 24 (3 bytes)."""
    if fmt == "24":
        raw = np.frombuffer(body, np.uint8, count=n_values * 3).reshape(-1, 3).astype(np.int32)
        values = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        return np.where(values >= 1 << 23, values - (1 << 24), values)
    group, per = (3, 2) if fmt == "212" else (4, 3)
    n_groups = -(-n_values // per)
    raw = np.zeros(n_groups * group, np.int32)
    avail = min(len(body), n_groups * group)
    raw[:avail] = np.frombuffer(body, np.uint8, count=avail)
    b = raw.reshape(-1, group)
    out = np.empty((n_groups, per), np.int32)
    if fmt == "212":
        out[:, 0] = b[:, 0] | ((b[:, 1] & 0x0F) << 8)
        out[:, 1] = b[:, 2] | ((b[:, 1] & 0xF0) << 4)
        bits = 12
    elif fmt == "310":
        out[:, 0] = (b[:, 0] >> 1) | ((b[:, 1] & 0x07) << 7)
        out[:, 1] = (b[:, 2] >> 1) | ((b[:, 3] & 0x07) << 7)
        out[:, 2] = ((b[:, 1] >> 3) & 0x1F) | (((b[:, 3] >> 3) & 0x1F) << 5)
        bits = 10
    else:  # 311
        out[:, 0] = b[:, 0] | ((b[:, 1] & 0x03) << 8)
        out[:, 1] = (b[:, 1] >> 2) | ((b[:, 2] & 0x0F) << 6)
        out[:, 2] = (b[:, 2] >> 4) | ((b[:, 3] & 0x3F) << 4)
        bits = 10
    values = out.reshape(-1)[:n_values]
    half = 1 << (bits - 1)
    return np.where(values >= half, values - (1 << bits), values)


# --------------------------------------------------------------------------- FLAC (508/516/524)
def _flac_frames(data: bytes, uri: str, spec: SignalSpec) -> int:
    import soundfile

    if not data.startswith(b"fLaC"):
        raise ECGError(uri, "corrupt", "not a FLAC stream (no fLaC signature)")
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sf:
            return int(sf.frames)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise ECGError(uri, "corrupt", f"FLAC stream cannot be read ({type(exc).__name__})") from None


def _decode_flac(data: bytes, specs: list[SignalSpec], n_frames: int, uri: str) -> np.ndarray:
    """FLAC signal files, decoded from the fetched bytes with ``soundfile`` (as ``wfdb`` does)."""
    import soundfile

    fmt = specs[0].fmt
    bits, invalid = _FLAC[fmt]
    spf = specs[0].samps_per_frame
    if any(s.samps_per_frame != spf for s in specs):
        raise ECGError(uri, "unsupported_format", "FLAC signals of one file must share samples per frame")
    if not data.startswith(b"fLaC"):
        raise ECGError(uri, "corrupt", "not a FLAC stream (no fLaC signature)")
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sf:
            depth = {"PCM_S8": 8, "PCM_16": 16, "PCM_24": 24}.get(sf.subtype)
            if depth is None or depth > bits:
                raise ECGError(uri, "corrupt", f"FLAC sample type {sf.subtype} does not fit format {fmt}")
            if sf.channels != len(specs):
                raise ECGError(uri, "corrupt", f"FLAC stream has {sf.channels} channels, the header names {len(specs)}")
            wanted = n_frames * spf
            if sf.frames < wanted:
                raise ECGError(uri, "truncated", f"the file holds {sf.frames // spf} of the {n_frames} samples per "
                                                 "signal the header declares")
            raw = sf.read(wanted, dtype="int16" if depth <= 16 else "int32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise ECGError(uri, "corrupt", f"FLAC stream cannot be read ({type(exc).__name__})") from None
    values = raw.astype(np.int32)
    if depth in (8, 24):
        values >>= 8                       # soundfile left-aligns 8-bit in int16 and 24-bit in int32
    # (samples, channels) with spf samples per frame -> (frames, channels * spf) in file order
    frames = values.reshape(n_frames, spf, len(specs)).transpose(0, 2, 1).reshape(n_frames, -1)
    return _smooth(frames, [spf] * len(specs), invalid)


# --------------------------------------------------------------------------- multi-segment
def _needed_segments(header: MultiHeader, limits: Limits) -> list[tuple[str, int, int]]:
    """(segment name, start sample, samples used) of the segments within the kept length, gaps excluded;
    the layout segment first (start -1)."""
    total = header.sig_len if header.sig_len is not None else sum(n for _, n in header.segments)
    keep, _ = samples_to_keep(total, header.fs, limits)
    out, start = [], 0
    if header.layout:
        out.append((header.layout, -1, 0))
    for seg_name, length in header.segments[1 if header.layout else 0:]:
        if start >= keep:
            break
        if seg_name != "~":
            out.append((seg_name, start, min(length, keep - start)))
        start += length
    segment_files = sum(1 for _ in out)
    if segment_files > limits.max_signal_files:
        raise ECGError(header.record_name + ".hea", "too_large",
                       f"the first {keep / header.fs:g} s span {segment_files} segments, more than the limit of "
                       f"{limits.max_signal_files} files (--max-signal-files)")
    return out


def _segment_header(files: Mapping[str, bytes], seg_file: str, limits: Limits) -> Header:
    data = files.get(seg_file)
    if data is None:
        raise ECGError(seg_file, "missing_file", f"segment header {seg_file!r} does not exist")
    seg = parse_header(data, seg_file, limits)
    if isinstance(seg, MultiHeader):
        raise ECGError(seg_file, "unsupported_format", "a multi-segment record inside a multi-segment record")
    return seg


def _decode_multi(header: MultiHeader, name: str, files: Mapping[str, bytes], limits: Limits) -> Decoded:
    total = header.sig_len if header.sig_len is not None else sum(n for _, n in header.segments)
    keep, notes = samples_to_keep(total, header.fs, limits)
    check_size(max(header.n_sig, 1), keep, limits, name)
    needed = _needed_segments(header, limits)
    if header.layout:
        layout = _segment_header(files, header.layout + ".hea", limits)
        names = [s.name for s in layout.signals]
    else:
        names = []
    units: dict[int, str] = {}
    signal: np.ndarray | None = None
    for seg_name, start, used in needed:
        if start < 0:
            continue
        seg = _segment_header(files, seg_name + ".hea", limits)
        if seg.fs != header.fs:
            raise ECGError(seg_name + ".hea", "unsupported_format", f"segment at {seg.fs:g} Hz in a "
                                                                    f"{header.fs:g} Hz record")
        if not names:     # fixed layout: the first segment defines the channels
            names = [s.name for s in seg.signals]
        if signal is None:
            signal = np.full((len(names), keep), np.nan)
        block = _physical(seg, files, used, limits, full_len=seg.sig_len)
        to_mv_inplace(block, [s.units for s in seg.signals])   # per segment: segments may differ in units
        if header.layout:   # variable layout: channels matched by name (the first of a repeated name)
            seg_names = [s.name for s in seg.signals]
            for row, lead in enumerate(names):
                if lead in seg_names:
                    j = seg_names.index(lead)
                    signal[row, start : start + used] = block[j]
                    units.setdefault(row, seg.signals[j].units)
        else:
            if len(seg.signals) != len(names):
                raise ECGError(seg_name + ".hea", "bad_header", f"fixed-layout segment with {len(seg.signals)} "
                                                                f"signals where the first has {len(names)}")
            signal[:, start : start + used] = block
            for row, spec in enumerate(seg.signals):
                units.setdefault(row, spec.units)
    if signal is None:
        signal = np.full((len(names), keep), np.nan)
    if not names:
        raise ECGError(name, "empty_signal", "the multi-segment record has no signals")
    layout_units = [s.units for s in layout.signals] if header.layout else ["mV"] * len(names)
    unit_list = [units.get(i, layout_units[i]) for i in range(len(names))]
    return Decoded(leads=names, signal=signal, fs=header.fs, units=unit_list, notes=notes,
                   metadata=_metadata(header.comments), comments=list(header.comments))
