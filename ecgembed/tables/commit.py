"""Publish a run's files exactly once, whatever crashes: stage, decide (intent), publish, record.

Layout under ``OUTPUT/``::

    <table>/run=<run_id>/part-<task>.parquet   published data (Hive partition ``run``)
    _ledger/run=<run_id>/part-<task>.parquet   what each run settled (see ledger.py)
    _staging/<run_id>/<table>/...              written by the run's tasks; never read by anyone
    _commits/<run_id>.json                     the intent: the commit point
    _runs/<run_id>.json                        the run manifest, written when publishing is done

1. Write tasks put every file under ``_staging/<run_id>/`` with deterministic names, so a retried
   task overwrites its own file instead of adding a copy. A run that dies here leaves only staged
   files: nothing under a table folder, nothing in the ledger.
2. The driver writes the **intent** (one object: every staged -> published move and the
   manifest). Writing it is the commit: from then on the run is committed.
3. Files move into the table folders (a move whose source is gone and whose target exists was
   already done: publishing is idempotent), then the manifest is written and the intent and the
   staging folder are deleted.
4. The next run, holding the output lock, first *recovers*: it publishes any run whose intent
   exists (a crash between 2 and 3) and deletes staging folders that have no intent (runs that
   died before committing). So a table folder only ever holds files of committed runs.
"""

from __future__ import annotations

import json
import posixpath

import pyarrow.parquet as pq

from ecgembed import storage
from ecgembed.errors import EcgembedError

RUNS_DIR = "_runs"
STAGING_DIR = "_staging"
COMMITS_DIR = "_commits"


class CommitError(EcgembedError):
    """A committed run could not be published (a staged file is missing)."""


def staging_uri(output: str, run_id: str, table: str, name: str) -> str:
    return storage.join(output, STAGING_DIR, run_id, table, name)


def final_uri(output: str, table: str, run_id: str, name: str) -> str:
    return storage.join(output, table, f"run={run_id}", name)


def commit_run(output: str, run_id: str, write_returns: list[dict], manifest: dict,
               empty_schemas: dict | None = None, lock=None) -> dict:
    """Commit and publish a run; returns the manifest.

    ``write_returns`` are the write tasks' results (``{table: {"path", "rows"}}``). A table in
    ``empty_schemas`` without rows in this run gets an empty file with its schema, so SQL
    readers globbing the table folders always find the table and its columns.
    """
    staged: list[tuple[str, str, int]] = []
    counts: dict[str, int] = {}
    for written in write_returns:
        for table, info in written.items():
            counts[table] = counts.get(table, 0) + info["rows"]
    manifest = {**manifest, "counts": {**manifest.get("counts", {}), **counts}}
    for written in write_returns:
        for table, info in written.items():
            staged.append((table, info["path"], info["rows"]))
    for table, schema in (empty_schemas or {}).items():
        if not any(t == table for t, _, _ in staged):
            staged.append((table, _write_empty(output, run_id, table, schema), 0))
    moves, files = [], {}
    for table, path, rows in sorted(staged):
        target = final_uri(output, table, run_id, posixpath.basename(path))
        moves.append([path, target])
        files.setdefault(table, []).append({"path": posixpath.relpath(storage.split(target)[1], storage.split(output)[1]),
                                            "rows": rows})
    manifest = {**manifest, "files": files}
    if lock is not None:
        lock.check()
    write_json(storage.join(output, COMMITS_DIR, f"{run_id}.json"), {"run_id": run_id, "moves": moves,
                                                                     "manifest": manifest})   # the commit point
    publish(output, run_id)
    return manifest


def publish(output: str, run_id: str) -> None:
    """Carry out a committed run's intent (idempotent), then write its manifest."""
    intent_uri = storage.join(output, COMMITS_DIR, f"{run_id}.json")
    fs, intent_path = storage.fs_and_path(intent_uri)
    intent = json.loads(fs.cat_file(intent_path))
    fs.invalidate_cache()
    for src_uri, dst_uri in intent["moves"]:
        _, src = storage.fs_and_path(src_uri)
        _, dst = storage.fs_and_path(dst_uri)
        if fs.exists(src):
            fs.makedirs(posixpath.dirname(dst), exist_ok=True)
            fs.mv(src, dst)
        elif not fs.exists(dst):
            raise CommitError(f"run {run_id} is committed but {src_uri} is gone and {dst_uri} does not exist")
    write_json(storage.join(output, RUNS_DIR, f"{run_id}.json"), intent["manifest"])
    fs.rm(intent_path)
    remove_staging(output, run_id)


def recover(output: str, current_run: str | None = None) -> dict[str, list[str]]:
    """Publish committed-but-unpublished runs; delete staging of runs that never committed.

    Call it holding the output lock (no other run is writing).
    """
    fs, commits = storage.fs_and_path(storage.join(output, COMMITS_DIR))
    fs.invalidate_cache()
    published = []
    if fs.exists(commits):
        for path in sorted(fs.ls(commits, detail=False)):
            if path.endswith(".json"):
                run_id = posixpath.basename(path)[: -len(".json")]
                publish(output, run_id)
                published.append(run_id)
    abandoned = []
    _, staging = storage.fs_and_path(storage.join(output, STAGING_DIR))
    fs.invalidate_cache()
    if fs.exists(staging):
        for path in sorted(fs.ls(staging, detail=False)):
            run_id = posixpath.basename(path.rstrip("/"))
            if run_id != current_run:
                remove_staging(output, run_id)
                abandoned.append(run_id)
    return {"published": published, "abandoned": abandoned}


def _write_empty(output: str, run_id: str, table: str, schema) -> str:
    uri = staging_uri(output, run_id, table, "part-empty.parquet")
    fs, path = storage.fs_and_path(uri)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "wb") as handle:
        pq.write_table(schema.empty_table(), handle, compression="zstd")
    return uri


def remove_staging(output: str, run_id: str) -> None:
    """Delete a run's staging folder (and ``_staging`` itself when no other run uses it)."""
    fs, path = storage.fs_and_path(storage.join(output, STAGING_DIR, run_id))
    fs.invalidate_cache()   # s3fs caches listings; moves change them
    for target, ours in ((path, True), (posixpath.dirname(path), False)):
        try:
            # object stores may list an emptied folder as a marker object named like the folder
            if not ours and [p for p in fs.find(target) if p.rstrip("/") != target.rstrip("/")]:
                return      # another run's staged files
            fs.rm(target, recursive=True)
        except FileNotFoundError:
            pass


def write_json(uri: str, obj: dict) -> None:
    storage.write_atomic(uri, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())


def read_manifests(output: str) -> list[dict]:
    """Every committed run's manifest, oldest first."""
    fs, path = storage.fs_and_path(storage.join(output, RUNS_DIR))
    fs.invalidate_cache()
    if not fs.exists(path):
        return []
    out = [json.loads(fs.cat_file(p)) for p in sorted(fs.ls(path, detail=False)) if p.endswith(".json")]
    return sorted(out, key=lambda m: m.get("started_at", ""))


def read_runs(output: str) -> list[dict]:
    """Every committed run's metadata, oldest first."""
    return read_manifests(output)
