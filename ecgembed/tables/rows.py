"""Turn the columns that leave the model stages into the rows of each output table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa

from ecgembed.errors import is_permanent
from ecgembed.tables import schemas as S


from ecgembed import columns as C
from ecgembed.models.spec import ModelRun as ModelInfo


def _matrix(values) -> np.ndarray:
    values = np.asarray(values)
    return np.stack(values) if values.dtype == object else values


def _vectors(values: np.ndarray, dim: int) -> pa.FixedSizeListArray:
    flat = pa.array(np.ascontiguousarray(_matrix(values), np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, dim)


def _split(values: np.ndarray) -> list[list[str]]:
    return [v.split(",") if v else [] for v in values.tolist()]


def _quality(batch: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, pa.Array]:
    out = {}
    for field in S.QUALITY:
        values = batch[field.name][idx]
        out[field.name] = pa.array(_split(values) if pa.types.is_list(field.type) else values, field.type)
    return out


def _provenance(batch, idx, model: ModelInfo, run_id: str, now: datetime) -> dict[str, pa.Array]:
    n = len(idx)
    return {
        "source_uri": pa.array(batch["source_uri"][idx], pa.string()),
        "content_sha256": pa.array(batch["content_sha256"][idx], pa.string()),
        "model_version": pa.array([model.model_version] * n, pa.string()),
        "preproc_version": pa.array([model.preproc_version] * n, pa.string()),
        "run_id": pa.array([run_id] * n, pa.string()),
        "processed_at": pa.array([now] * n, S.TIMESTAMP),
    }


def _needs(batch, model: ModelInfo) -> np.ndarray:
    return np.asarray(batch[C.needs(model.spec)], bool)


def _embedded(batch, model: ModelInfo) -> np.ndarray:
    return np.flatnonzero((batch["status"] == "ok") & (batch[C.model_error_type(model.spec)] == "") & _needs(batch, model))


def embedding_table(batch: dict[str, np.ndarray], model: ModelInfo, run_id: str, now: datetime) -> pa.Table:
    idx = _embedded(batch, model)
    cols = {"record_id": pa.array(batch["record_id"][idx], pa.string())}
    for v in model.spec.vectors:
        cols[v.name] = _vectors(_matrix(batch[C.vector(model.spec, v)])[idx], v.dim)
    schema = S.SCHEMAS[model.spec.table]
    cols.update(_provenance(batch, idx, model, run_id, now))
    cols.update(_quality(batch, idx))
    return pa.Table.from_pydict(cols, schema=schema)


def scores_table(batch: dict[str, np.ndarray], model: ModelInfo, run_id: str, now: datetime) -> pa.Table:
    idx = _embedded(batch, model)
    parts = []
    for i, label_set in enumerate(model.label_sets):
        scores = _matrix(batch[C.scores(model.spec, i)])[idx]          # (n, C)
        n, c = scores.shape
        rows = np.repeat(idx, c)
        prov = _provenance(batch, rows, model, run_id, now)
        parts.append(pa.Table.from_pydict({
            "record_id": pa.array(batch["record_id"][rows], pa.string()),
            "model": pa.array([model.name] * (n * c), pa.string()),
            "label_set": pa.array([label_set.name] * (n * c), pa.string()),
            "label_set_sha256": pa.array([label_set.sha256] * (n * c), pa.string()),
            "class_index": pa.array(np.tile(np.arange(c, dtype=np.int16), n), pa.int16()),
            "class_name": pa.array(list(label_set.class_names) * n, pa.string()),
            "score": pa.array(scores.reshape(-1).astype(np.float32), pa.float32()),
            **prov,
        }, schema=S.SCORES_SCHEMA))
    return pa.concat_tables(parts) if parts else S.SCORES_SCHEMA.empty_table()


def errors_table(batch: dict[str, np.ndarray], models: tuple[ModelInfo, ...], run_id: str, now: datetime) -> pa.Table:
    """Records that failed before the models (model = null), and per-model failures."""
    rows: dict[str, list] = {f.name: [] for f in S.ERRORS_SCHEMA}

    def add(i: int, model: str | None, stage: str, error_type: str, message: str) -> None:
        sha = batch["content_sha256"][i] or None
        for key, value in (("record_id", batch["record_id"][i]), ("source_uri", batch["source_uri"][i]),
                           ("model", model), ("stage", stage), ("error_type", error_type),
                           ("permanent", is_permanent(error_type)), ("message", message),
                           ("content_sha256", sha), ("run_id", run_id), ("processed_at", now)):
            rows[key].append(value)

    for i in np.flatnonzero(batch["status"] == "error"):
        add(i, None, batch["error_stage"][i], batch["error_type"][i], batch["error_message"][i])
    for model in models:
        failed = (batch["status"] == "ok") & (batch[C.model_error_type(model.spec)] != "") & _needs(batch, model)
        for i in np.flatnonzero(failed):
            add(i, model.name, model.name, batch[C.model_error_type(model.spec)][i], batch[C.model_error(model.spec)][i])
    return pa.Table.from_pydict(rows, schema=S.ERRORS_SCHEMA)


def ledger_table(batch: dict[str, np.ndarray], models: tuple[ModelInfo, ...], run_id: str, now: datetime) -> pa.Table:
    """One row per record x model this run was asked to settle: ok, or the error that stopped it."""
    cols: dict[str, list] = {f.name: [] for f in S.LEDGER_SCHEMA}
    for model in models:
        for i in np.flatnonzero(_needs(batch, model)):
            if batch["status"][i] == "error":
                status, error_type = "error", batch["error_type"][i]
            elif batch[C.model_error_type(model.spec)][i]:
                status, error_type = "error", batch[C.model_error_type(model.spec)][i]
            else:
                status, error_type = "ok", None
            for key, value in (("record_id", batch["record_id"][i]), ("fingerprint", batch["fingerprint"][i]),
                               ("content_sha256", batch["content_sha256"][i] or None), ("model", model.name),
                               ("model_version", model.model_version), ("preproc_version", model.preproc_version),
                               ("status", status), ("error_type", error_type),
                               ("permanent", bool(error_type) and is_permanent(error_type)),
                               ("run_id", run_id), ("processed_at", now)):
                cols[key].append(value)
    return pa.Table.from_pydict(cols, schema=S.LEDGER_SCHEMA)
