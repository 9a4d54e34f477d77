"""Where the model actors run and how many: decided from intent and declared capacity."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecgembed.models.registry import SPECS
from ecgembed.models.spec import ModelRun
from ecgembed.plan import UNKNOWN_GPU_CAPACITY, Capacity, decide_device, plan_models, read_capacity

LOCAL_NO_GPU = Capacity(gpus_now=0, gpus_max=None, remote=False)
REMOTE_UNKNOWN = Capacity(gpus_now=0, gpus_max=None, remote=True)
REMOTE_CPU_ONLY = Capacity(gpus_now=0, gpus_max=0, remote=True)
SCALES_FROM_ZERO = Capacity(gpus_now=0, gpus_max=4, remote=True)     # the shipped cluster.yaml: 4 x 1 GPU, min 0
GPUS_UP = Capacity(gpus_now=8, gpus_max=8, remote=False)


@pytest.mark.parametrize("capacity, kind, waiting", [
    (LOCAL_NO_GPU, "cpu", False),          # a laptop or CI: CPU
    (REMOTE_CPU_ONLY, "cpu", False),       # an autoscaler that declares no GPU node type
    (SCALES_FROM_ZERO, "cuda", True),      # no GPU up yet, the autoscaler can add them
    (REMOTE_UNKNOWN, "cuda", True),        # a remote cluster that does not say: GPU, the documented rule
    (GPUS_UP, "cuda", False),
])
def test_auto_picks_cuda_when_the_cluster_has_or_can_add_gpus(capacity, kind, waiting):
    device = decide_device("auto", capacity)
    assert (device.kind, device.waiting) == (kind, waiting)
    assert device.reason


@pytest.mark.parametrize("capacity", [LOCAL_NO_GPU, REMOTE_UNKNOWN, SCALES_FROM_ZERO, GPUS_UP])
def test_an_explicit_device_is_always_honoured_and_cuda_never_falls_back(capacity):
    assert decide_device("cpu", capacity).kind == "cpu"
    cuda = decide_device("cuda", capacity)
    assert cuda.kind == "cuda" and cuda.waiting == (capacity.gpus_now == 0)


def _runs():
    return [ModelRun(spec, "stand-in", "fp32", "v") for spec in SPECS.values()]


def test_pools_are_sized_from_declared_capacity_not_from_the_gpus_alive_now():
    device = decide_device("auto", SCALES_FROM_ZERO)
    plans = plan_models(_runs(), device, SCALES_FROM_ZERO, gpus_per_actor=None, max_actors=None, batch_sizes={})
    # 4 GPUs the autoscaler can add, 0.5 GPU per actor, two models: one actor of each per GPU
    assert [(p.max_actors, p.num_gpus, p.num_cpus, p.device) for p in plans] == [(4, 0.5, 1.0, "cuda")] * 2
    assert [p.batch_size for p in plans] == [SPECS["melp"].batch_size["cuda"], SPECS["ecgfm-ked"].batch_size["cuda"]]
    unknown = plan_models(_runs(), decide_device("auto", REMOTE_UNKNOWN), REMOTE_UNKNOWN, gpus_per_actor=None,
                          max_actors=None, batch_sizes={})
    assert {p.max_actors for p in unknown} == {UNKNOWN_GPU_CAPACITY}
    whole = plan_models(_runs(), device, SCALES_FROM_ZERO, gpus_per_actor=1.0, max_actors=None, batch_sizes={})
    assert {p.max_actors for p in whole} == {2}          # a whole GPU per actor: the 4 GPUs split between the models


def test_flags_override_the_plan_and_cpu_pools_never_take_a_whole_cpu():
    cpu = plan_models(_runs(), decide_device("cpu", GPUS_UP), GPUS_UP, gpus_per_actor=None, max_actors=None,
                      batch_sizes={"melp": 3})
    assert [(p.max_actors, p.num_gpus, p.num_cpus, p.batch_size) for p in cpu] == \
        [(1, 0.0, 0.5, 3), (1, 0.0, 0.5, SPECS["ecgfm-ked"].batch_size["cpu"])]
    two = plan_models(_runs(), decide_device("cuda", GPUS_UP), GPUS_UP, gpus_per_actor=0.25, max_actors=2,
                      batch_sizes={})
    assert {(p.max_actors, p.num_gpus) for p in two} == {(2, 0.25)}


def test_capacity_reads_the_autoscaler_node_types_ray_publishes_to_jobs(ray_local, monkeypatch):
    """What a cluster launcher / KubeRay autoscaler publishes in the GCS, read by a real job driver."""
    import ray._raylet
    from ray.core.generated import autoscaler_pb2
    from ray.experimental import internal_kv

    namespace, key = ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE, ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY
    assert read_capacity().gpus_max is None          # a plain local Ray declares nothing
    config = autoscaler_pb2.ClusterConfig()
    for name, resources, max_count in (("head", {"CPU": 2}, 0), ("cpu", {"CPU": 8}, 8), ("gpu", {"CPU": 8, "GPU": 1}, 4)):
        group = config.node_group_configs.add(name=name, min_count=0, max_count=max_count)
        group.resources.update(resources)
    internal_kv._internal_kv_put(key, config.SerializeToString(), namespace=namespace)
    try:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        capacity = read_capacity()
        assert (capacity.gpus_now, capacity.gpus_max, capacity.remote) == (0, 4, False)
        assert decide_device("auto", capacity).kind == "cuda"
        monkeypatch.setenv("RAY_ADDRESS", "auto")
        assert read_capacity().remote
    finally:
        internal_kv._internal_kv_del(key, namespace=namespace)


def test_capacity_reads_the_cluster_launchers_config_on_the_head_node(ray_local, tmp_path, monkeypatch):
    """Under `ray up cluster.yaml` the head node holds the launcher's config; the shipped one declares GPUs."""
    import shutil

    from ecgembed.plan import BOOTSTRAP_CONFIG, launcher_gpus

    repo = Path(__file__).resolve().parent.parent
    monkeypatch.setenv("HOME", str(tmp_path))
    assert read_capacity().gpus_max is None
    shutil.copy(repo / "cluster.yaml", Path(BOOTSTRAP_CONFIG.replace("~", str(tmp_path))))
    capacity = read_capacity()
    assert capacity.gpus_now == 0 and capacity.gpus_max == launcher_gpus(str(repo / "cluster.yaml")) > 0
    assert decide_device("auto", capacity).kind == "cuda"
