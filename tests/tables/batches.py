"""Batches shaped as the model stages hand them to the sink (ecgembed/columns.py), for table tests.

The table layer is tested without the models: :func:`stage_batch` takes the manifest the ledger
decided (:func:`ecgembed.columns.manifest`) and adds what ``prepare`` and the model pools add,
with vectors and scores derived from the record id (so a re-embedding gives the same values)
and with chosen records failing. :func:`write_task` runs the real sink's ``write`` on it (the
Ray task body, called directly), :func:`nightly` does a whole run's table side.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from types import SimpleNamespace

import numpy as np
import pyarrow as pa

from ecgembed import columns as C
from ecgembed.models.registry import SPECS
from ecgembed.models.spec import LabelSetRun, ModelRun
from ecgembed.tables import schemas as S
from ecgembed.tables.commit import commit_run, recover
from ecgembed.tables.ledger import read_ledger, select_work
from ecgembed.tables.lock import OutputLock
from ecgembed.tables.sink import EcgTablesDatasink

MELP, KED = SPECS["melp"], SPECS["ecgfm-ked"]


@dataclass(frozen=True)
class Ref:
    record_id: str
    uri: str
    format: str
    fingerprint: str


def refs(n: int, prefix: str = "site/r", fingerprint: str = "fp1") -> list[Ref]:
    return [Ref(f"{prefix}{i:03d}", f"/archive/{prefix}{i:03d}.hea", "wfdb", fingerprint) for i in range(n)]


def label_set(name: str, classes: tuple[str, ...], salt: str = "") -> LabelSetRun:
    sha = hashlib.sha256(("|".join(classes) + salt).encode()).hexdigest()
    return LabelSetRun(name, sha, classes)


def model_runs(melp_version="melp-v1", ked_version="ked-v1", label_sets=(), scores_version="text-v1") -> list[ModelRun]:
    return [ModelRun(MELP, "stand-in", "fp32", melp_version),
            ModelRun(KED, "stand-in", "fp32", ked_version, tuple(label_sets), scores_version if label_sets else "")]


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def stage_batch(work, runs, record_errors: dict | None = None, model_errors: dict | None = None,
                metadata: dict | None = None, attributes: dict | None = None) -> dict:
    """The numpy batch the sink receives for ``work``.

    ``record_errors``: record_id -> error_type (failed in prepare); ``model_errors``:
    (record_id, model name) -> error_type (the model failed on it); ``metadata`` /
    ``attributes``: field -> {record_id: value} for the opt-in ``meta_``/``attr_`` columns.
    """
    record_errors, model_errors = record_errors or {}, model_errors or {}
    manifest = C.manifest(work, runs)
    batch = {name: manifest[name].to_numpy(zero_copy_only=False) for name in manifest.column_names}
    ids = [w.record_id for w in work]
    n = len(ids)
    failed = np.array([rid in record_errors for rid in ids], bool)
    batch[C.SOURCE_URI] = np.array([w.uri for w in work], object)
    batch[C.CONTENT_SHA256] = np.array(["" if rid in record_errors and record_errors[rid] == "fetch_failed"
                                        else hashlib.sha256(f"{rid}:{w.fingerprint}".encode()).hexdigest()
                                        for rid, w in zip(ids, work)], object)
    batch[C.STATUS] = np.where(failed, C.ERROR, C.OK).astype(object)
    batch[C.ERROR_STAGE] = np.array(["decode" if f else "" for f in failed], object)
    batch[C.ERROR_TYPE] = np.array([record_errors.get(rid, "") for rid in ids], object)
    batch[C.ERROR_MESSAGE] = np.array([f"{rid}: {record_errors[rid]}" if rid in record_errors else "" for rid in ids], object)
    for field in S.QUALITY:
        batch[field.name] = (np.array(["" for _ in ids], object) if field.type.num_fields
                             else np.zeros(n, field.type.to_pandas_dtype()))
    batch["fs"][:] = 500.0
    batch["flat_leads"][:] = "V1,V2"
    batch[C.NOTES] = np.array(["" for _ in ids], object)
    for field, values in (metadata or {}).items():
        batch[C.metadata(field)] = np.array([values.get(rid, "") for rid in ids], object)
    for name, values in (attributes or {}).items():
        batch[C.attribute(name)] = np.array([values.get(rid, "") for rid in ids], object)
    for run in runs:
        spec = run.spec
        for vector in spec.vectors:
            batch[C.vector(spec, vector)] = np.stack(
                [np.random.default_rng(_seed(f"{rid}:{spec.name}:{vector.name}")).standard_normal(vector.dim)
                 for rid in ids]).astype(np.float32).reshape(n, vector.dim)            # (B, D)
        for i, ls in enumerate(run.label_sets):
            batch[C.scores(spec, i)] = np.stack(
                [np.random.default_rng(_seed(f"{rid}:{spec.name}:{ls.name}")).random(len(ls.class_names))
                 for rid in ids]).astype(np.float32).reshape(n, len(ls.class_names))   # (B, C_i)
        errors = [model_errors.get((rid, spec.name), "") for rid in ids]
        batch[C.model_error_type(spec)] = np.array(errors, object)
        batch[C.model_error(spec)] = np.array([f"{spec.name} failed" if e else "" for e in errors], object)
    return batch


def write_task(output: str, run_id: str, runs, batch: dict, task_idx: int = 0) -> dict:
    """The body of one Ray write task of the real sink, on one block made from ``batch``."""
    sink = EcgTablesDatasink(output, run_id, tuple(runs), rows_per_file=1000)
    return sink.write([to_block(batch)], SimpleNamespace(task_idx=task_idx))


def to_block(batch: dict) -> pa.Table:
    """The Arrow block the model stages emit: (n, D) arrays as fixed_size_list<float32>[D]."""
    cols = {}
    for name, values in batch.items():
        if values.ndim == 2:
            flat = pa.array(np.ascontiguousarray(values, np.float32).reshape(-1))
            cols[name] = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
        else:
            cols[name] = pa.array(values.tolist() if values.dtype == object else values)
    return pa.table(cols)


def nightly(output: str, run_id: str, all_refs, runs, full=False, record_errors=None, model_errors=None,
            tasks: int = 2, **columns) -> dict:
    """One run's table side: lock, recover, select work, write tasks, commit. Returns the manifest."""
    with OutputLock(output, run_id) as lock:
        recovered = recover(output, run_id, lock)
        work = select_work(read_ledger(output), all_refs, runs, full)
        returns = []
        for t in range(tasks):
            part = work[t::tasks]
            if part:
                batch = stage_batch(part, runs, record_errors, model_errors, **columns)
                returns.append(write_task(output, run_id, runs, batch, t))
        manifest = commit_run(output, run_id, returns, {"started_at": datetime.now(timezone.utc).isoformat(),
                                                        "selected": len(work)}, lock)
    return {**manifest, "recovered": recovered, "work": work}
