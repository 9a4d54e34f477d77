#!/usr/bin/env python3
"""The device check of issue 9 (item 6), driven by ``bench/gpu_check.sh``: one run, every figure.

    (a) fidelity   MELP and ECGFM-KED on the 8 e2e records against the original code's outputs
                   (``expected.npz``): strict fp32 (TF32 off), torch defaults (cuDNN TF32 on), the
                   bf16 policy (MELP: fp32 front, TF32 positional conv, bf16 rest; KED: TF32),
                   whole-model bf16 autocast (the policy it replaced) and, for KED, all-TF32
                   called directly (its bf16 policy's numerics, outside the model's contexts)
    (b) model      records/s of MELP and KED at batch 128/256/512, fp32 and bf16, input already on
                   the device; FLOPs from torch.utils.flop_counter; fraction of the FLOP bound
    (c) preprocess CPU records/s of fetch + decode + leads + both model inputs, on all cores
    (d) pipeline   a full ``ecgembed run`` (stand-in weights) over >= 50,000 records (hard links to
                   the bundled sample records), GPU utilisation sampled by ``nvidia-smi dmon``;
                   efficiency = end-to-end records/s / model-only records/s of both encoders
    (e) no-op      the same command again: nothing to do; its seconds vs the full run

Every step writes ``gpu_check.json`` and ``gpu_check.txt`` under ``--out`` as soon as it ends,
so a run cut short still leaves what it measured. A failing step is recorded with its error and
the next step runs. Without CUDA the same code runs on CPU (the GPU-only rows are left out):
that is the small mode ``tests/test_gpu_check.py`` runs (``--small``: 200 + 10 records, batch 2).
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ecgembed.models import execution  # noqa: E402
from timing import records_per_s, sync  # noqa: E402 - bench/timing.py
from ecgembed.models.ecgfm_ked import ECGFMKED, load_ked, load_ked_text  # noqa: E402
from ecgembed.models.melp import MELP, MELPConfig, MELPEncoder, load_melp  # noqa: E402

SAMPLES = ("georgia/E07500", "ptbxl/HR06000", "ptbxl/00001_lr", "ningbo/JS20007", "cpsc2018/A0004")
MELP_REFERENCE_SHA256 = "337f3011c15e0e3215433dff706b4b214d1477eba52c16004f112fddac2ca88f"
PIPELINE_LABELS = "ptbxl"                      # the CLI's default label set (71 classes)
PIPELINE_BATCH = {"melp": 128, "ecgfm-ked": 256}  # the CLI's default GPU batch sizes
# Peaks assumed when the in-run matmul measurement is not available (datasheet fp32 without tensor
# cores; bf16 as measured on the lent H200 with an 8192^3 matmul; TF32 half of that).
ASSUMED_PEAK_TFLOPS = {"fp32": 67.0, "tf32": 395.0, "bf16": 790.0}


# --------------------------------------------------------------------------- report
class Report:
    """The JSON figures and the printed lines, both rewritten under ``out`` after every step."""

    def __init__(self, out: Path, meta: dict):
        self.out = out
        self.data: dict = {"meta": meta}
        self.lines: list[str] = []
        out.mkdir(parents=True, exist_ok=True)

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def step(self, name: str, fn, *args) -> None:
        self.say(f"\n== {name} ==")
        start = time.perf_counter()
        try:
            self.data[name] = fn(self, *args)
        except Exception as exc:  # noqa: BLE001 - one failing step must not lose the others' figures
            self.data[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            self.say(f"FAILED: {type(exc).__name__}: {exc}")
            self.say(traceback.format_exc(limit=4))
        self.data[name]["step_seconds"] = round(time.perf_counter() - start, 2)
        self.write()

    def write(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=2, default=float) + "\n")
        (self.out / "gpu_check.txt").write_text("\n".join(self.lines) + "\n")


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).min())


# --------------------------------------------------------------------------- weights
def make_weights(report: Report, conformance: Path, work: Path) -> dict:
    """The conformance stand-in checkpoints, generated here (the KED one is 250 MB: never carried)."""
    melp_dir, ked_file = work / "melp_weights", work / "ked_ref.pt"
    out = subprocess.run([sys.executable, str(conformance / "melp" / "make_weights.py"), "--out", str(melp_dir),
                          "--only", "ecg"], capture_output=True, text=True, check=True, timeout=300).stdout
    ked = subprocess.run([sys.executable, str(conformance / "ecgfm-ked" / "make_weights.py"), "--variant",
                          "reference", "--out", str(ked_file), "--verify"], capture_output=True, text=True,
                         timeout=300)
    result = {"melp": str(melp_dir), "ecgfm-ked": str(ked_file),
              "melp_matches_reference": MELP_REFERENCE_SHA256 in out,
              "ked_digests_match": "digests match" in ked.stdout}
    report.say(f"MELP weights match the reference: {result['melp_matches_reference']}; "
               f"KED digests match: {result['ked_digests_match']}")
    if ked.returncode != 0 and not ked_file.is_file():
        raise RuntimeError(f"KED make_weights failed: {ked.stderr[-2000:]}")
    return result


# --------------------------------------------------------------------------- (a) fidelity
@torch.inference_mode()
def _direct(fn, *, tf32: bool | None = None, autocast: torch.device | None = None):
    """``fn()`` outside the model's precision contexts: torch's defaults, or TF32 forced on, or
    whole-model bf16 autocast (the policies the check compares against)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        if autocast is None:
            return fn()
        with torch.autocast(autocast.type, dtype=torch.bfloat16):
            return fn()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def fidelity_melp(device: torch.device, x: np.ndarray, expected: dict, weights: str) -> dict:
    n, rows = len(x), {}

    def row(emb: np.ndarray, probe: np.ndarray) -> dict:
        return {"embedding_max_abs": float(np.abs(emb - expected["melp_global_norm"][:n]).max()),
                "embedding_min_cosine": min_cosine(emb, expected["melp_global_norm"][:n]),
                "probe_max_abs": float(np.abs(probe - expected["melp_probe"][:n]).max()),
                "probe_min_cosine": min_cosine(probe, expected["melp_probe"][:n])}

    for precision, name in (("fp32", "fp32_strict"), ("bf16", "bf16_policy")):
        model = load_melp(weights, device=device, precision=precision)
        out = model.embed(x)
        rows[name] = row(out["embedding"], out["probe_embedding"])
        if precision == "fp32":  # the modules called directly, without the model's precision contexts
            xd = torch.from_numpy(x).to(device)
            for extra, kwargs in (("torch_defaults", {}), ("autocast_all", {"autocast": device})):
                raw = _direct(lambda m=model: m.encoder(xd), **kwargs)
                rows[extra] = row(raw["embedding"].float().cpu().numpy(), raw["probe_embedding"].float().cpu().numpy())
        del model
    return rows


def fidelity_ked(device: torch.device, x: np.ndarray, expected: dict, weights: str, conformance: Path) -> dict:
    n, rows = len(x), {}
    texts = json.loads((conformance / "ecgfm-ked" / "class_texts.json").read_text())["class_texts"]
    feats = load_ked_text(weights, str(conformance / "ecgfm-ked" / "tiny_bert")).encode(texts)  # CPU fp32, (5, 768)

    def row(emb: np.ndarray, scores: np.ndarray) -> dict:
        return {"embedding_max_abs": float(np.abs(emb - expected["ked_embedding"][:n]).max()),
                "embedding_min_cosine": min_cosine(emb, expected["ked_embedding"][:n]),
                "scores_max_abs": float(np.abs(scores - expected["ked_scores"][:n]).max())}

    for precision, name in (("fp32", "fp32_strict"), ("bf16", "bf16_policy")):
        model = load_ked(weights, device=device, precision=precision)
        out = model.embed(x, [feats])
        rows[name] = row(out["embedding"], out["scores"][0])
        if precision == "fp32":
            xd, fd = torch.from_numpy(x).to(device), torch.from_numpy(feats).to(device)

            def direct(m=model, xd=xd, fd=fd):
                tokens = m.tokens(xd)
                return tokens.float().mean(-1), m.logits(tokens, fd).float().softmax(-1)[..., 1]

            extras = {"torch_defaults": {}, "autocast_all": {"autocast": device}}
            if device.type == "cuda":
                extras["tf32_all"] = {"tf32": True}  # KED's bf16 policy, called directly
            for extra, kwargs in extras.items():
                emb, scores = _direct(direct, **kwargs)
                rows[extra] = row(emb.cpu().numpy(), scores.cpu().numpy())
        del model
    return rows


def fidelity(report: Report, device: torch.device, e2e: Path, conformance: Path, weights: dict, n: int) -> dict:
    expected = dict(np.load(e2e / "expected.npz"))
    xm, xk = np.load(e2e / "melp_inputs.npy")[:n], np.load(e2e / "ked_inputs.npy")[:n]
    rows: dict[str, dict] = {}
    for model, run in (("melp", lambda: fidelity_melp(device, xm, expected, weights["melp"])),
                       ("ecgfm-ked", lambda: fidelity_ked(device, xk, expected, weights["ecgfm-ked"], conformance))):
        try:
            rows[model] = run()
        except Exception as exc:  # noqa: BLE001 - keep the other model's rows
            rows[model] = {"failed": {"error": f"{type(exc).__name__}: {exc}"}}
            report.say(f"{model}: FAILED {type(exc).__name__}: {exc}")
            continue
        for name, row in rows[model].items():
            report.say(f"{model:9} {name:15} " + "  ".join(
                f"{k} {v:.7f}" if "cosine" in k else f"{k} {v:.3g}" for k, v in row.items()))
    return {"device": device.type, "records": n, "rows": rows}


# --------------------------------------------------------------------------- (b) model-only
def flops_per_record(n_classes: int) -> dict:
    """FLOPs per record from torch.utils.flop_counter, on the meta device (shapes only)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        melp, ked = MELPEncoder(MELPConfig()), ECGFMKED()
        xm, xk, feats = torch.empty(1, 12, 5000), torch.empty(1, 12, 1000), torch.empty(n_classes, 768)
        xp = torch.empty(1, 768, MELPConfig().n_tokens)
    counts = {}
    for name, fn in (("melp", lambda: melp(xm)), ("melp_front", lambda: melp.backbone.front(xm)),
                     ("melp_pos", lambda: melp.backbone.conv_pos(xp)),
                     ("ecgfm-ked", lambda: ked.logits(ked.tokens(xk), feats)), ("ked_trunk", lambda: ked.tokens(xk))):
        with FlopCounterMode(display=False) as counter:
            fn()
        counts[name] = counter.get_total_flops()
    return counts


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, allow_tf32: bool = False) -> float:
    """Best of a few 8192^3 matmuls (IEEE fp32 for float32 unless ``allow_tf32``): the bound the
    model rows are held to."""
    a = torch.randn(8192, 8192, device=device, dtype=dtype)
    b = torch.randn(8192, 8192, device=device, dtype=dtype)
    best = 0.0
    with (execution.tf32 if allow_tf32 else execution.ieee_fp32)(device):
        for _ in range(6):
            sync(device)
            start = time.perf_counter()
            a @ b
            sync(device)
            best = max(best, 2 * 8192**3 / (time.perf_counter() - start) / 1e12)
    return best




def throughput(report: Report, device: torch.device, batches: list[int], small: bool) -> dict:
    from ecgembed.labels import load_label_set

    n_classes = len(load_label_set(PIPELINE_LABELS).classes)
    flops = flops_per_record(n_classes)
    if device.type == "cuda":
        peaks = {"fp32": matmul_peak_tflops(device, torch.float32), "bf16": matmul_peak_tflops(device, torch.bfloat16),
                 "tf32": matmul_peak_tflops(device, torch.float32, allow_tf32=True)}
        peak_source = "measured in this run: best 8192^3 matmul (fp32 IEEE, bf16, tf32)"
    else:
        peaks, peak_source = dict(ASSUMED_PEAK_TFLOPS), "assumed (no CUDA): H200 fp32 datasheet, bf16 measured on the lent H200"
    report.say(f"FLOP/record: MELP {flops['melp'] / 1e9:.2f} G (front {flops['melp_front'] / 1e9:.2f} G, "
               f"positional conv {flops['melp_pos'] / 1e9:.2f} G), "
               f"KED {flops['ecgfm-ked'] / 1e9:.2f} G with {n_classes} classes (trunk {flops['ked_trunk'] / 1e9:.2f} G)")
    report.say(f"bound TFLOP/s: fp32 {peaks['fp32']:.1f}, tf32 {peaks['tf32']:.1f}, bf16 {peaks['bf16']:.1f} "
               f"({peak_source})")

    def bound_s(model: str, precision: str) -> float:
        """Ideal seconds per record at the peaks, with each policy's fp32, TF32 and bf16 parts."""
        if model == "melp" and precision == "bf16":
            front, pos = flops["melp_front"], flops["melp_pos"]
            return (front / (peaks["fp32"] * 1e12) + pos / (peaks["tf32"] * 1e12)
                    + (flops["melp"] - front - pos) / (peaks["bf16"] * 1e12))
        if precision == "bf16":  # KED's bf16 policy: TF32 throughout
            return flops[model] / (peaks["tf32"] * 1e12)
        return flops[model] / (peaks["fp32"] * 1e12)

    warmup, min_s, min_iters = (0, 0.0, 1) if small else (3, 1.0, 3)  # small: a smoke test, not a figure
    rows = []
    report.say(f"{'model':10} {'precision':9} {'batch':>5} {'records/s':>10} {'TFLOP/s':>8} {'of bound':>8}")
    for model_name in ("melp", "ecgfm-ked"):
        for precision in ("fp32", "bf16"):
            if model_name == "melp":
                torch.manual_seed(0)
                encoder = MELPEncoder(MELPConfig()).to(device).eval().requires_grad_(False)
                model = MELP(encoder, "random", precision=precision)
            else:
                model = ECGFMKED(precision=precision).to(device).eval()
                feats = model.to_device([torch.randn(n_classes, 768)])
            for batch in batches:
                x = torch.rand(batch, 12, 5000 if model_name == "melp" else 1000, device=device)
                step = (lambda m=model, x=x: m(x)) if model_name == "melp" else (lambda m=model, x=x: m(x, feats))
                with torch.inference_mode():
                    rate = records_per_s(step, batch, device, warmup, min_s, min_iters)
                achieved = rate * flops[model_name] / 1e12
                fraction = rate * bound_s(model_name, precision)
                rows.append({"model": model_name, "precision": precision, "batch": batch, "records_per_s": rate,
                             "tflops": achieved, "fraction_of_bound": fraction})
                report.say(f"{model_name:10} {precision:9} {batch:>5} {rate:>10.1f} {achieved:>8.2f} {fraction:>8.1%}")
                del x
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for model_name in ("melp", "ecgfm-ked"):
        for batch in batches:
            pair = {r["precision"]: r["records_per_s"] for r in rows if r["model"] == model_name and r["batch"] == batch}
            report.say(f"{model_name} batch {batch}: bf16 / fp32 = {pair['bf16'] / pair['fp32']:.2f}x")
    return {"device": device.type, "gflop_per_record": {k: v / 1e9 for k, v in flops.items()},
            "ked_classes": n_classes, "bound_tflops": peaks, "bound_source": peak_source, "rows": rows}


# --------------------------------------------------------------------------- (c) preprocessing
def make_records(samples_dir: Path, root: Path, n: int) -> dict:
    """``n`` records under ``root``: hard links (copies across file systems) of the sample records,
    five per folder so each header finds its signal file under its own name."""
    root.mkdir(parents=True)
    pristine = root.parent / "samples"
    if not pristine.is_dir():  # one private copy, on the same file system as the links
        pristine.mkdir()
        for rel in SAMPLES:
            for f in (samples_dir / rel).parent.glob(Path(rel).name + ".*"):
                shutil.copy2(f, pristine / f.name)
    files = sorted(pristine.iterdir())
    made, linked = 0, True
    for folder in range(math.ceil(n / len(SAMPLES))):
        target = root / f"d{folder:05d}"
        target.mkdir(exist_ok=True)
        for rel in SAMPLES[: n - made]:
            for f in files:
                if f.stem == Path(rel).name and not (target / f.name).exists():
                    try:
                        os.link(f, target / f.name)
                    except OSError:
                        linked = False
                        shutil.copy2(f, target / f.name)
            made += 1
    return {"records": made, "hard_links": linked}


def records(report: Report, samples_dir: Path, work: Path, n_prep: int, n_run: int) -> dict:
    start = time.perf_counter()
    made = {"preprocess": make_records(samples_dir, work / "records_prep", n_prep),
            "pipeline": make_records(samples_dir, work / "records_run", n_run)}
    report.say(f"{made['preprocess']['records']} + {made['pipeline']['records']} records made from "
               f"{len(SAMPLES)} samples in {time.perf_counter() - start:.1f} s "
               f"({'hard links' if made['pipeline']['hard_links'] else 'copies'})")
    return made


def _prepare_chunk(headers: list[str]) -> tuple[int, int]:
    """One worker's share: what the CPU stage does per record (fetch, decode, leads, flags, both inputs)."""
    from ecgembed import ECGError, read_record, standard_leads
    from ecgembed.preprocess import ked_input, melp_input, quality_flags

    ok = failed = 0
    for uri in headers:
        try:
            leads = standard_leads(read_record(uri))
            quality_flags(leads.signal, leads.fs, leads.derived)
            melp_input(leads.signal, leads.fs)
            ked_input(leads.signal, leads.fs)
            ok += 1
        except (ECGError, ValueError):
            failed += 1
    return ok, failed


def _warm_worker() -> None:
    import ecgembed.preprocess  # noqa: F401 - imports (scipy) out of the timed part


def preprocessing(report: Report, root: Path, n: int) -> dict:
    headers = sorted(str(p) for p in root.glob("d*/*.hea"))[:n]
    processes = os.cpu_count() or 1
    chunk = max(1, min(64, len(headers) // (processes * 4)))
    chunks = [headers[i:i + chunk] for i in range(0, len(headers), chunk)]
    with multiprocessing.get_context("spawn").Pool(processes, initializer=_warm_worker) as pool:
        pool.map(_prepare_chunk, [headers[:1]] * processes)  # every worker started and warm
        start = time.perf_counter()
        results = pool.map(_prepare_chunk, chunks)
        seconds = time.perf_counter() - start
    ok, failed = (sum(r[i] for r in results) for i in (0, 1))
    rate = len(headers) / seconds
    report.say(f"{len(headers)} records on {processes} processes in {seconds:.2f} s: {rate:.1f} records/s "
               f"({rate / processes:.1f} per core); {failed} failed")
    return {"records": len(headers), "processes": processes, "seconds": seconds, "records_per_s": rate,
            "per_core_records_per_s": rate / processes, "failed": failed, "ok": ok}


# --------------------------------------------------------------------------- (d, e) pipeline
def cli_missing_flags(flags: list[str]) -> list[str]:
    help_text = subprocess.run([sys.executable, "-m", "ecgembed.cli", "run", "--help"], capture_output=True,
                               text=True, timeout=120).stdout
    return [f for f in flags if f.startswith("--") and f not in help_text]


class GpuSampler:
    """``nvidia-smi dmon -s u`` in the background: SM and memory utilisation once a second."""

    def __init__(self, path: Path):
        self.path = path
        self.proc = None

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self.handle = open(self.path, "w")
            self.proc = subprocess.Popen(["nvidia-smi", "dmon", "-s", "u", "-d", "1"], stdout=self.handle,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
            self.handle.close()

    def summary(self) -> dict | None:
        if self.proc is None:
            return None
        sm, mem = [], []
        for line in self.path.read_text().splitlines():
            parts = line.split()
            if parts and not line.startswith("#") and len(parts) >= 3 and parts[1].isdigit():
                sm.append(int(parts[1]))
                mem.append(int(parts[2]) if parts[2].isdigit() else 0)
        if not sm:
            return {"samples": 0}
        return {"samples": len(sm), "sm_mean": float(np.mean(sm)), "sm_median": float(np.median(sm)),
                "sm_max": max(sm), "mem_mean": float(np.mean(mem)), "busy_fraction": float(np.mean(np.array(sm) > 0))}


def run_cli(args: list[str], log: Path, timeout: int) -> tuple[int, float, str]:
    start = time.perf_counter()
    with open(log, "w") as handle:
        try:
            proc = subprocess.run([sys.executable, "-m", "ecgembed.cli", "run", *args], stdout=handle,
                                  stderr=subprocess.STDOUT, timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = 124
    return code, time.perf_counter() - start, log.read_text(errors="replace")


def model_only_rate(report_data: dict) -> float | None:
    """Both encoders on one device one after the other: 1 / (1/r_melp + 1/r_ked), at the pipeline's
    precision (bf16) and the measured batch closest to the pipeline's batch sizes."""
    rows = report_data.get("throughput", {}).get("rows")
    if not rows:
        return None
    seconds = 0.0
    for model, batch in PIPELINE_BATCH.items():
        mine = [r for r in rows if r["model"] == model and r["precision"] == "bf16"]
        best = min(mine, key=lambda r: abs(r["batch"] - batch))
        seconds += 1.0 / best["records_per_s"]
    return 1.0 / seconds


def pipeline(report: Report, root: Path, run_flags: list[str], device: torch.device, work: Path,
             timeout: int) -> dict:
    n = len(list(root.glob("d*/*.hea")))
    flags = list(run_flags)
    if device.type != "cuda" and "--device" in flags:  # CPU small mode: same command, CPU actors
        flags[flags.index("--device") + 1] = "cpu"
    missing = cli_missing_flags(flags)
    if missing:
        report.say(f"skipped: this ecgembed CLI does not accept {' '.join(missing)}")
        return {"status": "skipped", "reason": f"CLI lacks {' '.join(missing)}", "flags": flags}
    output = work / "pipeline_out"
    shutil.rmtree(output, ignore_errors=True)
    argv = ["--input", str(root), "--output", str(output), *flags]
    report.say("command: python -m ecgembed.cli run " + shlex.join(argv))
    with GpuSampler(report.out / "gpu_dmon.txt") as sampler:
        code, seconds, log = run_cli(argv, report.out / "pipeline_full.log", timeout)
    result: dict = {"status": "ok" if code == 0 else "failed", "exit_code": code, "records": n, "flags": flags,
                    "seconds": seconds, "records_per_s": n / seconds, "gpu_utilisation": sampler.summary(),
                    "log_tail": log[-1500:] if code else ""}
    model_only = model_only_rate(report.data)
    result["model_only_records_per_s"] = model_only
    result["efficiency"] = (n / seconds) / model_only if model_only else None
    report.say(f"full run: exit {code}, {seconds:.1f} s, {n / seconds:.1f} records/s end to end; "
               f"model-only {model_only or float('nan'):.1f} records/s -> efficiency "
               f"{result['efficiency'] or float('nan'):.1%}; GPU {result['gpu_utilisation']}")
    if code != 0:
        report.say(log[-1500:])
        return result
    code, again, log = run_cli(argv, report.out / "pipeline_noop.log", timeout)
    need = re.search(r"(\d+) of (\d+) records need work", log)
    result["noop"] = {"exit_code": code, "seconds": again, "ratio_to_full": again / seconds,
                      "records_needing_work": int(need.group(1)) if need else None}
    report.say(f"no-op rerun: exit {code}, {again:.1f} s = {again / seconds:.1%} of the full run; "
               f"records needing work: {result['noop']['records_needing_work']}")
    return result


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="folder for gpu_check.json/.txt and logs")
    ap.add_argument("--work", required=True, type=Path, help="scratch folder (weights, records, pipeline output)")
    ap.add_argument("--conformance", required=True, type=Path, help="folder with e2e/, melp/, ecgfm-ked/")
    ap.add_argument("--samples", type=Path, default=REPO / "ecgembed" / "samples")
    ap.add_argument("--run-flags", default="", help="ecgembed run flags besides --input/--output")
    ap.add_argument("--small", action="store_true", help="CPU smoke size: few records, batch 2")
    ap.add_argument("--melp-weights", help="existing conformance MELP folder (default: generate)")
    ap.add_argument("--ked-weights", help="existing conformance KED .pt (default: generate)")
    ap.add_argument("--records", type=int, help="records of the pipeline run (default 50,000; small 10)")
    ap.add_argument("--pipeline-timeout", type=int, default=300, help="seconds per ecgembed run")
    args = ap.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    small = args.small
    n_pipeline = args.records or (10 if small else 50_000)
    n_prep = 200 if small else 8_000
    batches = [2] if small else [128, 256, 512]
    meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": device.type, "small": small,
            "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None, "torch": torch.__version__,
            "cuda": torch.version.cuda, "cpu_count": os.cpu_count(), "run_flags": args.run_flags,
            "cudnn_tf32_default": torch.backends.cudnn.allow_tf32, "matmul_tf32_default": torch.backends.cuda.matmul.allow_tf32}
    report = Report(args.out, meta)
    report.say(f"gpu_check on {meta['gpu'] or 'CPU (GPU rows skipped)'}; torch {torch.__version__}, "
               f"{os.cpu_count()} cores, {'small' if small else 'full'} mode")
    args.work.mkdir(parents=True, exist_ok=True)

    if args.melp_weights and args.ked_weights:
        report.data["weights"] = {"melp": args.melp_weights, "ecgfm-ked": args.ked_weights, "given": True}
    else:
        report.step("weights", make_weights, args.conformance, args.work)
    weights = report.data["weights"]
    if weights.get("status") != "failed":
        report.step("fidelity", fidelity, device, args.conformance / "e2e", args.conformance, weights, 2 if small else 8)
    report.step("throughput", throughput, device, batches, small)
    report.step("records", records, args.samples, args.work, n_prep, n_pipeline)
    if report.data["records"].get("status") != "failed":
        report.step("preprocess", preprocessing, args.work / "records_prep", n_prep)
        report.step("pipeline", pipeline, args.work / "records_run", shlex.split(args.run_flags), device,
                    args.work, args.pipeline_timeout)
    report.say(f"\nfigures: {args.out / 'gpu_check.json'}")
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
