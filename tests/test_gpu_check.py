"""``bench/gpu_check.sh`` in its small CPU mode: the device check runs end to end and writes its figures.

The script is what a session with a lent GPU runs once (issue 9, item 6); this test keeps it
working between loans. GPU-only rows (TF32, the matmul peaks, ``nvidia-smi``) are absent on
CPU; everything else must be there with finite numbers. The pipeline step runs only if this
checkout's ``ecgembed run`` accepts the script's flags; otherwise the JSON must say it was skipped
and why.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_check.sh"


def _run_flags() -> list[str]:
    line = next(ln for ln in SCRIPT.read_text().splitlines() if ln.startswith("RUN_FLAGS="))
    return re.search(r':-"([^"]+)"', line).group(1).split()


def _cli_accepts(flags: list[str]) -> bool:
    help_text = subprocess.run([sys.executable, "-m", "ecgembed.cli", "run", "--help"], capture_output=True,
                               text=True, cwd=REPO, timeout=120).stdout
    return all(f in help_text for f in flags if f.startswith("--"))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_small_cpu_mode_writes_every_figure(shared_dir, melp_weights_dir, ked_weights_file, tmp_path, request):
    env = {**os.environ, "GPU_CHECK_SMALL": "1", "OUT": str(tmp_path / "out"), "ECGEMBED_SHARED": str(shared_dir),
           "PYTHON": sys.executable, "ECGEMBED_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    pipeline_runs = _cli_accepts(_run_flags())
    if pipeline_runs:  # the run joins the session's Ray instead of starting one on this shared machine
        ray = request.getfixturevalue("ray_local")
        env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    proc = subprocess.run(["bash", str(SCRIPT), "--melp-weights", str(melp_weights_dir),
                           "--ked-weights", str(ked_weights_file)], env=env, capture_output=True, text=True,
                          cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    text = (tmp_path / "out" / "gpu_check.txt").read_text()
    assert "== fidelity ==" in text and "== throughput ==" in text and "== preprocess ==" in text

    assert figures["meta"]["device"] == "cpu" and figures["meta"]["small"] is True
    # (a) fidelity against the original code's e2e outputs: fp32 within the conformance tolerance,
    # the bf16 policy within the cosine bound
    rows = figures["fidelity"]["rows"]
    kinds = {"fp32_strict", "torch_defaults", "bf16_policy", "autocast_all"}
    assert set(rows["melp"]) == kinds and set(rows["ecgfm-ked"]) == kinds  # + tf32_all for KED on CUDA
    assert all(_finite(v) for table in rows.values() for row in table.values() for v in row.values())
    assert rows["melp"]["fp32_strict"]["embedding_max_abs"] <= 1e-5
    assert rows["melp"]["fp32_strict"]["probe_max_abs"] <= 1e-4
    assert rows["ecgfm-ked"]["fp32_strict"]["scores_max_abs"] <= 1e-4
    assert rows["melp"]["bf16_policy"]["embedding_min_cosine"] >= 0.9999
    assert rows["ecgfm-ked"]["bf16_policy"]["scores_max_abs"] <= 1e-4  # KED's bf16 policy (TF32) is fp32 on CPU

    # (b) model-only rates with FLOPs from the flop counter
    throughput = figures["throughput"]
    assert abs(throughput["gflop_per_record"]["melp"] - 41.66) < 0.05
    assert throughput["gflop_per_record"]["ecgfm-ked"] > throughput["gflop_per_record"]["ked_trunk"] > 1.0
    assert {(r["model"], r["precision"]) for r in throughput["rows"]} == \
        {(m, p) for m in ("melp", "ecgfm-ked") for p in ("fp32", "bf16")}
    for row in throughput["rows"]:
        assert _finite(row["records_per_s"]) and row["records_per_s"] > 0
        assert _finite(row["fraction_of_bound"]) and 0 < row["fraction_of_bound"] < 1

    # (c) CPU preprocessing on all cores over the hard-linked sample records
    prep = figures["preprocess"]
    assert prep["records"] == 200 and prep["failed"] == 0
    assert _finite(prep["records_per_s"]) and prep["records_per_s"] > 0
    assert figures["records"]["pipeline"]["records"] == 10

    # (d, e) pipeline and no-op rerun, when this CLI takes the flags
    pipeline = figures["pipeline"]
    if not pipeline_runs:
        assert pipeline["status"] == "skipped" and "CLI lacks" in pipeline["reason"]
        return
    assert pipeline["status"] == "ok", pipeline.get("log_tail", pipeline)
    assert _finite(pipeline["records_per_s"]) and _finite(pipeline["efficiency"])
    assert pipeline["noop"]["exit_code"] == 0 and pipeline["noop"]["records_needing_work"] == 0


def test_gpu_profile_runs_on_cpu(tmp_path):
    """``bench/gpu_profile.py`` (the stage timings behind the bf16 policy) keeps running between loans."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_profile.py"), "--batch", "1", "--reps", "1",
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads((tmp_path / "gpu_profile.json").read_text())
    melp, ked = figures["melp"], figures["ecgfm-ked"]
    assert "error" not in melp and "error" not in ked, figures
    for key in ("front_fp32_ms", "pos_conv_bf16_ms", "encoder_bf16_ms", "heads_bf16_ms", "whole_policy_ms",
                "pos_conv_fp32+cudnn_benchmark_ms"):
        assert _finite(melp[key]) and melp[key] > 0, key
    assert _finite(ked["trunk_fp32_ms"]) and _finite(ked["query_fp32_ms"])
