"""`ray job submit` for real: a Ray head started with `ray start`, the job script, tables on S3.

The head (tests/ray_cluster.py) gets its own temp dir and explicit ports (dashboard on
127.0.0.1), so it does not collide with the session's in-process Ray; at the end only the
processes whose command line names that temp dir are stopped (`ray stop` would kill every Ray
process on the machine).
"""

from __future__ import annotations

import json
import os
import subprocess
from importlib import resources
from pathlib import Path

import duckdb
import pytest

from tests.ray_cluster import LocalRayCluster, ray_bin

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def ray_head():
    cluster = LocalRayCluster()
    try:
        cluster.start_head(num_cpus=2)
        yield cluster.dashboard_url, cluster.env
    finally:
        cluster.shutdown()


def test_ray_job_submit_writes_the_tables(ray_head, s3):
    address, env = ray_head
    samples = Path(str(resources.files("ecgembed") / "samples"))
    archive = s3.put_dir(samples, "jobsubmit/archive")
    output = s3.url("jobsubmit/out")
    submission = f"ecgembed-test-{os.getpid()}"
    cmd = [ray_bin(), "job", "submit", "--address", address, "--working-dir", str(REPO),
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
