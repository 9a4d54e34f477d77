#!/usr/bin/env python3
"""MELP encoder throughput, model only (input already on the device, no decoding, no I/O).

    python bench/bench_melp.py                        # CPU fp32 at batch 1, 2, 4, 8
    python bench/bench_melp.py --weights DIR_OR_URI   # a real checkpoint instead of random weights
    python bench/bench_melp.py --token-level          # with the caption pooler (42.8 vs 41.6 GFLOP)
    python bench/bench_melp.py --cpu-modes fp32,bf16  # also the bf16 policy on CPU (AVX512-BF16/AMX)

Modes are the model's precisions (``load_melp(..., precision=...)``): ``fp32`` (IEEE, TF32 off)
and ``bf16`` (the policy: conv front + ``post_extract_proj`` in fp32, the rest under bf16
autocast). ``bf16-whole`` (bench only, GPU) runs the whole encoder under autocast, the policy
this replaced for fidelity, to show what the fp32 front costs in speed.

CPU: records/s per batch size, warm-up first, ratios to batch 1 (and to fp32 for other
modes), achieved GFLOP/s.
GPU (when ``torch.cuda.is_available()``): every mode at larger batch sizes; ratios to fp32 and
the fraction of the FLOP bound (achieved FLOP/s over the device's peak; ``--peak-tflops`` for
a device missing from :data:`PEAK_TFLOPS`). CUDA is synchronised before every clock read.
Throughput does not depend on the weight values, so random weights are the default.
"""
from __future__ import annotations

import argparse

import timing
import torch

from ecgembed.models.melp import MELP, MELPConfig, MELPEncoder, load_melp

# dense peak TFLOP/s: (fp32 without tensor cores, bf16 tensor cores); from the vendor data sheets
PEAK_TFLOPS: dict[str, tuple[float, float]] = {
    "H100 80GB HBM3": (67.0, 989.4),  # SXM
    "H100 PCIe": (51.2, 756.0),
    "H200": (67.0, 989.4),
    "A100": (19.5, 312.0),
}


class WholeAutocast(torch.nn.Module):
    """Bench only: the whole encoder under bf16 autocast (the replaced policy), for its speed."""

    def __init__(self, model: MELP):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.model.encoder(x)


def build(args, device: str, mode: str) -> torch.nn.Module:
    """The object a Ray actor holds, in one mode: fp32 | bf16 (precisions) | bf16-whole (bench only)."""
    precision = "fp32" if mode == "fp32" else "bf16"
    if args.weights:
        model = load_melp(args.weights, device=device, precision=precision, token_level=args.token_level)
    else:
        torch.manual_seed(0)
        encoder = MELPEncoder(MELPConfig(), token_level=args.token_level)
        torch.nn.init.normal_(encoder.proj_contrast, std=0.06)
        encoder = encoder.to(device=device).eval().requires_grad_(False)
        model = MELP(encoder, "random-weights", precision=precision)
    return WholeAutocast(model) if mode == "bf16-whole" else model


@torch.inference_mode()
def records_per_s(model: torch.nn.Module, batch: int, device: str, min_time: float, warmup: int, repeats: int = 1) -> float:
    """Best of ``repeats`` timed windows of at least ``min_time`` s (best-of: robust to other load)."""
    x = torch.rand(batch, 12, 5000, device=device)
    return timing.records_per_s(lambda: model(x), batch, device, warmup, min_time, repeats=repeats)


def peak_for(name: str, override: list[float] | None) -> tuple[float, float] | None:
    if override:
        return override[0], override[1]
    for key, peak in PEAK_TFLOPS.items():
        if key in name:
            return peak
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", help="MELP folder/file URI (default: random weights)")
    ap.add_argument("--token-level", action="store_true", help="also run the caption pooler")
    ap.add_argument("--cpu-batch-sizes", default="1,2,4,8")
    ap.add_argument("--cpu-modes", default="fp32", help="comma list of fp32, bf16, bf16-whole")
    ap.add_argument("--gpu-batch-sizes", default="32,64,128,256")
    ap.add_argument("--min-time", type=float, default=3.0, help="seconds per timed window (after warm-up)")
    ap.add_argument("--repeats", type=int, default=3, help="timed windows per row; the best is reported")
    ap.add_argument("--warmup", type=int, default=1, help="untimed batches before each row")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU")
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--peak-tflops", type=float, nargs=2, metavar=("FP32", "BF16"),
                    help="device peak for the FLOP-bound fraction (default: table by device name)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with torch.device("meta"):
        flops = MELPEncoder(MELPConfig(), token_level=args.token_level).estimate_flops_per_record()
    print(f"torch {torch.__version__}; {flops / 1e9:.1f} GFLOP/record "
          f"({'with' if args.token_level else 'without'} the caption pooler); weights: {args.weights or 'random'}")

    if not args.skip_cpu:
        modes = args.cpu_modes.split(",")
        print(f"\nCPU, {torch.get_num_threads()} threads, best of {args.repeats} windows of >= {args.min_time:g} s")
        print(f"{'batch':>5} {'mode':>10} {'records/s':>10} {'vs batch 1':>10} {'vs fp32':>8} {'GFLOP/s':>8}")
        rates: dict[tuple[str, int], float] = {}
        for mode in modes:
            model = build(args, "cpu", mode)
            for batch in [int(b) for b in args.cpu_batch_sizes.split(",")]:
                rate = rates[mode, batch] = records_per_s(model, batch, "cpu", args.min_time, args.warmup, args.repeats)
                first = rates[mode, int(args.cpu_batch_sizes.split(",")[0])]
                vs_fp32 = f"{rate / rates['fp32', batch]:>7.2f}x" if ("fp32", batch) in rates else "     n/a"
                print(f"{batch:>5} {mode:>10} {rate:>10.2f} {rate / first:>9.2f}x {vs_fp32:>8} "
                      f"{rate * flops / 1e9:>8.1f}")
            del model

    if not torch.cuda.is_available():
        print("\nno CUDA device: GPU rows skipped")
        return
    name = torch.cuda.get_device_name()
    peak = peak_for(name, args.peak_tflops)
    print(f"\nGPU {name}; peak TFLOP/s fp32/bf16: {peak if peak else 'unknown (use --peak-tflops)'}")
    print("fp32 = IEEE (the model turns TF32 off); bf16 = the policy (fp32 front); bf16-whole = all autocast")
    print(f"{'batch':>5} {'mode':>10} {'records/s':>10} {'vs fp32':>8} {'TFLOP/s':>8} {'of peak':>8}")
    fp32_rates: dict[int, float] = {}
    for mode in ("fp32", "bf16", "bf16-whole"):
        model = build(args, "cuda", mode)
        for batch in [int(b) for b in args.gpu_batch_sizes.split(",")]:
            rate = records_per_s(model, batch, "cuda", args.min_time, max(args.warmup, 3), args.repeats)
            fp32_rates.setdefault(batch, rate)
            achieved = rate * flops / 1e12
            frac = f"{achieved / (peak[0] if mode == 'fp32' else peak[1]):>7.1%}" if peak else "    n/a"
            print(f"{batch:>5} {mode:>10} {rate:>10.1f} {rate / fp32_rates[batch]:>7.2f}x {achieved:>8.1f} {frac:>8}")
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
