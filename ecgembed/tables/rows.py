"""Turn the columns that leave the model stages (:mod:`ecgembed.columns`) into table rows.

Per model run, on the records whose ``needs_<ident>`` is true:

- an embedding row where ``embed_<ident>`` and the record and the model succeeded;
- score rows for label set ``i`` where ``score_<ident>_<i>`` and both succeeded;
- an ``errors`` row for a record that failed before the models (``model`` null, once) and for
  a model that failed on a record;
- ledger rows: one per record asked to be embedded (label_set null) and one per record x label
  set asked to be scored, ``ok`` or the error that stopped it. A score-only record (a label set
  added later) gets score and ledger rows but no new embedding row.

Nothing here names a model: everything comes from the :class:`~ecgembed.models.spec.ModelRun`.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pyarrow as pa

from ecgembed import columns as C
from ecgembed.errors import is_permanent
from ecgembed.models.spec import ModelRun
from ecgembed.tables import schemas as S

Batch = dict[str, np.ndarray]


def tables_of(runs: tuple[ModelRun, ...]) -> dict[str, pa.Schema]:
    """The tables (and schemas) a run with these models writes, in commit order."""
    out = {run.spec.table: S.embedding_schema(run.spec) for run in runs}
    if any(run.label_sets for run in runs):
        out[S.SCORES_TABLE] = S.SCORES_SCHEMA
    out[S.ERRORS_TABLE] = S.ERRORS_SCHEMA
    out[S.LEDGER_TABLE] = S.LEDGER_SCHEMA
    return {t: out[t] for t in S.commit_order(out)}


def from_arrow(block: pa.Table) -> Batch:
    """A block as the model stages leave it -> numpy columns; vectors and scores as (n, D) arrays."""
    out: Batch = {}
    n = block.num_rows
    for name in block.column_names:
        column = block.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(column.type):
            values = column.flatten().to_numpy(zero_copy_only=False)
            out[name] = values.reshape(n, column.type.list_size)                  # (n, D)
        elif isinstance(column.type, pa.ExtensionType):                         # Ray's tensor columns
            out[name] = column.to_numpy()
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    return out


def batch_tables(batch: Batch, runs: tuple[ModelRun, ...], run_id: str, now: datetime) -> dict[str, pa.Table]:
    """Every table's rows for one batch (tables without rows are left out).

    A model with no work in this run is not in the graph and has no columns: it writes nothing.
    """
    runs = tuple(run for run in runs if C.needs(run.spec) in batch)
    out: dict[str, list[pa.Table]] = {}
    for run in runs:
        out.setdefault(run.spec.table, []).append(embedding_rows(batch, run, run_id, now))
        if run.label_sets:
            out.setdefault(S.SCORES_TABLE, []).append(score_rows(batch, run, run_id, now))
    out[S.ERRORS_TABLE] = [error_rows(batch, runs, run_id, now)]
    out[S.LEDGER_TABLE] = [ledger_rows(batch, runs, run_id, now)]
    fields = _suffixes(batch, C.metadata(""))
    if fields:
        out[S.RECORD_METADATA_TABLE] = [metadata_rows(batch, fields, run_id, now)]
    names = _suffixes(batch, C.attribute(""))
    if names:
        out[S.RECORD_ATTRIBUTES_TABLE] = [attribute_rows(batch, names, run_id, now)]
    tables = {name: pa.concat_tables(parts) for name, parts in out.items()}
    return {name: table for name, table in tables.items() if table.num_rows}


def _suffixes(batch: Batch, prefix: str) -> list[str]:
    return sorted(name[len(prefix):] for name in batch if name.startswith(prefix))


# ---------------------------------------------------------------------------- masks
def _bool(batch: Batch, column: str) -> np.ndarray:
    return np.asarray(batch[column], dtype=bool)


def _record_ok(batch: Batch) -> np.ndarray:
    return np.asarray(batch[C.STATUS] == C.OK, dtype=bool)


def _model_ok(batch: Batch, run: ModelRun) -> np.ndarray:
    return _record_ok(batch) & np.asarray(batch[C.model_error_type(run.spec)] == "", dtype=bool)


def _outcome(batch: Batch, run: ModelRun, idx: np.ndarray) -> tuple[list[str], list[str | None]]:
    """Status and error type of each record in ``idx`` for this model."""
    record_err = batch[C.ERROR_TYPE][idx]
    model_err = batch[C.model_error_type(run.spec)][idx]
    ok = _record_ok(batch)[idx]
    error_type = [None if good and not m else (m if good else r) for good, r, m in zip(ok, record_err, model_err)]
    return ["ok" if e is None else "error" for e in error_type], error_type


# ---------------------------------------------------------------------------- columns
def _vectors(values: np.ndarray, dim: int, column: str) -> pa.ListArray:
    values = np.ascontiguousarray(values, np.float32)
    if values.ndim != 2 or values.shape[1] != dim:
        raise ValueError(f"column {column}: expected (n, {dim}) vectors, got shape {values.shape}")
    offsets = pa.array(np.arange(0, (len(values) + 1) * dim, dim, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)), type=S.VECTOR)


def _split(values: np.ndarray) -> list[list[str]]:
    return [v.split(",") if v else [] for v in values.tolist()]


def _provenance(batch: Batch, idx: np.ndarray, run: ModelRun, run_id: str, now: datetime) -> dict[str, pa.Array]:
    n = len(idx)
    return {
        "source_uri": pa.array(batch[C.SOURCE_URI][idx], pa.string()),
        "content_sha256": pa.array(batch[C.CONTENT_SHA256][idx], pa.string()),
        "format": pa.array(batch[C.FORMAT][idx], pa.string()),
        "model_version": pa.array([run.model_version] * n, pa.string()),
        "preproc_version": pa.array([run.preproc_version] * n, pa.string()),
        "run_id": pa.array([run_id] * n, pa.string()),
        "processed_at": pa.array([now] * n, S.TIMESTAMP),
    }


# ---------------------------------------------------------------------------- tables
def embedding_rows(batch: Batch, run: ModelRun, run_id: str, now: datetime) -> pa.Table:
    spec = run.spec
    idx = np.flatnonzero(_bool(batch, C.needs(spec)) & _bool(batch, C.embed(spec)) & _model_ok(batch, run))
    cols: dict[str, pa.Array] = {"record_id": pa.array(batch[C.RECORD_ID][idx], pa.string())}
    for vector in spec.vectors:
        column = C.vector(spec, vector)
        cols[vector.name] = _vectors(batch[column][idx], vector.dim, column)
    cols.update(_provenance(batch, idx, run, run_id, now))
    for field in (*S.QUALITY, S.NOTES):
        values = batch[field.name][idx]
        cols[field.name] = pa.array(_split(values) if pa.types.is_list(field.type) else values, field.type)
    return pa.Table.from_pydict(cols, schema=S.embedding_schema(spec))


def score_rows(batch: Batch, run: ModelRun, run_id: str, now: datetime) -> pa.Table:
    spec, parts = run.spec, []
    needs, ok = _bool(batch, C.needs(spec)), _model_ok(batch, run)
    for i, label_set in enumerate(run.label_sets):
        idx = np.flatnonzero(needs & _bool(batch, C.score(spec, i)) & ok)
        scores = np.asarray(batch[C.scores(spec, i)][idx], np.float32)           # (n, C)
        classes = len(label_set.class_names)
        if scores.ndim != 2 or scores.shape[1] != classes:
            raise ValueError(f"column {C.scores(spec, i)}: expected (n, {classes}) scores for label set "
                             f"{label_set.name}, got shape {scores.shape}")
        rows = np.repeat(idx, classes)
        total = len(rows)
        parts.append(pa.Table.from_pydict({
            "record_id": pa.array(batch[C.RECORD_ID][rows], pa.string()),
            "model": pa.array([spec.name] * total, pa.string()),
            "label_set": pa.array([label_set.name] * total, pa.string()),
            "label_set_sha256": pa.array([label_set.sha256] * total, pa.string()),
            "scores_version": pa.array([run.scores_version] * total, pa.string()),
            "class_index": pa.array(np.tile(np.arange(classes, dtype=np.int16), len(idx)), pa.int16()),
            "class_name": pa.array(list(label_set.class_names) * len(idx), pa.string()),
            "score": pa.array(scores.reshape(-1), pa.float32()),
            **_provenance(batch, rows, run, run_id, now),
        }, schema=S.SCORES_SCHEMA))
    return pa.concat_tables(parts) if parts else S.SCORES_SCHEMA.empty_table()


def error_rows(batch: Batch, runs: tuple[ModelRun, ...], run_id: str, now: datetime) -> pa.Table:
    """Records that failed before the models (model null, once), and per-model failures."""
    rows: dict[str, list] = {f.name: [] for f in S.ERRORS_SCHEMA}

    def add(i: int, model: str | None, stage: str, error_type: str, message: str) -> None:
        values = {"record_id": batch[C.RECORD_ID][i], "source_uri": batch[C.SOURCE_URI][i],
                  "format": batch[C.FORMAT][i], "model": model, "stage": stage, "error_type": error_type,
                  "permanent": is_permanent(error_type), "message": message,
                  "content_sha256": batch[C.CONTENT_SHA256][i] or None, "run_id": run_id, "processed_at": now}
        for key, value in values.items():
            rows[key].append(value)

    needed = np.zeros(len(batch[C.RECORD_ID]), bool)
    for run in runs:
        needed |= _bool(batch, C.needs(run.spec))
    for i in np.flatnonzero(~_record_ok(batch) & needed):
        add(i, None, batch[C.ERROR_STAGE][i], batch[C.ERROR_TYPE][i], batch[C.ERROR_MESSAGE][i])
    for run in runs:
        failed = _record_ok(batch) & ~_model_ok(batch, run) & _bool(batch, C.needs(run.spec))
        for i in np.flatnonzero(failed):
            add(i, run.name, run.name, batch[C.model_error_type(run.spec)][i], batch[C.model_error(run.spec)][i])
    return pa.Table.from_pydict(rows, schema=S.ERRORS_SCHEMA)


def ledger_rows(batch: Batch, runs: tuple[ModelRun, ...], run_id: str, now: datetime) -> pa.Table:
    """One row per record x model asked to embed, and per record x model x label set asked to score."""
    parts = []
    for run in runs:
        needs = _bool(batch, C.needs(run.spec))
        asks = [(None, needs & _bool(batch, C.embed(run.spec)))]
        asks += [(label_set, needs & _bool(batch, C.score(run.spec, i))) for i, label_set in enumerate(run.label_sets)]
        for label_set, mask in asks:
            idx = np.flatnonzero(mask)
            n = len(idx)
            status, error_type = _outcome(batch, run, idx)
            sha = batch[C.CONTENT_SHA256][idx]
            parts.append(pa.Table.from_pydict({
                "record_id": pa.array(batch[C.RECORD_ID][idx], pa.string()),
                "fingerprint": pa.array(batch[C.FINGERPRINT][idx], pa.string()),
                "content_sha256": pa.array([s or None for s in sha], pa.string()),
                "model": pa.array([run.name] * n, pa.string()),
                "model_version": pa.array([run.model_version] * n, pa.string()),
                "preproc_version": pa.array([run.preproc_version] * n, pa.string()),
                "label_set": pa.array([label_set and label_set.name] * n, pa.string()),
                "label_set_sha256": pa.array([label_set and label_set.sha256] * n, pa.string()),
                "scores_version": pa.array([label_set and run.scores_version] * n, pa.string()),
                "status": pa.array(status, pa.string()),
                "error_type": pa.array(error_type, pa.string()),
                "permanent": pa.array([e is not None and is_permanent(e) for e in error_type], pa.bool_()),
                "run_id": pa.array([run_id] * n, pa.string()),
                "processed_at": pa.array([now] * n, S.TIMESTAMP),
            }, schema=S.LEDGER_SCHEMA))
    return pa.concat_tables(parts) if parts else S.LEDGER_SCHEMA.empty_table()


def _strings_or_null(values: np.ndarray) -> pa.Array:
    return pa.array([v or None for v in values.tolist()], pa.string())


def metadata_rows(batch: Batch, fields: list[str], run_id: str, now: datetime) -> pa.Table:
    """The opted-in metadata fields of the records that were read (``""`` becomes null)."""
    idx = np.flatnonzero(_record_ok(batch))
    n = len(idx)
    cols = {"record_id": pa.array(batch[C.RECORD_ID][idx], pa.string())}
    cols.update({f: _strings_or_null(batch[C.metadata(f)][idx]) for f in fields})
    cols.update({"source_uri": pa.array(batch[C.SOURCE_URI][idx], pa.string()),
                 "content_sha256": pa.array(batch[C.CONTENT_SHA256][idx], pa.string()),
                 "format": pa.array(batch[C.FORMAT][idx], pa.string()),
                 "run_id": pa.array([run_id] * n, pa.string()), "processed_at": pa.array([now] * n, S.TIMESTAMP)})
    return pa.Table.from_pydict(cols, schema=S.record_metadata_schema(fields))


def attribute_rows(batch: Batch, names: list[str], run_id: str, now: datetime) -> pa.Table:
    """The manifest columns passed through, for every record of the batch (``""`` becomes null)."""
    n = len(batch[C.RECORD_ID])
    cols = {"record_id": pa.array(batch[C.RECORD_ID], pa.string())}
    cols.update({name: _strings_or_null(batch[C.attribute(name)]) for name in names})
    cols.update({"run_id": pa.array([run_id] * n, pa.string()), "processed_at": pa.array([now] * n, S.TIMESTAMP)})
    return pa.Table.from_pydict(cols, schema=S.record_attributes_schema(names))
