"""One run at a time per output: a lease lock in ``OUTPUT/_lock.json``.

The lock names its run, host and process and carries a heartbeat the holder refreshes every
``heartbeat_s``. Another run refuses to start while the lock is live. A lock is stale, and is
taken over, when its heartbeat is older than ``lease_s`` (the holder died or lost its network),
or at once when its holder ran on this host and that process no longer exists (a crashed or
killed driver re-run on the same head node). Creation uses an exclusive create where the store
offers one (local files; S3 conditional PUT), and the holder reads the lock back to confirm.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from datetime import datetime, timezone

from ecgembed import storage
from ecgembed.errors import EcgembedError

LOCK_FILE = "_lock.json"


class OutputLocked(EcgembedError):
    """Another run holds the output."""


def _now() -> float:
    return time.time()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    def __init__(self, output: str, run_id: str, lease_s: float = 300.0, heartbeat_s: float = 30.0):
        self.uri = storage.join(output, LOCK_FILE)
        self.run_id = run_id
        self.lease_s, self.heartbeat_s = lease_s, heartbeat_s
        self.host, self.pid = socket.gethostname(), os.getpid()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.took_over: dict | None = None   # the stale lock replaced, if any

    # ---- reading ------------------------------------------------------------------------------
    def read(self) -> dict | None:
        fs, path = storage.fs_and_path(self.uri)
        fs.invalidate_cache()
        try:
            return json.loads(fs.cat_file(path))
        except FileNotFoundError:
            return None
        except ValueError:
            return {"run_id": "?", "heartbeat_at": 0, "host": "?", "pid": -1, "corrupt": True}

    def stale_reason(self, lock: dict) -> str | None:
        age = _now() - float(lock.get("heartbeat_at", 0))
        if lock.get("corrupt"):
            return "the lock file is unreadable"
        if age > self.lease_s:
            return f"its last heartbeat is {age:.0f} s old (lease {self.lease_s:.0f} s)"
        if lock.get("host") == self.host and not _pid_alive(int(lock.get("pid", -1))):
            return f"its process {lock.get('pid')} on this host no longer exists"
        return None

    # ---- holding ------------------------------------------------------------------------------
    def _body(self) -> bytes:
        return json.dumps({"run_id": self.run_id, "host": self.host, "pid": self.pid, "heartbeat_at": _now(),
                           "heartbeat_utc": datetime.now(timezone.utc).isoformat()}).encode()

    def _write(self, exclusive: bool) -> None:
        if not exclusive:
            storage.write_atomic(self.uri, self._body())
            return
        fs, path = storage.fs_and_path(self.uri)
        protocol = storage.split(self.uri)[0]
        if protocol == "file":
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as handle:
                handle.write(self._body())
        elif protocol == "s3":
            fs.pipe_file(path, self._body(), mode="create")   # conditional PUT (If-None-Match)
        else:
            fs.pipe_file(path, self._body())

    def acquire(self) -> "OutputLock":
        lock = self.read()
        if lock is not None:
            reason = self.stale_reason(lock)
            if reason is None:
                raise OutputLocked(
                    f"{self.uri}: run {lock.get('run_id')} (host {lock.get('host')}, pid {lock.get('pid')}, last "
                    f"heartbeat {lock.get('heartbeat_utc', '?')}) is writing to this output; only one run at a time. "
                    f"If that run is dead, its lock expires {self.lease_s:.0f} s after its last heartbeat.")
            self.took_over = {**lock, "reason": reason}
            self._remove()
        try:
            self._write(exclusive=True)
        except (FileExistsError, OSError) as exc:
            other = self.read() or {}
            raise OutputLocked(f"{self.uri}: another run ({other.get('run_id', '?')}) took the lock at the same "
                               f"moment ({type(exc).__name__})") from exc
        mine = self.read() or {}
        if mine.get("run_id") != self.run_id or mine.get("pid") != self.pid:
            raise OutputLocked(f"{self.uri}: lost the race for the lock to run {mine.get('run_id')}")
        self._thread = threading.Thread(target=self._beat, daemon=True, name="ecgembed-lock")
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                current = self.read() or {}
                if current.get("run_id") == self.run_id:
                    self._write(exclusive=False)
            except OSError:
                pass   # storage briefly unreachable: the lease covers it

    def check(self) -> None:
        """Raise OutputLocked when this run no longer holds the lock (call before committing)."""
        current = self.read() or {}
        if current.get("run_id") != self.run_id:
            raise OutputLocked(f"{self.uri}: this run lost its lock to run {current.get('run_id')}; not committing")

    def _remove(self) -> None:
        fs, path = storage.fs_and_path(self.uri)
        try:
            fs.rm(path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if (self.read() or {}).get("run_id") == self.run_id:
                self._remove()
        except OSError:
            pass   # storage unreachable: the lock goes stale and the next run takes it over

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
