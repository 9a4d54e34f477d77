"""What a run prints besides ecgembed's own lines: Ray made quiet for people, not for files.

By default (no ``--verbose``):

- Ray Data's progress bars and progress log blocks (16 lines every 10 s in logs) are off;
  ecgembed draws its own bar / lines (:mod:`ecgembed.progress`).
- Ray Data's INFO messages leave the console; they still go to ``ray-data.log`` in Ray's
  session log folder, with everything else.
- One known-benign ERROR-level line of Ray's C++ core is dropped from stderr: Ray Data always
  passes its actors' constructor arguments through the object store and enables actor
  restarts, and Ray logs that combination as an error on every actor start
  (https://github.com/ray-project/ray/issues/53727). Alerting on "E" lines would page for
  every healthy run. Only that exact message about Ray Data's own ``MapWorker`` actors is
  dropped; every other line passes through unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading

_filtered_tty: bool | None = None   # while stderr is filtered: whether the real stderr is a terminal


def stderr_is_tty() -> bool:
    """Whether the person's stderr is a terminal (also while it runs through our filter)."""
    if _filtered_tty is not None:
        return _filtered_tty
    try:
        return os.isatty(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        return False


_BENIGN = re.compile(rb"core_worker\.cc:\d+: Actor with class name: 'MapWorker\(.*\)' and ID: '[0-9a-f]+' has "
                     rb"constructor arguments in the object store and max_restarts > 0")


def quiet_ray_data(verbose: bool) -> None:
    """Ray Data's console output: progress bars off and INFO to its log file only (unless verbose)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = verbose
    context.enable_operator_progress_bars = verbose
    level = logging.INFO if verbose else logging.WARNING
    for handler in logging.getLogger("ray.data").handlers:
        if not getattr(handler, "baseFilename", None):      # the console handler, not ray-data.log
            handler.setLevel(level)
            if not verbose and not any(isinstance(f, _WeTurnedThemOff) for f in handler.filters):
                handler.addFilter(_WeTurnedThemOff())


class _WeTurnedThemOff(logging.Filter):
    """Ray Data warns that progress bars are disabled: we disabled them, for our own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Progress bars disabled")


@contextlib.contextmanager
def drop_benign_ray_errors():
    """Filter this process's stderr (file descriptor 2, where Ray's C++ core writes) line by line."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):   # no real stderr (e.g. captured by pytest): nothing to filter
        yield
        return
    global _filtered_tty
    sys.stderr.flush()
    tty = os.isatty(fd)
    saved = os.dup(fd)
    read_end, write_end = os.pipe()
    os.dup2(write_end, fd)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as source:
            pending = b""
            while chunk := source.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                out = b"".join(line + b"\n" for line in lines if not _BENIGN.search(line))
                # a partial line (a progress bar redrawn with \r) goes out as it comes
                if pending and b"\n" not in pending and (b"\r" in pending or len(pending) > 4096):
                    out, pending = out + pending, b""
                if out:
                    os.write(saved, out)
            if pending and not _BENIGN.search(pending):
                os.write(saved, pending)

    thread = threading.Thread(target=pump, daemon=True, name="ecgembed-stderr")
    thread.start()
    _filtered_tty = tty
    try:
        yield
    finally:
        _filtered_tty = None
        sys.stderr.flush()
        os.dup2(saved, fd)          # closes the pipe's last write end: the pump drains and stops
        thread.join(timeout=5)
        os.close(saved)
