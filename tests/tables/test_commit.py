"""The commit: each run's files committed to each table exactly once, whatever step a crash hits.

A run is "crashed" by doing its commit steps by hand and stopping at a step (plus one real
SIGKILL of a process in the middle of its commit); the next run recovers and every reader
then sees exactly one committed copy of every row.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ecgembed import storage
from ecgembed.errors import ConfigError
from ecgembed.tables import delta
from ecgembed.tables import schemas as S
from ecgembed.tables.commit import apply, commit_run, finish, prepare, read_plan, read_runs, recover
from ecgembed.tables.ledger import read_ledger, select_work
from ecgembed.tables.lock import OutputLock, OutputLocked
from ecgembed.tables.views import connect
from tests.tables.batches import label_set, model_runs, nightly, refs, stage_batch, write_task
from tests.tables.readers import one_copy, rows_by_reader

REPO = Path(__file__).resolve().parents[2]
N = 6
CPSC = label_set("cpsc", ("AF", "RBBB", "LBBB"))
RUNS = model_runs(label_sets=[CPSC])
FULL = {"melp_embeddings": N, "ecgfm_ked_embeddings": N, "zero_shot_scores": N * 3, "errors": 0,
        "ledger": N * 3, "runs": 2}      # ledger: melp + ked embedding rows + ked x cpsc score rows


def _written(output: str, run_id: str) -> list[dict]:
    """Two write tasks' results for every record (what the sink leaves before the commit)."""
    work = select_work(read_ledger(output), refs(N), RUNS)
    return [write_task(output, run_id, RUNS, stage_batch(work[t::2], RUNS), t) for t in range(2)]


def _crash(output: str, run_id: str, step: str) -> None:
    """Run ``run_id``'s commit up to ``step`` and stop there, as a killed driver would."""
    written = _written(output, run_id)
    if step == "tasks written":
        return
    plan = prepare(output, run_id, written, {"started_at": "2026-01-01T00:00:00+00:00"})
    order = S.commit_order(plan["tables"])
    upto = {"plan written": 0, "one table committed": 1, "data tables committed": order.index(S.LEDGER_TABLE),
            "ledger committed": order.index(S.LEDGER_TABLE) + 1, "every table committed": len(order)}[step]
    apply(output, plan, tables=order[:upto])


STEPS = ["tasks written", "plan written", "one table committed", "data tables committed", "ledger committed",
         "every table committed"]


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_at_any_step_then_a_rerun_leaves_one_copy_of_every_row(tmp_path, step):
    output = str(tmp_path / "out")
    nightly(output, "first", refs(N)[:2], RUNS)                 # an earlier run: its rows must stay untouched
    _crash(output, "crashed", step)
    if step in ("tasks written", "plan written"):                # its files are in the table folders, unread
        assert rows_by_reader(output, "melp_embeddings") == {"duckdb": 2, "polars": 2, "pyarrow": 2}
    if step in ("data tables committed",):                       # data visible in the tables, but not yet settled:
        assert connect(output).execute("SELECT count(*) FROM melp_current").fetchone()[0] == 2   # not current
    rerun = nightly(output, "rerun", refs(N), RUNS)
    if step == "tasks written":
        assert rerun["recovered"] == {"rolled_forward": [], "abandoned": ["crashed"]}
        assert len(rerun["work"]) == N - 2                       # the crashed run's work is done again
    else:
        assert rerun["recovered"] == {"rolled_forward": ["crashed"], "abandoned": []}
        assert rerun["work"] == []                                # rolled forward: nothing left to do
    one_copy(output, {**FULL, "runs": 3 if step != "tasks written" else 2})
    assert connect(output).execute("SELECT count(*) FROM melp_current").fetchone()[0] == N
    assert nightly(output, "quiet", refs(N), RUNS)["work"] == []
    fs, root = storage.fs_and_path(output)
    assert not [p for p in fs.find(root) if "/run-crashed/" in p and step == "tasks written"]   # its files are gone


@pytest.mark.parametrize("mode, step", [("conditional-put", "one table committed"), ("unsafe-rename", "ledger committed")])
def test_crash_and_roll_forward_on_s3_in_both_commit_modes(s3, monkeypatch, mode, step):
    monkeypatch.setenv("ECGEMBED_S3_COMMIT", mode)
    s3_output = s3.url(f"commit-{uuid.uuid4().hex[:8]}")
    _crash(s3_output, "crashed", step)
    rerun = nightly(s3_output, "rerun", refs(N), RUNS)
    assert rerun["recovered"]["rolled_forward"] == ["crashed"] and rerun["work"] == []
    one_copy(s3_output, FULL)


def test_applying_a_plan_twice_adds_nothing_twice(tmp_path):
    output = str(tmp_path / "out")
    plan = prepare(output, "r1", _written(output, "r1"), {})
    first, second = apply(output, plan), apply(output, plan)
    assert {t for t, v in first.items() if v["version"] is None} == {"errors"}   # no error rows: only created
    assert all(v["version"] is None for v in second.values())     # every table already holds appId r1
    finish(output, "r1")
    one_copy(output, {**FULL, "runs": 1})
    history = delta.open_table(delta.table_uri(output, "melp_embeddings")).history()
    assert [h.get("ecgembed.app_id") for h in history if h["operation"] == "WRITE"] == ["r1"]
    assert history[0]["ecgembed.melp.model_version"] == "melp-v1"    # versions in the commit info


def test_sigkill_in_the_middle_of_a_commit_then_recover(tmp_path):
    output = str(tmp_path / "out")
    written = _written(output, "killed")
    (tmp_path / "written.json").write_text(json.dumps(written))
    script = (
        "import json, sys, time\n"
        "from ecgembed.tables import commit, delta\n"
        "real = delta.commit_files\n"
        "def slow(*args, **kwargs):\n"
        "    version = real(*args, **kwargs)\n"
        "    print('committed', args[1], flush=True)\n"
        "    time.sleep(60)\n"
        "    return version\n"
        "delta.commit_files = slow\n"
        "commit.commit_run(sys.argv[1], 'killed', json.load(open(sys.argv[2])), {})\n")
    child = subprocess.Popen([sys.executable, "-c", script, output, str(tmp_path / "written.json")],
                             stdout=subprocess.PIPE, text=True, cwd=str(REPO),
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        line = child.stdout.readline()             # the first table is committed; the others are not
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    assert line.startswith("committed"), line
    first = line.split()[1]
    others = [t for t in FULL if t != first and t != "runs"]
    assert rows_by_reader(output, first)["pyarrow"] == FULL[first]
    assert all(rows_by_reader(output, t)["pyarrow"] == 0 for t in others)
    assert read_plan(output, "killed")["state"] == "committing"
    assert recover(output, "next") == {"rolled_forward": ["killed"], "abandoned": []}
    one_copy(output, {**FULL, "runs": 1})
    assert [r["run_id"] for r in read_runs(output)] == ["killed"]


def test_a_run_that_lost_its_lock_commits_nothing_and_its_files_are_cleaned(tmp_path):
    output = str(tmp_path / "out")
    paused = OutputLock(output, "paused", heartbeat_s=3600)
    paused.machine = {"boot_id": "another-boot", "pid_ns": "pid:[1]"}    # as if on another machine
    paused.acquire()
    written = _written(output, "paused")
    time.sleep(1.2)
    with OutputLock(output, "next", lease_s=1.0) as lock:     # its lease ran out: taken over
        assert lock.took_over["run_id"] == "paused"
        with pytest.raises(OutputLocked, match="lost the output lock"):
            commit_run(output, "paused", written, {}, lock=paused)
        assert recover(output, "next", lock) == {"rolled_forward": [], "abandoned": ["paused"]}
    # even without its lock, the paused run can never commit those files now: they are tombstoned
    with pytest.raises(OutputLocked, match="abandoned by run next"):
        commit_run(output, "paused", written, {})
    assert delta.list_tables(output) == {} or all(
        not delta.committed(t, "paused") for t in delta.list_tables(output).values())
    fs, root = storage.fs_and_path(output)
    assert not [p for p in fs.find(root) if "/run-paused/" in p]


def test_a_quiet_night_commits_only_its_run_row(tmp_path):
    output = str(tmp_path / "out")
    nightly(output, "first", refs(N), RUNS)
    versions = {name: t.version() for name, t in delta.list_tables(output).items()}
    quiet = nightly(output, "quiet", refs(N), RUNS)
    assert quiet["work"] == [] and quiet["counts"] == {}
    after = {name: t.version() for name, t in delta.list_tables(output).items()}
    assert after == {**versions, "runs": versions["runs"] + 1}
    assert [r["run_id"] for r in read_runs(output)] == ["first", "quiet"]


def test_a_run_id_is_used_once(tmp_path):
    output = str(tmp_path / "out")
    nightly(output, "once", refs(2), RUNS)
    with pytest.raises(ConfigError, match="run id once is already committed"):
        nightly(output, "once", refs(N), RUNS)


def test_delta_storage_options_come_from_the_aws_environment(monkeypatch):
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_REGION", "ECGEMBED_S3_COMMIT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert delta.storage_options("s3://bucket/out/melp_embeddings") == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false",
        "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_REGION": "eu-west-1", "conditional_put": "etag"}
    monkeypatch.setenv("ECGEMBED_S3_COMMIT", "unsafe-rename")
    assert delta.storage_options("s3://bucket/out")["AWS_S3_ALLOW_UNSAFE_RENAME"] == "true"
    monkeypatch.setenv("ECGEMBED_S3_COMMIT", "rename")
    with pytest.raises(ConfigError, match="ECGEMBED_S3_COMMIT='rename'"):
        delta.storage_options("s3://bucket/out")
    assert delta.storage_options(str(Path("/tmp/out"))) == {}
