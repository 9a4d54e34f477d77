"""ECGFM-KED model-only throughput: the xresnet trunk alone, then trunk + TQN for 9 / 71 / 105 classes.

    python bench/bench_ked.py                      # CPU; and CUDA fp32 + bf16 when a GPU is present
    python bench/bench_ked.py --weights ked.pt     # real weights (timings do not depend on values)
    python bench/bench_ked.py --cpu-modes fp32,bf16,autocast

Modes: ``fp32`` and ``bf16`` are the model's precisions (``load_ked(..., precision=...)``); the
bf16 policy runs ECGFM-KED in fp32 with TF32 on CUDA (bf16 costs the zero-shot scores fidelity,
see ``ecgembed/models/ecgfm_ked/model.py``), so on CPU their ratio is ~1 by construction.
``autocast`` (bench only) runs the whole model under bf16 autocast.

Inputs are random tensors of the model's shape (no decoding, no preprocessing), so this
measures the model alone. Each configuration is warmed up, then timed over whole batches
(with ``torch.cuda.synchronize()`` before reading the clock on GPU). Printed: records/s, the
FLOP rate that implies (trunk 1.09 GFLOP/record; TQN 0.53 + 0.076 per class, from
``specs/ecgfm-ked.md`` §f), and ratios measured in the same run: each class count against
the trunk alone, and each mode against fp32.
"""

from __future__ import annotations

import argparse

import timing
import torch

from ecgembed.models.ecgfm_ked import ECGFMKED, load_ked

TRUNK_GFLOP, TQN_BASE_GFLOP, TQN_PER_CLASS_GFLOP = 1.09, 0.53, 0.076
CLASS_COUNTS = (9, 71, 105)


def gflop_per_record(n_classes: int | None) -> float:
    return TRUNK_GFLOP + (0.0 if n_classes is None else TQN_BASE_GFLOP + TQN_PER_CLASS_GFLOP * n_classes)


@torch.inference_mode()
def records_per_second(model: ECGFMKED, batch: int, n_classes: int | None, device: torch.device,
                       autocast: bool, min_seconds: float, warmup: int) -> float:
    x = torch.randn(batch, 12, 1000, device=device)
    feats = None if n_classes is None else model.to_device([torch.randn(n_classes, 768)])  # once, as an actor

    def step():
        if not autocast:
            return model(x, feats)
        with torch.autocast(device.type, dtype=torch.bfloat16):  # bench only: the rejected policy
            tokens = model.tokens(x)
            return tokens if feats is None else model.logits(tokens, feats[0]).softmax(-1)

    return timing.records_per_s(step, batch, device, warmup, min_seconds)


def run_device(model: ECGFMKED, device: torch.device, batch: int, modes: list[str], args) -> None:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"\n== {device.type} ({where}), batch {batch} ==")
    print(f"{'mode':8} {'classes':>7} {'records/s':>10} {'GFLOP/s':>8} {'vs trunk':>9}")
    results: dict[tuple[str, int | None], float] = {}
    for mode in modes:
        precision = "bf16" if mode == "bf16" else "fp32"
        moved = ECGFMKED(model.cfg, model.model_version, precision=precision).eval()
        moved.load_state_dict(model.state_dict())
        moved = moved.to(device)
        for n_classes in (None, *CLASS_COUNTS):
            rate = records_per_second(moved, batch, n_classes, device, mode == "autocast", args.seconds, args.warmup)
            results[mode, n_classes] = rate
            label = "trunk" if n_classes is None else str(n_classes)
            ratio = rate / results[mode, None]
            print(f"{mode:8} {label:>7} {rate:10.1f} {rate * gflop_per_record(n_classes):8.1f} {ratio:9.3f}")
    for mode in modes:
        if mode != "fp32" and "fp32" in modes:
            speedups = [f"{'trunk' if c is None else c}: {results[mode, c] / results['fp32', c]:.2f}x"
                        for c in (None, *CLASS_COUNTS)]
            print(f"{mode} / fp32 speed-up: " + ", ".join(speedups))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", help="checkpoint URI (default: random weights, same speed)")
    ap.add_argument("--cpu-batch", type=int, default=16)
    ap.add_argument("--gpu-batch", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per configuration")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU part")
    ap.add_argument("--cpu-modes", default="fp32", help="comma list of fp32, bf16, autocast (CPU part)")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_ked(args.weights) if args.weights else ECGFMKED().eval()
    print(f"torch {torch.__version__}; weights: {args.weights or 'random (same FLOPs)'}")
    if not args.no_cpu:
        run_device(model, torch.device("cpu"), args.cpu_batch, args.cpu_modes.split(","), args)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # fixed shapes; fp32 is IEEE (the model turns TF32 off)
        run_device(model, torch.device("cuda"), args.gpu_batch, ["fp32", "bf16", "autocast"], args)
    else:
        print("\n(no CUDA device: GPU part skipped)")


if __name__ == "__main__":
    main()
