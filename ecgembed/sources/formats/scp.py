"""SCP-ECG (EN 1064 / ISO 11073-91064) files, decoded from bytes.

Layout: a CRC-CCITT of the file, its length, then sections, each with a 16-byte header (CRC,
id, length, versions). Section 0 points at the others; 1 holds patient and acquisition tags;
2 the Huffman tables; 3 the lead definitions (lead ids, sample ranges, flags); 6 the rhythm
data (amplitude unit AVM in nV, sample interval in us, difference encoding, bimodal flag,
per-lead byte counts, then the leads one after another). Every CRC is checked.

Decoded: no section 2 (raw little-endian int16) or the standard's default Huffman table
(section 2 declaring 19999 tables); difference orders 0, 1 and 2. Refused with
``unsupported_format``: custom Huffman tables, bimodal compression, reference-beat subtraction
(rhythm = residual + section 5 beat at the QRS positions of section 4), leads with different
sample ranges. Known writer quirk, kept with a note: section 6 stores each lead's byte count in
16 bits, so a long raw lead (more than 32767 samples) is cut at 65534 bytes by some writers
(Contec ECG90A); the samples present are read. Any other shortfall is an error.
"""

from __future__ import annotations

import binascii
import struct

import numpy as np

from ecgembed.errors import ECGError
from ecgembed.sources.formats.base import Decoded, Limits, check_fs, check_size, samples_to_keep

NAME = "scp"
EXTENSIONS = (".scp",)

DEFAULT_HUFFMAN = 19999
# SCP-ECG lead ids (section 3), also used by DICOM's SCPECG / MDC lead codes.
LEAD_NAMES = {1: "I", 2: "II", 3: "V1", 4: "V2", 5: "V3", 6: "V4", 7: "V5", 8: "V6", 9: "V7", 10: "V2R",
              11: "V3R", 12: "V4R", 13: "V5R", 14: "V6R", 15: "V7R", 16: "X", 17: "Y", 18: "Z", 19: "CC5",
              20: "CM5", 21: "LA", 22: "RA", 23: "LL", 61: "III", 62: "aVR", 63: "aVL", 64: "aVF",
              65: "-aVR", 66: "V8", 67: "V9", 68: "V8R", 69: "V9R"}
_SEX = {0: "unknown", 1: "male", 2: "female", 9: "unspecified"}
_AGE_UNITS = {1: "years", 2: "months", 3: "weeks", 4: "days", 5: "hours"}


def sniff(head: bytes) -> bool:
    """File length field plausible, and section 0 starts at byte 6 with id 0 and 'SCPECG'."""
    if len(head) < 22:
        return False
    length = struct.unpack_from("<I", head, 2)[0]
    section_id = struct.unpack_from("<H", head, 8)[0]
    return length >= 22 and section_id == 0 and head[16:22] == b"SCPECG"


def companions(primary: bytes, name: str) -> list[str]:
    return []


def decode(name: str, files: dict[str, bytes], limits: Limits) -> Decoded:
    data = memoryview(files[name])                 # slices below are views, not copies
    sections = _sections(data, name)
    for required in (3, 6):
        if required not in sections:
            raise ECGError(name, "missing_leads" if required == 3 else "empty_signal",
                           f"SCP-ECG section {required} is absent")
    huffman = _huffman(sections.get(2), name)
    lead_ids, n_declared, flags = _leads(sections[3], name)
    if flags & 0x01:
        raise ECGError(name, "unsupported_format", "reference-beat subtraction (section 3 flag) is not decoded")
    avm_nv, interval_us, order, bimodal, byte_counts, payload = _rhythm_header(sections[6], len(lead_ids), name)
    if bimodal:
        raise ECGError(name, "unsupported_format", "bimodal compression (section 6) is not decoded")
    if order not in (0, 1, 2):
        raise ECGError(name, "unsupported_format", f"difference encoding {order} (0, 1 and 2 are defined)")
    if interval_us <= 0 or avm_nv <= 0:
        raise ECGError(name, "bad_header", f"section 6: sample interval {interval_us} us, amplitude unit {avm_nv} nV")
    fs = check_fs(1e6 / interval_us, limits, name)
    check_size(len(lead_ids), n_declared, limits, name)

    notes: list[str] = []
    rows, offset = [], 0
    for lead, count in zip(lead_ids, byte_counts):   # leads are stored one after another
        chunk = payload[offset:offset + count]
        if len(chunk) < count:
            raise ECGError(name, "truncated", f"section 6 ends inside lead {_lead_label(lead)} "
                                              f"({len(chunk)} of {count} bytes)")
        offset += count
        if huffman:
            values = _huffman_default(chunk, n_declared, lead, name)
        else:
            values = np.frombuffer(chunk[: len(chunk) // 2 * 2], "<i2")
            if len(values) < n_declared:
                if count < 65534:
                    raise ECGError(name, "truncated", f"lead {_lead_label(lead)} holds {len(values)} samples, "
                                                      f"section 3 declares {n_declared}")
                if not notes:
                    notes.append(f"section 6 caps each lead at {count} bytes (16-bit byte count): "
                                 f"{len(values)} of the {n_declared} declared samples are present")
            values = values[:n_declared]
        rows.append(_undo_differences(values, order))
    n_samples = min(len(r) for r in rows)
    n_keep, cut = samples_to_keep(n_samples, fs, limits)
    signal = np.empty((len(rows), n_keep))                      # (n_leads, n_samples)
    for i, row in enumerate(rows):
        signal[i] = row[:n_keep]
    signal *= avm_nv * 1e-6                                     # nV per count -> mV
    return Decoded(leads=[_lead_label(i) for i in lead_ids], signal=signal, fs=fs, units=["nV"] * len(lead_ids),
                   notes=notes + cut, metadata=_metadata(sections.get(1)))


# --------------------------------------------------------------------------- container
def _crc(data) -> int:
    return binascii.crc_hqx(data, 0xFFFF)        # CRC-CCITT, polynomial 0x1021, initial 0xFFFF


def _sections(data: memoryview, uri: str) -> dict[int, memoryview]:
    """Section id -> its bytes after the 16-byte header, with the file and section CRCs checked."""
    if len(data) < 6 + 16:
        raise ECGError(uri, "truncated", f"{len(data)} bytes: shorter than an SCP-ECG header")
    stored_crc, length = struct.unpack_from("<HI", data, 0)
    if length != len(data):
        kind = "truncated" if length > len(data) else "corrupt"
        raise ECGError(uri, kind, f"the file holds {len(data)} bytes, its header declares {length}")
    if _crc(data[2:]) != stored_crc:
        raise ECGError(uri, "corrupt", f"file CRC mismatch (stored {stored_crc:#06x}, computed {_crc(data[2:]):#06x})")
    zero = _section_at(data, 6, 0, uri)
    out = {0: zero}
    for pos in range(0, len(zero) - 9, 10):
        section_id, sec_len, index = struct.unpack_from("<HII", zero, pos)
        if sec_len == 0 or section_id == 0:
            continue
        if index < 1 or index - 1 + sec_len > len(data):
            raise ECGError(uri, "truncated", f"section {section_id} at byte {index} with {sec_len} bytes "
                                             f"lies beyond the {len(data)}-byte file")
        out[section_id] = _section_at(data, index - 1, section_id, uri)
    return out


def _section_at(data: memoryview, start: int, expected_id: int, uri: str) -> memoryview:
    crc, section_id, length = struct.unpack_from("<HHI", data, start)
    if section_id != expected_id or length < 16 or start + length > len(data):
        raise ECGError(uri, "corrupt", f"section header at byte {start}: id {section_id}, length {length} "
                                       f"(expected section {expected_id})")
    if _crc(data[start + 2:start + length]) != crc:
        raise ECGError(uri, "corrupt", f"section {section_id} CRC mismatch")
    return data[start + 16:start + length]


def _huffman(section: memoryview | None, uri: str) -> bool:
    """True for the default table, False without section 2; custom tables are refused."""
    if section is None:
        return False
    if len(section) < 2:
        raise ECGError(uri, "corrupt", "section 2 is too short to hold its table count")
    n_tables = struct.unpack_from("<H", section, 0)[0]
    if n_tables != DEFAULT_HUFFMAN:
        raise ECGError(uri, "unsupported_format", f"custom Huffman tables ({n_tables} in section 2); only the "
                                                  "standard's default table (19999) is decoded")
    return True


def _leads(section: memoryview, uri: str) -> tuple[list[int], int, int]:
    if len(section) < 2:
        raise ECGError(uri, "corrupt", "section 3 is too short")
    n_leads, flags = section[0], section[1]
    if n_leads == 0 or len(section) < 2 + 9 * n_leads:
        raise ECGError(uri, "missing_leads" if n_leads == 0 else "truncated",
                       f"section 3 declares {n_leads} leads in {len(section)} bytes")
    ids, ranges = [], set()
    for i in range(n_leads):
        start, end, lead = struct.unpack_from("<IIB", section, 2 + 9 * i)
        ids.append(lead)
        ranges.add((start, end))
    if len(ranges) != 1:
        raise ECGError(uri, "unsupported_format", f"leads cover different sample ranges {sorted(ranges)[:3]}...")
    start, end = ranges.pop()
    if end < start:
        raise ECGError(uri, "bad_header", f"section 3 sample range {start}..{end}")
    return ids, end - start + 1, flags


def _rhythm_header(section: memoryview, n_leads: int, uri: str):
    if len(section) < 6 + 2 * n_leads:
        raise ECGError(uri, "truncated", f"section 6 is too short for the byte counts of {n_leads} leads")
    avm, interval, order, bimodal = struct.unpack_from("<HHBB", section, 0)
    counts = list(struct.unpack_from(f"<{n_leads}H", section, 6))
    return avm, interval, order, bimodal, counts, section[6 + 2 * n_leads:]


# --------------------------------------------------------------------------- samples
def _huffman_default(chunk: memoryview, n_samples: int, lead: int, uri: str) -> np.ndarray:
    """Decode the default table: 0 -> 0; k ones, 0, sign -> +-k (k = 1..8); 9 ones, 0, 8-bit value;
    10 ones, 16-bit value. Code starts are found by a pointer walk over precomputed lengths."""
    bits = np.unpackbits(np.frombuffer(chunk, np.uint8))
    n_bits = len(bits)
    padded = np.concatenate([bits, np.zeros(26, np.uint8)])
    position = np.arange(len(padded))
    next_zero = np.minimum.accumulate(np.where(padded == 0, position, len(padded))[::-1])[::-1]
    ones = np.minimum(next_zero[:n_bits] - position[:n_bits], 10)   # run of ones at each bit, capped
    length = np.where(ones == 0, 1, np.where(ones <= 8, ones + 2, np.where(ones == 9, 18, 26)))
    starts = _walk(length.tolist(), n_samples)
    if len(starts) < n_samples:
        raise ECGError(uri, "truncated", f"lead {_lead_label(lead)}: Huffman data hold {len(starts)} samples, "
                                         f"section 3 declares {n_samples}")
    starts = np.asarray(starts, np.int64)
    k = ones[starts]
    if int(starts[-1] + length[starts[-1]]) > n_bits:
        raise ECGError(uri, "truncated", f"lead {_lead_label(lead)}: the last Huffman code is cut off")
    sign = padded[starts + k + 1]
    values = np.where(sign == 1, -k, k)
    values[k == 0] = 0
    for kind, width in ((9, 8), (10, 16)):
        where = np.flatnonzero(k == kind)
        if len(where):
            idx = (starts[where] + 10)[:, None] + np.arange(width)   # after 9 ones + 0, or 10 ones
            word = padded[idx].astype(np.int64) @ (1 << np.arange(width - 1, -1, -1)).astype(np.int64)
            values[where] = np.where(word >= 1 << (width - 1), word - (1 << width), word)
    return values.astype(np.int64)


def _walk(length: list[int], n_samples: int) -> list[int]:
    """Start bit of each of the first ``n_samples`` codes (fewer when the bits run out first).
    The one sequential step of the decode: each code's start depends on the previous code."""
    starts, position = [0] * n_samples, 0
    try:
        for i in range(n_samples):
            starts[i] = position
            position += length[position]
    except IndexError:                     # position is past the lead's last bit
        return starts[:i]
    return starts


def _undo_differences(d: np.ndarray, order: int) -> np.ndarray:
    if order == 0 or len(d) == 0:
        return d
    if order == 1:
        return np.cumsum(d)
    x = d.copy()                                                # x[n] = d[n] + 2x[n-1] - x[n-2], n >= 2
    if len(d) > 2:
        step = np.empty(len(d) - 1, np.int64)
        step[0] = d[1] - d[0]
        step[1:] = step[0] + np.cumsum(d[2:])
        x[1:] = d[0] + np.cumsum(step)
    return x


def _lead_label(lead_id: int) -> str:
    return LEAD_NAMES.get(lead_id, f"SCP lead {lead_id}")


# --------------------------------------------------------------------------- section 1
def _metadata(section: memoryview | None) -> dict[str, str]:
    """PHI-capable fields under the fixed keys (written only when the user opts in)."""
    if not section:
        return {}
    section = bytes(section)
    tags, pos = {}, 0
    while pos + 3 <= len(section):
        tag, size = section[pos], struct.unpack_from("<H", section, pos + 1)[0]
        if tag == 255:
            break
        tags.setdefault(tag, section[pos + 3:pos + 3 + size])
        pos += 3 + size

    def text(tag: int) -> str:
        return tags.get(tag, b"").split(b"\0", 1)[0].decode("latin-1").strip()

    out: dict[str, str] = {}
    name = " ".join(v for v in (text(1), text(0)) if v)
    if name:
        out["patient_name"] = name
    if text(2):
        out["patient_id"] = text(2)
    if len(tags.get(4, b"")) >= 3:
        age, unit = struct.unpack_from("<HB", tags[4])
        out["age"] = f"{age} {_AGE_UNITS.get(unit, '')}".strip()
    if len(tags.get(5, b"")) >= 4:
        year, month, day = struct.unpack_from("<HBB", tags[5])
        out["birth_date"] = f"{year:04d}-{month:02d}-{day:02d}"
    if len(tags.get(8, b"")) >= 1:
        out["sex"] = _SEX.get(tags[8][0], str(tags[8][0]))
    if len(tags.get(25, b"")) >= 4:
        year, month, day = struct.unpack_from("<HBB", tags[25])
        when = f"{year:04d}-{month:02d}-{day:02d}"
        if len(tags.get(26, b"")) >= 3:
            when += "T{:02d}:{:02d}:{:02d}".format(*tags[26][:3])
        out["acquisition_time"] = when
    if len(tags.get(14, b"")) >= 14:
        model = tags[14][8:14].split(b"\0", 1)[0].decode("latin-1").strip()
        if model:
            out["device"] = model
    site = ", ".join(v for v in (text(16), text(18)) if v)
    if site:
        out["site"] = site
    return out
