"""The per-batch work of the Ray Data graph: one CPU function and one model-stage class.

Each stage returns a row for every row it receives (img2dataset style): a record that fails
keeps flowing with ``status = "error"`` and the step that failed, and the writer routes it to
the ``errors`` table. Column names are those of :mod:`ecgembed.columns`. There is no model math
here: a model stage calls its spec's ``load`` once and the loaded model's ``embed`` per batch.

**No record can stop a run.** ``prepare`` runs each record through named steps (fetch, decode,
leads, quality, then one input per model that needs it). An :class:`ECGError` becomes the
record's error row with its ``error_type``; any other exception is a bug in ecgembed or a
library and becomes ``internal_error``, recorded with the exception type and where it was
raised but never its message (a message can quote file content) and counted in the run
summary, so a bug is visible rather than silent.
"""

from __future__ import annotations

import os
import time
import traceback

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ecgembed import columns as C
from ecgembed.errors import ECGError
from ecgembed.leads import standard_leads
from ecgembed.models.spec import ModelSpec
from ecgembed.plan import ModelPlan
from ecgembed.preprocess import quality_flags
from ecgembed.sources.discover import RecordRef
from ecgembed.sources.formats.base import Limits
from ecgembed.sources.reader import decode_raw, fetch_many
from ecgembed.storage import redact, redact_text
from ecgembed.tables.schemas import QUALITY

QUALITY_COLUMNS = tuple(f.name for f in QUALITY)          # the schema module owns the names and types
_QUALITY_DTYPES = {f.name: f.type.to_pandas_dtype() for f in QUALITY if not pa.types.is_list(f.type)}

FETCH_ATTEMPTS = 3
FETCH_BACKOFF_S = (0.5, 2.0)


def _internal(exc: BaseException) -> str:
    """``TypeName at module.py:123`` of the innermost frame: enough to find the bug, no content."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""
    return f"unexpected {type(exc).__name__}{where} (a bug: please report it)"


class _Outcome:
    """The output columns of ``prepare`` for one batch, filled record by record."""

    def __init__(self, batch: dict[str, np.ndarray], specs: tuple[ModelSpec, ...]):
        n = len(batch[C.RECORD_ID])
        self.n = n
        self.cols: dict[str, np.ndarray] = {
            C.RECORD_ID: np.asarray(batch[C.RECORD_ID], dtype=object),
            C.FORMAT: np.asarray(batch[C.FORMAT], dtype=object),
            C.FINGERPRINT: np.asarray(batch[C.FINGERPRINT], dtype=object),
            C.SOURCE_URI: np.array([redact(u) for u in batch[C.URI].tolist()], dtype=object),
            C.CONTENT_SHA256: np.full(n, "", dtype=object),
            C.STATUS: np.full(n, C.OK, dtype=object),
            C.ERROR_STAGE: np.full(n, "", dtype=object),
            C.ERROR_TYPE: np.full(n, "", dtype=object),
            C.ERROR_MESSAGE: np.full(n, "", dtype=object),
            C.NOTES: np.full(n, "", dtype=object),
        }
        for name in QUALITY_COLUMNS:
            self.cols[name] = np.zeros(n, _QUALITY_DTYPES[name]) if name in _QUALITY_DTYPES else np.full(n, "", dtype=object)
        for key, values in batch.items():          # what the ledger decided passes through
            if key.startswith(("needs_", "embed_", "score_")):
                self.cols[key] = np.asarray(values, dtype=bool)
            elif key.startswith(C.attribute("")):
                self.cols[key] = np.asarray(values, dtype=object)
        self.specs = specs
        for spec in self.specs:
            self.cols[C.model_input(spec)] = np.zeros((n, *spec.input_shape), np.float32)

    def fail(self, i: int, step: str, error_type: str, message: str) -> None:
        self.cols[C.STATUS][i] = C.ERROR
        self.cols[C.ERROR_STAGE][i] = step
        self.cols[C.ERROR_TYPE][i] = error_type
        self.cols[C.ERROR_MESSAGE][i] = message


def prepare(batch: dict[str, np.ndarray], specs: tuple[ModelSpec, ...], limits: Limits = Limits(), progress=None,
            fault_hook: str | None = None, metadata: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """CPU stage: fetch (many requests in flight), decode, pick leads, flags, each needed model input.

    ``specs``: the models of the run (their preprocessing travels with them; no registry lookup
    in the workers). ``metadata``: the fields of the files' own metadata the user opted in to.
    """
    out = _Outcome(batch, specs)
    for field in metadata:
        out.cols[C.metadata(field)] = np.full(out.n, "", dtype=object)
    fault = _resolve(fault_hook) if fault_hook else None
    timings = {"fetch": 0.0, "decode": 0.0, "preprocess": 0.0}
    t0 = time.perf_counter()
    refs = [RecordRef(rid, uri, "", fp, fmt) for rid, uri, fp, fmt in
            zip(batch[C.RECORD_ID].tolist(), batch[C.URI].tolist(), batch[C.FINGERPRINT].tolist(),
                batch[C.FORMAT].tolist())]
    raws = fetch_with_retries(refs, limits)
    timings["fetch"] = time.perf_counter() - t0
    internal = 0
    for i, raw in enumerate(raws):
        step = "fetch"
        try:
            if isinstance(raw, ECGError):
                raise raw
            out.cols[C.CONTENT_SHA256][i] = raw.content_sha256
            t = time.perf_counter()
            step = "decode"
            record = decode_raw(raw, limits)
            out.cols[C.FORMAT][i] = record.format
            for field in metadata:
                out.cols[C.metadata(field)][i] = str(record.metadata.get(field, ""))
            step = "leads"
            if fault is not None:
                fault(step, str(batch[C.RECORD_ID][i]))
            leads = standard_leads(record)
            timings["decode"] += time.perf_counter() - t
            t = time.perf_counter()
            step = "quality"
            flags = quality_flags(leads.signal, leads.fs, leads.derived, uri=record.uri).as_dict()
            for name in QUALITY_COLUMNS:
                value = flags[name]
                out.cols[name][i] = ",".join(value) if isinstance(value, tuple) else value
            out.cols[C.NOTES][i] = ",".join(record.notes)
            for spec in out.specs:
                if out.cols[C.needs(spec)][i]:
                    step = f"{spec.name} input"
                    out.cols[C.model_input(spec)][i] = spec.preprocess(leads.signal, leads.fs)
            timings["preprocess"] += time.perf_counter() - t
        except ECGError as err:
            out.fail(i, "fetch" if err.error_type in ("fetch_failed", "missing_file") and step == "fetch" else step,
                     err.error_type, str(err))
        except Exception as exc:  # noqa: BLE001 - no record may stop a run: a bug becomes its error row
            internal += 1
            out.fail(i, step, "internal_error", f"{redact(str(batch[C.URI][i]))}: {step}: {_internal(exc)}")
        else:
            continue
        out.cols[C.ERROR_MESSAGE][i] = redact_text(out.cols[C.ERROR_MESSAGE][i])
    if progress is not None:
        failed = out.cols[C.STATUS] == C.ERROR
        histogram: dict[str, int] = {}
        for key in [f"error:{t}" for t in out.cols[C.ERROR_TYPE][failed]] + \
                   [f"stage:{s}" for s in out.cols[C.ERROR_STAGE][failed]]:
            histogram[key] = histogram.get(key, 0) + 1
        progress.add.remote(read=out.n, failed=int(failed.sum()), internal_errors=internal,
                            **{f"seconds_{k}": v for k, v in timings.items()}, **histogram)
    return out.cols


def fetch_with_retries(refs: list[RecordRef], limits: Limits) -> list:
    """:func:`fetch_many`, retrying records whose fetch failed transiently (network, storage)."""
    results = fetch_many(refs, limits)
    for delay in FETCH_BACKOFF_S[: FETCH_ATTEMPTS - 1]:
        again = [i for i, r in enumerate(results) if isinstance(r, ECGError) and r.error_type == "fetch_failed"]
        if not again:
            break
        time.sleep(delay)
        for i, result in zip(again, fetch_many([refs[i] for i in again], limits)):
            results[i] = result
    return results


def _vectors(values: np.ndarray) -> pa.FixedSizeListArray:
    """(n, D) float32 -> an Arrow fixed-size-list column (zero-copy)."""
    values = np.ascontiguousarray(values, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


class ModelStage:
    """One model's actor: load once, embed the rows that need it, turn a failure into error rows.

    Batches arrive as Arrow tables (``batch_format="pyarrow"``): only this model's input column
    is converted to an array (and then dropped); the other columns pass through untouched.
    """

    def __init__(self, plan: ModelPlan, class_features: list, progress=None, fault_hook: str | None = None):
        import torch

        self.run = plan.run
        self.spec = plan.run.spec
        if plan.device == "cpu":
            torch.set_num_threads(max(1, plan.torch_threads))
        self.model = self.spec.load(plan.run.weights, plan.device, plan.run.precision)
        # arrays arrive read-only from the object store: copied once, to the device once
        self.class_features = self.model.to_device([np.array(f, np.float32) for f in class_features])
        self.progress = progress
        self.batches = 0
        self.fault = _resolve(fault_hook) if fault_hook else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.batches += 1
        if self.fault is not None:
            self.fault(self.spec.name, self.batches)
        spec, n = self.spec, batch.num_rows
        x = _tensor(batch.column(C.model_input(spec)), spec.input_shape)          # (n, 12, N)
        batch = batch.drop_columns([C.model_input(spec)])
        ok = np.flatnonzero(pc.and_(pc.equal(batch.column(C.STATUS), C.OK), batch.column(C.needs(spec)))
                            .to_numpy(zero_copy_only=False))
        out = {C.vector(spec, v): np.zeros((n, v.dim), np.float32) for v in spec.vectors}
        for i, label_set in enumerate(self.run.label_sets):
            out[C.scores(spec, i)] = np.zeros((n, len(label_set.class_names)), np.float32)
        error_type = np.full(n, "", dtype=object)
        error = np.full(n, "", dtype=object)
        start = time.perf_counter()
        if len(ok):
            self._embed(x, ok, out, error_type, error)
        for name, values in out.items():
            batch = batch.append_column(name, _vectors(values))
        batch = batch.append_column(C.model_error_type(spec), pa.array(error_type, pa.string()))
        batch = batch.append_column(C.model_error(spec), pa.array(error, pa.string()))
        if self.progress is not None:
            failed = [t for t in error_type[ok] if t]
            counts = {f"{spec.name}_embedded": int(len(ok)) - len(failed), f"{spec.name}_failed": len(failed),
                      f"{spec.name}_rows": n, f"seconds_{spec.name}": time.perf_counter() - start}
            for t in failed:
                counts[f"{spec.name}_error:{t}"] = counts.get(f"{spec.name}_error:{t}", 0) + 1
            self.progress.add.remote(**counts)
        return batch

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        got = self.model.embed(np.ascontiguousarray(x), self.class_features)
        flat = {C.vector(self.spec, v): got[v.name] for v in self.spec.vectors}
        flat.update({C.scores(self.spec, i): s for i, s in enumerate(got.get("scores", []))})
        return flat

    def _embed(self, x, ok, out, error_type, error) -> None:
        """Run the model on the rows ``ok``; a failing batch is retried once, then record by record,
        so one poisonous record becomes one error row instead of failing its whole batch."""
        for _attempt in range(2):
            try:
                got = self._run(x[ok])
            except Exception:  # noqa: BLE001 - retried, then isolated per record below
                continue
            for key, value in got.items():
                out[key][ok] = value
            return
        for i in ok:
            try:
                got = self._run(x[i : i + 1])
            except Exception as exc:  # noqa: BLE001 - this record becomes an error row
                error_type[i] = "model_failed"
                error[i] = f"{self.spec.name} failed on this record: {_internal(exc)}"
                continue
            for key, value in got.items():
                out[key][i] = value[0]


def _tensor(column: pa.ChunkedArray, shape: tuple[int, ...]) -> np.ndarray:
    """A Ray tensor column -> a (n, *shape) float32 array (zero-copy where the chunks allow)."""
    chunks = [chunk.to_numpy() for chunk in column.chunks] if hasattr(column, "chunks") else [column.to_numpy()]
    arrays = [c if c.ndim == len(shape) + 1 else np.stack(c) for c in chunks]
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _resolve(spec: str):
    """``module:function[:argument]`` -> a callable ``(model_name, batch_index)``."""
    import functools
    import importlib

    module, _, rest = spec.partition(":")
    name, _, argument = rest.partition(":")
    fn = getattr(importlib.import_module(module), name)
    return functools.partial(fn, argument) if argument else fn


def fault_hook_from_env(name: str = "ECGEMBED_FAULT_HOOK") -> str | None:
    """Tests inject faults through ECGEMBED_FAULT_HOOK (model stages: called with the model and the
    batch index) and ECGEMBED_PREPARE_FAULT_HOOK (prepare: called with the step and the record id),
    each "module:function[:arg]"; never set in production."""
    return os.environ.get(name) or None
