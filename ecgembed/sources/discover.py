"""Find the records under an input URI: a folder/prefix listing or a manifest CSV.

A record is one WFDB header; its signal files are whatever the header names (read when the
record is fetched, so signal files named differently from the header work). Everything that
is not a header is ignored by discovery (label tables, README, ``.xyz`` files...).

``record_id`` is the header's path relative to the input root without ``.hea`` (stable across
runs: ``files/p1000/p10000032/s40689238/40689238`` for MIMIC-IV-ECG). ``fingerprint`` is a
cheap digest of the listing (sizes and ETags or mtimes of the header and of the files beside
it that share its stem); it changes when those files are re-uploaded, without reading any
bytes. The exact ``content_sha256`` is computed from the bytes when the record is read.

A manifest is a CSV with one column of record paths, relative to the CSV's folder or absolute
URIs, with or without ``.hea``: MIMIC-IV-ECG's ``record_list.csv`` (column ``path``) and PTB-XL's
``ptbxl_database.csv`` (``filename_hr``) work as they are. The column is chosen from
:data:`MANIFEST_COLUMNS` unless named explicitly. The CSV's folder is listed once to
fingerprint the records it names (entries given as absolute URIs get no fingerprint).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import posixpath
from dataclasses import dataclass

from ecgembed import storage
from ecgembed.errors import ConfigError

MANIFEST_COLUMNS = ("path", "record_path", "filename_hr", "filename_lr", "record", "filename", "file")


@dataclass(frozen=True)
class RecordRef:
    record_id: str
    uri: str              # the header's URI
    input_root: str       # the input this record was found under
    fingerprint: str      # digest of the listing entries of the record's files ("" if not listed)


def discover(input_uri: str, manifest_column: str | None = None) -> list[RecordRef]:
    """Every record under ``input_uri`` (folder, prefix, single header, or ``*.csv`` manifest), sorted by id."""
    lowered = input_uri.lower()
    if lowered.endswith(".csv"):
        return _from_manifest(input_uri, manifest_column)
    if lowered.endswith(".hea"):
        root = storage.parent(input_uri)
        return [RecordRef(_stem(input_uri), input_uri, root, "")]
    return _from_listing(input_uri)


def _stem(uri: str) -> str:
    name = storage.basename(uri)
    return name[:-4] if name.lower().endswith(".hea") else name


def _index(root: str) -> tuple[dict[tuple[str, str], list[tuple[str, dict]]], list[str]]:
    """List ``root`` once: files grouped by (folder, stem) relative to the root, and the headers."""
    protocol, root_path = storage.split(root)
    fs = storage.filesystem(protocol)
    fs.invalidate_cache()
    try:
        entries = fs.find(root_path, detail=True)
    except FileNotFoundError:
        raise ConfigError(f"input {root!r} does not exist") from None
    if not entries and not fs.exists(root_path):
        raise ConfigError(f"input {root!r} does not exist")
    by_stem: dict[tuple[str, str], list[tuple[str, dict]]] = {}
    headers: list[str] = []
    for path, info in entries.items():
        if info.get("type", "file") != "file":
            continue
        rel = posixpath.relpath(path, root_path) if protocol != "file" else _local_rel(path, root_path)
        if any(part.startswith(".") for part in rel.split("/")):
            continue  # hidden files and folders (.ready markers, .ipynb_checkpoints...)
        folder, name = posixpath.split(rel)
        by_stem.setdefault((folder, name.split(".", 1)[0]), []).append((name, info))
        if name.lower().endswith(".hea"):
            headers.append(rel)
    return by_stem, headers


def _fingerprint_of(by_stem, rel_record: str) -> str:
    folder, name = posixpath.split(rel_record)
    siblings = by_stem.get((folder, name.split(".", 1)[0]))
    return _fingerprint(siblings) if siblings else ""


def _from_listing(root: str) -> list[RecordRef]:
    protocol, root_path = storage.split(root)
    by_stem, headers = _index(root)
    refs = [RecordRef(rel[:-4], storage.unsplit(protocol, _join(root_path, rel, protocol)), root,
                      _fingerprint_of(by_stem, rel[:-4])) for rel in headers]
    return sorted(refs, key=lambda r: r.record_id)


def _local_rel(path: str, root: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def _join(root_path: str, rel: str, protocol: str) -> str:
    if protocol == "file":
        return os.path.join(root_path, *rel.split("/"))
    return f"{root_path.rstrip('/')}/{rel}"


def _fingerprint(siblings: list[tuple[str, dict]]) -> str:
    parts = []
    for name, info in sorted(siblings, key=lambda s: s[0]):
        version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
        parts.append(f"{name}\t{info.get('size')}\t{version}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _from_manifest(csv_uri: str, column: str | None) -> list[RecordRef]:
    try:
        text = storage.read_bytes(csv_uri).decode("utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"manifest {csv_uri!r} does not exist") from None
    reader = csv.DictReader(io.StringIO(text))
    fields = reader.fieldnames or []
    if column is None:
        column = next((c for c in MANIFEST_COLUMNS if c in fields), None)
        if column is None and len(fields) == 1:
            column = fields[0]
    if column is None or column not in fields:
        raise ConfigError(f"manifest {csv_uri!r}: no record-path column (looked for {column or ', '.join(MANIFEST_COLUMNS)}; "
                          f"columns are {', '.join(fields) or 'none'})")
    root = storage.parent(csv_uri)
    by_stem, _ = _index(root)   # one listing gives every record's fingerprint
    refs: dict[str, RecordRef] = {}
    for line, row in enumerate(reader, start=2):
        value = (row.get(column) or "").strip()
        if not value:
            raise ConfigError(f"manifest {csv_uri!r} line {line}: empty {column!r}")
        rel = value[:-4] if value.lower().endswith(".hea") else value
        if "://" in rel:
            uri, record_id, fingerprint = rel + ".hea", rel.split("://", 1)[1], ""
        else:
            rel = rel.lstrip("/")
            uri, record_id = storage.join(root, rel + ".hea"), rel
            fingerprint = _fingerprint_of(by_stem, rel)
        refs.setdefault(record_id, RecordRef(record_id, uri, root, fingerprint))
    return sorted(refs.values(), key=lambda r: r.record_id)
