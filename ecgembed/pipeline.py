"""The job: discovered records -> CPU preprocessing -> one actor pool per model -> Delta tables.

:func:`build` is the Ray Data graph and nothing else; :func:`run` is the composition root: it
checks the configuration, resolves each model (weights reachable, versions, class features:
everything that can fail fast fails before the output lock), discovers the records, asks the
ledger what is left to do, plans the actor pools, executes the graph and commits.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import ray

from ecgembed import __version__
from ecgembed import columns as C
from ecgembed.config import RunConfig
from ecgembed.errors import ConfigError
from ecgembed.models.registry import SPECS
from ecgembed.models.spec import LabelSetRun, ModelRun
from ecgembed.plan import Capacity, Device, ModelPlan, decide_device, plan_models, read_capacity
from ecgembed.progress import ProgressReporter
from ecgembed.sources.discover import discover
from ecgembed.stages import ModelStage, fault_hook_from_env, prepare
from ecgembed.storage import redact
from ecgembed.tables.commit import commit_run, recover
from ecgembed.tables.ledger import read_ledger, select_work
from ecgembed.tables.lock import OutputLock
from ecgembed.tables.sink import EcgTablesDatasink

log = logging.getLogger("ecgembed")

# Variables a local Ray's workers need. They inherit the driver's environment (ray.init starts
# them as children of this process), so nothing is put in a runtime_env, which Ray would log
# in plain text.
_LOCAL_ONLY = ("ECGEMBED_FAULT_HOOK",)


def new_run_id(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + os.urandom(3).hex()


def build(work: list[C.Work], plans: list[ModelPlan], class_features: dict[str, list], config: RunConfig,
          progress=None):
    """The Ray Data graph: manifest -> prepare (CPU tasks) -> one actor pool per model."""
    runs = [p.run for p in plans]
    blocks = max(1, min(math.ceil(len(work) / config.records_per_task), 10_000))
    ds = ray.data.from_arrow(C.manifest(work, runs)).repartition(blocks)   # a small manifest is one block: split it
    ds = ds.map_batches(
        prepare, fn_kwargs={"models": tuple(r.name for r in runs), "limits": _limits(config), "progress": progress},
        batch_size=config.records_per_task, num_cpus=1,
        compute=ray.data.TaskPoolStrategy(size=config.cpu_tasks) if config.cpu_tasks else None,
    )
    for plan in plans:
        ds = ds.map_batches(
            ModelStage, batch_format="pyarrow", zero_copy_batch=True,
            fn_constructor_kwargs={"plan": plan, "class_features": class_features[plan.run.name],
                                   "progress": progress, "fault_hook": fault_hook_from_env()},
            batch_size=plan.batch_size, num_gpus=plan.num_gpus, num_cpus=plan.num_cpus,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan.max_actors),
        )
    return ds


def _limits(config: RunConfig):
    """The per-record limits of the reader, from the flags (None until the reader takes them)."""
    try:
        from ecgembed.sources.formats.base import Limits
    except ImportError:
        return None
    return Limits.from_config(config) if hasattr(Limits, "from_config") else None


@dataclass
class Resolved:
    """The models of a run, each with its version and class features, checked before any work."""

    runs: list[ModelRun]
    class_features: dict[str, list]   # model -> one (C, D) array per label set (empty without scores)


def resolve_models(config: RunConfig, label_sets) -> Resolved:
    runs, features = [], {}
    infos = tuple(LabelSetRun(ls.name, ls.sha256, tuple(ls.names)) for ls in label_sets)
    for name in config.models:
        spec = SPECS[name]
        weights, options = config.weights_for(name), config.options_for(name)
        version = spec.version(weights, config.precision)
        scores = spec.scores(options)
        features[name] = spec.class_features(label_sets, weights, options) if scores else []
        runs.append(ModelRun(spec, weights, config.precision, version, infos if scores else (),
                             spec.scores_version(weights, options) if scores else ""))
    return Resolved(runs, features)


def discover_all(config: RunConfig) -> list:
    """Every record under the inputs; one record reachable under two record ids is an error."""
    refs = []
    for uri in config.inputs:
        found = discover(uri, config.manifest_column)
        refs.extend(getattr(found, "refs", found))
    by_id: dict[str, str] = {}
    for ref in refs:
        if ref.record_id in by_id and by_id[ref.record_id] != ref.uri:
            raise ConfigError(f"record id {ref.record_id!r} is found under two inputs ({redact(by_id[ref.record_id])} "
                              f"and {redact(ref.uri)}): give inputs whose relative paths do not collide")
        by_id[ref.record_id] = ref.uri
    by_uri: dict[str, str] = {}
    for ref in refs:
        if ref.uri in by_uri and by_uri[ref.uri] != ref.record_id:
            raise ConfigError(f"{redact(ref.uri)} is reachable as two records ({by_uri[ref.uri]!r} and "
                              f"{ref.record_id!r}): the inputs overlap; give each record once")
        by_uri[ref.uri] = ref.record_id
    return sorted({r.record_id: r for r in refs}.values(), key=lambda r: r.record_id)


def _ensure_ray(config: RunConfig) -> None:
    """Join the cluster named by RAY_ADDRESS (``ray job submit``), or start a local Ray.

    A local Ray's workers are children of this process and inherit its environment, so
    credentials reach them without a ``runtime_env`` (Ray writes runtime envs to its logs).
    """
    if ray.is_initialized():
        return
    quiet = {"log_to_driver": True, "logging_level": logging.WARNING}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**quiet)
    else:
        ray.init(include_dashboard=False, **quiet)


def run(config: RunConfig, log_line=None) -> dict:
    """Run the job end to end; returns the committed run manifest (or the plan, with --dry-run).

    One run at a time per output (a lease lock). A run first completes or cleans what crashed
    runs left, then embeds only the records x models the ledger lacks (``--full``: all of them).
    """
    say = log_line or (lambda line: print(line, file=sys.stderr, flush=True))
    config.validate()
    started = datetime.now(timezone.utc)
    run_id = config.run_id or new_run_id(started)
    from ecgembed.labels import load_label_set

    label_sets = [load_label_set(name) for name in config.labels]
    resolved = resolve_models(config, label_sets)       # weights reachable, versions known, before the lock
    refs = discover_all(config)
    say(f"[ecgembed] run {run_id}: {len(refs)} records from {', '.join(redact(u) for u in config.inputs)} "
        f"-> {redact(config.output)}")
    with OutputLock(config.output, run_id) as lock:
        if lock.took_over:
            say(f"[ecgembed] took over a stale lock of run {lock.took_over.get('run_id')}: {lock.took_over['reason']}")
        recovered = recover(config.output, run_id)
        for key, runs in recovered.items():
            if runs:
                say(f"[ecgembed] {key} leftovers of earlier runs: {', '.join(runs)}")
        work = select_work(read_ledger(config.output), refs, resolved.runs, config.full)
        if config.limit is not None:
            work = work[: config.limit]
        say(f"[ecgembed] {len(work)} of {len(refs)} records need work"
            + ("" if config.full else f" ({len(refs) - len(work)} already settled in the ledger)"))
        return _execute(config, run_id, started, refs, work, resolved, lock, say, recovered)


def _manifest(config, run_id, started, refs, work, resolved, recovered) -> dict:
    return {
        "run_id": run_id, "started_at": started.isoformat(), "ecgembed_version": __version__,
        "ray_version": ray.__version__, "config": config.as_dict(), "discovered": len(refs),
        "selected": len(work), "recovered": recovered,
        "models": {r.name: {"model_version": r.model_version, "preproc_version": r.preproc_version,
                            "precision": r.precision, "scores_version": r.scores_version,
                            "label_sets": [{"name": ls.name, "sha256": ls.sha256, "classes": list(ls.class_names)}
                                           for ls in r.label_sets]} for r in resolved.runs},
    }


def _execute(config, run_id, started, refs, work, resolved, lock, say, recovered) -> dict:
    manifest = _manifest(config, run_id, started, refs, work, resolved, recovered)
    runs = [r for r in resolved.runs if any(w.needs(r.name) for w in work)]
    if not work:   # a quiet night: no cluster work at all
        say("[ecgembed] nothing to do: every record is settled for these model versions")
        result = commit_run(config.output, run_id, [], {**manifest, "finished_at": _now(), "counts": {}}, lock=lock)
        say(summary_line(result))
        return result
    _ensure_ray(config)
    capacity = read_capacity()
    device = decide_device(config.device, capacity)
    plans = plan_models(runs, device, capacity, gpus_per_actor=config.gpus_per_actor, max_actors=config.max_actors,
                        batch_sizes=config.batch_size)
    for line in describe_plan(plans, device, capacity):
        say(line)
    t0 = time.monotonic()
    with ProgressReporter(len(work), tuple(p.run.name for p in plans), config.progress_interval_s, say) as progress:
        ds = build(work, plans, resolved.class_features, config, progress.counter)
        sink = EcgTablesDatasink(config.output, run_id, tuple(resolved.runs), config.rows_per_file)
        ds.write_datasink(sink)
        say(progress.line())
        manifest.update(finished_at=_now(), seconds=round(time.monotonic() - t0, 3))
        result = commit_run(config.output, run_id, sink.write_returns, manifest, lock=lock)
    say(summary_line(result))
    return result


def describe_plan(plans: list[ModelPlan], device: Device, capacity: Capacity) -> list[str]:
    lines = [f"[ecgembed] model actors on {device.kind}: {device.reason}"]
    if device.kind == "cuda" and device.waiting:
        lines.append(f"[ecgembed] waiting for GPU nodes: the cluster has {capacity.gpus_now:g} GPU(s) now; the model "
                     f"actors wait PENDING for them (the autoscaler acts on that demand)")
    for plan in plans:
        tag = " (STAND-IN weights: random, for trying the job only)" if plan.run.model_version.startswith("stand-in") else ""
        lines.append(f"[ecgembed] {plan.run.name}: model_version {plan.run.model_version[:24]} "
                     f"preproc {plan.run.preproc_version}, up to {plan.max_actors} actor(s) x {plan.num_gpus:g} GPU, "
                     f"batch {plan.batch_size}{tag}")
    return lines


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def summary_line(manifest: dict) -> str:
    counts = manifest.get("counts", {})
    parts = [f"[ecgembed] run {manifest['run_id']} committed: {manifest['discovered']} records, "
             f"{manifest.get('selected', manifest['discovered'])} processed"]
    parts += [f"{table} {rows}" for table, rows in sorted(counts.items())]
    if manifest.get("seconds"):
        parts.append(f"{manifest['selected'] / manifest['seconds']:.1f} rec/s end to end")
    return " | ".join(parts)
