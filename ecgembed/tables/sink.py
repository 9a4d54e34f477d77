"""A Ray Data sink whose write tasks write every table's Parquet files of a run, uncommitted.

Each write task splits its records into the run's tables (:mod:`ecgembed.tables.rows`) and
writes one file per table under ``<table>/run-<run_id>/part-<task>.zstd.parquet``. The names
are deterministic (the write task's index), so a retried task overwrites its own files instead
of adding copies, and no Delta reader sees them until the driver commits them. A task returns
only file metadata (path, size, rows, statistics) plus the schemas and versions the commit needs.

``on_write_complete`` (driver) keeps the task results in :attr:`write_returns`; the caller then
commits with :func:`ecgembed.tables.commit.commit_run` while holding the output lock.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Iterable

import pyarrow as pa
from ray.data.block import Block, BlockAccessor
from ray.data.datasource.datasink import Datasink, WriteResult

from ecgembed import columns as C
from ecgembed.models.spec import ModelRun
from ecgembed.tables import delta, rows
from ecgembed.tables.delta import check_run_id, run_folder


def commit_metadata(runs: tuple[ModelRun, ...], run_id: str) -> dict[str, str]:
    """What each table commit records in its Delta commitInfo: the run and every version."""
    out = {"ecgembed.run_id": run_id}
    for run in runs:
        key = f"ecgembed.{run.name}"
        out[f"{key}.model_version"] = run.model_version
        out[f"{key}.preproc_version"] = run.preproc_version
        if run.label_sets:
            out[f"{key}.scores_version"] = run.scores_version
        for label_set in run.label_sets:
            out[f"{key}.label_set.{label_set.name}"] = label_set.sha256
    return out


def label_sets(runs: tuple[ModelRun, ...]) -> dict[str, dict]:
    """Label set name -> sha256 and class names (the wide score views need the class order)."""
    return {ls.name: {"sha256": ls.sha256, "classes": list(ls.class_names)} for run in runs for ls in run.label_sets}


class EcgTablesDatasink(Datasink):
    """Writes the run's embeddings, scores, errors and ledger files; commits nothing."""

    def __init__(self, output: str, run_id: str, runs: tuple[ModelRun, ...], rows_per_file: int):
        self.output = output
        self.run_id = check_run_id(run_id)
        self.runs = tuple(runs)
        self.rows_per_file = rows_per_file
        self.write_returns: list[dict] | None = None     # set on the driver when every task is done

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file       # Ray bundles blocks so files are not tiny

    def write(self, blocks: Iterable[Block], ctx) -> dict:
        start = time.perf_counter()
        now = datetime.now(timezone.utc)
        parts: dict[str, list[pa.Table]] = {}
        for block in blocks:
            batch = rows.from_arrow(BlockAccessor.for_block(block).to_arrow())
            if not len(batch[C.RECORD_ID]):
                continue
            for table, data in rows.batch_tables(batch, self.runs, self.run_id, now).items():
                parts.setdefault(table, []).append(data)
        files = {}
        schemas = rows.tables_of(self.runs)
        for table, pieces in parts.items():
            data = pa.concat_tables(pieces).sort_by("record_id")
            schemas.setdefault(table, data.schema)            # the opt-in tables: their columns come with the data
            name = f"{run_folder(self.run_id)}/part-{ctx.task_idx:05d}.zstd.parquet"
            files[table] = [delta.write_data_file(delta.table_uri(self.output, table), name, data)]
        return {"run_id": self.run_id, "files": files,
                "schemas": {t: delta.schema_to_text(s) for t, s in schemas.items()},
                "commit_metadata": commit_metadata(self.runs, self.run_id), "label_sets": label_sets(self.runs),
                "seconds": round(time.perf_counter() - start, 4)}      # write busy time, for the run's stats

    def on_write_complete(self, write_result: WriteResult) -> None:
        self.write_returns = [r for r in write_result.write_returns if r]
