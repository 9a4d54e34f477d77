"""A Ray Data sink that writes the four tables of a run to a staging area, then commits them.

Write tasks put each table's rows (and the run's ledger rows) in
``OUTPUT/_staging/<run_id>/<table>/part-<task>.parquet``.
File names are deterministic (the write task's index), so a retried task overwrites its own
files instead of adding a second copy. Nothing under ``_staging/`` is visible to readers of the
tables. ``on_write_complete`` runs once on the driver after every task succeeded and commits
(:mod:`ecgembed.tables.commit`): files move into the table folders and the run manifest is
written last.
"""

from __future__ import annotations

import posixpath
from datetime import datetime, timezone
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.block import Block, BlockAccessor
from ray.data.datasource.datasink import Datasink, WriteResult

from ecgembed import storage
from ecgembed.tables import schemas as S
from ecgembed.tables.commit import staging_uri
from ecgembed.tables.rows import ModelInfo, embedding_table, errors_table, ledger_table, scores_table


class EcgTablesDatasink(Datasink):
    """Splits each block into melp_embeddings / ecgfm_ked_embeddings / zero_shot_scores / errors."""

    def __init__(self, output: str, run_id: str, models: tuple[ModelInfo, ...], rows_per_file: int,
                 on_complete=None):
        self.write_returns: list = []
        self.output = output
        self.run_id = run_id
        self.models = models
        self.rows_per_file = rows_per_file
        self.on_complete = on_complete   # driver-side commit callback, called with the task results
        self.result: object = None

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file       # Ray bundles blocks so files are not tiny

    def write(self, blocks: Iterable[Block], ctx) -> dict:
        now = datetime.now(timezone.utc)
        parts: dict[str, list[pa.Table]] = {t: [] for t in (*S.TABLES, S.LEDGER_TABLE)}
        for block in blocks:
            batch = BlockAccessor.for_block(block).to_batch_format("numpy")
            if not len(batch["record_id"]):
                continue
            for model in self.models:
                parts[model.spec.table].append(embedding_table(batch, model, self.run_id, now))
                if model.label_sets:
                    parts[S.SCORES_TABLE].append(scores_table(batch, model, self.run_id, now))
            parts[S.ERRORS_TABLE].append(errors_table(batch, self.models, self.run_id, now))
            parts[S.LEDGER_TABLE].append(ledger_table(batch, self.models, self.run_id, now))
        written = {}
        for table, tables in parts.items():
            data = pa.concat_tables(tables) if tables else None
            if data is None or data.num_rows == 0:
                continue
            path = staging_uri(self.output, self.run_id, table, f"part-{ctx.task_idx:05d}.parquet")
            self._write_parquet(data.sort_by("record_id"), table, path)
            written[table] = {"path": path, "rows": data.num_rows}
        return written

    def _write_parquet(self, data: pa.Table, table: str, uri: str) -> None:
        meta = {"run_id": self.run_id, "table": table}
        for model in self.models:
            meta[f"{model.name}.model_version"] = model.model_version
            meta[f"{model.name}.preproc_version"] = model.preproc_version
            for ls in model.label_sets:
                meta[f"{model.name}.label_set.{ls.name}"] = ls.sha256
        fs, path = storage.fs_and_path(uri)
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with fs.open(path, "wb") as handle:
            pq.write_table(data.replace_schema_metadata(None).cast(S.with_metadata(S.SCHEMAS[table], meta)),
                           handle, **S.PARQUET_OPTIONS)

    def on_write_complete(self, write_result: WriteResult) -> None:
        self.write_returns = [r for r in write_result.write_returns if r]
        if self.on_complete is not None:
            self.result = self.on_complete(self.write_returns)
