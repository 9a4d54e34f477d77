"""Find the records under an input URI (a folder/prefix listing, one file, a zip, or a manifest CSV),
and account for every file that is not one.

**By content, cheaply.** One listing; no file is read except as follows:

- A file whose extension a format claims (``.hea``, ``.xml``, ``.dcm``...) is a candidate record;
  its exact format is told from its bytes when it is fetched (a file no format recognises then
  becomes an error row ``not_ecg``, never a crash).
- A record whose format names records by a header (WFDB) claims the files beside it with the
  same stem (``rec.dat``, ``rec.xyz``, ``rec.mat``): they are its companions, not records, unless
  their extension belongs to another format and is not one the header format uses for companions
  (``muse-sinus.xml`` beside ``muse-sinus.hea`` is a record of its own).
- A file without an extension, or with one no format claims, is sniffed: a ranged read of its
  first ``SNIFF_BYTES``, all such reads in flight at once. Well-known non-ECG extensions
  (:data:`NOT_ECG_EXTENSIONS`: ``.csv``, ``.pdf``, ``.txt``...) are not read at all.
- A ``.zip`` is listed from its central directory; each member is classified by the same rules
  and becomes the record ``archive.zip/member`` (see :mod:`ecgembed.sources.formats.zip`).
- Hidden files and folders (``.ready`` markers, ``.ipynb_checkpoints``) are skipped.

:class:`Discovery` reports records per format and the files skipped with their reason, e.g.
``unknown format: 12 files (.pdf 10, .txt 2)``.

``record_id`` is the primary file's path relative to the input root, without the header suffix
for WFDB (``files/p1000/p10000032/s40689238/40689238`` for MIMIC-IV-ECG, as in version 1) and
with its extension for single-file formats (``exports/ecg-0001.xml``), so the two never collide.

**Fingerprint** (cheap, from the listing only): a digest of the listing entries (name, size,
ETag or mtime) of every file the record may read. WFDB: the header, the files beside it that
share its stem, and every file in its folder that no record claims (a signal file named
differently from its header is then covered; a well-known non-ECG file is not). Single-file
formats: the file. Zip members: the archive's entry plus the member's CRC and size.

A manifest is a CSV with one column of record paths, relative to the CSV's folder or absolute
URIs: MIMIC-IV-ECG's ``record_list.csv`` (column ``path``) and PTB-XL's ``ptbxl_database.csv``
(``filename_hr``) work as they are. A path without a claimed extension is a WFDB record named
without ``.hea``. The CSV's folder is listed once to fingerprint the records it names.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import urllib.parse
import posixpath
from dataclasses import dataclass, field

from ecgembed import storage
from ecgembed.errors import ConfigError, ECGError
from ecgembed.sources import formats
from ecgembed.sources.formats import zip as archives
from ecgembed.sources.formats.base import SNIFF_BYTES

MANIFEST_COLUMNS = ("path", "record_path", "filename_hr", "filename_lr", "record", "filename", "file")
# Never ECG data: skipped without a read (a sniff would cost one GET each).
NOT_ECG_EXTENSIONS = frozenset((".csv", ".tsv", ".txt", ".md", ".rst", ".pdf", ".png", ".jpg", ".jpeg", ".gif",
                                ".svg", ".html", ".htm", ".json", ".yaml", ".yml", ".log", ".parquet", ".py",
                                ".ipynb", ".sh", ".doc", ".docx", ".xls", ".xlsx", ".ini", ".cfg", ".toml"))


@dataclass(frozen=True)
class RecordRef:
    record_id: str
    uri: str              # the primary file's URI (a zip member: ``archive.zip!/member``); not redacted
    input_root: str       # the input this record was found under
    fingerprint: str      # digest of the listing entries of the record's files ("" if not listed)
    format: str = ""      # the format when known before fetching (extension or sniff), else ""
    attributes: tuple[tuple[str, str], ...] = ()   # manifest columns asked for (--manifest-columns)


@dataclass
class Discovery:
    """What one input holds: records, and every other file with the reason it is not a record."""

    input_uri: str                                        # redacted
    refs: list[RecordRef] = field(default_factory=list)   # sorted by record_id
    by_format: dict[str, int] = field(default_factory=dict)   # format name, or the extension when
    #                                                          # only the bytes will tell ("?.xml")
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)  # reason -> {extension: files}
    companions: int = 0                                   # files claimed by a record (signal files)

    def __iter__(self):
        return iter(self.refs)

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i):
        return self.refs[i]

    def summary(self) -> str:
        """One line for the log: ``input X: 12 records (wfdb 10, ?.xml 2); 24 companion files;
        skipped: unknown format: 12 files (.pdf 10, .txt 2)``."""
        formats_part = ", ".join(f"{k} {v}" for k, v in sorted(self.by_format.items()))
        line = f"input {self.input_uri}: {len(self.refs)} records" + (f" ({formats_part})" if formats_part else "")
        if self.companions:
            line += f"; {self.companions} companion files"
        if self.skipped:
            parts = []
            for reason, exts in sorted(self.skipped.items()):
                n = sum(exts.values())
                detail = ", ".join(f"{e} {c}" for e, c in sorted(exts.items(), key=lambda kv: (-kv[1], kv[0])))
                parts.append(f"{reason}: {n} file{'s' if n != 1 else ''} ({detail})")
            line += "; skipped: " + "; ".join(parts)
        return line

    def as_dict(self) -> dict:
        """For the run manifest."""
        return {"input": self.input_uri, "records": len(self.refs), "by_format": dict(self.by_format),
                "companions": self.companions, "skipped": {k: dict(v) for k, v in self.skipped.items()}}


def record_id_for(rel: str, fmt_name: str) -> str:
    """The record id of a primary file at ``rel``: WFDB drops ``.hea``, other formats keep the name."""
    if fmt_name:
        suffix = getattr(formats.by_name(fmt_name), "RECORD_NAME_SUFFIX", None)
        if suffix and rel.lower().endswith(suffix):
            return rel[: -len(suffix)]
    return rel


def discover(input_uri: str, manifest_column: str | None = None, attributes: tuple[str, ...] = ()) -> Discovery:
    """Every record under ``input_uri`` (folder, prefix, one file, a ``.zip``, or a ``*.csv`` manifest).

    ``attributes``: manifest CSV columns to carry with each record (``RecordRef.attributes``);
    every one must exist in the manifest. Other inputs have no attributes.
    """
    input_uri = os.fspath(input_uri)
    lowered = input_uri.lower()
    if lowered.endswith(".csv"):
        return _from_manifest(input_uri, manifest_column, attributes)
    name = storage.basename(input_uri)
    ext = os.path.splitext(name)[1].lower()
    if archives.is_archive(name):
        return _single_archive(input_uri)
    if ext and formats.claiming(ext):
        fmt = _hint(ext)
        disc = Discovery(storage.redact(input_uri))
        disc.refs = [RecordRef(record_id_for(name, fmt), input_uri, storage.parent(input_uri), "", fmt)]
        disc.by_format = {fmt or "?" + ext: 1}
        return disc
    return _from_listing(input_uri)


# --------------------------------------------------------------------------- classification
@dataclass(frozen=True)
class _File:
    rel: str           # relative to the input root (for members: archive rel + "/" + member)
    uri: str           # to read it
    size: int
    version: str       # listing version (members: CRC)
    archive_fp: str = ""   # members: the archive's own listing entry


def _hint(ext: str) -> str:
    claimed = formats.claiming(ext)
    return claimed[0].NAME if len(claimed) == 1 else ""


def _ext(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def _entry_line(f: _File) -> str:
    return f"{posixpath.basename(f.rel)}\t{f.size}\t{f.version}\t{f.archive_fp}"


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()[:32]


def _skip(disc: Discovery, reason: str, name: str) -> None:
    exts = disc.skipped.setdefault(reason, {})
    ext = _ext(posixpath.basename(name)) or "(none)"
    exts[ext] = exts.get(ext, 0) + 1


def _classify(files: list[_File], root: str, disc: Discovery, readers: archives.ArchiveReader,
              in_archive: bool = False) -> dict[str, RecordRef]:
    """Records among ``files`` (one listing, or one archive's members), keyed by the primary's rel path."""
    header_formats = [f for f in formats.FORMATS if getattr(f, "RECORD_NAME_SUFFIX", None)]
    by_folder: dict[str, list[_File]] = {}
    for f in files:
        by_folder.setdefault(posixpath.dirname(f.rel), []).append(f)

    records: dict[str, tuple[_File, str]] = {}           # rel -> (file, format hint)
    nested: dict[str, RecordRef] = {}                    # records inside archives
    to_sniff: list[_File] = []
    fingerprints: dict[str, str] = {}
    for members in by_folder.values():
        headers: dict[str, tuple[_File, object]] = {}    # stem -> (header file, its format)
        for f in members:
            for fmt in header_formats:
                if f.rel.lower().endswith(fmt.RECORD_NAME_SUFFIX):
                    headers[posixpath.basename(f.rel)[: -len(fmt.RECORD_NAME_SUFFIX)]] = (f, fmt)
        header_rels = {f.rel: fmt for f, fmt in headers.values()}
        claimed: dict[str, list[_File]] = {stem: [] for stem in headers}
        owners = _sidecar_owners(members, headers)       # single-file records with optional sidecars
        sidecars: dict[str, tuple[_File, list[_File]]] = {}     # record rel -> (record, its sidecars)
        unclaimed: list[_File] = []
        for f in members:
            name = posixpath.basename(f.rel)
            ext = _ext(name)
            stem = name[: -len(ext)] if ext else name
            if f.rel in header_rels:
                records[f.rel] = (f, header_rels[f.rel].NAME)
                continue
            owner = owners.get(stem)
            if owner is not None and owner[0] is not f and ext in owner[1].COMPANION_EXTENSIONS:
                sidecars.setdefault(owner[0].rel, (owner[0], []))[1].append(f)
                disc.companions += 1
                continue
            if stem in headers:
                header_fmt = headers[stem][1]
                other_claims = [c for c in formats.claiming(ext) if c is not header_fmt]
                if not other_claims or ext in getattr(header_fmt, "COMPANION_EXTENSIONS", ()):
                    claimed[stem].append(f)
                    disc.companions += 1
                    continue
            if archives.is_archive(name):
                if in_archive:
                    _skip(disc, "nested archive", name)
                else:
                    nested.update(_archive_records(f, root, disc, readers))
            elif ext and formats.claiming(ext):
                records[f.rel] = (f, _hint(ext))
            elif ext in NOT_ECG_EXTENSIONS:
                _skip(disc, "unknown format", name)          # not part of any fingerprint
            else:
                to_sniff.append(f)
                unclaimed.append(f)
        folder_lines = [_entry_line(f) for f in unclaimed]
        for stem, (header, _) in headers.items():
            fingerprints[header.rel] = _digest([_entry_line(header)] + [_entry_line(c) for c in claimed[stem]]
                                               + folder_lines)
        for rel, (record, extra) in sidecars.items():
            fingerprints[rel] = _digest([_entry_line(record)] + [_entry_line(c) for c in extra])

    for f, fmt in _sniff_all(to_sniff, readers, disc):
        records[f.rel] = (f, fmt.NAME)

    out = dict(nested)
    for rel, (f, hint) in records.items():
        fingerprint = fingerprints.get(rel) or _digest([_entry_line(f)])
        out[rel] = RecordRef(record_id_for(rel, hint), f.uri, root, fingerprint, hint)
        key = hint or "?" + (_ext(rel) or "(none)")
        disc.by_format[key] = disc.by_format.get(key, 0) + 1
    return out


def _sidecar_owners(members: list[_File], headers: dict) -> dict[str, tuple[_File, object]]:
    """stem -> (record file, format) for single-file formats that declare ``COMPANION_EXTENSIONS``
    (optional sidecars beside the record, e.g. a MATLAB file's ``<stem>.json`` with its sampling
    rate); a WFDB header's stem wins."""
    owners: dict[str, tuple[_File, object]] = {}
    for f in members:
        name = posixpath.basename(f.rel)
        ext = _ext(name)
        hint = _hint(ext) if ext else ""
        if not hint:
            continue
        fmt = formats.by_name(hint)
        stem = name[: -len(ext)]
        if getattr(fmt, "COMPANION_EXTENSIONS", ()) and not getattr(fmt, "RECORD_NAME_SUFFIX", None) \
                and stem not in headers:
            owners[stem] = (f, fmt)
    return owners


def _sniff_all(files: list[_File], readers: archives.ArchiveReader, disc: Discovery) -> list[tuple[_File, object]]:
    """Ranged reads of the first bytes of every file to sniff, in flight at once."""
    plain = [f for f in files if archives.split_member(f.uri) is None]
    heads: dict[str, bytes | Exception] = storage.read_many([f.uri for f in plain],
                                                            prefix={f.uri: SNIFF_BYTES for f in plain})
    for f in files:
        if f.uri not in heads:
            try:
                heads[f.uri] = readers.read(f.uri, SNIFF_BYTES, False)
            except (OSError, ECGError) as exc:
                heads[f.uri] = exc
    out = []
    for f in files:
        head = heads[f.uri]
        if isinstance(head, storage.NotARegularFile):
            _skip(disc, "not a regular file", f.rel)
        elif isinstance(head, Exception):
            _skip(disc, f"unreadable ({type(head).__name__})", f.rel)
        else:
            try:
                fmt = formats.sniff(head)
            except formats.SniffError as exc:
                _skip(disc, f"internal error ({exc})", f.rel)
                continue
            if fmt is None:
                _skip(disc, "unknown format", f.rel)
            else:
                out.append((f, fmt))
    return out


def _archive_records(archive: _File, root: str, disc: Discovery, readers) -> dict[str, RecordRef]:
    """Records inside one zip archive, classified like a listing of its members."""
    archive_line = _entry_line(archive)
    try:
        listed = archives.list_members(archive.uri)
    except ECGError:
        _skip(disc, "unreadable archive", archive.rel)
        return {}
    members = []
    for m in listed:
        if not archives.safe_member(m.name):
            _skip(disc, "unsafe path in archive", m.name)
        elif any(part.startswith(".") or part == "__MACOSX" for part in m.name.split("/")):
            _skip(disc, "hidden", m.name)
        else:
            members.append(_File(f"{archive.rel}/{m.name}", archives.member_uri(archive.uri, m.name), m.size,
                                 f"{m.crc:08x}", archive_line))
    return _classify(members, root, disc, readers, in_archive=True)


# --------------------------------------------------------------------------- inputs
def _list(root: str, disc: Discovery) -> list[_File]:
    try:
        entries = storage.listing(root)
    except FileNotFoundError:
        raise ConfigError(f"input {storage.redact(root)!r} does not exist") from None
    for e in entries:
        if not e.regular:
            _skip(disc, "not a regular file", e.rel)
    return [_File(e.rel, e.uri, e.size, e.version) for e in entries if e.regular]


def _visible(files: list[_File], disc: Discovery) -> list[_File]:
    out = []
    for f in files:
        if any(part.startswith(".") for part in f.rel.split("/")):
            hidden = disc.skipped.setdefault("hidden", {})
            ext = _ext(f.rel) or "(none)"
            hidden[ext] = hidden.get(ext, 0) + 1
        else:
            out.append(f)
    return out


def _from_listing(root: str) -> Discovery:
    disc = Discovery(storage.redact(root))
    files = _list(root, disc)
    if len(files) == 1 and files[0].rel == ".":    # the input is one file (no extension a format claims)
        root = storage.parent(root)
        files = [_File(storage.basename(files[0].uri), files[0].uri, files[0].size, files[0].version)]
    readers = archives.ArchiveReader()
    try:
        refs = _classify(_visible(files, disc), root, disc, readers)
    finally:
        readers.close()
    disc.refs = sorted(refs.values(), key=lambda r: r.record_id)
    return disc


def _single_archive(uri: str) -> Discovery:
    disc = Discovery(storage.redact(uri))
    root = storage.parent(uri)
    protocol, _ = storage.split(uri)
    try:
        info = storage.filesystem(protocol).info(storage.split(uri)[1])
    except FileNotFoundError:
        raise ConfigError(f"input {storage.redact(uri)!r} does not exist") from None
    version = info.get("ETag") or info.get("etag") or info.get("mtime") or ""
    archive = _File(storage.basename(uri), uri, int(info.get("size") or 0), str(version))
    readers = archives.ArchiveReader()
    try:
        refs = _classify([archive], root, disc, readers)
    finally:
        readers.close()
    disc.refs = sorted(refs.values(), key=lambda r: r.record_id)
    return disc


def _from_manifest(csv_uri: str, column: str | None, attributes: tuple[str, ...] = ()) -> Discovery:
    try:
        text = storage.read(csv_uri, 1 << 30).decode("utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"manifest {storage.redact(csv_uri)!r} does not exist") from None
    reader = csv.DictReader(io.StringIO(text))
    fields = reader.fieldnames or []
    if column is None:
        column = next((c for c in MANIFEST_COLUMNS if c in fields), None)
        if column is None and len(fields) == 1:
            column = fields[0]
    missing = [a for a in attributes if a not in fields]
    if missing:
        raise ConfigError(f"manifest {storage.redact(csv_uri)!r}: --manifest-columns {', '.join(missing)} not in its "
                          f"columns ({', '.join(fields) or 'none'})")
    if column is None or column not in fields:
        raise ConfigError(f"manifest {storage.redact(csv_uri)!r}: no record-path column (looked for "
                          f"{column or ', '.join(MANIFEST_COLUMNS)}; columns are {', '.join(fields) or 'none'})")
    from ecgembed.sources.reader import resolve   # the reader imports this module

    root = storage.parent(csv_uri)
    listed = _from_listing(root)          # one listing gives every record's fingerprint
    by_uri = {r.uri: r for r in listed.refs}
    disc = Discovery(storage.redact(csv_uri))
    refs: dict[str, RecordRef] = {}
    for line, row in enumerate(reader, start=2):
        value = (row.get(column) or "").strip()
        if not value:
            raise ConfigError(f"manifest {storage.redact(csv_uri)!r} line {line}: empty {column!r}")
        absolute = "://" in value
        rel = value if absolute else value.lstrip("/")
        uri = rel if absolute else storage.join(root, *rel.split("/"))
        uri = _member_form(uri)
        primary, hint = resolve(uri, check_exists=False)
        listed_ref = by_uri.get(primary)
        if listed_ref is not None:
            hint = listed_ref.format or hint
        if absolute:    # host + path: never the userinfo or a (signed) query string
            parts = urllib.parse.urlsplit(storage.redact(primary))
            shown = parts.netloc + parts.path
        else:
            shown = primary[len(root):].lstrip("/\\").replace(os.sep, "/")
        record_id = record_id_for(shown.replace("!/", "/"), hint)
        ref = RecordRef(record_id, primary, root, listed_ref.fingerprint if listed_ref else "", hint,
                        tuple((a, (row.get(a) or "").strip()) for a in attributes))
        if record_id not in refs:
            refs[record_id] = ref
            key = hint or "?" + (_ext(primary) or "(none)")
            disc.by_format[key] = disc.by_format.get(key, 0) + 1
    disc.refs = sorted(refs.values(), key=lambda r: r.record_id)
    return disc


def _member_form(uri: str) -> str:
    """``x/drop.zip/member.xml`` (a manifest path through an archive) -> ``x/drop.zip!/member.xml``."""
    lowered = uri.lower()
    at = lowered.find(".zip/")
    if at < 0 or archives.split_member(uri):
        return uri
    return uri[: at + 4] + archives.SEPARATOR + uri[at + 5 :]
