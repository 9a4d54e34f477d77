"""Where the model actors run and how many there are: decided from intent, not from a snapshot.

A cluster that scales GPU nodes from zero has no GPU when a nightly job is submitted. Planning
from ``ray.cluster_resources()`` alone would put the encoders on CPU there. So the plan reads:

1. ``--device cpu`` / ``--device cuda``: the user's choice, always honoured. ``cuda`` on a
   cluster with no GPU node up yet makes the GPU actors wait PENDING with their GPU request:
   that pending demand is what the Ray autoscaler acts on. It never fails for that and never
   falls back to CPU.
2. ``--device auto`` (default) picks ``cuda`` when

   - the cluster has GPUs now, or
   - the Ray autoscaler's declared node types include GPU nodes: read from the cluster
     configuration the autoscaler publishes in the GCS when it does, else from the cluster
     launcher's ``~/ray_bootstrap_config.yaml`` on the head node (where ``ray job submit``
     runs the driver); ``cluster.yaml``'s ``gpu_workers`` group with ``max_workers: 4`` and
     one GPU per node reads as 4 GPUs; or
   - the job joins an existing cluster (``RAY_ADDRESS`` is set, as under ``ray job submit``)
     whose autoscaler configuration is not readable: GPU clusters are what ecgembed is for, so
     ``--device cpu`` is the explicit choice for CPU-only clusters;

   and ``cpu`` otherwise (a local Ray on a machine without GPUs).

Pool sizes come from flags and declared capacity: ``--max-actors``, else as many actors per
model as fill the GPUs the cluster has or can scale to (``gpus / (gpus_per_actor x models)``:
with the default 0.5 GPU per actor and two models, one actor of each per GPU); on CPU one
actor per model. Pools start at one actor and grow with the backlog (Ray Data's autoscaling
actor pool), so a cluster scaling from zero gets its GPU nodes as the pools ask for them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from ecgembed.models.spec import ModelRun

# when the cluster's GPU capacity cannot be read (a remote cluster without a readable
# autoscaler config), each model's pool may grow to this many actors
UNKNOWN_GPU_CAPACITY = 8


@dataclass(frozen=True)
class Capacity:
    """What the cluster has now and what it declares it can scale to."""

    gpus_now: float
    gpus_max: float | None       # from the autoscaler's node types; None when not declared/readable
    remote: bool                 # the job joined an existing cluster (RAY_ADDRESS)


@dataclass(frozen=True)
class Device:
    kind: str        # "cpu" | "cuda"
    reason: str      # one phrase for the log line
    waiting: bool    # cuda with no GPU up yet: actors will wait for the autoscaler


def decide_device(requested: str, capacity: Capacity) -> Device:
    """The device of the model actors (see the module docstring for the rule)."""
    gpus_now, gpus_max = capacity.gpus_now, capacity.gpus_max
    if requested == "cpu":
        return Device("cpu", "--device cpu", False)
    if requested == "cuda":
        return Device("cuda", "--device cuda", gpus_now == 0)
    if gpus_now > 0:
        return Device("cuda", f"the cluster has {gpus_now:g} GPU(s)", False)
    if gpus_max:
        return Device("cuda", f"the autoscaler can add GPU nodes (up to {gpus_max:g} GPUs)", True)
    if capacity.remote and gpus_max is None:
        return Device("cuda", "a remote cluster whose autoscaler configuration is not readable; "
                              "pass --device cpu for a CPU-only cluster", True)
    return Device("cpu", "no GPU in the cluster and none it can add", False)


def read_capacity() -> Capacity:
    """The connected Ray cluster's GPUs now and its declared maximum (Ray must be initialised)."""
    import ray

    gpus_now = float(ray.cluster_resources().get("GPU", 0.0))
    gpus_max: float | None = None
    try:
        import ray._private.state

        declared = ray._private.state.state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - a private Ray API; absent or changed means "not declared"
        declared = None
    if declared is not None:
        gpus_max = float(declared.get("GPU", 0))
    else:
        gpus_max = launcher_gpus(os.path.expanduser(BOOTSTRAP_CONFIG))
    return Capacity(gpus_now, gpus_max, bool(os.environ.get("RAY_ADDRESS")))


BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"   # what `ray up` copies to the head node


def launcher_gpus(path: str) -> float | None:
    """GPUs the cluster launcher may start, from its config's ``available_node_types``; None if absent."""
    import yaml

    try:
        with open(path) as handle:
            config = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError):
        return None
    types = (config or {}).get("available_node_types") or {}
    return float(sum(float((t.get("resources") or {}).get("GPU", 0)) * int(t.get("max_workers", 0) or 0)
                     for t in types.values() if isinstance(t, dict)))


@dataclass(frozen=True)
class ModelPlan:
    """The actor pool of one model."""

    run: ModelRun
    device: str          # "cpu" | "cuda"
    batch_size: int
    num_gpus: float      # per actor
    num_cpus: float      # per actor
    max_actors: int
    torch_threads: int


def plan_models(runs: list[ModelRun], device: Device, capacity: Capacity, *, gpus_per_actor: float | None,
                max_actors: int | None, batch_sizes: dict[str, int | None]) -> list[ModelPlan]:
    """One pool per model. On GPUs each actor takes ``gpus_per_actor`` (default 0.5, so one actor
    of each of two models shares a GPU) and one CPU. Without GPUs each actor takes half a CPU:
    the preprocessing tasks (one CPU each) then always find a CPU, so a 2-CPU machine neither
    deadlocks nor fuses the CPU stage into the model actors."""
    plans = []
    on_gpu = device.kind == "cuda"
    per_actor = gpus_per_actor if gpus_per_actor is not None else (0.5 if on_gpu else 0.0)
    if on_gpu:
        gpus = max(capacity.gpus_now, capacity.gpus_max or 0.0) or float(UNKNOWN_GPU_CAPACITY)
        default_actors = max(1, math.floor(gpus / (per_actor * len(runs))))   # the pools fill the GPUs
    else:
        default_actors = 1
    for run in runs:
        batch = batch_sizes.get(run.name) or run.spec.batch_size[device.kind]
        plans.append(ModelPlan(run, device.kind, batch, per_actor if on_gpu else 0.0, 1.0 if on_gpu else 0.5,
                               max_actors or default_actors, 1))
    return plans
