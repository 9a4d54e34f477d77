"""Convert an output written by ecgembed 0.1 (Parquet folders + intent files) to Delta Lake tables.

ecgembed 0.1 wrote ``<table>/run=<run_id>/*.parquet``, ``_ledger/run=<run_id>/``, ``_runs/<run_id>.json``,
``_commits/`` (runs committed but not yet published), ``_staging/`` (uncommitted runs) and
``_lock.json``. A run refuses such an output (:func:`refuse_v1`); ``ecgembed migrate OUTPUT``
(:func:`migrate`) converts it once, holding the output lock:

1. every published file of each table is rewritten into the Delta table of the same name (vectors
   become ``list<float32>``, new columns get their 0.1 values: ``format`` = ``wfdb``,
   ``scores_version`` = ``ecgembed-0.1``), under ``<table>/run-ecgembed-migrate-v1/``, and
   committed as one transaction per table with ``appId = ecgembed-migrate-v1``;
2. the ledger keeps every 0.1 row; score ledger rows are added for the 0.1 scores (0.1 did not
   record what its scores depended on, so they carry ``scores_version = ecgembed-0.1``: the first
   run afterwards re-scores every record once, without re-embedding);
3. the 0.1 run manifests become rows of the ``runs`` table;
4. the 0.1 files and folders are deleted.

Each table is committed at most once (the ``appId``), so a migration that crashed is finished by
running it again. Refused: a 0.1 run that is committed but not published (``_commits/``), and a
0.1 lock whose heartbeat is fresh (a 0.1 run may be writing).
"""

from __future__ import annotations

import json
import posixpath
import re
import time
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq

from ecgembed import storage
from ecgembed.errors import ConfigError
from ecgembed.tables import delta
from ecgembed.tables import schemas as S

MIGRATE_APP_ID = "ecgembed-migrate-v1"
V1_SCORES_VERSION = "ecgembed-0.1"
V1_FORMAT = "wfdb"
V1_LEDGER, V1_RUNS, V1_COMMITS, V1_STAGING, V1_LOCK = "_ledger", "_runs", "_commits", "_staging", "_lock.json"
V1_MARKERS = (V1_LEDGER, V1_RUNS, V1_COMMITS, V1_STAGING, V1_LOCK)
V1_LEASE_S = 300.0
SCORE_KEY = ["record_id", "model", "label_set", "label_set_sha256", "run_id"]   # one score ledger row per key


class V1Layout(ConfigError):
    """The output was written by ecgembed 0.1 and must be migrated first."""


def _root_names(output: str) -> set[str]:
    fs, root = storage.fs_and_path(output)
    fs.invalidate_cache()
    try:
        return {posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)}
    except FileNotFoundError:
        return set()


def refuse_v1(output: str) -> None:
    """Raise :class:`V1Layout` when ``output`` holds ecgembed 0.1 tables."""
    found = sorted(_root_names(output) & set(V1_MARKERS))
    if found:
        raise V1Layout(f"{output} holds tables written by ecgembed 0.1 ({', '.join(found)}): convert them to Delta Lake "
                       f"once with `ecgembed migrate {output}` (every row and the ledger are kept), or write to a new "
                       f"--output")


def migrate(output: str) -> dict:
    """Convert an ecgembed 0.1 output in place; returns rows per table and what was removed."""
    from ecgembed.models.registry import SPECS
    from ecgembed.tables.lock import OutputLock

    names = _root_names(output)
    if not names & set(V1_MARKERS):
        return {"migrated": False, "reason": f"{output} has no ecgembed 0.1 layout (nothing to do)"}
    _refuse_unfinished(output, names)
    schemas = {spec.table: S.embedding_schema(spec) for spec in SPECS.values()}
    schemas.update({S.SCORES_TABLE: S.SCORES_SCHEMA, S.ERRORS_TABLE: S.ERRORS_SCHEMA})
    counts: dict[str, int] = {}
    with OutputLock(output, f"migrate-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}") as lock:
        v1_ledger = _read_all(output, V1_LEDGER)
        score_keys: list[pa.Table] = []
        for table in S.commit_order([t for t in schemas if t in names]):
            counts[table] = _migrate_table(output, table, schemas[table], lock, score_keys)
        ledger = _ledger_rows(v1_ledger, score_keys)
        counts[S.LEDGER_TABLE] = _commit_one(output, S.LEDGER_TABLE, S.LEDGER_SCHEMA, [ledger], lock)
        counts[S.RUNS_TABLE] = _commit_one(output, S.RUNS_TABLE, S.RUNS_SCHEMA, [_runs_rows(output)], lock)
        removed = _remove_v1(output, [t for t in schemas if t in names])
    return {"migrated": True, "counts": counts, "removed": removed}


def _refuse_unfinished(output: str, names: set[str]) -> None:
    fs, commits = storage.fs_and_path(storage.join(output, V1_COMMITS))
    if V1_COMMITS in names and [p for p in fs.find(commits) if p.endswith(".json")]:
        raise V1Layout(f"{output}: a run of ecgembed 0.1 is committed but not published ({V1_COMMITS}/ holds its "
                       f"intent); run ecgembed 0.1 once more on this output (it publishes first), then migrate")
    if V1_LOCK in names:
        try:
            lock = json.loads(storage.read_bytes(storage.join(output, V1_LOCK)))
        except ValueError:
            lock = {}
        age = time.time() - float(lock.get("heartbeat_at", 0))
        if age < V1_LEASE_S:
            raise V1Layout(f"{output}: an ecgembed 0.1 run ({lock.get('run_id', '?')}) held this output {age:.0f} s "
                           f"ago; wait until it ends (or {V1_LEASE_S:.0f} s after its last heartbeat), then migrate")


def _v1_files(output: str, folder: str) -> list[str]:
    fs, path = storage.fs_and_path(storage.join(output, folder))
    fs.invalidate_cache()
    if not fs.exists(path):
        return []
    return sorted(p for p in fs.find(path) if "/run=" in p and p.endswith(".parquet"))


def _read(path: str, protocol: str) -> pa.Table:
    with storage.filesystem(protocol).open(path, "rb") as handle:
        return pq.read_table(handle)


def _read_all(output: str, folder: str) -> pa.Table | None:
    protocol = storage.split(output)[0]
    tables = [_read(p, protocol) for p in _v1_files(output, folder)]
    return pa.concat_tables(tables, promote_options="default") if tables else None


def _convert(data: pa.Table, schema: pa.Schema) -> pa.Table:
    """A 0.1 table in the 2 schema: same columns cast, new columns with their 0.1 values."""
    n = data.num_rows
    fill = {"format": pa.array([V1_FORMAT] * n, pa.string()),
            "scores_version": pa.array([V1_SCORES_VERSION] * n, pa.string())}
    cols = []
    for field in schema:
        if field.name in data.column_names:
            column = data[field.name]
            if pa.types.is_fixed_size_list(column.type):
                column = column.cast(pa.list_(column.type.value_field))
            cols.append(column.cast(field.type))
        elif field.name in fill:
            cols.append(fill[field.name])
        elif field.nullable:
            cols.append(pa.nulls(n, field.type))
        else:
            raise V1Layout(f"a 0.1 table lacks column {field.name}, which has no 0.1 value: cannot migrate")
    return pa.Table.from_arrays(cols, schema=schema)


def _file_name(path: str, k: int) -> str:
    run = re.sub(r"[^A-Za-z0-9._-]", "_", posixpath.basename(posixpath.dirname(path)).removeprefix("run="))[:100]
    return f"run-{MIGRATE_APP_ID}/part-{run}-{k:05d}.zstd.parquet"


def _migrate_table(output: str, table: str, schema: pa.Schema, lock, score_keys: list) -> int:
    uri = delta.table_uri(output, table)
    existing = delta.open_table(uri)
    protocol = storage.split(output)[0]
    done = existing is not None and delta.committed(existing, MIGRATE_APP_ID)
    files, rows = [], 0
    for k, path in enumerate(_v1_files(output, table)):
        data = _read(path, protocol)
        if table == S.SCORES_TABLE:
            score_keys.append(data.group_by(SCORE_KEY).aggregate([]))
        rows += data.num_rows
        if not done:
            files.append(delta.write_data_file(uri, _file_name(path, k), _convert(data, schema)))
    if not done:
        lock.check()
        delta.commit_files(uri, table, schema, files, MIGRATE_APP_ID, {"ecgembed.operation": "migrate from ecgembed 0.1"})
    return rows


def _ledger_rows(v1: pa.Table | None, score_keys: list[pa.Table]) -> pa.Table:
    """The 0.1 ledger, plus one ok score row per 0.1 record x model x label set x run that has scores."""
    if v1 is None:
        return S.LEDGER_SCHEMA.empty_table()
    embeddings = _convert(v1, S.LEDGER_SCHEMA)
    embeddings = embeddings.set_column(embeddings.schema.get_field_index("scores_version"), "scores_version",
                                       pa.nulls(embeddings.num_rows, pa.string()))
    if not score_keys:
        return embeddings
    keys = pa.concat_tables(score_keys).group_by(SCORE_KEY).aggregate([])
    base = embeddings.select(["record_id", "model", "run_id", "fingerprint", "content_sha256", "model_version",
                              "preproc_version", "processed_at"])
    scores = keys.join(base, ["record_id", "model", "run_id"], join_type="inner")
    n = scores.num_rows
    scores = scores.append_column("scores_version", pa.array([V1_SCORES_VERSION] * n, pa.string()))
    scores = scores.append_column("status", pa.array(["ok"] * n, pa.string()))
    scores = scores.append_column("error_type", pa.nulls(n, pa.string()))
    scores = scores.append_column("permanent", pa.array([False] * n, pa.bool_()))
    return pa.concat_tables([embeddings, scores.select(S.LEDGER_SCHEMA.names).cast(S.LEDGER_SCHEMA)])


def _runs_rows(output: str) -> pa.Table:
    fs, folder = storage.fs_and_path(storage.join(output, V1_RUNS))
    fs.invalidate_cache()
    manifests = [json.loads(fs.cat_file(p)) for p in sorted(fs.find(folder)) if p.endswith(".json")] \
        if fs.exists(folder) else []
    rows: dict[str, list] = {"run_id": [], "started_at": [], "committed_at": [], "manifest": []}
    for manifest in manifests:
        started = manifest.get("started_at")
        finished = manifest.get("finished_at") or started
        rows["run_id"].append(manifest["run_id"])
        rows["started_at"].append(datetime.fromisoformat(started) if started else None)
        rows["committed_at"].append(datetime.fromisoformat(finished) if finished else datetime.now(timezone.utc))
        label_sets = {ls["name"]: {"sha256": ls["sha256"], "classes": ls["classes"]}
                      for model in manifest.get("models", {}).values() for ls in model.get("label_sets", [])}
        rows["manifest"].append(json.dumps({**manifest, "label_sets": label_sets, "migrated_from": "ecgembed 0.1"},
                                           sort_keys=True, default=str))
    return pa.Table.from_pydict(rows, schema=S.RUNS_SCHEMA)


def _commit_one(output: str, table: str, schema: pa.Schema, parts: list[pa.Table], lock) -> int:
    uri = delta.table_uri(output, table)
    existing = delta.open_table(uri)
    data = pa.concat_tables(parts)
    if existing is not None and delta.committed(existing, MIGRATE_APP_ID):
        return data.num_rows
    files = [delta.write_data_file(uri, f"run-{MIGRATE_APP_ID}/part-00000.zstd.parquet", data)] if data.num_rows else []
    lock.check()
    delta.commit_files(uri, table, schema, files, MIGRATE_APP_ID, {"ecgembed.operation": "migrate from ecgembed 0.1"})
    return data.num_rows


def _remove_v1(output: str, tables: list[str]) -> list[str]:
    """Delete what 0.1 left: its run partitions in the table folders, then its own folders."""
    fs, root = storage.fs_and_path(output)
    removed = []
    for table in tables:
        for entry in fs.ls(posixpath.join(root, table), detail=False):
            if posixpath.basename(entry.rstrip("/")).startswith("run="):
                fs.rm(entry, recursive=True)
                removed.append(f"{table}/{posixpath.basename(entry.rstrip('/'))}")
    for name in (V1_RUNS, V1_STAGING, V1_COMMITS, V1_LOCK, V1_LEDGER):   # the ledger last: the marker a rerun needs
        path = posixpath.join(root, name)
        if fs.exists(path):
            fs.rm(path, recursive=True)
            removed.append(name)
    return removed
