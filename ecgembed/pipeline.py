"""The job: discovered records -> CPU preprocessing -> MELP actors -> ECGFM-KED actors -> tables.

:func:`build` is the Ray Data graph and nothing else; :func:`run` is the composition root: it
checks the configuration, resolves weights and label sets, computes class-text features once,
discovers the records, executes the graph and reports.

Resources. Model stages are actor pools (weights load once per actor). On GPUs each actor takes
``gpus_per_actor`` (default 0.5, so a MELP and an ECGFM-KED actor share each GPU) and one CPU,
one actor per GPU and model; CPU preprocessing runs as tasks on the CPUs left. Without GPUs
each model gets one actor holding half a CPU: the preprocessing tasks (one CPU each) then
always have a CPU, so the pipeline neither deadlocks on a 2-CPU machine nor fuses the CPU stage
into the model actors (the stages ask for different resources).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa
import ray

from ecgembed import __version__
from ecgembed.config import STAND_IN, RunConfig
from ecgembed.errors import ConfigError
from ecgembed.models import registry
from ecgembed.preprocess import KED_PREPROC_VERSION, MELP_PREPROC_VERSION
from ecgembed.progress import ProgressReporter
from ecgembed.sources.discover import RecordRef, discover
from ecgembed.stages import KedStage, MelpStage, ModelStageConfig, fault_hook_from_env, prepare
from ecgembed.tables.commit import commit_run, recover
from ecgembed.tables.ledger import read_ledger, settled
from ecgembed.tables.lock import OutputLock
from ecgembed.tables.rows import LabelSetInfo, ModelInfo
from ecgembed.tables.sink import EcgTablesDatasink

log = logging.getLogger("ecgembed")

_PASS_TO_WORKERS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                    "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "ECGEMBED_CACHE",
                    "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_TOKEN", "ECGEMBED_FAULT_HOOK")


@dataclass
class ModelPlan:
    stage: type            # MelpStage | KedStage
    info: ModelInfo        # what the writer records
    stage_config: ModelStageConfig
    batch_size: int
    num_gpus: float
    num_cpus: float
    actors: int


def new_run_id(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + os.urandom(3).hex()


@dataclass(frozen=True)
class Work:
    """A record to process and which models it still needs."""

    ref: RecordRef
    needs: dict[str, bool]   # model prefix ("melp", "ked") -> needed


def select_work(refs: list[RecordRef], models: list["ResolvedModel"], ledger, full: bool) -> list[Work]:
    """The anti-join with the ledger: records x models not yet settled for these versions."""
    done = {m.info.prefix: set() if full else settled(ledger, m.name, m.info.model_version, m.info.preproc_version)
            for m in models}
    work = []
    for ref in refs:
        needs = {prefix: (ref.record_id, ref.fingerprint) not in keys for prefix, keys in done.items()}
        if any(needs.values()):
            work.append(Work(ref, needs))
    return work


def build(work: list[Work], plans: list[ModelPlan], config: RunConfig, progress=None) -> ray.data.Dataset:
    """The Ray Data graph: manifest -> prepare (CPU tasks) -> one actor pool per model."""
    manifest = pa.table({"record_id": [w.ref.record_id for w in work], "uri": [w.ref.uri for w in work],
                         "fingerprint": [w.ref.fingerprint for w in work],
                         **{f"needs_{p.info.prefix}": [w.needs[p.info.prefix] for w in work] for p in plans}})
    blocks = max(1, min(math.ceil(len(work) / config.records_per_task), 10_000))
    ds = ray.data.from_arrow(manifest).repartition(blocks)   # a small manifest is one block: split it
    ds = ds.map_batches(
        prepare, fn_kwargs={"models": tuple(config.models), "progress": progress},
        batch_size=config.records_per_task, num_cpus=1,
        compute=ray.data.TaskPoolStrategy(size=config.cpu_tasks) if config.cpu_tasks else None,
    )
    for plan in plans:
        ds = ds.map_batches(
            plan.stage, fn_constructor_kwargs={"config": plan.stage_config, "progress": progress},
            batch_size=plan.batch_size, num_gpus=plan.num_gpus, num_cpus=plan.num_cpus,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan.actors),
        )
    return ds


@dataclass
class ResolvedModel:
    """A model of the run with its weights checked, version known and class features computed."""

    name: str
    weights: str
    info: ModelInfo
    class_features: list


def _resolve_models(config: RunConfig, label_sets) -> list[ResolvedModel]:
    """Load each model's weights once (fail before any work), compute class-text features once."""
    infos = tuple(LabelSetInfo(ls.name, ls.sha256, tuple(ls.names)) for ls in label_sets)
    out = []
    if "melp" in config.models:
        weights = STAND_IN if config.stand_in else (config.melp_weights or _default("melp"))
        feats = (registry.melp_class_features(label_sets, config.melp_text_weights, config.melp_text_model)
                 if config.melp_text_weights else [])
        info = ModelInfo("melp", "melp", registry.with_precision(registry.melp_version(weights), config.bf16), MELP_PREPROC_VERSION, infos if feats else ())
        out.append(ResolvedModel("melp", weights, info, feats))
    if "ecgfm-ked" in config.models:
        weights = STAND_IN if config.stand_in else (config.ked_weights or _default("ecgfm-ked"))
        feats = registry.ked_class_features(label_sets, weights, config.ked_text_model)
        info = ModelInfo("ecgfm-ked", "ked", registry.with_precision(registry.ked_version(weights), config.bf16), KED_PREPROC_VERSION, infos)
        out.append(ResolvedModel("ecgfm-ked", weights, info, feats))
    return out


def _plan_models(config: RunConfig, gpus: float, models: list[ResolvedModel]) -> list[ModelPlan]:
    """Resources per model stage for the cluster at hand."""
    on_gpu = config.device == "cuda" or (config.device == "auto" and gpus > 0)
    if config.device == "cuda" and gpus == 0:
        raise ConfigError("--device cuda but the Ray cluster has no GPU")
    per_actor = config.gpus_per_actor if config.gpus_per_actor is not None else (0.5 if on_gpu else 0.0)
    actors = config.max_actors or (max(1, int(gpus)) if on_gpu else 1)
    plans = []
    for model in models:
        is_melp = model.name == "melp"
        batch = (config.melp_batch_size if is_melp else config.ked_batch_size) or \
            ((128 if is_melp else 256) if on_gpu else (16 if is_melp else 32))
        stage_config = ModelStageConfig(model.weights, "cuda" if on_gpu else "cpu", config.bf16,
                                        class_features=model.class_features, fault_hook=fault_hook_from_env())
        plans.append(ModelPlan(MelpStage if is_melp else KedStage, model.info, stage_config, batch, per_actor,
                               1.0 if on_gpu else 0.5, actors))
    return plans


def _default(model: str) -> str:
    if model == "melp":
        from ecgembed.models.melp import DEFAULT_WEIGHTS_URI
    else:
        from ecgembed.models.ecgfm_ked import DEFAULT_WEIGHTS_URI
    return DEFAULT_WEIGHTS_URI


def discover_all(config: RunConfig) -> list[RecordRef]:
    refs: list[RecordRef] = []
    for uri in config.inputs:
        refs.extend(discover(uri, config.manifest_column))
    seen: dict[str, str] = {}
    for ref in refs:
        if ref.record_id in seen and seen[ref.record_id] != ref.uri:
            raise ConfigError(f"record id {ref.record_id!r} is found under two inputs ({seen[ref.record_id]} and "
                              f"{ref.uri}): give inputs whose relative paths do not collide")
        seen[ref.record_id] = ref.uri
    return list({r.record_id: r for r in refs}.values())


def _ensure_ray() -> None:
    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in _PASS_TO_WORKERS if k in os.environ}
    if os.environ.get("RAY_ADDRESS"):          # a cluster (or inside `ray job submit`): its runtime env applies
        ray.init(log_to_driver=True)
    else:                                      # a local Ray for this process
        ray.init(runtime_env={"env_vars": env}, include_dashboard=False, log_to_driver=True)


def run(config: RunConfig, log_line=None) -> dict:
    """Run the job end to end; returns the committed run manifest.

    One run at a time per output (a lease lock). A run first publishes or cleans what crashed
    runs left, then embeds only the records x models the ledger lacks (``--full``: all of them).
    """
    say = log_line or (lambda line: print(line, file=sys.stderr, flush=True))
    config.validate()
    started = datetime.now(timezone.utc)
    run_id = config.run_id or new_run_id(started)
    from ecgembed.labels import load_label_set

    label_sets = [load_label_set(name) for name in config.labels]
    refs = discover_all(config)
    say(f"[ecgembed] run {run_id}: {len(refs)} records from {', '.join(config.inputs)} -> {config.output}")
    models = _resolve_models(config, label_sets)       # weights checked before any cluster work
    with OutputLock(config.output, run_id) as lock:
        if lock.took_over:
            say(f"[ecgembed] took over a stale lock of run {lock.took_over.get('run_id')}: {lock.took_over['reason']}")
        recovered = recover(config.output, run_id)
        for key, runs in recovered.items():
            if runs:
                say(f"[ecgembed] {key} leftovers of earlier runs: {', '.join(runs)}")
        work = select_work(refs, models, read_ledger(config.output), config.full)
        say(f"[ecgembed] {len(work)} of {len(refs)} records need work"
            + ("" if config.full else f" ({len(refs) - len(work)} already settled in the ledger)"))
        return _execute(config, run_id, started, refs, work, models, say, recovered)


def _execute(config, run_id, started, refs, work, models, say, recovered) -> dict:
    manifest = {
        "run_id": run_id, "started_at": started.isoformat(), "ecgembed_version": __version__,
        "ray_version": ray.__version__, "config": config.as_dict(), "discovered": len(refs),
        "selected": len(work), "recovered": recovered,
        "models": {m.name: {"model_version": m.info.model_version, "preproc_version": m.info.preproc_version,
                            "label_sets": [{"name": ls.name, "sha256": ls.sha256, "classes": list(ls.class_names)}
                                           for ls in m.info.label_sets]} for m in models},
    }
    if not work:   # a quiet night: no cluster work at all
        say("[ecgembed] nothing to do: every record is settled for these model versions")
        result = commit_run(config.output, run_id, [], {**manifest, "finished_at": datetime.now(timezone.utc).isoformat(),
                                                        "counts": {}})
        say(summary_line(result))
        return result
    _ensure_ray()
    plans = _plan_models(config, ray.cluster_resources().get("GPU", 0.0), models)
    for plan in plans:
        tag = " (STAND-IN weights: random, for trying the job only)" if plan.info.model_version.startswith(STAND_IN) else ""
        say(f"[ecgembed] {plan.info.name}: model_version {plan.info.model_version[:24]} "
            f"preproc {plan.info.preproc_version}, {plan.actors} actor(s) x {plan.num_gpus} GPU, "
            f"batch {plan.batch_size}{tag}")
    t0 = time.monotonic()
    with ProgressReporter(len(work), tuple(p.info.name for p in plans), config.progress_interval_s, say) as progress:
        ds = build(work, plans, config, progress.counter)

        def commit(write_returns: list[dict]) -> dict:
            counts = {table: 0 for table in _run_schemas(plans)}
            for written in write_returns:
                for table, info in written.items():
                    counts[table] = counts.get(table, 0) + info["rows"]
            finished = datetime.now(timezone.utc)
            return commit_run(config.output, run_id, write_returns, {
                **manifest, "finished_at": finished.isoformat(), "seconds": round(time.monotonic() - t0, 3),
                "counts": counts}, empty_schemas=_run_schemas(plans))

        sink = EcgTablesDatasink(config.output, run_id, tuple(p.info for p in plans), config.rows_per_file, commit)
        ds.write_datasink(sink)
        say(progress.line())
    result = sink.result
    say(summary_line(result))
    return result


def _run_schemas(plans: list[ModelPlan]) -> dict:
    """The tables this run writes (with the metadata-free schema, for empty files)."""
    from ecgembed.tables import schemas as S

    tables = [S.MODEL_TABLES[p.info.name] for p in plans] + [S.ERRORS_TABLE, S.LEDGER_TABLE]
    if any(p.info.label_sets for p in plans):
        tables.append(S.SCORES_TABLE)
    return {t: S.SCHEMAS[t] for t in tables}


def summary_line(manifest: dict) -> str:
    counts = manifest.get("counts", {})
    parts = [f"[ecgembed] run {manifest['run_id']} committed: {manifest['discovered']} records, "
             f"{manifest.get('selected', manifest['discovered'])} processed"]
    parts += [f"{table} {rows}" for table, rows in sorted(counts.items())]
    if manifest.get("seconds"):
        parts.append(f"{manifest['selected'] / manifest['seconds']:.1f} rec/s end to end")
    return " | ".join(parts)


