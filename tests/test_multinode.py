"""The job on a real multi-node Ray cluster: a head and two worker nodes on this machine.

Each node is its own ``ray start`` (raylet, object store, workers, temp dir, ports), see
:mod:`tests.ray_cluster`. The head has no CPU, as on a cluster whose head only coordinates, so
every task and actor runs on a worker node. Drivers join through ``RAY_ADDRESS`` (a
subprocess, like a scheduler's cron job) or ``ray job submit``; where the work ran is read from
Ray's state API. One cluster serves the module; the node-kill test runs last and a test that
needs both workers restarts a killed one.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from ecgembed.tables.commit import plan_uri, read_runs
from tests.ray_cluster import LocalRayCluster, ray_bin

REPO = Path(__file__).resolve().parent.parent
MODEL_ACTOR = "MapWorker(MapBatches(ModelStage))"    # Ray Data's actor class name for a model stage
PREPARE_TASK = "MapBatches(prepare)"
SMALL, LARGE = 12, 24


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cluster(ecg_dir):
    """Head (no CPU) + two worker nodes of 2 logical CPUs and a 200 MB object store each."""
    cluster = LocalRayCluster()
    try:
        cluster.start_head(num_cpus=0)
        cluster.add_workers(2, num_cpus=2)
        yield cluster
    finally:
        cluster.shutdown()


@pytest.fixture
def two_workers(cluster) -> LocalRayCluster:
    """The cluster with two live worker nodes (a node killed by an earlier test is replaced)."""
    cluster.replace_killed()
    assert len(cluster.live_workers) == 2
    return cluster


@pytest.fixture(scope="module")
def archive(ecg_dir, tmp_path_factory) -> dict[int, Path]:
    """Folders of real WFDB records (CinC 2021, 500 Hz, 12 leads): the first 12 and 24 of them."""
    names = sorted(p.stem for p in (ecg_dir / "cinc2021_torch-ecg").glob("*.hea"))
    assert len(names) >= LARGE, names
    out = {}
    for n in (SMALL, LARGE):
        folder = tmp_path_factory.mktemp(f"archive{n}")
        for name in names[:n]:
            for ext in (".hea", ".mat"):
                shutil.copy(ecg_dir / "cinc2021_torch-ecg" / f"{name}{ext}", folder / f"{name}{ext}")
        out[n] = folder
    return out


# --------------------------------------------------------------------------- helpers
def _run_args(archive: Path, output: Path, *extra: str) -> list[str]:
    return ["--input", str(archive), "--output", str(output), "--stand-in", "--labels", "cpsc2018",
            "--records-per-task", "2", "--progress-interval", "1", *extra]


class Driver:
    """``ecgembed run`` as a separate driver process joined to the cluster (RAY_ADDRESS)."""

    def __init__(self, cluster: LocalRayCluster, args: list[str], tmp: Path, **env: str):
        self.cluster = cluster
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ecgembed.cli", "run", *args], cwd=str(REPO), text=True,
            env={**cluster.driver_env, "ECGEMBED_CACHE": str(tmp / "cache"), **env},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._job_id: str | None = None

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._reader.join(10)
        return rc

    def job_id(self) -> str | None:
        """The Ray job id of this driver, once it has joined the cluster."""
        if self._job_id is None:
            from ray.util.state import list_jobs

            for job in list_jobs(address=self.cluster.dashboard_url, raise_on_missing_output=False):
                if job.type == "DRIVER" and job.driver_info and str(job.driver_info.pid) == str(self.proc.pid):
                    self._job_id = job.job_id
        return self._job_id

    def progress(self) -> dict[str, int]:
        """The counts of the latest ``[ecgembed] P% D/T | ... | read N | failed F | melp M | ecgfm-ked K`` line."""
        for line in reversed(self.lines):
            found = re.search(r"\| read (\d+) \|.*\| melp (\d+) \| ecgfm-ked (\d+)", line)
            if found:
                return {"read": int(found[1]), "melp": int(found[2]), "ecgfm-ked": int(found[3])}
        return {"read": 0, "melp": 0, "ecgfm-ked": 0}


def _tasks(cluster: LocalRayCluster, job_id: str):
    from ray.util.state import list_tasks

    return list_tasks(address=cluster.dashboard_url, filters=[("job_id", "=", job_id)], limit=10_000, detail=True,
                      raise_on_missing_output=False)


def _model_actors(cluster: LocalRayCluster, job_id: str, state: str | None = None):
    from ray.util.state import list_actors

    filters = [("job_id", "=", job_id)] + ([("state", "=", state)] if state else [])
    return [a for a in list_actors(address=cluster.dashboard_url, filters=filters, limit=10_000, detail=True,
                                   raise_on_missing_output=False) if a.class_name == MODEL_ACTOR]


def _plans(archive: Path, output: Path, device: str):
    """The plan the pipeline makes for these flags on this cluster (CPU-only, joined by RAY_ADDRESS)."""
    from ecgembed.config import RunConfig
    from ecgembed.labels import load_label_set
    from ecgembed.pipeline import resolve_models
    from ecgembed.plan import Capacity, decide_device, plan_models

    config = RunConfig(inputs=[str(archive)], output=str(output), stand_in=True, labels=["cpsc2018"],
                       device=device).validate()
    runs = resolve_models(config, [load_label_set(n) for n in config.labels]).runs
    capacity = Capacity(gpus_now=0.0, gpus_max=None, remote=True)
    return plan_models(runs, decide_device(device, capacity), capacity, gpus_per_actor=None, max_actors=None,
                       batch_sizes={})


def _resources(plan) -> dict[str, float]:
    return {"CPU": plan.num_cpus, **({"GPU": plan.num_gpus} if plan.num_gpus else {})}


def _exactly_once(output: Path, n_records: int) -> None:
    """Every record embedded by both models exactly once: one ledger row per record x model, all
    ok, one current and one stored embedding per record, no error row (these records are sound)."""
    from ecgembed.tables.views import connect

    con = connect(str(output))
    ledger = con.execute("SELECT model, count(*), count(DISTINCT record_id), count(*) FILTER (status = 'ok') "
                         "FROM ledger WHERE label_set IS NULL GROUP BY model ORDER BY model").fetchall()
    assert ledger == [("ecgfm-ked", n_records, n_records, n_records), ("melp", n_records, n_records, n_records)], \
        f"ledger (model, rows, records, ok): {ledger}"
    for view, table in (("melp_current", "melp_embeddings"), ("ecgfm_ked_current", "ecgfm_ked_embeddings")):
        for name in (view, table):
            rows, records = con.execute(f"SELECT count(*), count(DISTINCT record_id) FROM {name}").fetchall()[0]
            assert rows == records == n_records, f"{name}: {rows} rows for {records} records, {n_records} expected"
    has_errors = con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = 'errors'").fetchall()[0][0]
    assert not has_errors or con.execute("SELECT count(*) FROM errors").fetchall() == [(0,)]


# --------------------------------------------------------------------------- (a) spread as planned
def test_a_run_spreads_prepare_tasks_and_model_actors_over_the_worker_nodes_as_planned(two_workers, archive,
                                                                                        tmp_path):
    cluster = two_workers
    output = tmp_path / "out"
    driver = Driver(cluster, _run_args(archive[SMALL], output, "--device", "cpu"), tmp_path)
    rc = driver.wait(timeout=600)
    assert rc == 0, driver.log[-4000:]
    assert f"committed: {SMALL} records" in driver.log, driver.log[-3000:]
    job_id = driver.job_id()
    assert job_id, "the driver's job is not in the cluster's job list"

    workers = {n.node_id for n in cluster.live_workers}
    prepare = [t for t in _tasks(cluster, job_id) if PREPARE_TASK in t.name and t.state == "FINISHED"]
    by_node = Counter(t.node_id for t in prepare)
    assert sum(by_node.values()) >= SMALL // 2, f"{len(prepare)} prepare tasks for {SMALL} records at 2 per task"
    assert set(by_node) <= workers, f"prepare ran outside the worker nodes: {by_node}"
    assert len(by_node) >= 2, f"every prepare task ran on one node: {by_node}"
    # one CPU each, no GPU (Ray Data may add a memory estimate)
    assert all(t.required_resources.get("CPU") == 1.0 and "GPU" not in t.required_resources for t in prepare), \
        {str(t.required_resources) for t in prepare}

    plans = _plans(archive[SMALL], output, "cpu")
    for plan in plans:          # what the driver logged is the plan computed here
        assert re.search(rf"\] {re.escape(plan.run.name)}: .* up to {plan.max_actors} actor\(s\) x "
                         rf"{plan.num_gpus:g} GPU, batch {plan.batch_size}", driver.log), plan
    actors = _model_actors(cluster, job_id)
    assert len(actors) == sum(p.max_actors for p in plans), [(a.state, a.node_id) for a in actors]
    assert sorted(json.dumps(a.required_resources, sort_keys=True) for a in actors) == \
        sorted(json.dumps(_resources(p), sort_keys=True) for p in plans for _ in range(p.max_actors))
    assert {a.node_id for a in actors} <= workers, "a model actor ran outside the worker nodes"
    assert all(a.num_restarts == 0 for a in actors)
    _exactly_once(output, SMALL)


# --------------------------------------------------------------------------- (c) cuda without GPUs
def test_c_device_cuda_on_a_cluster_without_gpus_waits_for_them_and_can_be_stopped(two_workers, archive, tmp_path):
    cluster = two_workers
    output = tmp_path / "out"
    submission = f"ecgembed-cuda-{tmp_path.name[-12:]}"
    env = cluster.env
    cmd = [ray_bin(), "job", "submit", "--address", cluster.dashboard_url, "--working-dir", str(REPO),
           "--submission-id", submission, "--no-wait", "--",
           "python", "jobs/embed_ecgs.py", *_run_args(archive[SMALL], output, "--device", "cuda")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(cluster.dashboard_url)
    try:
        deadline = time.monotonic() + 300
        pending, logs = [], ""
        while True:
            status = client.get_job_status(submission)
            assert status in (JobStatus.PENDING, JobStatus.RUNNING), \
                f"the job is {status}:\n{client.get_job_logs(submission)[-4000:]}"
            logs = client.get_job_logs(submission)
            job_id = client.get_job_info(submission).job_id
            pending = _model_actors(cluster, job_id, "PENDING_CREATION") if job_id else []
            if pending and "waiting for GPU nodes" in logs and f"| read {SMALL} |" in logs:
                break   # the CPU work is done; only the GPU actors are missing
            assert time.monotonic() < deadline, f"no model actor waits for a GPU:\n{logs[-4000:]}"
            time.sleep(1)
        # every model actor of the job asks for a GPU and none was created on CPU
        plans = _plans(archive[SMALL], output, "cuda")
        assert all(p.num_gpus > 0 for p in plans)
        actors = _model_actors(cluster, job_id)
        assert actors and all((a.required_resources or {}).get("GPU", 0) > 0 for a in actors), \
            [(a.state, a.required_resources) for a in actors]
        assert {json.dumps(a.required_resources, sort_keys=True) for a in actors} <= \
            {json.dumps(_resources(p), sort_keys=True) for p in plans}
        assert all(a.state == "PENDING_CREATION" for a in actors), [a.state for a in actors]
        assert "model actors on cuda: --device cuda" in logs, logs[-3000:]
        last = [line for line in logs.splitlines() if re.search(r"\[ecgembed\] .*\| read \d+ \|", line)][-1]
        assert re.search(rf"\| read {SMALL} \|.*\| melp 0 \| ecgfm-ked 0$", last), last   # prepared, not embedded
        assert client.get_job_status(submission) == JobStatus.RUNNING
        assert not [p for p in output.rglob("*.parquet")], "rows were written without a GPU"
        assert "committed" not in logs
    finally:
        stop = subprocess.run([ray_bin(), "job", "stop", "--address", cluster.dashboard_url, submission],
                              env=env, capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0, stop.stdout[-2000:] + stop.stderr[-2000:]
    assert client.get_job_status(submission) == JobStatus.STOPPED
    deadline = time.monotonic() + 60
    while [a for a in _model_actors(cluster, job_id) if a.state != "DEAD"]:      # nothing left waiting
        assert time.monotonic() < deadline, "the stopped job's model actors are still there"
        time.sleep(1)


# --------------------------------------------------------------------------- (b) a node dies mid-run
def test_b_a_worker_node_killed_mid_run_loses_and_duplicates_nothing(two_workers, archive, tmp_path):
    cluster = two_workers
    output = tmp_path / "out"
    run_id = "mn-node-killed"
    # every model batch (2 records) takes >= 0.5 s longer: the run is reliably mid-way when the node dies;
    # small files: output is staged by write tasks on both nodes while the run goes on
    driver = Driver(cluster, _run_args(archive[LARGE], output, "--device", "cpu", "--run-id", run_id,
                                       "--melp-batch-size", "2", "--ecgfm-ked-batch-size", "2", "--rows-per-file", "4"),
                    tmp_path, ECGEMBED_FAULT_HOOK="tests.faults:slow:0.5")
    deadline = time.monotonic() + 400
    victim = None
    try:
        while victim is None:   # kill a node that hosts a model actor, once some output is staged
            assert driver.proc.poll() is None, f"the run ended before the kill:\n{driver.log[-3000:]}"
            assert time.monotonic() < deadline, f"the run made no progress:\n{driver.log[-3000:]}"
            job_id = driver.job_id()
            staged = list(output.glob(f"*/run-{run_id}/*.parquet"))     # written, not yet committed
            if job_id and staged and 0 < driver.progress()["melp"] < LARGE:
                alive = _model_actors(cluster, job_id, "ALIVE")
                hosts = Counter(a.node_id for a in alive)
                victim = next((n for n in cluster.live_workers if hosts and n.node_id == hosts.most_common(1)[0][0]),
                              None)
            if victim is None:
                time.sleep(0.5)
        on_victim = {a.actor_id for a in alive if a.node_id == victim.node_id}
        assert not Path(plan_uri(str(output), run_id)).exists(), "the run was committing: not mid-run"
        at_kill = driver.progress()
        killed = cluster.kill(victim)
    except BaseException:
        driver.proc.kill()
        raise
    assert killed and at_kill["ecgfm-ked"] < LARGE, at_kill
    rc = driver.wait(timeout=600)
    # the kill hit the run: work in flight on that node was lost and redone, its model actor with it
    lost_tasks = [t for t in _tasks(cluster, job_id) if t.node_id == victim.node_id and t.state == "FAILED"]
    assert lost_tasks, "no task of the run failed on the killed node"
    hit = [a for a in _model_actors(cluster, job_id) if a.actor_id in on_victim]
    assert hit and all(a.num_restarts >= 1 or "NODE_DIED" in json.dumps(a.death_cause) for a in hit), \
        [(a.state, a.num_restarts, a.death_cause) for a in hit]
    if rc == 0:   # the run survived the loss of the node
        assert f"run {run_id} committed: {LARGE} records discovered, {LARGE} processed" in driver.log, driver.log[-3000:]
    else:         # or it failed cleanly, committing nothing; its rerun then does all of it
        assert run_id not in {r["run_id"] for r in read_runs(str(output))}, driver.log[-3000:]
        rerun = Driver(cluster, _run_args(archive[LARGE], output, "--device", "cpu"), tmp_path)
        assert rerun.wait(timeout=600) == 0, rerun.log[-4000:]
        assert f"{LARGE} of {LARGE} records need work" in rerun.log, rerun.log[-3000:]
    _exactly_once(output, LARGE)
