"""The per-batch work of the Ray Data graph: a CPU function and one callable class per model.

Each stage returns a row for every row it receives (img2dataset style): a record that fails
keeps flowing with ``status = "error"`` and its error fields set, and the writer routes it to
the ``errors/`` table. Model stages run their model only on the rows that are still ok. There
is no model math here: stages call the model packages' ``embed``.

Columns between stages (numpy batches):
``record_id, source_uri, content_sha256, status, error_stage, error_type, error_message``,
the quality flags of :class:`ecgembed.preprocess.QualityFlags` (``flat_leads`` and
``derived_leads`` as comma-joined strings), ``melp_input`` (B, 12, 5000) and ``ked_input``
(B, 12, 1000) until the model that consumes them, then ``melp_embedding``, ``melp_probe``,
``melp_scores_<i>``, ``ked_embedding``, ``ked_scores_<i>`` and per-model ``<m>_error_type``
and ``<m>_error`` (empty when the model succeeded).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ecgembed.errors import ECGError
from ecgembed.leads import standard_leads
from ecgembed.preprocess import KED_SAMPLES, MELP_SAMPLES, ked_input, melp_input, quality_flags
from ecgembed.sources.reader import decode_raw, fetch_many, header_uri
from ecgembed.tables.schemas import QUALITY

QUALITY_COLUMNS = tuple(f.name for f in QUALITY)          # the schema module owns the names and types
_QUALITY_DTYPES = {f.name: f.type.to_pandas_dtype() for f in QUALITY if not pa.types.is_list(f.type)}


def prepare(batch: dict[str, np.ndarray], models: tuple[str, ...], progress=None) -> dict[str, np.ndarray]:
    """CPU stage: fetch (many requests in flight), decode, pick leads, both model inputs, flags."""
    refs = list(zip(batch["uri"].tolist(), batch["record_id"].tolist()))
    n = len(refs)
    out: dict[str, np.ndarray] = {
        "record_id": np.array([r for _, r in refs], dtype=object),
        "fingerprint": np.asarray(batch["fingerprint"], dtype=object),
        "source_uri": np.array([header_uri(u) for u, _ in refs], dtype=object),
        "content_sha256": np.full(n, "", dtype=object),
        "status": np.full(n, "ok", dtype=object),
        "error_stage": np.full(n, "", dtype=object),
        "error_type": np.full(n, "", dtype=object),
        "error_message": np.full(n, "", dtype=object),
    }
    for name in QUALITY_COLUMNS:
        out[name] = np.zeros(n, _QUALITY_DTYPES[name]) if name in _QUALITY_DTYPES else np.full(n, "", dtype=object)
    for prefix in ("melp", "ked"):
        if f"needs_{prefix}" in batch:
            out[f"needs_{prefix}"] = np.asarray(batch[f"needs_{prefix}"], dtype=bool)
    if "melp" in models:
        out["melp_input"] = np.zeros((n, 12, MELP_SAMPLES), np.float32)
    if "ecgfm-ked" in models:
        out["ked_input"] = np.zeros((n, 12, KED_SAMPLES), np.float32)

    for i, raw in enumerate(fetch_with_retries(refs)):
        stage = "fetch" if isinstance(raw, ECGError) and raw.error_type in ("fetch_failed", "missing_file") else "decode"
        try:
            if isinstance(raw, ECGError):
                raise raw
            out["content_sha256"][i] = raw.content_sha256
            out["source_uri"][i] = raw.uri
            record = decode_raw(raw)
            stage = "leads"
            leads = standard_leads(record)
            stage = "preprocess"
            flags = quality_flags(leads.signal, leads.fs, leads.derived).as_dict()
            for name in QUALITY_COLUMNS:
                value = flags[name]
                out[name][i] = ",".join(value) if isinstance(value, tuple) else value
            if "melp_input" in out:
                out["melp_input"][i] = melp_input(leads.signal, leads.fs)
            if "ked_input" in out:
                out["ked_input"][i] = ked_input(leads.signal, leads.fs)
        except ECGError as err:
            out["status"][i] = "error"
            out["error_stage"][i] = stage
            out["error_type"][i] = err.error_type
            out["error_message"][i] = str(err)
        except ValueError as err:  # preprocessing refused the signal (e.g. shorter than one 100 Hz sample)
            out["status"][i] = "error"
            out["error_stage"][i] = "preprocess"
            out["error_type"][i] = "empty_signal"
            out["error_message"][i] = f"{out['source_uri'][i]}: {err}"
    if progress is not None:
        progress.add.remote(read=n, failed=int((out["status"] == "error").sum()))
    return out


FETCH_ATTEMPTS = 3
FETCH_BACKOFF_S = (0.5, 2.0)


def fetch_with_retries(refs: list[tuple[str, str]]) -> list:
    """:func:`fetch_many`, retrying records whose fetch failed transiently (network, storage)."""
    results = fetch_many(refs)
    for delay in FETCH_BACKOFF_S[: FETCH_ATTEMPTS - 1]:
        again = [i for i, r in enumerate(results) if isinstance(r, ECGError) and r.error_type == "fetch_failed"]
        if not again:
            break
        time.sleep(delay)
        for i, result in zip(again, fetch_many([refs[i] for i in again])):
            results[i] = result
    return results


@dataclass
class ModelStageConfig:
    """What a model actor needs; plain values so it pickles to any node."""

    weights: str                     # URI of the weights, or "stand-in"
    device: str = "cpu"              # "cpu" | "cuda" | "auto"
    bf16: bool = False               # bf16 autocast on GPU
    torch_threads: int = 1           # intra-op threads of a CPU actor
    text_model: str | None = None    # MELP: tokenizer/config of the optional text tower
    text_weights: str | None = None  # MELP: optional text tower weights
    class_features: list[np.ndarray] = field(default_factory=list)  # one (C, D) array per label set
    fault_hook: str | None = None    # tests only: "module:function" called with the batch index


def _device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


class _ModelStage:
    """Shared behaviour: load once per actor, run only ok rows, turn a failure into error rows."""

    name = ""          # model name, as in --models
    input_column = ""
    prefix = ""        # output column prefix

    def __init__(self, config: ModelStageConfig, progress=None):
        import torch

        # arrays arrive read-only from the object store; torch wants writable memory
        config.class_features = [np.array(f, dtype=np.float32) for f in config.class_features]
        self.config = config
        self.device = _device(config.device)
        if self.device == "cpu":
            torch.set_num_threads(max(1, config.torch_threads))
        self.progress = progress
        self.batches = 0
        self.fault = _resolve(config.fault_hook) if config.fault_hook else None
        self.model = self.load()

    def load(self):
        raise NotImplementedError

    def _embed(self, x, ok, out, error_type, error) -> None:
        """Run the model on the rows ``ok``; a failing batch is retried once, then record by record,
        so one poisonous record becomes one error row instead of failing its whole batch."""
        for attempt in range(2):
            try:
                got = self.run(np.ascontiguousarray(x[ok]))
            except Exception:  # noqa: BLE001 - retried, then isolated per record below
                continue
            for key, value in got.items():
                out[key][ok] = value
            return
        for i in ok:
            try:
                got = self.run(np.ascontiguousarray(x[i : i + 1]))
            except Exception as exc:  # noqa: BLE001 - this record becomes an error row
                error_type[i] = "model_failed"
                error[i] = f"{self.name} failed on this record: {type(exc).__name__}: {exc}"
                continue
            for key, value in got.items():
                out[key][i] = value[0]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def empty(self, n: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches += 1
        if self.fault is not None:
            self.fault(self.name, self.batches)
        x = batch.pop(self.input_column)
        needs = batch.get(f"needs_{self.prefix}", np.ones(len(x), bool))
        ok = np.flatnonzero((batch["status"] == "ok") & needs)
        out = self.empty(len(x))
        error_type = np.full(len(x), "", dtype=object)
        error = np.full(len(x), "", dtype=object)
        start = time.perf_counter()
        if len(ok):
            self._embed(x, ok, out, error_type, error)
        batch.update(out)
        batch[f"{self.prefix}_error_type"] = error_type
        batch[f"{self.prefix}_error"] = error
        if self.progress is not None:
            self.progress.add.remote(**{f"{self.name}_embedded": int(len(ok) - (error_type[ok] != "").sum()),
                                        f"{self.name}_seconds": time.perf_counter() - start})
        return batch


class MelpStage(_ModelStage):
    name, input_column, prefix = "melp", "melp_input", "melp"

    def load(self):
        from ecgembed.models import registry

        return registry.load_melp_for_job(self.config, self.device)

    def empty(self, n: int) -> dict[str, np.ndarray]:
        out = {"melp_embedding": np.zeros((n, 256), np.float32), "melp_probe": np.zeros((n, 256), np.float32)}
        for i, feats in enumerate(self.config.class_features):
            out[f"melp_scores_{i}"] = np.zeros((n, len(feats)), np.float32)
        return out

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        from ecgembed.models.melp import zero_shot_scores

        got = self.model.embed(x)   # bf16 autocast, if asked for, was set when the actor loaded the model
        out = {"melp_embedding": got["embedding"], "melp_probe": got["probe_embedding"]}
        for i, feats in enumerate(self.config.class_features):
            out[f"melp_scores_{i}"] = zero_shot_scores(torch.from_numpy(got["embedding"]), torch.from_numpy(feats)).numpy()
        return out


class KedStage(_ModelStage):
    name, input_column, prefix = "ecgfm-ked", "ked_input", "ked"

    def load(self):
        from ecgembed.models import registry

        return registry.load_ked_for_job(self.config, self.device)

    def empty(self, n: int) -> dict[str, np.ndarray]:
        out = {"ked_embedding": np.zeros((n, 768), np.float32)}
        for i, feats in enumerate(self.config.class_features):
            out[f"ked_scores_{i}"] = np.zeros((n, len(feats)), np.float32)
        return out

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        got = self.model.embed_label_sets(x, self.config.class_features, autocast_bf16=self.config.bf16)
        return {"ked_embedding": got["embedding"], **{f"ked_scores_{i}": s for i, s in enumerate(got["scores"])}}


def _resolve(spec: str):
    """``module:function[:argument]`` -> a callable ``(model_name, batch_index)``."""
    import functools
    import importlib

    module, _, rest = spec.partition(":")
    name, _, argument = rest.partition(":")
    fn = getattr(importlib.import_module(module), name)
    return functools.partial(fn, argument) if argument else fn


def fault_hook_from_env() -> str | None:
    """Tests inject faults through ECGEMBED_FAULT_HOOK="module:function[:arg]"; never set in production."""
    return os.environ.get("ECGEMBED_FAULT_HOOK") or None
