"""ECGFM-KED model-only throughput: the xresnet trunk alone, then trunk + TQN for 9 / 71 / 105 classes.

    python bench/bench_ked.py                      # CPU; and CUDA fp32 + bf16 when a GPU is present
    python bench/bench_ked.py --weights ked.pt     # real weights (timings do not depend on values)

Inputs are random tensors of the model's shape (no decoding, no preprocessing), so this
measures the model alone. Each configuration is warmed up, then timed over whole batches
(with ``torch.cuda.synchronize()`` before reading the clock on GPU). Printed: records/s, the
FLOP rate that implies (trunk 1.09 GFLOP/record; TQN 0.53 + 0.076 per class, from
``specs/ecgfm-ked.md`` §f), and ratios measured in the same run: each class count against
the trunk alone, and bf16 against fp32 on GPU.
"""

from __future__ import annotations

import argparse
import time

import torch

from ecgembed.models.ecgfm_ked import ECGFMKED, load_ked

TRUNK_GFLOP, TQN_BASE_GFLOP, TQN_PER_CLASS_GFLOP = 1.09, 0.53, 0.076
CLASS_COUNTS = (9, 71, 105)


def gflop_per_record(n_classes: int | None) -> float:
    return TRUNK_GFLOP + (0.0 if n_classes is None else TQN_BASE_GFLOP + TQN_PER_CLASS_GFLOP * n_classes)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def records_per_second(model: ECGFMKED, batch: int, n_classes: int | None, device: torch.device,
                       bf16: bool, min_seconds: float, warmup: int) -> float:
    x = torch.randn(batch, 12, 1000, device=device)
    feats = None if n_classes is None else torch.randn(n_classes, 768, device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x, feats)
        return out["scores" if feats is not None else "embedding"]

    for _ in range(warmup):
        step()
    sync(device)
    n, start = 0, time.perf_counter()
    while True:
        step()
        n += 1
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and n >= 2:
            return n * batch / elapsed


def run_device(model: ECGFMKED, device: torch.device, batch: int, dtypes: list[str], args) -> None:
    model = model.to(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"\n== {device.type} ({where}), batch {batch} ==")
    print(f"{'dtype':6} {'classes':>7} {'records/s':>10} {'GFLOP/s':>8} {'vs trunk':>9}")
    results: dict[tuple[str, int | None], float] = {}
    for dtype in dtypes:
        for n_classes in (None, *CLASS_COUNTS):
            rate = records_per_second(model, batch, n_classes, device, dtype == "bf16", args.seconds, args.warmup)
            results[dtype, n_classes] = rate
            label = "trunk" if n_classes is None else str(n_classes)
            ratio = rate / results[dtype, None]
            print(f"{dtype:6} {label:>7} {rate:10.1f} {rate * gflop_per_record(n_classes):8.1f} {ratio:9.3f}")
    if "bf16" in dtypes and "fp32" in dtypes:
        speedups = [f"{'trunk' if c is None else c}: {results['bf16', c] / results['fp32', c]:.2f}x"
                    for c in (None, *CLASS_COUNTS)]
        print("bf16 / fp32 speed-up: " + ", ".join(speedups))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", help="checkpoint URI (default: random weights, same speed)")
    ap.add_argument("--cpu-batch", type=int, default=16)
    ap.add_argument("--gpu-batch", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per configuration")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU part")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_ked(args.weights) if args.weights else ECGFMKED().eval()
    print(f"torch {torch.__version__}; weights: {args.weights or 'random (same FLOPs)'}")
    if not args.no_cpu:
        run_device(model, torch.device("cpu"), args.cpu_batch, ["fp32"], args)
    if torch.cuda.is_available():
        # fp32 means fp32: no TF32 shortcuts in matmul/conv (conformance setting)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
        run_device(model, torch.device("cuda"), args.gpu_batch, ["fp32", "bf16"], args)
    else:
        print("\n(no CUDA device: GPU part skipped)")


if __name__ == "__main__":
    main()
