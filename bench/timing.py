"""The timing loop the model benchmarks share: warm up, synchronise, time whole steps.

``records_per_s`` calls ``step()`` (one batch) ``warmup`` times, then times windows of at least
``min_seconds`` and ``min_iters`` steps with the device synchronised before every clock read,
and returns the best window's records/s (best-of: robust to other load on a shared machine).
"""

from __future__ import annotations

import time

import torch


def sync(device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; CPU needs nothing)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(torch.device(device))


def records_per_s(step, batch: int, device, warmup: int, min_seconds: float, min_iters: int = 2,
                  repeats: int = 1) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    best = 0.0
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while True:
            step()
            n += 1
            sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds and n >= min_iters:
                break
        best = max(best, n * batch / elapsed)
    return best
