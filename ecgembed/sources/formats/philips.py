"""Philips PageWriter / IntelliSpace ECG ("Sierra ECG") XML 1.03 and 1.04, decoded from bytes.

The rhythm data live in ``<parsedwaveforms>``: base64 (or plain text) holding either raw int16
leads one after another, or XLI-compressed chunks (the usual case). Representative beats
(``<repbeats>``) are never read. Files may be UTF-8 or UTF-16 with a BOM (parsed as any XML).

XLI, as described by the public sierra-ecg-tools readers: one chunk per lead, each an 8-byte
header (int32 payload size, int16 unknown, int16 ``first``) and an LZW stream of 10-bit codes,
most significant bit first (dictionary entries 256-1022; code 1023 ends the stream). The LZW
output is the n high bytes then the n low bytes of int16 values ``d``; the samples are
``x0 = d0``, ``x1 = d1``, ``x[i] = 2 x[i-1] - x[i-2] - L(i)`` with ``L(2) = first`` and
``L(i) = d[i-1] - 64``. In XLI data leads III, aVR, aVL and aVF are residuals ``r`` of their
Einthoven/Goldberger prediction and are rebuilt as Philips specifies:
``III = II - I - r``, ``aVR = -r - floor((I + II) / 2)``, ``aVL = floor((I - III) / 2) - r``,
``aVF = floor((II + III) / 2) - r`` (the Python ``sierraecg`` rounding; ports that truncate
toward zero differ by one count on some samples). Everything is computed in int64: the PyPI
``sierraecg`` 0.4.0 writes these sums back into int16 arrays and overflows on real files with
NumPy 2. A stream often holds 16 chunks for 12 leads; the extra chunks are skipped undecoded.

Uncompressed data are read as the leads' final values (no residual rebuild), as the C# reader
of sierra-ecg-tools does; no such file was available to validate this. Samples are
``resolution`` microvolts per count (5 uV on the carts seen).
"""

from __future__ import annotations

import base64
import binascii
import struct

import numpy as np

from ecgembed.errors import ECGError
from ecgembed import leads as std_leads  # module import: leads -> record -> sources -> formats is a cycle
from ecgembed.sources.formats.base import (Decoded, Limits, check_fs, check_size, excerpt, local_name, parse_xml,
                                           samples_to_keep, xml_root)

NAME = "philips"
EXTENSIONS = (".xml",)

VERSIONS = ("1.03", "1.04", "1.04.01", "1.04.02")
_STD12 = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
_LIMB = _STD12[:6]
_CODE_BITS, _END_CODE, _MAX_ENTRY = 10, 1023, 1022
_WEIGHTS = (1 << np.arange(_CODE_BITS - 1, -1, -1)).astype(np.int64)   # MSB first


def sniff(head: bytes) -> bool:
    return xml_root(head) == "restingecgdata"


def companions(primary: bytes, name: str) -> list[str]:
    return []


def decode(name: str, files: dict[str, bytes], limits: Limits) -> Decoded:
    root = parse_xml(files[name], name)
    nodes: dict = {}
    for element in root.iter():                     # first occurrence of each wanted tag
        tag = local_name(element.tag)
        if tag in _WANTED:
            nodes.setdefault(tag, element)
    doc_type = _text(nodes, "documenttype")
    version = _text(nodes, "documentversion")
    if version not in VERSIONS:
        raise ECGError(name, "unsupported_format", f"Philips {excerpt(doc_type)} version {excerpt(version)!r} "
                                                   f"(supported: {', '.join(VERSIONS)})")
    waves = nodes.get("parsedwaveforms")
    if waves is None or not (waves.text or "").strip():
        raise ECGError(name, "empty_signal", "no <parsedwaveforms> rhythm data (representative beats are never used)")
    fs = check_fs(_text(nodes, "samplingrate") or waves.get("samplespersecond", ""), limits, name)
    resolution = _number(_text(nodes, "resolution") or _text(nodes, "signalresolution") or waves.get("resolution"),
                         "resolution", name)
    if _number(waves.get("signaloffset") or _text(nodes, "signaloffset") or "0", "signaloffset", name) != 0:
        raise ECGError(name, "unsupported_format", "a non-zero signaloffset is not defined by the public schema")
    duration_ms = _number(waves.get("durationperchannel"), "durationperchannel", name)
    n_samples = int(round(duration_ms * fs / 1000))
    labels = _labels(waves, nodes, name)
    check_size(len(labels), n_samples, limits, name)

    encoding = (waves.get("dataencoding") or "").strip()
    method = _compression(waves)
    if encoding == "Base64":
        data = _b64(waves.text, name)
    elif encoding == "Plain" and method == "Uncompressed":
        data = None
    else:
        raise ECGError(name, "unsupported_format", f"dataencoding {excerpt(encoding)!r} with compression "
                                                   f"{excerpt(method)!r} (supported: Base64 XLI, Base64 or Plain uncompressed)")
    if method == "XLI":
        counts = xli_decode(data, len(labels), n_samples, name)
        if tuple(labels[:6]) != _LIMB:
            raise ECGError(name, "unsupported_format", f"XLI leads {', '.join(labels[:6])}: the residual rebuild "
                                                       "is defined for leads ordered I, II, III, aVR, aVL, aVF")
        rebuild_limb_leads(counts)
    elif method == "Uncompressed":
        counts = _uncompressed(data, waves.text, len(labels), n_samples, name)
    else:
        raise ECGError(name, "unsupported_format", f"compression {excerpt(method)!r} (supported: XLI, uncompressed)")

    n_keep, notes = samples_to_keep(n_samples, fs, limits)
    signal = counts[:, :n_keep] * (resolution * 1e-3)        # (n_leads, n_samples) mV
    leads = [std_leads.canonical_lead(label) or label for label in labels]
    return Decoded(leads=leads, signal=signal, fs=fs, units=["uV"] * len(leads), notes=notes,
                   metadata=_metadata(root, nodes))


# --------------------------------------------------------------------------- XLI
def xli_decode(data: bytes, n_leads: int, n_samples: int, uri: str) -> np.ndarray:
    """int64 (n_leads, n_samples) from the first ``n_leads`` XLI chunks (later chunks are skipped)."""
    out = np.empty((n_leads, n_samples), np.int64)
    offset = 0
    for lead in range(n_leads):
        if offset + 8 > len(data):
            raise ECGError(uri, "truncated", f"XLI data ends after {lead} of {n_leads} lead chunks")
        size, _, first = struct.unpack_from("<iHh", data, offset)
        offset += 8
        if size < 0 or offset + size > len(data):
            raise ECGError(uri, "truncated", f"XLI chunk {lead + 1} declares {size} bytes, "
                                             f"{len(data) - offset} remain")
        deltas = _unpack_words(_lzw(data[offset:offset + size], 2 * n_samples + 1, lead, uri))
        offset += size
        if len(deltas) != n_samples:
            kind = "truncated" if len(deltas) < n_samples else "corrupt"
            raise ECGError(uri, kind, f"XLI chunk {lead + 1} holds {len(deltas)} samples, "
                                      f"durationperchannel implies {n_samples}")
        out[lead] = _undo_deltas(deltas, first)
    return out


def _lzw(chunk: bytes, max_bytes: int, lead: int, uri: str) -> bytes:
    """LZW-decode one chunk; more than ``max_bytes`` of output is refused (a decompression bomb)."""
    bits = np.unpackbits(np.frombuffer(chunk, np.uint8))
    n_codes = len(bits) // _CODE_BITS
    codes = (bits[: n_codes * _CODE_BITS].reshape(n_codes, _CODE_BITS) @ _WEIGHTS).tolist()
    table = [bytes((i,)) for i in range(256)]
    out, total, previous = [], 0, b""
    for code in codes:
        if code == _END_CODE:
            break
        if code < len(table):
            entry = table[code]
        elif code == len(table) and previous:
            entry = previous + previous[:1]
        else:
            raise ECGError(uri, "corrupt", f"XLI chunk {lead + 1}: LZW code {code} before it is defined")
        if previous and len(table) <= _MAX_ENTRY:
            table.append(previous + entry[:1])
        previous = entry
        out.append(entry)
        total += len(entry)
        if total > max_bytes:
            raise ECGError(uri, "corrupt", f"XLI chunk {lead + 1} expands beyond the {max_bytes} bytes "
                                           "its lead can hold")
    return b"".join(out)


def _unpack_words(stream: bytes) -> np.ndarray:
    """The LZW output is n high bytes then n low bytes: int64 of the int16 words."""
    raw = np.frombuffer(stream, np.uint8)
    if len(raw) % 2:
        raw = np.append(raw, np.uint8(0))
    half = len(raw) // 2
    words = (raw[:half].astype(np.uint16) << 8) | raw[half:]
    return words.view(np.int16).astype(np.int64)


def _undo_deltas(d: np.ndarray, first: int) -> np.ndarray:
    """x0 = d0, x1 = d1, x[i] = 2x[i-1] - x[i-2] - L(i): a double cumulative sum, in int64."""
    if len(d) < 3:
        return d.copy()
    lag = np.empty(len(d) - 2, np.int64)
    lag[0] = first
    lag[1:] = d[2:-1] - 64
    step = np.empty(len(d) - 1, np.int64)                     # x[i] - x[i-1], i >= 1
    step[0] = d[1] - d[0]
    step[1:] = step[0] - np.cumsum(lag)
    x = np.empty(len(d), np.int64)
    x[0] = d[0]
    x[1:] = d[0] + np.cumsum(step)
    return x


def rebuild_limb_leads(counts: np.ndarray) -> None:
    """Rows 2-5 (III, aVR, aVL, aVF residuals) -> the leads themselves, in place, int64 floor division."""
    lead_i, lead_ii = counts[0], counts[1]
    counts[2] = lead_ii - lead_i - counts[2]
    lead_iii = counts[2]
    counts[3] = -counts[3] - (lead_i + lead_ii) // 2
    counts[4] = (lead_i - lead_iii) // 2 - counts[4]
    counts[5] = (lead_ii + lead_iii) // 2 - counts[5]


# --------------------------------------------------------------------------- the rest of the file
_WANTED = {"documenttype", "documentversion", "parsedwaveforms", "samplingrate", "resolution", "signalresolution",
           "signaloffset", "acquisitiontype", "numberchannelsallocated", "dataacquisition", "generalpatientdata",
           "machine", "acquirer"}


def _text(nodes: dict, tag: str) -> str:
    node = nodes.get(tag)
    return (node.text or "").strip() if node is not None else ""


def _number(text, what: str, uri: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ECGError(uri, "bad_header", f"{what} {excerpt(str(text))!r} is not a number") from None
    if not np.isfinite(value) or value < 0 or (value == 0 and what != "signaloffset"):
        raise ECGError(uri, "bad_header", f"{what} {value:g} is not usable")
    return value


def _compression(waves) -> str:
    if waves.get("compression") is not None:                   # 1.04
        return waves.get("compression").strip() or "Uncompressed"
    if (waves.get("compressflag") or "").strip().lower() == "true":   # 1.03
        return (waves.get("compressmethod") or "").strip()
    return "Uncompressed"


def _labels(waves, nodes: dict, uri: str) -> list[str]:
    labels = (waves.get("leadlabels") or "").split()
    if labels:
        count = waves.get("numberofleads")
        return labels[: int(_number(count, "numberofleads", uri))] if count else labels
    allocated = int(_number(_text(nodes, "numberchannelsallocated"), "numberchannelsallocated", uri))
    if _text(nodes, "acquisitiontype") in ("STD-12", "10-WIRE") and allocated <= 12:
        return list(_STD12[:allocated])     # 1.03 files name no leads: STD-12 order is implied
    return [f"Channel {i + 1}" for i in range(allocated)]


def _b64(text: str | None, uri: str) -> bytes:
    try:
        return base64.b64decode("".join((text or "").split()), validate=True)
    except (binascii.Error, ValueError):
        raise ECGError(uri, "corrupt", "parsedwaveforms is not valid base64") from None


def _uncompressed(data: bytes | None, text: str | None, n_leads: int, n_samples: int, uri: str) -> np.ndarray:
    if data is None:                                            # Plain: whitespace-separated integers
        try:
            values = np.array((text or "").split(), dtype=np.int64)
        except ValueError:
            raise ECGError(uri, "corrupt", "plain parsedwaveforms holds a value that is not an integer") from None
    else:
        values = np.frombuffer(data[: len(data) // 2 * 2], "<i2").astype(np.int64)
    if len(values) < n_leads * n_samples:
        raise ECGError(uri, "truncated", f"parsedwaveforms holds {len(values)} samples, {n_leads} leads x "
                                         f"{n_samples} need {n_leads * n_samples}")
    if len(values) % n_samples:
        raise ECGError(uri, "corrupt", f"parsedwaveforms holds {len(values)} samples, not a multiple of "
                                       f"{n_samples} per lead")
    return values[: n_leads * n_samples].reshape(n_leads, n_samples)


def _metadata(root, nodes: dict) -> dict[str, str]:
    """PHI-capable fields under the fixed keys (written only when the user opts in)."""
    out: dict[str, str] = {}
    patient = nodes.get("generalpatientdata")
    if patient is not None:
        found = {local_name(e.tag): (e.text or "").strip() for e in patient.iter()}
        for key, tag in (("sex", "sex"), ("patient_id", "patientid"), ("birth_date", "dateofbirth")):
            if found.get(tag):
                out[key] = found[tag]
        if found.get("years"):
            out["age"] = f"{found['years']} years"
        name = " ".join(v for v in (found.get("firstname"), found.get("lastname")) if v)
        if name:
            out["patient_name"] = name
    acquisition = nodes.get("dataacquisition")
    if acquisition is not None and acquisition.get("date"):
        out["acquisition_time"] = f"{acquisition.get('date')} {acquisition.get('time') or ''}".strip()
    machine = nodes.get("machine")
    if machine is not None:
        device = " ".join(v for v in ((machine.text or "").strip(), machine.get("machineid") or "") if v)
        if device:
            out["device"] = device
    acquirer = nodes.get("acquirer")
    if acquirer is not None:
        found = {local_name(e.tag): (e.text or "").strip() for e in acquirer.iter()}
        site = ", ".join(v for v in (found.get("institutionname"), found.get("departmentname")) if v)
        if site:
            out["site"] = site
    return out
