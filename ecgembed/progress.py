"""Progress that reads well in ``ray job logs``: a counter actor and one summary line per interval.

Stages add their counts to a small actor (fire-and-forget ``add.remote``); a driver thread prints
``[ecgembed] 0:01:30 read 1200/5000 (13.3 rec/s) | failed 12 | melp 1100 | ecgfm-ked 1050``
every interval. Ray Data's own progress bars still show per-operator detail.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta

import ray


@ray.remote(num_cpus=0)
class ProgressCounter:
    def __init__(self):
        self.counts: Counter = Counter()

    def add(self, **counts) -> None:
        self.counts.update(counts)

    def snapshot(self) -> dict:
        return dict(self.counts)


class ProgressReporter:
    """Prints a summary line every ``interval`` seconds while a run executes."""

    def __init__(self, total: int, models: tuple[str, ...], interval: float, log=print):
        self.total, self.models, self.interval, self.log = total, models, interval, log
        self.counter = ProgressCounter.remote()
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="ecgembed-progress")

    def __enter__(self) -> "ProgressReporter":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def line(self) -> str:
        counts = ray.get(self.counter.snapshot.remote(), timeout=30)
        elapsed = time.monotonic() - self.started
        read = counts.get("read", 0)
        parts = [f"[ecgembed] {timedelta(seconds=int(elapsed))} read {read}/{self.total} "
                 f"({read / max(elapsed, 1e-9):.1f} rec/s)", f"failed {counts.get('failed', 0)}"]
        parts += [f"{m} {counts.get(f'{m}_embedded', 0)}" for m in self.models]
        return " | ".join(parts)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.log(self.line())
            except (ray.exceptions.RayError, TimeoutError) as exc:  # progress must never kill the run
                self.log(f"[ecgembed] progress unavailable: {type(exc).__name__}")
