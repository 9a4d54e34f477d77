"""Fetch a record's bytes (one GET per file) and decode them, whatever the storage.

``read_record(uri)`` is the notebook entry point; the pipeline calls :func:`fetch_raw` and
:func:`decode_raw` separately so fetching can overlap across many records.
"""

from __future__ import annotations

import os

from ecgembed import storage
from ecgembed.errors import ECGError
from ecgembed.sources.formats import wfdb
from ecgembed.sources.record import RawRecord, Record, parse_comments, to_mv

HEADER_SUFFIXES = (".hea",)


def header_uri(uri: str) -> str:
    """A WFDB record may be named with or without ``.hea``."""
    uri = os.fspath(uri)
    return uri if uri.lower().endswith(HEADER_SUFFIXES) else uri + ".hea"


def _stem(uri: str) -> str:
    name = storage.basename(uri)
    return name[: -len(".hea")] if name.lower().endswith(".hea") else name


def fetch_raw(uri: str, record_id: str | None = None) -> RawRecord:
    """The header and every signal file it names, one GET each; raises the :class:`ECGError` that stops it."""
    result = fetch_many([(uri, record_id or _stem(header_uri(uri)))])[0]
    if isinstance(result, ECGError):
        raise result
    return result


def fetch_many(refs: list[tuple[str, str]]) -> list[RawRecord | ECGError]:
    """Fetch many records with every request of a round in flight at once.

    ``refs`` are ``(header_uri, record_id)`` pairs. Round 1 GETs all headers concurrently,
    round 2 all the signal files they name. Each result is the record's bytes or the
    :class:`ECGError` that stops it, in input order; one bad record never sinks the batch.
    """
    headers = storage.read_many([header_uri(uri) for uri, _ in refs])
    parsed: list[tuple[str, str, bytes, wfdb.Header] | ECGError] = []
    for uri, record_id in refs:
        hea = header_uri(uri)
        value = headers[hea]
        if isinstance(value, FileNotFoundError):
            parsed.append(ECGError(hea, "missing_file", "header file does not exist"))
        elif isinstance(value, Exception):
            parsed.append(ECGError(hea, "fetch_failed", f"could not fetch the header ({type(value).__name__}: {value})"))
        else:
            try:
                parsed.append((hea, record_id, value, wfdb.parse_header(value, hea)))
            except ECGError as err:
                parsed.append(err)
    wanted = [storage.join(storage.parent(p[0]), name) for p in parsed if not isinstance(p, ECGError)
              for name in p[3].file_names]
    files = storage.read_many(wanted)
    out: list[RawRecord | ECGError] = []
    for item in parsed:
        if isinstance(item, ECGError):
            out.append(item)
            continue
        hea, record_id, header_bytes, header = item
        folder, got, failed = storage.parent(hea), {}, None
        for name in header.file_names:
            uri = storage.join(folder, name)
            value = files[uri]
            if isinstance(value, FileNotFoundError):
                continue  # decode reports the missing file by name
            if isinstance(value, Exception):
                failed = ECGError(uri, "fetch_failed", f"could not fetch ({type(value).__name__}: {value})")
                break
            got[name] = value
        out.append(failed or RawRecord(record_id, hea, header_bytes, got, header))
    return out


def decode_raw(raw: RawRecord) -> Record:
    """Decode fetched bytes into a :class:`Record` (float32, mV)."""
    header = raw.parsed if isinstance(raw.parsed, wfdb.Header) else wfdb.parse_header(raw.header, raw.uri)
    folder = storage.parent(raw.uri)
    decoded = wfdb.decode(header, raw.files, lambda name: storage.join(folder, name))
    units = [s.units for s in header.signals]
    return Record(
        record_id=raw.record_id, uri=raw.uri, fs=header.fs, sig_name=[s.name for s in header.signals],
        units=units, signal=to_mv(decoded.signal, units), metadata=parse_comments(header.comments),
        comments=list(header.comments), format="wfdb",
    )


def read_record(uri: str, record_id: str | None = None) -> Record:
    """Read one record from a local path, ``file://``, ``s3://``, ``gs://`` or ``http(s)://`` URI.

    For WFDB the URI names the header, with or without ``.hea``. Returns the record id (the
    header's stem unless given), sampling rate, channel names and units as stored, header
    comments (``metadata`` holds the ``key: value`` ones such as Age, Sex, Dx), and the physical
    signal in mV as float32 (channels x samples). Problems raise :class:`ECGError` naming the
    file and the problem.
    """
    uri = os.fspath(uri)
    suffix = os.path.splitext(storage.basename(uri))[1].lower()
    if suffix not in ("", ".hea") and suffix[1:].isalpha():
        raise ECGError(uri, "not_ecg", f"no reader for {suffix!r} files (supported: WFDB records, a .hea header "
                                       "plus the signal files it names)")
    return decode_raw(fetch_raw(uri, record_id))
