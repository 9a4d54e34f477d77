"""Commit a run's files to every table exactly once, whatever crashes; finish what crashed runs left.

A run's commit, on the driver, holding the output lock (see docs/nightly.md):

1. **prepare**: the run's row of the ``runs`` table is written as a data file, and a *commit
   plan* (every table's files, schemas and commit metadata) is created at
   ``OUTPUT/_ecgembed/commits/<run_id>.json`` with a create-if-absent write. The plan is not a
   commit point (nothing is visible yet); it is what lets a later run finish this one.
2. **apply**: each table gets one Delta transaction adding the run's files, tagged with the
   application transaction id ``appId = run_id`` (:func:`ecgembed.tables.delta.commit_files`):
   the data tables first, then the ``ledger`` (what says "settled"), then ``runs``. The lock is
   checked right before each of them. A table that already holds the run's ``appId`` is skipped,
   so applying a plan twice adds nothing twice.
3. the plan is deleted.

:func:`recover` (the next run, holding the lock) applies every plan still present (a run that
crashed between two table commits is *rolled forward*: exactly one committed copy of each row),
then deletes the data files of runs that never reached step 1. Before deleting those files it
creates their run's plan name as an ``aborted`` tombstone, so a run that lost its lock while
paused can never commit them later: its own create of the plan fails.
"""

from __future__ import annotations

import json
import posixpath
import time
import uuid
from datetime import datetime, timezone

import pyarrow as pa

from ecgembed import storage
from ecgembed.errors import ConfigError
from ecgembed.tables import delta
from ecgembed.tables import schemas as S
from ecgembed.tables.lock import OutputLocked
from ecgembed.tables.migrate import refuse_v1

COMMITS_DIR = "_ecgembed/commits"
COMMITTING, ABORTED = "committing", "aborted"


def plan_uri(output: str, run_id: str) -> str:
    return storage.join(output, COMMITS_DIR, f"{run_id}.json")


def commit_run(output: str, run_id: str, write_returns: list[dict], run_metadata: dict, lock=None) -> dict:
    """Commit every table of the run (idempotent); returns the run manifest.

    ``write_returns``: :attr:`EcgTablesDatasink.write_returns` (``[]`` for a run with no work).
    ``run_metadata``: what the run wants remembered (config, timings, counts of its own...),
    stored as the run's row of the ``runs`` table with ``counts`` (rows per table) added.
    ``lock``: the :class:`~ecgembed.tables.lock.OutputLock` held; checked before each commit.
    """
    plan = prepare(output, run_id, write_returns, run_metadata, lock)
    result = apply(output, plan, lock)
    finish(output, run_id)
    return {**plan["manifest"], "commit": result}


def prepare(output: str, run_id: str, write_returns: list[dict], run_metadata: dict, lock=None) -> dict:
    """Step 1: the runs-table row file and the commit plan. Returns the plan."""
    delta.check_run_id(run_id)
    if lock is not None:
        lock.check()
    if storage.exists(plan_uri(output, run_id)):     # a retried commit, or a run abandoned by another
        return _existing_plan(output, run_id)
    tables: dict[str, dict] = {}
    metadata: dict[str, str] = {"ecgembed.run_id": run_id}
    label_sets: dict[str, dict] = {}
    for result in write_returns:
        for table, schema in result["schemas"].items():
            tables.setdefault(table, {"schema": schema, "files": []})
        for table, files in result["files"].items():
            tables[table]["files"].extend(files)
        metadata.update(result["commit_metadata"])
        label_sets.update(result["label_sets"])
    counts = {table: sum(f["rows"] for f in info["files"]) for table, info in tables.items()}
    manifest = {**run_metadata, "run_id": run_id, "counts": counts, "label_sets": label_sets}
    now = datetime.now(timezone.utc)
    started = run_metadata.get("started_at")
    row = pa.Table.from_pydict({
        "run_id": [run_id], "started_at": [datetime.fromisoformat(started) if started else None],
        "committed_at": [now], "manifest": [json.dumps(manifest, sort_keys=True, default=str)],
    }, schema=S.RUNS_SCHEMA)
    # a unique name: a retried prepare must not change the file an existing plan describes
    name = f"{delta.run_folder(run_id)}/part-run-{uuid.uuid4().hex[:12]}.zstd.parquet"
    runs_file = delta.write_data_file(delta.table_uri(output, S.RUNS_TABLE), name, row)
    tables[S.RUNS_TABLE] = {"schema": delta.schema_to_text(S.RUNS_SCHEMA), "files": [runs_file]}
    plan = {"state": COMMITTING, "run_id": run_id, "created_at": now.isoformat(), "tables": tables,
            "metadata": metadata, "manifest": manifest}
    try:
        storage.create_exclusive(plan_uri(output, run_id), json.dumps(plan, sort_keys=True).encode())
    except FileExistsError:
        return _existing_plan(output, run_id)
    return plan


def _existing_plan(output: str, run_id: str) -> dict:
    """The plan on record for ``run_id``: carry on with it, unless it is an ``aborted`` tombstone."""
    existing = read_plan(output, run_id)
    if existing.get("state") != COMMITTING:
        raise OutputLocked(f"run {run_id} was abandoned by run {existing.get('by', '?')} (which took over the "
                           f"output lock and deleted this run's files); nothing of it is committed")
    return existing


def apply(output: str, plan: dict, lock=None, tables: list[str] | None = None) -> dict:
    """Step 2: commit each table of the plan (only ``tables`` if given), in commit order.

    Returns ``{table: {"version": committed version or None if already there, "seconds": ...}}``.
    """
    run_id = plan["run_id"]
    out = {}
    for table in S.commit_order(plan["tables"]):
        if tables is not None and table not in tables:
            continue
        info = plan["tables"][table]
        if lock is not None:
            lock.check()
        start = time.perf_counter()
        version = delta.commit_files(delta.table_uri(output, table), table, delta.schema_from_text(info["schema"]),
                                     info["files"], run_id, plan["metadata"])
        out[table] = {"version": version, "files": len(info["files"]),
                      "seconds": round(time.perf_counter() - start, 4)}
    return out


def finish(output: str, run_id: str) -> None:
    """Step 3: the plan is done."""
    fs, path = storage.fs_and_path(plan_uri(output, run_id))
    try:
        fs.rm(path)
    except FileNotFoundError:
        pass


def read_plan(output: str, run_id: str) -> dict:
    return json.loads(storage.read_bytes(plan_uri(output, run_id)))


def _plans(output: str) -> list[str]:
    fs, folder = storage.fs_and_path(storage.join(output, COMMITS_DIR))
    fs.invalidate_cache()
    try:
        names = [posixpath.basename(p) for p in fs.ls(folder, detail=False)]
    except FileNotFoundError:
        return []
    return sorted(n[: -len(".json")] for n in names if n.endswith(".json"))


def recover(output: str, run_id: str, lock=None) -> dict:
    """Finish or clean what crashed runs left; call it holding the lock, before any work.

    Returns ``{"rolled_forward": [run ids whose plan was applied], "abandoned": [run ids whose
    uncommitted files were deleted]}``. Refuses a ``run_id`` that is already committed: each
    table commit is keyed by the run id, so a second run under the same id would add nothing.
    """
    refuse_v1(output)
    rolled = []
    for other in _plans(output):
        plan = read_plan(output, other)
        if plan.get("state") != COMMITTING:
            continue
        apply(output, plan, lock)
        finish(output, other)
        rolled.append(other)
    runs = delta.open_table(delta.table_uri(output, S.RUNS_TABLE))
    if runs is not None and delta.committed(runs, run_id):
        raise ConfigError(f"run id {run_id} is already committed in {output}: give a new --run-id")
    abandoned = set()
    for table, folders in _run_folders(output).items():
        opened = delta.open_table(delta.table_uri(output, table))
        for folder, other in folders:
            if opened is not None and delta.committed(opened, other):
                continue
            # files of an earlier attempt under this run's own id are deleted without a tombstone
            if other != run_id and not _abandon(output, other, run_id, lock):
                continue
            fs, path = storage.fs_and_path(folder)
            fs.rm(path, recursive=True)
            abandoned.add(other)
    return {"rolled_forward": rolled, "abandoned": sorted(abandoned)}


def _abandon(output: str, other: str, run_id: str, lock) -> bool:
    """Tombstone ``other``'s plan name; False if ``other`` turned out to be committing (rolled forward)."""
    tombstone = {"state": ABORTED, "run_id": other, "by": run_id, "at": datetime.now(timezone.utc).isoformat()}
    try:
        storage.create_exclusive(plan_uri(output, other), json.dumps(tombstone).encode())
        return True
    except FileExistsError:
        plan = read_plan(output, other)
        if plan.get("state") != COMMITTING:
            return True
        apply(output, plan, lock)     # it wrote its plan just now (it lost its lock mid-commit)
        finish(output, other)
        return False


def _run_folders(output: str) -> dict[str, list[tuple[str, str]]]:
    """Table folder -> [(run folder URI, run id)] for every ``run-<id>`` folder of our tables."""
    fs, root = storage.fs_and_path(output)
    fs.invalidate_cache()
    out: dict[str, list[tuple[str, str]]] = {}
    try:
        tables = [posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)]
    except FileNotFoundError:
        return out
    for table in tables:
        if not (table in S.FIXED or table in S.OPT_IN or table.endswith(S.EMBEDDINGS_SUFFIX)):
            continue
        base = delta.table_uri(output, table)
        try:
            entries = fs.ls(storage.fs_and_path(base)[1], detail=True)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            name = posixpath.basename(entry["name"].rstrip("/"))
            if name.startswith("run-") and entry["type"] == "directory":
                out.setdefault(table, []).append((storage.join(base, name), name[len("run-"):]))
    return out


def read_runs(output: str) -> list[dict]:
    """Every committed run's manifest, oldest first (the ``runs`` table)."""
    table = delta.open_table(delta.table_uri(output, S.RUNS_TABLE))
    if table is None:
        return []
    data = table.to_pyarrow_table(columns=["committed_at", "manifest"]).sort_by("committed_at").to_pydict()
    return [{**json.loads(m), "committed_at": c.isoformat()} for c, m in zip(data["committed_at"], data["manifest"])]
