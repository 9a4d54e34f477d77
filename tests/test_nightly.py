"""Nightly runs on real S3 and real Ray: only what is new, exactly once, whatever crashes.

Each test writes its own archive prefix on the session's SeaweedFS server and runs the job with
the stand-in weights (the model math is tested elsewhere; here what matters is which rows exist).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from ecgembed.config import RunConfig
from ecgembed.pipeline import run
from ecgembed.tables import delta
from ecgembed.tables.commit import read_runs
from ecgembed.storage import create_exclusive
from ecgembed.tables.lock import OutputLock, OutputLocked
from ecgembed.tables.views import connect

REPO = Path(__file__).resolve().parent.parent
NAMES = [f"E0750{i}" for i in range(10)]


def _put_records(s3, ecg_dir, prefix: str, names) -> str:
    for name in names:
        for ext in (".hea", ".mat"):
            data = (ecg_dir / "cinc2021_torch-ecg" / f"{name}{ext}").read_bytes()
            s3.fs.pipe_file(f"{s3.bucket}/{prefix}/site-a/{name}{ext}", data)
    s3.fs.invalidate_cache()
    return s3.url(prefix)


def _config(archive: str, output: str, **kw) -> RunConfig:
    return RunConfig(inputs=[archive], output=output, stand_in=True, labels=["cpsc2018"], progress_interval_s=5,
                     records_per_task=4, **kw)


def _exactly_once(s3, output: str) -> dict:
    """Per model: rows in the current view, asserting one row per record and per (record, version)."""
    con = connect(output)
    out = {}
    for view, raw in (("melp_current", "melp_embeddings"), ("ecgfm_ked_current", "ecgfm_ked_embeddings")):
        n, distinct = con.execute(f"SELECT count(*), count(DISTINCT record_id) FROM {view}").fetchall()[0]
        assert n == distinct, f"{view}: {n} rows for {distinct} records"
        dup = con.execute(f"""SELECT record_id, content_sha256, model_version, count(*) FROM {raw}
                              GROUP BY ALL HAVING count(*) > 1""").fetchall()
        assert dup == [], f"{raw} holds duplicates: {dup}"
        out[view] = n
    return out


def _table_files(s3, output: str) -> dict[str, int]:
    s3.fs.invalidate_cache()
    root = output.split("://", 1)[1]
    return {p: s3.fs.info(p)["size"] for p in s3.fs.find(root)
            if "/runs/" not in p and "/_ecgembed/" not in p}       # the run's own row and the lock change


def test_second_run_embeds_nothing_then_only_the_new_and_changed(ecg_dir, s3, ray_local, tmp_cache):
    prefix = f"nightly-{uuid.uuid4().hex[:6]}"
    archive = _put_records(s3, ecg_dir, f"{prefix}/in", NAMES[:6])
    output = s3.url(f"{prefix}/out")
    first = run(_config(archive, output))
    assert first["selected"] == 6 and first["counts"]["melp_embeddings"] == 6
    files = _table_files(s3, output)

    second = run(_config(archive, output))
    assert second["selected"] == 0 and second["counts"] == {}
    assert _table_files(s3, output) == files          # the tables are unchanged, byte for byte

    _put_records(s3, ecg_dir, f"{prefix}/in", NAMES[6:9])            # 3 new records
    mat = bytearray((ecg_dir / "cinc2021_torch-ecg" / "E07500.mat").read_bytes())
    mat[1000:1010] = bytes(10)                                       # E07500 re-uploaded with other bytes
    s3.fs.pipe_file(f"{s3.bucket}/{prefix}/in/site-a/E07500.mat", bytes(mat))
    s3.fs.invalidate_cache()
    third = run(_config(archive, output))
    assert third["selected"] == 4 and third["counts"]["melp_embeddings"] == 4
    assert third["counts"]["ecgfm_ked_embeddings"] == 4

    assert _exactly_once(s3, output) == {"melp_current": 9, "ecgfm_ked_current": 9}
    con = connect(output)
    history = con.execute("SELECT run_id, content_sha256 FROM melp_embeddings WHERE record_id = 'site-a/E07500' "
                          "ORDER BY processed_at").fetchall()
    assert len(history) == 2 and history[0][1] != history[1][1]     # both kept; only the new one is current
    current = con.execute("SELECT run_id FROM melp_current WHERE record_id = 'site-a/E07500'").fetchall()
    assert current == [(third["run_id"],)]
    wide = con.execute("SELECT count(*) FROM scores_wide_cpsc2018").fetchall()[0][0]
    assert wide == 9


def test_full_recomputes_and_a_new_model_version_backfills_only_that_model(ecg_dir, s3, ray_local, tmp_cache,
                                                                           monkeypatch):
    prefix = f"nightly-{uuid.uuid4().hex[:6]}"
    archive = _put_records(s3, ecg_dir, f"{prefix}/in", NAMES[:3])
    output = s3.url(f"{prefix}/out")
    run(_config(archive, output))
    assert run(_config(archive, output, full=True))["selected"] == 3
    # a new MELP checkpoint: MELP is redone for every record, ECGFM-KED for none
    from ecgembed.models import standin

    real = standin.version
    monkeypatch.setattr(standin, "version", lambda name: "stand-in:melp:v2" if name == "melp" else real(name))
    backfill = run(_config(archive, output))
    assert backfill["selected"] == 3
    assert backfill["counts"]["melp_embeddings"] == 3 and backfill["counts"].get("ecgfm_ked_embeddings", 0) == 0
    con = connect(output)
    assert con.execute("SELECT DISTINCT model_version FROM melp_current").fetchall() == [("stand-in:melp:v2",)]
    assert con.execute("SELECT count(*) FROM ecgfm_ked_current").fetchall()[0][0] == 3


def test_sigkill_of_the_driver_mid_run_then_rerun(ecg_dir, s3, ray_local, tmp_cache, tmp_path):
    prefix = f"nightly-{uuid.uuid4().hex[:6]}"
    names = [f"{n}" for n in NAMES] + [f"JS2000{i}" for i in (0, 1, 2, 3, 5, 6, 7, 9)]
    for name in names:
        for ext in (".hea", ".mat"):
            s3.fs.pipe_file(f"{s3.bucket}/{prefix}/in/{name}{ext}",
                            (ecg_dir / "cinc2021_torch-ecg" / f"{name}{ext}").read_bytes())
    archive, output = s3.url(f"{prefix}/in"), s3.url(f"{prefix}/out")
    # every model batch takes >= 1.5 s longer: the run is reliably mid-way, not committing, when killed
    env = {**os.environ, **s3.env, "RAY_USAGE_STATS_ENABLED": "0", "ECGEMBED_CACHE": str(tmp_cache),
           "ECGEMBED_FAULT_HOOK": "tests.faults:slow:1.5", "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen(
        [sys.executable, "-m", "ecgembed.cli", "run", "--input", archive, "--output", output, "--stand-in",
         "--labels", "cpsc2018", "--records-per-task", "2", "--rows-per-file", "2", "--run-id", "killed-run",
         "--melp-batch-size", "2", "--ecgfm-ked-batch-size", "2"],   # small batches: output is staged progressively
        env=env, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    out = f"{s3.bucket}/{prefix}/out"
    deadline = time.monotonic() + 300
    try:
        while True:   # kill once some of its (uncommitted) data files were written, before the run could finish
            s3.fs.invalidate_cache()
            if s3.fs.exists(out) and any("/run-killed-run/" in p for p in s3.fs.find(out)):
                break
            assert driver.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no data file appeared"
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)   # the driver and the local Ray it started
        driver.wait(30)
    s3.fs.invalidate_cache()
    assert not s3.fs.exists(f"{out}/_ecgembed/commits/killed-run.json"), \
        "the run reached its commit plan before the kill: the test did not kill it mid-run"
    # nothing of the killed run is visible: no table's log lists its files, no runs row
    for table in delta.list_tables(output).values():
        assert not delta.committed(table, "killed-run") and not any("run-killed-run" in f for f in table.file_uris())
    assert "killed-run" not in [r["run_id"] for r in read_runs(output)]
    assert OutputLock(output, "probe").current()[1]["run_id"] == "killed-run"   # left behind by the dead driver

    rerun = run(_config(archive, output))
    assert rerun["recovered"]["abandoned"] == ["killed-run"]
    assert rerun["selected"] == len(names)
    assert _exactly_once(s3, output) == {"melp_current": len(names), "ecgfm_ked_current": len(names)}
    s3.fs.invalidate_cache()
    assert not [p for p in s3.fs.find(out) if "/run-killed-run/" in p]   # the abandoned files are gone


def test_model_actor_dying_on_a_batch_loses_and_duplicates_nothing(ecg_dir, s3, ray_local, tmp_cache, tmp_path,
                                                                   monkeypatch):
    prefix = f"nightly-{uuid.uuid4().hex[:6]}"
    archive = _put_records(s3, ecg_dir, f"{prefix}/in", NAMES)
    output = s3.url(f"{prefix}/out")
    (tmp_path / "fault.json").write_text(json.dumps({"model": "melp", "batch": 2}))
    monkeypatch.setenv("ECGEMBED_FAULT_HOOK", f"tests.faults:die_once:{tmp_path}")
    manifest = run(_config(archive, output, batch_size={"melp": 2}))
    assert (tmp_path / "fired").exists(), "the fault was not injected"
    assert manifest["counts"]["melp_embeddings"] == len(NAMES)
    assert _exactly_once(s3, output) == {"melp_current": len(NAMES), "ecgfm_ked_current": len(NAMES)}


def test_s3_outage_during_a_run_then_rerun(ecg_dir, s3, ray_local, tmp_cache):
    prefix = f"nightly-{uuid.uuid4().hex[:6]}"
    archive = _put_records(s3, ecg_dir, f"{prefix}/in", NAMES)
    output = s3.url(f"{prefix}/out")
    outage_done = threading.Event()

    def outage():
        time.sleep(4)            # the run is under way (discovery is done, actors are starting)
        s3.stop()
        time.sleep(3)
        s3.start()
        outage_done.set()

    threading.Thread(target=outage, daemon=True).start()
    try:
        first = run(_config(archive, output))
        outcome = f"finished: {first['counts']}"
    except Exception as exc:  # noqa: BLE001 - failing cleanly is an allowed outcome
        outcome = f"failed cleanly: {type(exc).__name__}"
    assert outage_done.wait(60), "the S3 server did not come back"
    rerun = run(_config(archive, output))
    again = run(_config(archive, output))      # everything settled now
    assert again["selected"] == 0, outcome
    assert _exactly_once(s3, output) == {"melp_current": len(NAMES), "ecgfm_ked_current": len(NAMES)}, outcome
    con = connect(output)
    assert con.execute("SELECT count(*) FROM current_state WHERE status <> 'ok'").fetchall()[0][0] == 0
    assert rerun["run_id"] != again["run_id"]


def test_a_second_run_on_the_same_output_refuses(ecg_dir, s3, tmp_cache, tmp_path):
    prefix = f"nightly-{uuid.uuid4().hex[:6]}"
    archive = _put_records(s3, ecg_dir, f"{prefix}/in", NAMES[:2])
    output = s3.url(f"{prefix}/out")
    with OutputLock(output, "run-in-progress"):           # a live run: this process, fresh heartbeat
        with pytest.raises(OutputLocked, match=r"run run-in-progress .* is writing to this output; only one run"):
            run(_config(archive, output))
        with pytest.raises(OutputLocked):
            OutputLock(output, "third").acquire()


def test_stale_locks_are_taken_over(s3, tmp_path):
    output = s3.url(f"lock-{uuid.uuid4().hex[:6]}")
    probe = OutputLock(output, "probe")

    def plant(generation: int, **body) -> None:
        create_exclusive(probe._uri(generation), json.dumps({"state": "held", "token": "t", **body}).encode())

    # a driver on this machine (same boot, same pid namespace) that no longer exists
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    plant(1, run_id="dead", host=os.uname().nodename, pid=dead.pid, heartbeat_at=time.time(), **probe.machine)
    lock = OutputLock(output, "new").acquire()
    assert lock.took_over["run_id"] == "dead" and "no longer exists" in lock.took_over["reason"]
    lock.release()
    # another machine's run whose heartbeat stopped longer than the lease ago
    plant(4, run_id="lost", host="elsewhere", pid=1, boot_id="another-boot", pid_ns="pid:[1]",
          heartbeat_at=time.time() - 3600)
    lock = OutputLock(output, "new2").acquire()
    assert lock.took_over["run_id"] == "lost" and "heartbeat" in lock.took_over["reason"]
    lock.release()
    assert probe.current()[1]["state"] == "released"
