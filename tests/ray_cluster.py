"""A real multi-node Ray cluster on this machine for tests: one head and N worker nodes.

Each node is a separate ``ray start`` (own raylet, object store and workers) with its own
``--temp-dir`` and explicit ports, so it can neither collide with another Ray on the machine
(the session's in-process Ray, other sessions' clusters) nor be confused with one. Drivers
join at 127.0.0.1 and the dashboard (job and state API) listens on 127.0.0.1 only; Ray itself
advertises the machine's address for its nodes (it replaces a loopback ``--node-ip-address``)
and its gRPC servers listen on every interface, behind the explicit ports. A node's processes are found by their command line, which names the
node's temp dir; teardown and :meth:`LocalRayCluster.kill` touch only those processes and
their children (``ray stop`` would kill every Ray on the machine).

    cluster = LocalRayCluster()
    cluster.start_head(num_cpus=0)                 # GCS + dashboard (job API, state API)
    victim, _ = cluster.add_workers(2, num_cpus=2)
    subprocess.run([...], env=cluster.driver_env)  # a driver joins through RAY_ADDRESS
    cluster.kill(victim)                           # SIGKILL: the node is lost mid-run
    cluster.shutdown()
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.services import free_port

REPO = Path(__file__).resolve().parent.parent
OBJECT_STORE_BYTES = 200 * 1024 * 1024     # the smallest store that holds a few batches of 12x5000 inputs


def marker(name: str) -> str:
    """The custom resource (1 unit) each node carries, so its node id can be found by name."""
    return f"testnode_{name}"


def ray_bin() -> str:
    """The ``ray`` script of this interpreter's environment."""
    return shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"


def node_processes(temp_dir: str) -> list[psutil.Process]:
    """Every process of the node whose temp dir is ``temp_dir``, with all their descendants.

    Ray's daemons and workers name the temp dir (or a session dir under it) on their command
    line; a job's entry point (``python jobs/...``) does not, but it is a child of a worker.
    """
    def names(arg: str) -> bool:
        return arg == temp_dir or arg.endswith("=" + temp_dir) or (temp_dir + os.sep) in arg

    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(names(arg) for arg in proc.info["cmdline"] or ()):
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def stop_processes(temp_dirs: list[str], grace_s: float = 5.0) -> None:
    """SIGTERM the processes of these nodes, SIGKILL what is still alive after ``grace_s``."""
    procs = [p for d in temp_dirs for p in node_processes(d)]
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive + [p for d in temp_dirs for p in node_processes(d)]:    # and anything started meanwhile
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


@dataclass
class Node:
    """One ``ray start`` of the cluster."""

    name: str
    temp_dir: str
    head: bool
    command: list[str]
    num_cpus: float = 0
    resources: dict[str, float] = field(default_factory=dict)   # custom resources, the marker excluded
    node_id: str = ""
    killed: bool = False
    replaced: bool = False
    ports: dict[str, int] = field(default_factory=dict)


class LocalRayCluster:
    """A head and worker nodes on 127.0.0.1, each with its own temp dir and ports."""

    def __init__(self, env: dict[str, str] | None = None, object_store_bytes: int = OBJECT_STORE_BYTES):
        base = dict(os.environ if env is None else env)
        base.pop("RAY_ADDRESS", None)
        # PYTHONPATH: the workers (children of each raylet) import this checkout's ecgembed and
        # the test-only fault hooks of tests/faults.py
        self.env = {**base, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                    "PYTHONPATH": str(REPO),
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"}
        self.object_store_bytes = object_store_bytes
        self.nodes: list[Node] = []
        self.gcs_port = 0
        self.dashboard_port = 0

    # ---- addresses ------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """The GCS address a driver joins (``RAY_ADDRESS`` / ``ray.init(address=...)``)."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """The job and state API (``ray job submit --address``, ``ray.util.state``)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def driver_env(self) -> dict[str, str]:
        """The environment of a driver process that joins this cluster."""
        return {**self.env, "RAY_ADDRESS": self.address}

    @property
    def head(self) -> Node:
        return self.nodes[0]

    @property
    def workers(self) -> list[Node]:
        return [n for n in self.nodes if not n.head]

    @property
    def live_workers(self) -> list[Node]:
        return [n for n in self.workers if not n.killed]

    # ---- nodes ----------------------------------------------------------------------------------
    def _node_ports(self) -> dict[str, int]:
        return {"--node-manager-port": free_port(), "--object-manager-port": free_port(),
                "--metrics-export-port": free_port(), "--dashboard-agent-listen-port": free_port(),
                "--dashboard-agent-grpc-port": free_port(), "--runtime-env-agent-port": free_port()}

    def _launch(self, name: str, head: bool, args: list[str], ports: dict[str, int], num_cpus: float,
                resources: dict[str, float] | None) -> tuple[Node, subprocess.Popen]:
        """Run ``ray start`` for one node (it returns once the node's daemons are up)."""
        temp_dir = tempfile.mkdtemp(prefix=f"rt{name[:3]}", dir="/tmp")   # short: socket paths are limited
        command = [ray_bin(), "start", f"--temp-dir={temp_dir}",
                   "--disable-usage-stats", "--min-worker-port=0", "--max-worker-port=0",
                   f"--object-store-memory={self.object_store_bytes}", *args,
                   *[f"{k}={v}" for k, v in ports.items()]]
        node = Node(name, temp_dir, head, command, num_cpus, dict(resources or {}), ports=ports)
        self.nodes.append(node)    # before starting: a failed start is still cleaned up
        proc = subprocess.Popen(command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return node, proc

    def _settle(self, node: Node, proc: subprocess.Popen, timeout_s: float, relaunch=None) -> Node:
        """Wait for ``ray start`` to succeed and the GCS to list the node alive.

        ``ray start`` gives a raylet 30 s (fixed in Ray) to register; on a machine loaded by
        other work that can run out, so a node that timed out is removed and started once more
        (``relaunch``).
        """
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise RuntimeError(f"ray start of {node.name} took over {timeout_s:g}s") from None
        if proc.returncode != 0:
            if relaunch is not None and "timed out during startup" in out:
                self._discard(node)
                return self._settle(*relaunch(), timeout_s)
            raise RuntimeError(f"ray start of {node.name} failed ({proc.returncode}):\n{out[-3000:]}")
        if node.head:
            self._wait_for_job_api(timeout_s)
        node.node_id = self._wait_for_node(node, timeout_s)
        return node

    def _discard(self, node: Node) -> None:
        """Stop what a failed ``ray start`` left running and forget the node."""
        stop_processes([node.temp_dir])
        shutil.rmtree(node.temp_dir, ignore_errors=True)
        self.nodes.remove(node)

    def start_head(self, num_cpus: float = 0, resources: dict[str, float] | None = None,
                   timeout_s: float = 180) -> Node:
        """The head: GCS, dashboard on 127.0.0.1 (job + state API). ``num_cpus=0`` keeps the
        workload on the worker nodes, as on a cluster whose head only coordinates.

        The GCS health-checks raylets every second (Ray's default: 3 s) so a killed node is
        declared dead after ~5 s instead of ~15 s; the timeout per check stays Ray's 10 s.
        """
        assert not self.nodes, "the head is the first node"

        def launch():
            self.gcs_port, self.dashboard_port = free_port(), free_port()
            ports = {"--port": self.gcs_port, "--dashboard-port": self.dashboard_port,
                     "--ray-client-server-port": free_port(), **self._node_ports()}
            args = ["--head", f"--num-cpus={num_cpus:g}", "--num-gpus=0", "--include-dashboard=true",
                    "--dashboard-host=127.0.0.1",
                    f"--resources={json.dumps({**(resources or {}), marker('head'): 1})}",
                    "--system-config=" + json.dumps({"health_check_period_ms": 1000})]
            return self._launch("head", True, args, ports, num_cpus, resources)

        return self._settle(*launch(), timeout_s, relaunch=launch)

    def _launch_worker(self, num_cpus: float, resources: dict[str, float] | None, name: str):
        args = [f"--address={self.address}", f"--num-cpus={num_cpus:g}", "--num-gpus=0",
                f"--resources={json.dumps({**(resources or {}), marker(name): 1})}"]
        return self._launch(name, False, args, self._node_ports(), num_cpus, resources)

    def add_worker(self, num_cpus: float = 1, resources: dict[str, float] | None = None,
                   name: str | None = None, timeout_s: float = 180) -> Node:
        """A worker node joined to the head (no dashboard; its agent still reports its tasks)."""
        name = name or f"worker{len(self.nodes)}"
        return self._settle(*self._launch_worker(num_cpus, resources, name), timeout_s,
                            relaunch=lambda: self._launch_worker(num_cpus, resources, name))

    def add_workers(self, count: int, num_cpus: float = 1, resources: dict[str, float] | None = None,
                    timeout_s: float = 180) -> list[Node]:
        """``count`` worker nodes ``worker1``, ``worker2``..., started side by side."""
        names = [f"worker{len(self.workers) + 1 + i}" for i in range(count)]
        launched = [self._launch_worker(num_cpus, resources, name) for name in names]
        return [self._settle(node, proc, timeout_s, relaunch=lambda n=name: self._launch_worker(num_cpus, resources, n))
                for (node, proc), name in zip(launched, names)]

    def restart(self, node: Node, timeout_s: float = 180) -> Node:
        """A fresh node (new temp dir and ports) with the same resources as a killed one."""
        assert node.killed and not node.replaced, f"{node.name} is alive or was replaced"
        node.replaced = True
        return self.add_worker(node.num_cpus, node.resources, name=node.name + "r", timeout_s=timeout_s)

    def replace_killed(self) -> list[Node]:
        """Restart every killed worker not yet replaced (a later test needs the full cluster)."""
        return [self.restart(n) for n in self.workers if n.killed and not n.replaced]

    def kill(self, node: Node) -> list[int]:
        """SIGKILL every process of the node at once (raylet, object store, agents, workers):
        a machine lost mid-run. Returns the pids killed."""
        assert not node.head, "killing the head ends the cluster; kill a worker node"
        killed: list[int] = []
        for _ in range(3):        # a raylet may fork a worker while we kill: sweep again
            procs = node_processes(node.temp_dir)
            if not procs:
                break
            for proc in procs:
                try:
                    proc.send_signal(signal.SIGKILL)
                    killed.append(proc.pid)
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(procs, timeout=5)
        node.killed = True
        return killed

    def shutdown(self) -> None:
        """Stop every node's processes and remove the temp dirs."""
        stop_processes([n.temp_dir for n in self.nodes])
        for node in self.nodes:
            shutil.rmtree(node.temp_dir, ignore_errors=True)
        self.nodes.clear()

    # ---- state ----------------------------------------------------------------------------------
    def _wait_for_job_api(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.dashboard_url}/api/jobs/", timeout=5) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray job API at {self.dashboard_url} did not come up in {timeout_s:g}s")
            time.sleep(1)

    def _wait_for_node(self, node: Node, timeout_s: float) -> str:
        """The node id of a started node, once the GCS lists it alive (found by its marker resource)."""
        from ray.util.state import list_nodes

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                rows = list_nodes(address=self.dashboard_url, filters=[("state", "=", "ALIVE")], detail=True,
                                  raise_on_missing_output=False)
            except Exception:  # noqa: BLE001 - the state API comes up after the GCS: retried to the deadline
                rows = []
            for row in rows:
                if marker(node.name) in (row.resources_total or {}):
                    return row.node_id
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {node.name} did not join the cluster in {timeout_s:g}s "
                                   f"(logs under {node.temp_dir})")
            time.sleep(0.5)
