"""Ground truth for an evaluation: which records are positive for which class.

Three sources (``--truth``):

- ``header``: the ``# Dx:`` line of each record's WFDB header (read again from the record's
  ``source_uri``), SNOMED-CT codes mapped to classes by :mod:`.mapping`;
- a PTB-XL ``ptbxl_database.csv`` (recognised by its ``ecg_id`` and ``scp_codes`` columns):
  every SCP statement listed for a record is positive, whatever its likelihood (the PTB-XL
  benchmark's convention); records match on ``filename_lr``/``filename_hr``;
- a CSV ``record_id,class,label`` (label ``1``/``0``/``true``/``false``): exactly the listed
  pairs; a class is evaluated on the records that have a row for it.

A record with scores but no truth is left out and counted in the notes; a class with no truth
at all (no code maps to it, not a PTB-XL statement, no CSV row) gets no figures and a reason.
"""

from __future__ import annotations

import csv
import hashlib
import io
import posixpath
import re
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.csv as pacsv

from ecgembed import storage
from ecgembed.errors import ECGError, EcgembedError
from ecgembed.evaluate import mapping
from ecgembed.labels import builtin_label_set
from ecgembed.sources.formats import wfdb
from ecgembed.sources.record import parse_comments

MAX_TRUTH_MB = 2048            # a truth file is read whole: refuse bigger ones before reading
HEADER_BATCH = 512             # headers fetched per round of concurrent GETs
_TRUE, _FALSE = {"1", "true", "yes"}, {"0", "false", "no"}
_SCP = re.compile(r"'((?:[^'\\]|\\.){1,32})'\s*:\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)")
_SCP_WHOLE = re.compile(rf"\{{\s*(?:{_SCP.pattern}\s*(?:,\s*{_SCP.pattern}\s*)*)?,?\s*\}}")


class EvaluationError(EcgembedError, ValueError):
    """An evaluation that cannot be run as asked (no scores, unreadable truth, ...)."""


@dataclass
class Truth:
    kind: str                                   # header | ptbxl | csv
    source: str                                 # what --truth named, redacted
    digest: str                                 # sha256 of the truth file (header: of the mapping tables)
    labels: dict[str, dict[str, bool]]          # class -> record_id -> positive?
    unavailable: dict[str, str]                 # class -> why it has no truth
    notes: list[str] = field(default_factory=list)


def read_truth(spec: str, records: dict[str, str], label_set: str, class_names: list[str]) -> Truth:
    """Truth for ``records`` (record_id -> source_uri) and the classes of ``label_set``."""
    if spec == "header":
        return header_truth(records, label_set, class_names)
    data = _read_file(spec)
    table = _read_csv(data, storage.redact(spec))
    columns = set(table.column_names)
    digest = hashlib.sha256(data).hexdigest()
    if {"ecg_id", "scp_codes"} <= columns:
        return ptbxl_truth(table, storage.redact(spec), digest, records, class_names)
    if {"record_id", "class", "label"} <= columns:
        return csv_truth(table, storage.redact(spec), digest, records, class_names)
    raise EvaluationError(f"--truth {storage.redact(spec)}: columns {sorted(columns)[:12]} are neither a PTB-XL "
                          "database (ecg_id, scp_codes, filename_lr/filename_hr) nor a label CSV (record_id, class, "
                          "label); or give --truth header for the '# Dx:' lines of WFDB headers")


def _read_file(uri: str) -> bytes:
    try:
        fs, path = storage.fs_and_path(uri)
        size = fs.size(path)
        if size is not None and size > MAX_TRUTH_MB * 2**20:
            raise EvaluationError(f"--truth {storage.redact(uri)}: {size / 2**20:.0f} MB is more than the "
                                  f"{MAX_TRUTH_MB} MB a truth file may have")
        return storage.read_bytes(uri)
    except (OSError, ValueError) as exc:
        if isinstance(exc, EvaluationError):
            raise
        raise EvaluationError(f"--truth {storage.redact(uri)}: cannot read it ({type(exc).__name__}: {exc})") from None


def _read_csv(data: bytes, source: str) -> pa.Table:
    """Every column as strings (record ids such as ``00001`` keep their zeros)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    first = data.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    names = next(csv.reader([first]), [])
    if not names or len(first) > 65536:
        raise EvaluationError(f"--truth {source}: no header line with column names")
    try:
        return pacsv.read_csv(io.BytesIO(data), parse_options=pacsv.ParseOptions(newlines_in_values=True),
                              convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                                   strings_can_be_null=False))
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise EvaluationError(f"--truth {source}: not a readable CSV ({str(exc)[:200]})") from None


# ------------------------------------------------------------------------------------- header
def header_truth(records: dict[str, str], label_set: str, class_names: list[str]) -> Truth:
    codes_of = mapping.class_codes(label_set, class_names)
    unavailable = {c: "no SNOMED-CT code maps to this class (see docs/evaluation.md)"
                   for c, codes in codes_of.items() if not codes}
    labels: dict[str, dict[str, bool]] = {c: {} for c in class_names if c not in unavailable}
    missing: dict[str, int] = {}
    unknown: dict[str, int] = {}
    items = sorted(records.items())
    for start in range(0, len(items), HEADER_BATCH):
        batch = items[start:start + HEADER_BATCH]
        wanted = [uri for _, uri in batch if uri.lower().endswith(".hea")]
        fetched = storage.read_many(wanted) if wanted else {}
        for record_id, uri in batch:
            dx, why = _dx_of(uri, fetched.get(uri))
            if dx is None:
                missing[why] = missing.get(why, 0) + 1
                continue
            codes, bad = mapping.parse_dx(dx)
            for token in bad:
                unknown[token] = unknown.get(token, 0) + 1
            for c in labels:
                labels[c][record_id] = bool(codes & codes_of[c])
    notes = [f"{n} record(s) without truth: {why}" for why, n in sorted(missing.items())]
    if unknown:
        shown = ", ".join(f"{t!r} x{n}" for t, n in sorted(unknown.items(), key=lambda kv: -kv[1])[:10])
        notes.append(f"{sum(unknown.values())} Dx token(s) neither a SNOMED-CT code nor a known label, ignored: {shown}")
    return Truth("header", "header", mapping.tables_sha256(), labels, unavailable, notes)


def _dx_of(uri: str, data) -> tuple[str | None, str]:
    """The ``Dx`` value of a header, or None and why there is none."""
    if not uri.lower().endswith(".hea"):
        return None, "not a WFDB record (no header to read '# Dx:' from)"
    if data is None or isinstance(data, Exception):
        return None, f"header could not be read again ({type(data).__name__})"
    try:
        comments = wfdb.parse_header(data, uri).comments
    except ECGError as err:
        return None, f"header no longer parses ({err.error_type})"
    dx = parse_comments(comments).get("Dx")
    if dx is None:
        return None, "no '# Dx:' line in the header"
    return dx, ""


# ------------------------------------------------------------------------------------- PTB-XL
def parse_scp_codes(text: str) -> dict[str, float]:
    """``"{'NORM': 100.0, 'SR': 0.0}"`` -> dict, without evaluating anything."""
    if len(text) > 4096 or not _SCP_WHOLE.fullmatch(text.strip()):
        raise ValueError(f"not a PTB-XL scp_codes value: {text[:60]!r}")
    return {code: float(value) for code, value in _SCP.findall(text)}


def ptbxl_truth(table: pa.Table, source: str, digest: str, records: dict[str, str],
                class_names: list[str]) -> Truth:
    by_stem: dict[str, list[tuple[str, dict[str, float]]]] = {}
    seen_codes: set[str] = set()
    columns = [c for c in ("filename_lr", "filename_hr") if c in table.column_names]
    if not columns:
        raise EvaluationError(f"--truth {source}: a PTB-XL database needs filename_lr or filename_hr to match records")
    rows = table.select(["ecg_id", "scp_codes", *columns]).to_pylist()
    for i, row in enumerate(rows):
        try:
            codes = parse_scp_codes(row["scp_codes"])
        except ValueError as exc:
            raise EvaluationError(f"--truth {source}: row {i + 2} (ecg_id {row['ecg_id'][:20]}): {exc}") from None
        seen_codes |= set(codes)
        for column in columns:
            name = (row[column] or "").strip().strip("/")
            if name:
                by_stem.setdefault(posixpath.basename(name), []).append((name, codes))
    vocabulary = set(builtin_label_set("ptbxl").names) | seen_codes
    unavailable = {c: "not a PTB-XL SCP statement code" for c in class_names if c not in vocabulary}
    labels: dict[str, dict[str, bool]] = {c: {} for c in class_names if c not in unavailable}
    unmatched = 0
    for record_id in sorted(records):
        codes = _match_ptbxl(record_id, by_stem)
        if codes is None:
            unmatched += 1
            continue
        for c in labels:
            labels[c][record_id] = c in codes
    notes = [f"{unmatched} record(s) without truth: no PTB-XL row whose filename_lr/filename_hr matches the record id"] \
        if unmatched else []
    return Truth("ptbxl", source, digest, labels, unavailable, notes)


def _match_ptbxl(record_id: str, by_stem: dict) -> dict[str, float] | None:
    """A record id matches a PTB-XL file name when one ends with the other at a ``/``."""
    rid = record_id.strip("/")
    for name, codes in by_stem.get(posixpath.basename(rid), []):
        if name == rid or name.endswith("/" + rid) or rid.endswith("/" + name):
            return codes
    return None


# ------------------------------------------------------------------------------------- CSV
def csv_truth(table: pa.Table, source: str, digest: str, records: dict[str, str], class_names: list[str]) -> Truth:
    wanted = set(class_names)
    labels: dict[str, dict[str, bool]] = {c: {} for c in class_names}
    first_row: dict[tuple[str, str], int] = {}
    other_classes: dict[str, int] = {}
    other_records = 0
    for i, row in enumerate(table.select(["record_id", "class", "label"]).to_pylist()):
        record_id, name, raw = row["record_id"], row["class"], (row["label"] or "").strip().lower()
        if raw not in _TRUE | _FALSE:
            raise EvaluationError(f"--truth {source}: row {i + 2}: label {row['label'][:20]!r} is not 1/0/true/false")
        if name not in wanted:
            other_classes[name] = other_classes.get(name, 0) + 1
            continue
        if record_id not in records:
            other_records += 1
            continue
        value = raw in _TRUE
        if labels[name].get(record_id, value) != value:       # row numbers only: record ids may carry identifiers
            raise EvaluationError(f"--truth {source}: rows {first_row[(record_id, name)]} and {i + 2} label the same "
                                  f"record as both 1 and 0 for class {name!r}")
        labels[name][record_id] = value
        first_row.setdefault((record_id, name), i + 2)
    if other_classes and not any(labels.values()):
        raise EvaluationError(f"--truth {source}: no row names a class of the label set; its classes are "
                              f"{', '.join(class_names[:8])}{', ...' if len(class_names) > 8 else ''}; the file has "
                              f"{', '.join(sorted(other_classes)[:8])}")
    unavailable = {c: "no row of the truth CSV names this class" for c in class_names if not labels[c]}
    labels = {c: v for c, v in labels.items() if c not in unavailable}
    covered = set().union(*(set(v) for v in labels.values())) if labels else set()
    notes = []
    if len(covered) < len(records):
        notes.append(f"{len(records) - len(covered)} record(s) without truth: no row in the truth CSV")
    if other_records:
        notes.append(f"{other_records} row(s) name records without current scores, ignored")
    if other_classes:
        notes.append(f"{sum(other_classes.values())} row(s) name classes not in the label set, ignored: "
                     + ", ".join(sorted(other_classes)[:10]))
    return Truth("csv", source, digest, labels, unavailable, notes)
