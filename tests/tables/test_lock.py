"""The output lock: one run at a time, takeovers that only one run can win, liveness by machine."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid

import pytest

from ecgembed import storage
from ecgembed.storage import create_exclusive
from ecgembed.tables.lock import OutputLock, OutputLocked


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    s3 = request.getfixturevalue("s3")
    return s3.url(f"lock-{uuid.uuid4().hex[:8]}")


def _plant(output: str, generation: int, **body) -> None:
    """A lock generation as another run left it."""
    lock = OutputLock(output, "planter")
    create_exclusive(lock._uri(generation), json.dumps({"state": "held", "token": "t", **body}).encode())


def test_two_runs_taking_over_one_stale_lock_at_once_exactly_one_wins(output):
    _plant(output, 7, run_id="dead-elsewhere", host="other", pid=1, boot_id="another-boot", pid_ns="pid:[1]",
           heartbeat_at=time.time() - 3600)
    takers = [OutputLock(output, f"taker-{i}") for i in range(6)]
    barrier = threading.Barrier(len(takers))
    won, lost = [], []

    def take(lock: OutputLock) -> None:
        barrier.wait()
        try:
            lock.acquire()
            won.append(lock)
        except OutputLocked as exc:
            lost.append(str(exc))

    threads = [threading.Thread(target=take, args=(lock,)) for lock in takers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1, (won, lost)
    assert len(lost) == len(takers) - 1 and all("at the same moment" in m or "is writing" in m for m in lost)
    winner = won[0]
    assert winner.took_over["run_id"] == "dead-elsewhere" and "heartbeat" in winner.took_over["reason"]
    assert winner.generation == 8
    winner.check()                                   # the winner holds it
    for loser in takers:
        if loser is not winner:
            with pytest.raises(OutputLocked):
                loser.check()                        # a loser can never pass the check before a commit
    winner.release()
    generation, body = OutputLock(output, "reader").current()
    assert (generation, body["state"]) == (9, "released")


def test_a_run_that_lost_its_lock_is_told_before_it_commits(output):
    first = OutputLock(output, "paused", heartbeat_s=3600)
    first.machine = {"boot_id": "another-boot", "pid_ns": "pid:[1]"}   # as if it ran on another machine
    first.acquire()
    time.sleep(1.2)                                  # its heartbeat is now older than the second run's lease
    second = OutputLock(output, "next", lease_s=1.0).acquire()
    assert second.took_over["run_id"] == "paused"
    with pytest.raises(OutputLocked, match="lost the output lock"):
        first.check()
    first.release()                                  # does not release the new holder's lock
    second.check()
    second.release()


def test_a_live_run_is_never_taken_over(output):
    with OutputLock(output, "live") as live:
        with pytest.raises(OutputLocked, match=r"run live .* is writing to this output; only one run at a time"):
            OutputLock(output, "second").acquire()
        # same machine, this process is alive: an old heartbeat does not matter
        with pytest.raises(OutputLocked):
            OutputLock(output, "impatient", lease_s=0.0).acquire()
        live.check()


def test_dead_holder_on_this_machine_is_taken_over_at_once_but_only_on_proof(output):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    me = OutputLock(output, "probe")
    _plant(output, 1, run_id="killed", host="any", pid=dead.pid, heartbeat_at=time.time(), **me.machine)
    lock = OutputLock(output, "rerun").acquire()
    assert lock.took_over["run_id"] == "killed" and "no longer exists" in lock.took_over["reason"]
    lock.release()
    # same hostname and a dead pid, but another boot (e.g. a container sharing the host name): the lease decides
    _plant(output, 4, run_id="container", host="same-name", pid=dead.pid, boot_id="another-boot",
           pid_ns=me.machine["pid_ns"], heartbeat_at=time.time())
    with pytest.raises(OutputLocked, match="is writing"):
        OutputLock(output, "rerun2").acquire()


def test_exclusive_create_refuses_an_existing_object(output):
    uri = storage.join(output, "x", "once.json")
    create_exclusive(uri, b"1")
    with pytest.raises(FileExistsError):
        create_exclusive(uri, b"2")
    assert storage.read_bytes(uri) == b"1"


def test_a_release_that_could_not_reach_storage_does_not_block_this_process(output, monkeypatch):
    import ecgembed.tables.lock as L

    lock = OutputLock(output, "outage").acquire()

    def unreachable(uri, data):
        raise ConnectionError("storage unreachable")

    monkeypatch.setattr(L.storage, "create_exclusive", unreachable)
    lock.release()                                   # does not raise; the generation still says "held"
    monkeypatch.undo()
    assert OutputLock(output, "probe").current()[1]["state"] == "held"
    again = OutputLock(output, "rerun").acquire()    # the same process: taken at once
    assert "could not record the release" in again.took_over["reason"]
    again.release()
