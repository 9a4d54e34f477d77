"""Fetch a record's bytes and decode them, whatever the storage and the format.

``read_record(uri)`` is the notebook entry point; the pipeline calls :func:`fetch_many` and
:func:`decode_raw` separately so fetching overlaps across many records.

Fetching is in rounds, each with every request of every record in flight at once: round 1 the
primary files (a WFDB header, a MUSE XML...), then the companion files the format asks for
(WFDB signal files; for multi-segment records the segment headers, then their signal files).
The format is told by the primary file's first bytes (:func:`ecgembed.sources.formats.sniff`);
a file no format recognises is ``not_ecg``, except that a file whose extension names exactly one
format (``.hea``) is handed to that format, so a broken header says what is wrong with it.

Safety: every read is bounded (``Limits.max_object_bytes``, or the prefix a format needs); only
regular files are read; a companion name must be a bare file name in the primary's folder
(``unsafe_path`` otherwise). Every foreseeable failure is an :class:`ECGError`; an unexpected
exception inside a format's code becomes ``internal_error`` naming the exception type and place.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from ecgembed import storage
from ecgembed.errors import ConfigError, ECGError
from ecgembed.sources import formats
from ecgembed.sources.discover import RecordRef, record_id_for
from ecgembed.sources.formats import zip as archives
from ecgembed.sources.formats.base import SNIFF_BYTES, Limits, check_fs
from ecgembed.sources.record import RawRecord, Record

MAX_ROUNDS = 4        # primary + up to three companion rounds (multi-segment WFDB needs two)


# --------------------------------------------------------------------------- naming
def resolve(uri: str, check_exists: bool = True) -> tuple[str, str]:
    """``(primary URI, format hint)`` of a record named by ``uri``.

    A URI whose extension some format claims is the primary file (hint: the format, when only
    one claims it). Otherwise, if it does not exist and a format names records without a suffix
    (WFDB: ``rec`` for ``rec.hea``), that suffix is added. Else it is a file to sniff (hint "").
    """
    uri = os.fspath(uri)
    name = archives.split_member(uri)[1] if archives.split_member(uri) else storage.basename(uri)
    ext = os.path.splitext(name)[1].lower()
    claimed = formats.claiming(ext) if ext else ()
    if claimed:
        return uri, claimed[0].NAME if len(claimed) == 1 else ""
    if check_exists and archives.split_member(uri) is None and storage.exists(uri) and not storage.isdir(uri):
        return uri, ""
    for fmt in formats.FORMATS:
        suffix = getattr(fmt, "RECORD_NAME_SUFFIX", None)
        if suffix:
            return storage.with_suffix(uri, suffix), fmt.NAME
    return uri, ""


def header_uri(uri: str) -> str:
    """The primary file of a record named with or without its suffix (``rec`` -> ``rec.hea``).

    Kept for callers of version 1; no existence check (a record named without suffix is WFDB).
    """
    return resolve(uri, check_exists=False)[0]


def _as_ref(item) -> RecordRef:
    if isinstance(item, RecordRef):
        return item
    uri, record_id = item       # version 1: (URI, record id) pairs; an extension-less name is looked up
    primary, hint = resolve(uri)
    return RecordRef(record_id, primary, storage.parent(primary), "", hint)


# --------------------------------------------------------------------------- fetching
@dataclass
class _Pending:
    ref: RecordRef
    name: str                                  # bare name of the primary
    files: dict[str, bytes] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)
    fmt: ModuleType | None = None
    error: ECGError | None = None


def _uri_of(ref_uri: str, name: str) -> str:
    """The URI of a companion ``name`` beside the primary file (bare names only)."""
    if not storage.is_bare_name(name):
        raise ECGError(storage.redact(ref_uri), "unsafe_path", f"companion file name {name[:60]!r} is not a bare "
                                                               "file name in the record's folder")
    if archives.split_member(ref_uri):
        return archives.sibling(ref_uri, name)
    return storage.child(storage.parent(ref_uri), name)


def _to_error(uri: str, value: Exception, what: str) -> ECGError:
    shown = storage.redact(uri)
    if isinstance(value, ECGError):
        return value
    if isinstance(value, FileNotFoundError):
        return ECGError(shown, "missing_file", f"{what} does not exist")
    if isinstance(value, storage.ObjectTooLarge):
        return ECGError(shown, "too_large", f"{what} is larger than the limit of {value.limit / 2**20:g} MiB "
                                            "(--max-object-mb)")
    if isinstance(value, storage.NotARegularFile):
        return ECGError(shown, "unsafe_path", f"{what} is a {value.kind}, not a regular file")
    if isinstance(value, (IsADirectoryError, NotADirectoryError)):
        return ECGError(shown, "unsafe_path", f"{what} is not a regular file")
    if isinstance(value, ConfigError):     # an unsupported URI scheme
        return ECGError(shown, "unsafe_path", f"{what}: {value}")
    return ECGError(shown, "fetch_failed", f"could not fetch the {what} ({type(value).__name__})")


def _read_batch(wanted: dict[str, int | None], whole: dict[str, bool], limits: Limits,
                archive_reader: archives.ArchiveReader) -> dict[str, bytes | Exception]:
    """Read plain URIs concurrently and archive members through the archive reader."""
    plain = [u for u in wanted if archives.split_member(u) is None]
    prefix = {u: wanted[u] for u in plain if not whole[u] and wanted[u] is not None}
    out = storage.read_many(plain, max_bytes=limits.max_object_bytes, prefix=prefix)
    for uri in wanted:
        if archives.split_member(uri) is None:
            continue
        cap = wanted[uri] if not whole[uri] else limits.max_object_bytes
        try:
            out[uri] = archive_reader.read(uri, cap, whole[uri])
        except (OSError, ECGError) as exc:
            out[uri] = exc
    return out


def fetch_many(refs: list[RecordRef], limits: Limits = Limits()) -> list[RawRecord | ECGError]:
    """Fetch many records with every request of a round in flight at once.

    ``refs`` are :class:`RecordRef` (version-1 ``(uri, record_id)`` pairs are accepted too). Each
    result is the record's bytes or the :class:`ECGError` that stops it, in input order; one bad
    record never sinks the batch.
    """
    pending = []
    for item in refs:
        ref = _as_ref(item)
        member = archives.split_member(ref.uri)
        pending.append(_Pending(ref, os.path.basename(member[1]) if member else storage.basename(ref.uri)))
    archive_reader = archives.ArchiveReader()
    try:
        got = _read_batch({p.ref.uri: None for p in pending}, {p.ref.uri: True for p in pending}, limits,
                          archive_reader)
        for p in pending:
            value = got[p.ref.uri]
            if isinstance(value, Exception):
                p.error = _to_error(p.ref.uri, value, "record file")
                continue
            p.files[p.name] = value
            p.fmt = _format_of(p, value)
        for _ in range(MAX_ROUNDS - 1):
            wanted: dict[str, int | None] = {}
            whole: dict[str, bool] = {}
            asks: dict[int, dict[str, str]] = {}
            for i, p in enumerate(pending):
                if p.error is not None or p.fmt is None:
                    continue
                try:
                    names = {name: (_uri_of(p.ref.uri, name), cap) for name, cap in _companion_plan(p, limits).items()}
                except ECGError as err:
                    p.error = _located(err, p.ref.uri)
                    continue
                asks[i] = {}
                for name, (uri, cap) in names.items():
                    asks[i][name] = uri
                    wanted[uri] = cap if uri not in wanted else _larger(wanted[uri], cap)
                    whole[uri] = wanted[uri] is None
            if not wanted:
                break
            got = _read_batch(wanted, whole, limits, archive_reader)
            for i, names in asks.items():
                p = pending[i]
                for name, uri in names.items():
                    value = got[uri]
                    if isinstance(value, FileNotFoundError):
                        p.missing.add(name)     # the decoder reports the missing file by name
                    elif isinstance(value, Exception):
                        p.error = _to_error(uri, value, f"file {name!r}")
                        break
                    else:
                        p.files[name] = value
    finally:
        archive_reader.close()
    out: list[RawRecord | ECGError] = []
    for p in pending:
        if p.error is not None:
            out.append(p.error)
        else:
            out.append(RawRecord(p.ref.record_id, storage.redact(p.ref.uri), p.fmt.NAME, p.name, p.files))
    return out


def _larger(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else max(a, b)


def _format_of(p: _Pending, primary: bytes) -> ModuleType | None:
    try:
        fmt = formats.sniff(primary[:SNIFF_BYTES])
    except formats.SniffError as exc:
        p.error = ECGError(storage.redact(p.ref.uri), "internal_error", f"{exc} (a bug: please report it)")
        return None
    if fmt is None and p.ref.format:
        try:
            fmt = formats.by_name(p.ref.format)
        except KeyError:
            fmt = None
    if fmt is None:
        ext = os.path.splitext(p.name)[1].lower() or "(none)"
        p.error = ECGError(storage.redact(p.ref.uri), "not_ecg",
                           f"no format recognises this file (extension {ext!r}; formats read: "
                           f"{', '.join(f.NAME for f in formats.FORMATS)})")
    return fmt


def _companion_plan(p: _Pending, limits: Limits) -> dict[str, int | None]:
    """Names still to fetch for ``p`` (bare names -> byte cap or None), within the file limit."""
    fmt = p.fmt
    try:
        if hasattr(fmt, "plan"):
            planned = fmt.plan(p.name, p.files, limits)
        elif len(p.files) == 1:
            planned = {name: None for name in fmt.companions(p.files[p.name], p.name)}
        else:
            planned = {}
    except ECGError:
        raise
    except Exception as exc:  # a bug in a format's code: an error row, not a dead run
        raise _internal(exc, fmt.NAME) from None
    if len(set(planned) | set(p.files) | p.missing) - 1 > limits.max_signal_files:
        raise ECGError(p.name, "too_large", f"the record needs {len(set(planned) | set(p.files)) - 1} files, more "
                                            f"than the limit of {limits.max_signal_files} (--max-signal-files)")
    for name, cap in planned.items():
        if cap is not None and cap > limits.max_object_bytes + limits.size_margin_bytes + 1:
            raise ECGError(name, "too_large", f"the record needs {cap / 2**20:.1f} MiB of this file, more than the "
                                              f"limit of {limits.max_object_bytes / 2**20:g} MiB (--max-object-mb)")
    return {name: cap for name, cap in planned.items() if name not in p.files and name not in p.missing}


def _internal(exc: Exception, where: str) -> ECGError:
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    place = f" at {os.path.basename(frame.filename)}:{frame.lineno}" if frame else ""
    return ECGError(where, "internal_error", f"unexpected {type(exc).__name__}{place} in the {where} reader "
                                             "(a bug: please report it)")


def _located(err: ECGError, primary_uri: str) -> ECGError:
    """An error a format raised with a bare file name, re-raised with that file's redacted URI."""
    if "/" in err.uri or "://" in err.uri or not storage.is_bare_name(err.uri):
        return err
    try:
        uri = _uri_of(primary_uri, err.uri)
    except ECGError:
        uri = primary_uri
    return ECGError(storage.redact(uri), err.error_type, err.problem)


def fetch_raw(uri, record_id: str | None = None, limits: Limits = Limits()) -> RawRecord:
    """One record's bytes; raises the :class:`ECGError` that stops it."""
    ref = uri if isinstance(uri, RecordRef) else _ref_for(os.fspath(uri), record_id)
    result = fetch_many([ref], limits)[0]
    if isinstance(result, ECGError):
        raise result
    return result


def _ref_for(uri: str, record_id: str | None) -> RecordRef:
    primary, hint = resolve(uri)
    member = archives.split_member(primary)
    name = member[1] if member else storage.basename(primary)
    folder = archives.split_member(primary)[0] if member else storage.parent(primary)
    return RecordRef(record_id or record_id_for(os.path.basename(name), hint), primary, folder, "", hint)


# --------------------------------------------------------------------------- decoding
def decode_raw(raw: RawRecord, limits: Limits = Limits()) -> Record:
    """Decode fetched bytes into a :class:`Record` (float64; mV for voltage channels)."""
    fmt = formats.by_name(raw.format)
    try:
        decoded = fmt.decode(raw.name, raw.files, limits)
    except ECGError as err:
        raise _located(err, raw.uri) from None
    except Exception as exc:  # a bug in a format's code: an error row, not a dead run
        raise _located(_internal(exc, fmt.NAME), raw.uri) from None
    fs = check_fs(decoded.fs, limits, raw.uri)
    signal = decoded.signal
    if signal.dtype != np.float64:
        signal = signal.astype(np.float64)
    notes = list(decoded.notes)
    keep = int(limits.max_record_seconds * fs)
    if signal.shape[1] > keep:   # a format that did not cut: keep what the limit allows
        notes.append(f"truncated to the first {limits.max_record_seconds:g} s of {signal.shape[1] / fs:.1f} s "
                     "(--max-record-seconds)")
        signal = signal[:, :keep]
    if signal.shape[1] == 0:
        raise ECGError(raw.uri, "empty_signal", "the record has no samples")
    return Record(record_id=raw.record_id, uri=raw.uri, fs=fs, sig_name=list(decoded.leads), units=list(decoded.units),
                  signal=signal, metadata=dict(decoded.metadata), comments=list(decoded.comments), format=fmt.NAME,
                  notes=notes)


def read_record(uri, record_id: str | None = None, limits: Limits = Limits()) -> Record:
    """Read one record from a local path, ``file://``, ``s3://``, ``gs://`` or ``http(s)://`` URI.

    Any format ecgembed reads (told from the bytes); a WFDB record may be named with or without
    ``.hea``; a zip member as ``archive.zip!/member``. Returns the record id (the file name, or the
    header's stem for WFDB, unless given), sampling rate, channel names and units as stored, and
    the physical signal in mV as float64 (channels x samples); ``metadata`` holds patient fields
    under fixed keys (PHI: never log it). Problems raise :class:`ECGError` naming the file.
    """
    return decode_raw(fetch_raw(os.fspath(uri), record_id, limits), limits)
