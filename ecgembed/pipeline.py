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
from ecgembed.sources.formats.base import Limits
from ecgembed.stages import ModelStage, fault_hook_from_env, prepare
from ecgembed.storage import redact, redact_text
from ecgembed.tables.commit import commit_run, recover
from ecgembed.tables.ledger import read_ledger, select_work
from ecgembed.tables.lock import OutputLock
from ecgembed.tables.sink import EcgTablesDatasink

log = logging.getLogger("ecgembed")

def new_run_id(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + os.urandom(3).hex()


def build(work: list[C.Work], plans: list[ModelPlan], class_features: dict[str, list], config: RunConfig,
          progress=None, refs=()):
    """The Ray Data graph: manifest -> prepare (CPU tasks) -> one actor pool per model."""
    runs = [p.run for p in plans]
    blocks = max(1, min(math.ceil(len(work) / config.records_per_task), 10_000))
    attributes = {ref.record_id: dict(ref.attributes) for ref in refs} if config.manifest_columns else None
    ds = ray.data.from_arrow(C.manifest(work, runs, attributes, config.manifest_columns)).repartition(blocks)
    ds = ds.map_batches(
        prepare, fn_kwargs={"specs": tuple(r.spec for r in runs), "limits": _limits(config), "progress": progress,
                            "fault_hook": fault_hook_from_env("ECGEMBED_PREPARE_FAULT_HOOK"),
                            "metadata": tuple(config.metadata)},
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


def _limits(config: RunConfig) -> Limits:
    """The reader's per-record limits, from the flags."""
    return Limits.from_flags(max_object_mb=config.max_object_mb, max_signal_files=config.max_signal_files,
                             max_record_seconds=config.max_record_seconds)


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


@dataclass
class Discovered:
    refs: list                      # one per record, sorted by record id
    by_format: dict[str, int]       # records per format
    skipped: dict[str, dict]        # reason -> {extension: files}
    duplicates: list[str]           # "<uri> as <id> and <id>": the same file reached under two record ids
    summaries: list[str]            # one line per input, for the log


def discover_all(config: RunConfig) -> Discovered:
    """Every record under the inputs. Two inputs giving one record id two sources is an error; one
    file reachable under two record ids (overlapping inputs) is processed once and reported."""
    refs, by_format, skipped, summaries = [], {}, {}, []
    for uri in config.inputs:
        if config.manifest_columns and not uri.lower().endswith(".csv"):
            raise ConfigError(f"--manifest-columns needs manifest CSV inputs; {redact(uri)} is not one")
        found = discover(uri, config.manifest_column, tuple(config.manifest_columns))
        refs.extend(found.refs)
        for fmt, n in found.by_format.items():
            by_format[fmt] = by_format.get(fmt, 0) + n
        for reason, exts in found.skipped.items():
            for ext, n in exts.items():
                skipped.setdefault(reason, {})[ext] = skipped.setdefault(reason, {}).get(ext, 0) + n
        summaries.append(found.summary())
    by_id: dict[str, str] = {}
    for ref in refs:
        if ref.record_id in by_id and by_id[ref.record_id] != ref.uri:
            raise ConfigError(f"record id {ref.record_id!r} is found under two inputs ({redact(by_id[ref.record_id])} "
                              f"and {redact(ref.uri)}): give inputs whose relative paths do not collide")
        by_id[ref.record_id] = ref.uri
    first_id: dict[str, str] = {}
    duplicates, unique = [], []
    for ref in sorted({r.record_id: r for r in refs}.values(), key=lambda r: r.record_id):
        if ref.uri in first_id:
            duplicates.append(f"{redact(ref.uri)} as {first_id[ref.uri]!r} and {ref.record_id!r}")
            continue
        first_id[ref.uri] = ref.record_id
        unique.append(ref)
    return Discovered(unique, by_format, skipped, duplicates, summaries)


def _ensure_ray(config: RunConfig) -> None:
    """Join the cluster named by RAY_ADDRESS (``ray job submit``), or start a local Ray.

    A local Ray's workers are children of this process and inherit its environment, so
    credentials reach them without a ``runtime_env`` (Ray writes runtime envs to its logs).
    """
    from ecgembed.console import quiet_ray_data

    if not ray.is_initialized():
        quiet = {"log_to_driver": True, "logging_level": logging.INFO if config.verbose else logging.WARNING}
        if os.environ.get("RAY_ADDRESS"):
            ray.init(**quiet)
        else:
            ray.init(include_dashboard=False, **quiet)
    quiet_ray_data(config.verbose)


def run(config: RunConfig, log_line=None) -> dict:
    """Run the job end to end; returns the committed run manifest (with ``dry_run``: the plan).

    One run at a time per output (a lease lock). A run first completes or cleans what crashed
    runs left, then embeds only the records x models the ledger lacks (``--full``: all of them).
    """
    say = log_line or (lambda line: print(line, file=sys.stderr, flush=True))
    config.validate()
    started = datetime.now(timezone.utc)
    run_id = config.run_id or new_run_id(started)
    from ecgembed.labels import load_label_set

    label_sets = [load_label_set(name) for name in config.labels]
    _check_output(config.output)
    resolved = resolve_models(config, label_sets)       # weights reachable, versions known, before the lock
    found = discover_all(config)
    say(f"[ecgembed] run {run_id}: {len(found.refs)} records from {', '.join(redact(u) for u in config.inputs)} "
        f"-> {redact(config.output)}")
    for line in found.summaries:
        say(f"[ecgembed] {line}")
    for duplicate in found.duplicates[:10]:
        say(f"[ecgembed] warning: one file reached twice, processed once: {duplicate}")
    if config.dry_run:
        return _dry_run(config, run_id, found, resolved, say)
    with OutputLock(config.output, run_id) as lock:
        if lock.took_over:
            say(f"[ecgembed] took over a stale lock of run {lock.took_over.get('run_id')}: {lock.took_over['reason']}")
        recovered = recover(config.output, run_id, lock)     # also refuses a run id already committed
        for key, runs in recovered.items():
            if runs:
                say(f"[ecgembed] {key} leftovers of earlier runs: {', '.join(runs)}")
        work = _select(config, found, resolved, say)
        return _execute(config, run_id, started, found, work, resolved, lock, say, recovered)


def _check_output(output: str) -> None:
    """The output must be a folder/prefix (or not exist yet), never a file."""
    from ecgembed import storage

    fs, path = storage.fs_and_path(output)
    if fs.isfile(path):
        raise ConfigError(f"--output {redact(output)} is a file; give a folder or prefix for the tables")


def _select(config: RunConfig, found: Discovered, resolved: Resolved, say) -> list[C.Work]:
    work = select_work(read_ledger(config.output), found.refs, resolved.runs, config.full)
    selected = len(work)
    if config.limit is not None:
        work = work[: config.limit]
    say(f"[ecgembed] {selected} of {len(found.refs)} records need work"
        + ("" if config.full else f" ({len(found.refs) - selected} already settled in the ledger)")
        + (f"; --limit {config.limit}: processing {len(work)}" if len(work) < selected else ""))
    return work


def _dry_run(config: RunConfig, run_id: str, found: Discovered, resolved: Resolved, say) -> dict:
    """What a run would do: records and models from the ledger, resources from the cluster. No lock, no writes."""
    work = _select(config, found, resolved, say)
    needs = {r.name: {"embed": sum(r.name in w.embed for w in work),
                      "score_only": sum(r.name not in w.embed and bool(w.scores.get(r.name)) for w in work)}
             for r in resolved.runs}
    for name, n in needs.items():
        say(f"[ecgembed] dry run: {name} would embed {n['embed']} records"
            + (f" and score {n['score_only']} more (new label sets / text model)" if n["score_only"] else ""))
    plan: list[str] = []
    if work:
        _ensure_ray(config)
        capacity = read_capacity()
        device = decide_device(config.device, capacity)
        runs = [r for r in resolved.runs if any(w.needs(r.name) for w in work)]
        plan = describe_plan(plan_models(runs, device, capacity, gpus_per_actor=config.gpus_per_actor,
                                         max_actors=config.max_actors, batch_sizes=config.batch_size), device, capacity)
        for line in plan:
            say(line.replace("[ecgembed] ", "[ecgembed] dry run: "))
    say("[ecgembed] dry run: nothing was processed or written")
    return {"run_id": run_id, "dry_run": True, "discovered": len(found.refs), "selected": len(work),
            "models": needs, "plan": plan, "formats": found.by_format, "skipped": found.skipped}


def _manifest(config, run_id, started, found, work, resolved, recovered) -> dict:
    return {
        "run_id": run_id, "started_at": started.isoformat(), "ecgembed_version": __version__,
        "ray_version": ray.__version__, "config": config.as_dict(), "discovered": len(found.refs),
        "selected": len(work), "recovered": recovered, "formats": found.by_format, "skipped_files": found.skipped,
        "duplicates": found.duplicates,
        "models": {r.name: {"model_version": r.model_version, "preproc_version": r.preproc_version,
                            "precision": r.precision, "scores_version": r.scores_version,
                            "label_sets": [{"name": ls.name, "sha256": ls.sha256, "classes": list(ls.class_names)}
                                           for ls in r.label_sets]} for r in resolved.runs},
    }


def _execute(config, run_id, started, found, work, resolved, lock, say, recovered) -> dict:
    manifest = _manifest(config, run_id, started, found, work, resolved, recovered)
    runs = [r for r in resolved.runs if any(w.needs(r.name) for w in work)]
    if not work:   # a quiet night: no cluster work at all
        say("[ecgembed] nothing to do: every record is settled for these model versions")
        result = commit_run(config.output, run_id, [], {**manifest, "finished_at": _now(), "counts": {}}, lock=lock)
        for line in summary_lines(result, config.output):
            say(line)
        return result
    _ensure_ray(config)
    capacity = read_capacity()
    device = decide_device(config.device, capacity)
    plans = plan_models(runs, device, capacity, gpus_per_actor=config.gpus_per_actor, max_actors=config.max_actors,
                        batch_sizes=config.batch_size)
    for line in describe_plan(plans, device, capacity):
        say(line)
    t0 = time.monotonic()
    with ProgressReporter(len(work), tuple(p.run.name for p in plans), config.progress_interval_s,
                          log=log_line_of(say)) as progress:
        ds = build(work, plans, resolved.class_features, config, progress.counter, found.refs)
        sink = EcgTablesDatasink(config.output, run_id, tuple(p.run for p in plans), config.rows_per_file)
        ds.write_datasink(sink)
        stats = progress.stats()
    t_commit = time.monotonic()
    stats["busy_seconds"]["write"] = round(sum(float(r.get("seconds", 0.0)) for r in sink.write_returns
                                               if isinstance(r, dict)), 3)
    manifest.update(finished_at=_now(), seconds=round(t_commit - t0, 3), stats=stats,
                    failed_records=_failed_records(stats))
    result = commit_run(config.output, run_id, sink.write_returns, manifest, lock=lock)
    result.setdefault("stats", stats)["commit_seconds"] = round(time.monotonic() - t_commit, 3)
    for line in summary_lines(result, config.output):
        say(line)
    for line in update_indexes(config.output, [p.run.name for p in plans]):
        say(line)
    return result


def update_indexes(output: str, models: list[str]) -> list[str]:
    """Bring the similarity index of each model that has one up to date with the new commit.

    The run is committed already: an index that cannot be updated is reported, never a failure
    of the run (``ecgembed index OUTPUT --model M`` brings it up to date later)."""
    from ecgembed.search.store import read_manifest

    lines = []
    for model in models:
        if read_manifest(output, model) is None:
            continue
        try:
            from ecgembed.search.index import update_index

            got = update_index(output, model)
        except Exception as exc:  # noqa: BLE001 - the committed run stands; say why the index lags
            lines.append(f"[ecgembed] warning: the {model} similarity index was not updated ({type(exc).__name__}: "
                         f"{redact_text(str(exc))[:200]}); run: ecgembed index {redact(output)} --model {model}")
            continue
        lines.append(f"[ecgembed] {model} similarity index {got['action']}: +{got['added']} -{got['removed']} "
                     f"({got['count']} vectors, {got['kind']})")
    return lines


def log_line_of(say):
    """The reporter prints through ``say`` unless ``say`` is the default stderr printer."""
    return None if getattr(say, "__name__", "") == "<lambda>" else say


def _failed_records(stats: dict) -> int:
    """Records that failed for at least one model (or before the models)."""
    records = stats["records"]
    per_model = [v for k, v in records.items() if k.endswith("_failed") and k != "failed_before_models"]
    return records["failed_before_models"] + (max(per_model) if per_model else 0)


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


def summary_lines(manifest: dict, output: str) -> list[str]:
    """The end of a run: what was committed, the error types, and where to look."""
    counts = manifest.get("counts", {})
    stats = manifest.get("stats", {})
    head = (f"[ecgembed] run {manifest['run_id']} committed: {manifest['discovered']} records discovered, "
            f"{manifest.get('selected', 0)} processed")
    if manifest.get("seconds"):
        head += f" in {_duration(manifest['seconds'])}"
    if stats.get("records_per_s_steady"):
        head += f" ({stats['records_per_s_steady']:.1f} rec/s steady)"
    lines = [" | ".join([head] + [f"{table} {rows}" for table, rows in sorted(counts.items())
                                  if not table.startswith("_")])]
    by_type = stats.get("errors_by_type", {})
    if by_type:
        lines.append("[ecgembed] errors by type: " + ", ".join(f"{t} {n}" for t, n in
                                                            sorted(by_type.items(), key=lambda kv: -kv[1])))
        if stats.get("records", {}).get("internal_errors"):
            lines.append(f"[ecgembed] {stats['records']['internal_errors']} internal_error row(s): a bug in ecgembed "
                         "or a library; the message names the exception and where it was raised")
        lines.append(f"[ecgembed] see them: ecgembed sql {redact(output)} \"SELECT record_id, model, stage, error_type, "
                     f"message FROM errors WHERE run_id = '{manifest['run_id']}'\"")
    return lines


def _duration(seconds: float) -> str:
    from datetime import timedelta

    return str(timedelta(seconds=int(seconds)))
