"""`ray job submit` for real: a Ray head started with `ray start`, the job script, tables on S3.

The head gets its own temp dir and explicit ports (dashboard on 127.0.0.1), so it does not
collide with the session's in-process Ray; at the end only the processes whose command line
names that temp dir are stopped (`ray stop` would kill every Ray process on the machine).
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
from importlib import resources
from pathlib import Path

import duckdb
import psutil
import pytest

from tests.services import free_port

REPO = Path(__file__).resolve().parent.parent


def _ray_bin() -> str:
    return shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"


def _stop_cluster(temp_dir: str) -> None:
    procs = [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture
def ray_head():
    temp_dir = tempfile.mkdtemp(prefix="rayt", dir="/tmp")  # short: Ray's socket paths have a length limit
    dashboard = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    ports = {"--port": free_port(), "--dashboard-port": dashboard, "--ray-client-server-port": free_port(),
             "--node-manager-port": free_port(), "--object-manager-port": free_port(),
             "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
             "--metrics-export-port": free_port(), "--runtime-env-agent-port": free_port()}
    cmd = [_ray_bin(), "start", "--head", "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           f"--temp-dir={temp_dir}", "--disable-usage-stats", *[f"{k}={v}" for k, v in ports.items()]]
    try:
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=180)
        address = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 60
        while subprocess.run([_ray_bin(), "job", "list", "--address", address], env=env,
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the Ray job API did not come up")
            time.sleep(1)
        yield address, env
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_writes_the_tables(ray_head, s3):
    address, env = ray_head
    samples = Path(str(resources.files("ecgembed") / "samples"))
    archive = s3.put_dir(samples, "jobsubmit/archive")
    output = s3.url("jobsubmit/out")
    submission = f"ecgembed-test-{os.getpid()}"
    cmd = [_ray_bin(), "job", "submit", "--address", address, "--working-dir", str(REPO),
           "--submission-id", submission, "--runtime-env-json", json.dumps({"env_vars": s3.env}), "--",
           "python", "jobs/embed_ecgs.py", "--input", archive, "--output", output, "--stand-in", "--device", "cpu",
           "--labels", "cpsc2018", "--progress-interval", "5"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    logs = proc.stdout + proc.stderr
    assert "[ecgembed] run " in logs and "committed: 6 records" in logs
    # the same submission id cannot start a second run on this cluster
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "already exists" in (again.stdout + again.stderr)

    con = duckdb.connect()
    con.register_filesystem(s3.fs)
    s3.fs.invalidate_cache()
    melp = con.execute(f"select count(*), min(model_version) from read_parquet('{output}/melp_embeddings/**/*.parquet')").fetchall()[0]
    assert melp[0] == 5 and melp[1].startswith("stand-in:")
    errors = con.execute(f"select record_id, error_type from read_parquet('{output}/errors/**/*.parquet')").fetchall()
    assert errors == [("broken/E07501", "truncated")]
    scores = con.execute(f"select count(*) from read_parquet('{output}/zero_shot_scores/**/*.parquet')").fetchall()[0][0]
    assert scores == 5 * 9
