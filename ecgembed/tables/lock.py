"""One run at a time per output: a lease lock made of numbered generations.

    OUTPUT/_ecgembed/lock/00000000000000000007.json   the current generation (the highest number)

Each generation is created with a create-if-absent write (:func:`ecgembed.storage.create_exclusive`)
and never overwritten by anyone but its creator. To take the lock, a run creates generation
N+1 where N is the highest it saw: if N is free (released) or stale, the first creator of N+1
wins and every other taker of N fails, so two runs can never both take over the same stale
lock. The holder refreshes a heartbeat in its own generation every ``heartbeat_s``; a release
creates N+1 marked ``released``. Older generations are deleted by whoever creates a newer one.

A held generation is **stale** when

- its holder ran on this machine, provably (same boot id from ``/proc/sys/kernel/random/boot_id``
  and the same pid namespace), and that process no longer exists (pid gone, or reused by a
  process that started later): taken over at once, e.g. a killed driver re-run on the same head;
- otherwise, when its heartbeat is older than ``lease_s``: the holder may be alive elsewhere, so
  only its silence counts. A hostname is never evidence (containers share them).

:meth:`OutputLock.check` is called right before every table commit: it raises
:class:`OutputLocked` when this run no longer holds the newest generation (it was paused or cut
off longer than the lease and another run took over), so a run that lost its lock commits
nothing more; otherwise it refreshes the heartbeat.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from datetime import datetime, timezone

from ecgembed import storage
from ecgembed.errors import EcgembedError

log = logging.getLogger("ecgembed")

LOCK_DIR = "_ecgembed/lock"
_WIDTH = 20   # zero-padded generation numbers sort as text
_RELEASED_HERE: set[str] = set()   # tokens this process released but could not mark released (storage down)


class OutputLocked(EcgembedError):
    """Another run holds the output, or took it over from this run."""


def _read_text(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """Start time of ``pid`` in clock ticks since boot ("" if unknown): tells a reused pid apart."""
    stat = _read_text(f"/proc/{pid}/stat")
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _process_alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass     # exists, owned by someone else
    return not start or _process_start(pid) in ("", start)


class OutputLock:
    """``with OutputLock(output, run_id) as lock:`` holds the output for one run."""

    def __init__(self, output: str, run_id: str, lease_s: float = 300.0, heartbeat_s: float = 30.0):
        self.folder = storage.join(output, LOCK_DIR)
        self.run_id = run_id
        self.lease_s, self.heartbeat_s = lease_s, heartbeat_s
        self.token = uuid.uuid4().hex              # tells two processes with one run id apart
        self.pid = os.getpid()
        self.machine = {"boot_id": _read_text("/proc/sys/kernel/random/boot_id"), "pid_ns": _pid_namespace()}
        self.generation: int | None = None
        self.took_over: dict | None = None        # the stale generation replaced, with the reason
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- reading ------------------------------------------------------------------------------
    def _uri(self, generation: int) -> str:
        return storage.join(self.folder, f"{generation:0{_WIDTH}d}.json")

    def _generations(self) -> list[int]:
        fs, path = storage.fs_and_path(self.folder)
        fs.invalidate_cache()
        try:
            names = [posixpath.basename(p) for p in fs.ls(path, detail=False)]
        except FileNotFoundError:
            return []
        return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())

    def current(self) -> tuple[int | None, dict | None]:
        """The newest generation and its body (``None, None`` for an output never locked)."""
        generations = self._generations()
        if not generations:
            return None, None
        newest = generations[-1]
        try:
            return newest, json.loads(storage.read_bytes(self._uri(newest)))
        except FileNotFoundError:
            return self.current()      # replaced between listing and reading: look again
        except ValueError:
            return newest, {"state": "held", "run_id": "?", "unreadable": True}

    def stale_reason(self, body: dict) -> str | None:
        """Why a held generation may be taken over, or ``None`` while its holder may be alive."""
        if body.get("unreadable"):
            return "the lock file is unreadable"
        if body.get("token") in _RELEASED_HERE:
            return "this process released it but could not record the release (storage was unreachable)"
        here = all(self.machine.values()) and all(body.get(k) == v for k, v in self.machine.items())
        if here:
            pid = int(body.get("pid", -1))
            if not _process_alive(pid, str(body.get("pid_start", ""))):
                return f"its process {pid} on this machine (same boot and pid namespace) no longer exists"
            return None
        age = time.time() - float(body.get("heartbeat_at", 0))
        if age > self.lease_s:
            return f"its last heartbeat is {age:.0f} s old (lease {self.lease_s:.0f} s)"
        return None

    # ---- holding ------------------------------------------------------------------------------
    def _body(self, state: str = "held") -> bytes:
        now = time.time()
        return json.dumps({"state": state, "run_id": self.run_id, "token": self.token, "host": socket.gethostname(),
                           "pid": self.pid, "pid_start": _process_start(self.pid), **self.machine,
                           "heartbeat_at": now, "heartbeat_utc": datetime.fromtimestamp(now, timezone.utc).isoformat(),
                           "lease_s": self.lease_s}).encode()

    def acquire(self) -> "OutputLock":
        generation, body = self.current()
        if body is not None and body.get("state") == "held":
            reason = self.stale_reason(body)
            if reason is None:
                raise OutputLocked(
                    f"{self.folder}: run {body.get('run_id')} (host {body.get('host')}, pid {body.get('pid')}, last "
                    f"heartbeat {body.get('heartbeat_utc', '?')}) is writing to this output; only one run at a time. "
                    f"If that run is dead, its lock expires {self.lease_s:.0f} s after its last heartbeat.")
            self.took_over = {**body, "generation": generation, "reason": reason}
        mine = (generation or 0) + 1
        try:
            storage.create_exclusive(self._uri(mine), self._body())
        except FileExistsError:
            _, other = self.current()
            raise OutputLocked(f"{self.folder}: another run ({(other or {}).get('run_id', '?')}) took the lock at the "
                               f"same moment (generation {mine} exists)") from None
        self.generation = mine
        self._remove_older(mine)
        self._thread = threading.Thread(target=self._beat, daemon=True, name="ecgembed-lock")
        self._thread.start()
        return self

    def check(self) -> None:
        """Raise :class:`OutputLocked` unless this run still holds the lock; refresh the heartbeat."""
        if self.generation is None:
            raise OutputLocked(f"{self.folder}: run {self.run_id} does not hold the lock")
        generation, body = self.current()
        if generation != self.generation or (body or {}).get("token") != self.token:
            raise OutputLocked(
                f"{self.folder}: run {self.run_id} lost the output lock (generation {self.generation}) to run "
                f"{(body or {}).get('run_id', '?')} (generation {generation}); it commits nothing more")
        storage.write_atomic(self._uri(self.generation), self._body())

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                generation, body = self.current()
                if generation != self.generation or (body or {}).get("token") != self.token:
                    return           # taken over: stop refreshing; check() will refuse the commit
                storage.write_atomic(self._uri(self.generation), self._body())
            except Exception as exc:  # noqa: BLE001 - storage unreachable: keep beating; the lease covers the gap
                log.warning("lock heartbeat of run %s failed (%s); retrying in %.0f s", self.run_id,
                            type(exc).__name__, self.heartbeat_s)

    def _remove_older(self, generation: int) -> None:
        for older in self._generations():
            if older < generation:
                fs, path = storage.fs_and_path(self._uri(older))
                try:
                    fs.rm(path)
                except FileNotFoundError:
                    pass

    def release(self) -> None:
        """Mark the lock released (a new generation), unless another run has taken it over."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.generation is None:
            return
        try:
            generation, body = self.current()
            if generation == self.generation and (body or {}).get("token") == self.token:
                storage.create_exclusive(self._uri(generation + 1), self._body("released"))
                self._remove_older(generation + 1)
        except FileExistsError:
            pass   # taken over meanwhile: the new holder has it
        except Exception:  # noqa: BLE001 - storage unreachable; never mask the error that ended the run
            _RELEASED_HERE.add(self.token)   # this process may take it again at once, others after the lease
        self.generation = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
