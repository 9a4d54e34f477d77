"""Progress for the person on call: a bar in a terminal, one line per interval in logs, run stats.

Stages add counts and busy seconds to a small actor (fire-and-forget ``add.remote``). A driver
thread reads it and shows

- in a terminal: ONE bar on stderr, redrawn in place, that ``say`` lines never break::

      [ecgembed] ██████████░░░░░░░░░░  51%  2,550/5,000 | 41.3 rec/s | ETA 0:00:59 | failed 12

- in logs (not a terminal, e.g. ``ray job logs``): one line per ``interval`` seconds::

      [ecgembed] 51% 2550/5000 | 41.3 rec/s | ETA 0:00:59 | read 4000 | failed 12 | melp 2538 | ecgfm-ked 2538

The rate is measured over the last minute of completed records (a steady state: Ray start-up
and model loading are not in it); a record is complete when it has left the last model stage.
The same counters become the run statistics stored with the run (:meth:`ProgressReporter.stats`),
with every refresh's ``[seconds, done, failed]`` (thinned to at most TIMELINE_POINTS) for the
throughput plot of ``ecgembed report``.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections import Counter, deque
from datetime import timedelta

import ray

RATE_WINDOW_S = 60.0
TIMELINE_POINTS = 500      # progress samples kept in the run statistics (the report's throughput plot)


@ray.remote(num_cpus=0)
class ProgressCounter:
    def __init__(self):
        self.counts: Counter = Counter()

    def add(self, **counts) -> None:
        self.counts.update(counts)

    def snapshot(self) -> dict:
        return dict(self.counts)


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=int(max(0.0, seconds))))


class ProgressReporter:
    """Shows progress while a run executes; ``say`` prints a line without breaking the bar."""

    def __init__(self, total: int, models: tuple[str, ...], interval: float, log=None, stream=None):
        self.total, self.models, self.interval = total, models, interval
        from ecgembed.console import stderr_is_tty

        self.stream = stream or sys.stderr
        self.tty = stderr_is_tty() if stream is None else bool(getattr(stream, "isatty", lambda: False)())
        self._log = log
        # on the driver's node: losing a worker node must not lose the counters
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        self.counter = ProgressCounter.options(scheduling_strategy=here).remote()
        self.started = time.monotonic()
        self.first_done: float | None = None     # when the first record completed ...
        self.first_done_count = 0                # ... and how many completed then
        self._samples: deque[tuple[float, int]] = deque()
        self._timeline: list[list] = [[0.0, 0, 0]]   # [seconds since start, done, failed], every _stride-th refresh
        self._stride, self._refreshes, self._latest = 1, 0, None
        self._counts: dict = {}
        self._bar_shown = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="ecgembed-progress")

    def __enter__(self) -> "ProgressReporter":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.refresh()
        with self._lock:
            if self.tty and exc[0] is None:     # the final state stays on screen
                self._clear_bar()
                self.stream.write(self.line(bar=True) + "\n")
                self.stream.flush()
            else:
                self._clear_bar()

    # ---- what the counters say -------------------------------------------------------------------
    def done(self, counts: dict) -> int:
        """Records that left the last stage (every row passes every model stage, errors included).

        Capped at the total: when a node is lost, Ray re-runs the tasks whose outputs died with it,
        and those count again (the committed tables hold each record once whatever the counters say).
        """
        key = f"{self.models[-1]}_rows" if self.models else "read"
        return min(counts.get(key, 0), self.total)

    def rate(self) -> float:
        """Records/s over the last RATE_WINDOW_S seconds of completions (0 until two samples)."""
        if len(self._samples) < 2:
            return 0.0
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0

    def refresh(self) -> dict:
        try:
            counts = ray.get(self.counter.snapshot.remote(), timeout=30)
        except (ray.exceptions.RayError, TimeoutError):
            return self._counts
        now, done = time.monotonic(), self.done(counts)
        if done and self.first_done is None:
            self.first_done, self.first_done_count = now, done
        self._samples.append((now, done))
        self._add_to_timeline(now, done, counts)
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_S:
            self._samples.popleft()
        self._counts = counts
        return counts

    def _add_to_timeline(self, now: float, done: int, counts: dict) -> None:
        """Keep every ``_stride``-th sample; when more than TIMELINE_POINTS, drop every other one and
        double the stride, so the kept samples stay evenly spread over the whole run."""
        failed = counts.get("failed", 0) + sum(counts.get(f"{m}_failed", 0) for m in self.models)
        self._latest = [round(now - self.started, 2), done, failed]
        self._refreshes += 1
        if self._refreshes % self._stride == 0:
            self._timeline.append(self._latest)
            if len(self._timeline) > TIMELINE_POINTS:
                self._timeline, self._stride = self._timeline[::2], self._stride * 2

    def timeline(self) -> list[list]:
        """The kept samples and the latest one: ``[seconds since start, done, failed]``."""
        tail = [self._latest] if self._latest is not None and self._latest is not self._timeline[-1] else []
        return [list(sample) for sample in self._timeline + tail]

    def line(self, bar: bool = False) -> str:
        counts = self._counts
        done, rate = self.done(counts), self.rate()
        pct = 100.0 * done / self.total if self.total else 100.0
        eta = f"ETA {_duration((self.total - done) / rate)}" if rate > 0 and done < self.total else \
            ("ETA -" if done < self.total else f"took {_duration(time.monotonic() - self.started)}")
        failed = counts.get("failed", 0) + sum(counts.get(f"{m}_failed", 0) for m in self.models)
        head = f"{pct:3.0f}% {done}/{self.total}"
        if bar:
            width = 20
            filled = int(width * done / self.total) if self.total else width
            head = f"{'█' * filled}{'░' * (width - filled)} {pct:3.0f}%  {done:,}/{self.total:,}"
        parts = [f"[ecgembed] {head}", f"{rate:.1f} rec/s", eta]
        if not bar:      # logs: where the records are (read by prepare, embedded by each model)
            parts.append(f"read {min(counts.get('read', 0), self.total)}")
        parts.append(f"failed {failed}")
        if not bar:
            parts += [f"{m} {counts.get(f'{m}_embedded', 0)}" for m in self.models]
        return " | ".join(parts)

    # ---- output --------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        """Print a line; in a terminal the bar is cleared first and redrawn after."""
        with self._lock:
            self._clear_bar()
            if self._log is not None:
                self._log(text)
            else:
                print(text, file=self.stream, flush=True)
            self._draw_bar()

    def _clear_bar(self) -> None:
        if self._bar_shown:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self._bar_shown = False

    def _draw_bar(self) -> None:
        if self.tty and not self._stop.is_set():
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write("\r\x1b[2K" + self.line(bar=True)[:width])
            self.stream.flush()
            self._bar_shown = True

    def _loop(self) -> None:
        last_line = time.monotonic()
        tick = 0.5 if self.tty else min(self.interval, 5.0)
        while not self._stop.wait(tick):
            self.refresh()
            with self._lock:
                if self.tty:
                    self._draw_bar()
                elif time.monotonic() - last_line >= self.interval:
                    last_line = time.monotonic()
                    text = self.line()
                    if self._log is not None:
                        self._log(text)
                    else:
                        print(text, file=self.stream, flush=True)

    # ---- run statistics --------------------------------------------------------------------------
    def stats(self) -> dict:
        """Counters of the run, for its committed metadata."""
        counts = self.refresh()
        seconds = {k.removeprefix("seconds_"): round(v, 3) for k, v in counts.items() if k.startswith("seconds_")}
        by_type = {k.removeprefix("error:"): v for k, v in counts.items() if k.startswith("error:")}
        by_stage = {k.removeprefix("stage:"): v for k, v in counts.items() if k.startswith("stage:")}
        for model in self.models:
            for k, v in counts.items():
                if k.startswith(f"{model}_error:"):
                    by_type[k.split(":", 1)[1]] = by_type.get(k.split(":", 1)[1], 0) + v
                    by_stage[model] = by_stage.get(model, 0) + v
        steady = 0.0
        if self.first_done is not None and self._samples and self._samples[-1][0] > self.first_done:
            steady = (self.done(counts) - self.first_done_count) / (self._samples[-1][0] - self.first_done)
        return {
            "busy_seconds": seconds,      # summed over workers: where the time went, per stage
            "records": {"read": counts.get("read", 0), "failed_before_models": counts.get("failed", 0),
                        "internal_errors": counts.get("internal_errors", 0),
                        **{f"{m}_embedded": counts.get(f"{m}_embedded", 0) for m in self.models},
                        **{f"{m}_failed": counts.get(f"{m}_failed", 0) for m in self.models}},
            "errors_by_type": dict(sorted(by_type.items())),
            "errors_by_stage": dict(sorted(by_stage.items())),
            "records_per_s_steady": round(steady, 3),
            "seconds_to_first_record": round(self.first_done - self.started, 3) if self.first_done else None,
            "timeline": self.timeline(),     # [seconds, done, failed], evenly thinned
        }
