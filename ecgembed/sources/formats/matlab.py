"""MATLAB v5 ``.mat`` files in the layout CPSC 2018 distributes, decoded from bytes.

The China Physiological Signal Challenge 2018 training set stores each record as a struct
``ECG`` with fields ``sex``, ``age`` and ``data``: a 12 x N double array in mV. The file does not
say its sampling rate or lead order; the CPSC 2018 description gives 500 Hz and I, II, III, aVR,
aVL, aVF, V1-V6, which is the documented default here (and a note on every record read with it).

Override per record with a sidecar JSON next to the file, same stem (``A0001.mat`` ->
``A0001.json``): ``{"fs": 257, "leads": ["I", "II", ...], "units": "uV"}`` (every key optional;
``leads`` must name one lead per row of ``data``). A sidecar that cannot be read is an error,
never ignored.

Refused: MATLAB 7.3 files (HDF5 inside), and v5 files without ``ECG.data`` (the variables
found are named). PhysioNet's ``.mat`` signal files are MATLAB v4 with a ``.hea`` header; they
are WFDB records, not this format. Before ``scipy.io.loadmat`` inflates anything, each
compressed variable's declared size is checked against the record limits.
"""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np

from ecgembed.errors import ECGError
from ecgembed.sources.formats.base import Decoded, Limits, check_fs, check_size, excerpt, samples_to_keep
from ecgembed.sources.record import mv_scale

NAME = "matlab"
EXTENSIONS = (".mat",)
COMPANION_EXTENSIONS = (".json",)   # the optional sidecar <stem>.json is part of the record (fingerprint)

DEFAULT_FS = 500.0
DEFAULT_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
DEFAULT_UNITS = "mV"
_MI_MATRIX, _MI_COMPRESSED = 14, 15


def sniff(head: bytes) -> bool:
    return head.startswith(b"MATLAB 5.0 MAT-file") or head.startswith(b"MATLAB 7.3 MAT-file")


def companions(primary: bytes, name: str) -> list[str]:
    """The optional sidecar ``<stem>.json`` (absent is fine: the defaults apply)."""
    return [sidecar_name(name)]


def sidecar_name(name: str) -> str:
    stem = name[: -len(".mat")] if name.lower().endswith(".mat") else name
    return stem + ".json"


def decode(name: str, files: dict[str, bytes], limits: Limits) -> Decoded:
    data = files[name]
    if data.startswith(b"MATLAB 7.3"):
        raise ECGError(name, "unsupported_format", "MATLAB 7.3 file (HDF5): save it with -v7 or earlier")
    _check_sizes(data, limits, name)
    sidecar = sidecar_name(name)
    fs, leads, units, notes = _settings(files.get(sidecar), sidecar, limits)
    import scipy.io
    from scipy.io.matlab import MatReadError

    try:
        contents = scipy.io.loadmat(io.BytesIO(data), simplify_cells=True)
    except (MatReadError, ValueError, TypeError, KeyError, IndexError, OverflowError, zlib.error,
            UnicodeDecodeError, struct.error, EOFError, OSError) as exc:
        raise ECGError(name, "corrupt", f"MATLAB file cannot be read ({type(exc).__name__})") from None
    ecg = contents.get("ECG")
    if not isinstance(ecg, dict) or "data" not in ecg:
        found = ", ".join(sorted(excerpt(k) for k in contents if not k.startswith("__"))) or "none"
        raise ECGError(name, "not_ecg", f"no struct ECG with a field data (the CPSC 2018 layout); "
                                        f"variables: {found}")
    signal = np.asarray(ecg["data"])
    if signal.ndim != 2 or not np.issubdtype(signal.dtype, np.number) or np.iscomplexobj(signal):
        raise ECGError(name, "corrupt", f"ECG.data is {signal.dtype} with shape {signal.shape}, "
                                        "not a real 2-D array")
    if leads is not None and signal.shape[0] != len(leads):
        raise ECGError(sidecar, "bad_header", f"the sidecar names {len(leads)} leads, ECG.data has "
                                              f"{signal.shape[0]} rows (shape {signal.shape})")
    if leads is None:
        leads = list(DEFAULT_LEADS)
        if signal.shape[0] != len(leads):
            raise ECGError(name, "missing_leads" if signal.shape[0] < len(leads) else "corrupt",
                           f"ECG.data has {signal.shape[0]} rows (shape {signal.shape}), not the 12 leads of the "
                           "CPSC 2018 layout (a sidecar can name other leads)")
    check_size(signal.shape[0], signal.shape[1], limits, name)
    n_keep, cut = samples_to_keep(signal.shape[1], fs, limits)
    out = np.asarray(signal[:, :n_keep], dtype=np.float64)     # (n_leads, n_samples); loadmat's own array
    scale = mv_scale(units)
    if scale not in (None, 1.0):
        out *= scale
    metadata = {key: str(ecg[key]).strip() for key in ("sex", "age") if key in ecg and str(ecg[key]).strip()}
    return Decoded(leads=list(leads), signal=out, fs=fs, units=[units] * len(leads), notes=notes + cut,
                   metadata=metadata)


def _settings(sidecar: bytes | None, uri: str, limits: Limits):
    """fs, leads (None = default), units and notes from the sidecar, or the documented defaults."""
    if sidecar is None:
        return DEFAULT_FS, None, DEFAULT_UNITS, [
            f"no sidecar {uri}: assumed the CPSC 2018 defaults, {DEFAULT_FS:g} Hz and leads I..V6"]
    try:
        settings = json.loads(sidecar)
    except (ValueError, UnicodeDecodeError):
        raise ECGError(uri, "bad_header", "the sidecar is not valid JSON") from None
    if not isinstance(settings, dict) or set(settings) - {"fs", "leads", "units"}:
        raise ECGError(uri, "bad_header", 'the sidecar must be an object with keys among "fs", "leads", "units"')
    fs = check_fs(settings.get("fs", DEFAULT_FS), limits, uri)
    leads = settings.get("leads")
    if leads is not None and (not isinstance(leads, list) or not leads or
                              not all(isinstance(x, str) and x.strip() for x in leads)):
        raise ECGError(uri, "bad_header", '"leads" must be a non-empty list of lead names')
    units = settings.get("units", DEFAULT_UNITS)
    if not isinstance(units, str) or mv_scale(units) is None:
        raise ECGError(uri, "bad_header", f'"units" {excerpt(str(units))!r} is not a voltage unit')
    return fs, leads, units, []


def _check_sizes(data: bytes, limits: Limits, uri: str) -> None:
    """Refuse a compressed variable that would inflate beyond the decoded-size limit."""
    if len(data) < 128:
        raise ECGError(uri, "truncated", f"{len(data)} bytes: shorter than the 128-byte MATLAB header")
    order = {b"IM": "<", b"MI": ">"}.get(data[126:128])
    if order is None:
        raise ECGError(uri, "corrupt", "MATLAB header has no byte-order mark")
    pos, total = 128, 0
    while pos + 8 <= len(data):
        kind, size = struct.unpack_from(order + "II", data, pos)
        if kind == _MI_COMPRESSED:
            try:
                head = zlib.decompressobj().decompress(data[pos + 8:pos + 8 + min(size, 4096)], 8)
            except zlib.error:
                raise ECGError(uri, "corrupt", f"compressed variable at byte {pos} is not a zlib stream") from None
            if len(head) == 8:
                total += struct.unpack_from(order + "II", head, 0)[1]
        else:
            total += size
        if total > limits.max_decoded_bytes:
            raise ECGError(uri, "too_large", f"variables declare {total / 2**30:.1f} GiB, more than the limit of "
                                             f"{limits.max_decoded_bytes / 2**30:.1f} GiB")
        pos += 8 + size + (-size % 8 if kind != _MI_COMPRESSED else 0)
