#!/usr/bin/env python3
"""Where MELP's and ECGFM-KED's GPU time goes: the follow-up to ``bench/gpu_check.sh``.

gpu_check measured MELP's bf16 policy at 16 % of its FLOP bound and KED's fp32 at 26 %. This
script times each stage of one batch with CUDA events (median of several runs), the top CUDA
kernels by time (torch.profiler), and the candidates that need no change of numerics policy:
cuDNN autotuning (``cudnn.benchmark``) and, for KED, TF32 (gpu_check's ``tf32_all`` row gives its
fidelity). Prints everything and writes ``gpu_profile.json`` under ``--out`` (or ``$OUT``).

    source .gpu/setup.sh && python3 bench/gpu_profile.py          # on the lent GPU machine
    python3 bench/gpu_profile.py --batch 2 --reps 1                # CPU smoke run (no GPU rows)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ecgembed.models.ecgfm_ked import ECGFMKED  # noqa: E402
from ecgembed.models.execution import bf16_autocast, ieee_fp32, tf32  # noqa: E402
from ecgembed.models.melp import MELPConfig, MELPEncoder  # noqa: E402


def timed(fn, device: torch.device, reps: int, warmup: int = 2) -> float:
    """Median seconds of ``fn()`` over ``reps`` runs (CUDA events on GPU, wall clock on CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


@contextlib.contextmanager
def cudnn_benchmark(on: bool):
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def melp_stages(device: torch.device, batch: int, reps: int) -> dict:
    """The bf16 policy's stages, and the positional convolution under each candidate."""
    torch.manual_seed(0)
    enc = MELPEncoder(MELPConfig()).to(device).eval().requires_grad_(False)
    bb = enc.backbone
    x = torch.rand(batch, 12, 5000, device=device)
    out: dict = {"batch": batch}
    with torch.inference_mode():
        with ieee_fp32(device):
            h = bb.front(x)
        with bf16_autocast(device):
            pos_in = h.transpose(1, 2)
            tokens = bb.transformer(h)
        stages = {
            "front_fp32": lambda: _fp32(device, lambda: bb.front(x)),
            "pos_conv_bf16": lambda: _bf16(device, lambda: bb.conv_pos(pos_in)),
            "encoder_bf16": lambda: _bf16(device, lambda: bb.encoder(h)),
            "one_layer_bf16": lambda: _bf16(device, lambda: bb.encoder.layers[0](h)),
            "heads_bf16": lambda: _bf16(device, lambda: enc.heads(tokens)),
            "whole_policy": lambda: (_fp32(device, lambda: bb.front(x)), _bf16(device, lambda: enc.heads(bb.transformer(h)))),
        }
        for bench_on in (False, True):
            with cudnn_benchmark(bench_on):
                suffix = "+cudnn_benchmark" if bench_on else ""
                for name, fn in stages.items():
                    out[name + suffix + "_ms"] = timed(fn, device, reps) * 1e3
                out["pos_conv_fp32" + suffix + "_ms"] = timed(lambda: _fp32(device, lambda: bb.conv_pos(pos_in.float())), device, reps) * 1e3
                if device.type == "cuda":
                    out["pos_conv_tf32" + suffix + "_ms"] = timed(lambda: _tf32(device, lambda: bb.conv_pos(pos_in.float())), device, reps) * 1e3
        if device.type == "cuda":
            out["top_kernels_policy"] = top_kernels(stages["whole_policy"], device)
    return out


def _fp32(device, fn):
    with ieee_fp32(device):
        return fn()


def _bf16(device, fn):
    with bf16_autocast(device):
        return fn()


def _tf32(device, fn):
    with tf32(device):
        return fn()


def ked_stages(device: torch.device, batch: int, reps: int, n_classes: int = 71) -> dict:
    torch.manual_seed(0)
    model = ECGFMKED().to(device).eval()
    x = torch.rand(batch, 12, 1000, device=device)
    feats = torch.randn(n_classes, 768, device=device)
    out: dict = {"batch": batch}
    with torch.inference_mode():
        with ieee_fp32(device):
            tok = model.tokens(x)
        for bench_on in (False, True):
            with cudnn_benchmark(bench_on):
                suffix = "+cudnn_benchmark" if bench_on else ""
                out["trunk_fp32" + suffix + "_ms"] = timed(lambda: _fp32(device, lambda: model.tokens(x)), device, reps) * 1e3
                out["query_fp32" + suffix + "_ms"] = timed(lambda: _fp32(device, lambda: model.logits(tok, feats)), device, reps) * 1e3
                if device.type == "cuda":
                    out["trunk_tf32" + suffix + "_ms"] = timed(lambda: _tf32(device, lambda: model.tokens(x)), device, reps) * 1e3
                    out["query_tf32" + suffix + "_ms"] = timed(lambda: _tf32(device, lambda: model.logits(tok, feats)), device, reps) * 1e3
        if device.type == "cuda":
            out["top_kernels_fp32"] = top_kernels(lambda: _fp32(device, lambda: model.logits(model.tokens(x), feats)), device)
    return out


def top_kernels(fn, device: torch.device, n: int = 12) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    try:
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        rows = []
        events = [e for e in prof.key_averages() if getattr(e, "device_time_total", 0) > 0]
        total = sum(e.device_time_total for e in events) or 1.0
        for e in sorted(events, key=lambda e: e.device_time_total, reverse=True)[:n]:
            rows.append({"kernel": e.key[:120], "ms": e.device_time_total / 1e3, "share": e.device_time_total / total,
                         "calls": e.count})
        return rows
    except Exception as exc:  # noqa: BLE001 - the profiler is optional on some machines
        return [{"error": f"{type(exc).__name__}: {exc}"}]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "."))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__}
    for name, fn in (("melp", melp_stages), ("ecgfm-ked", ked_stages)):
        start = time.perf_counter()
        try:
            result[name] = fn(device, args.batch, args.reps)
        except Exception as exc:  # noqa: BLE001 - keep the other model's figures
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
        result[name]["seconds"] = time.perf_counter() - start
        print(f"== {name} ==")
        for key, value in result[name].items():
            if isinstance(value, list):
                for row in value:
                    print(f"  {key}: " + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
            else:
                print(f"  {key}: {value:.3f}" if isinstance(value, float) else f"  {key}: {value}")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_profile.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
