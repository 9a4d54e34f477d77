#!/usr/bin/env bash
# The device check of issue 9 (item 6), in one call. Under 8 minutes on one H100/H200; every
# figure is printed and written to $OUT/gpu_check.json and $OUT/gpu_check.txt (or to a temp
# folder, printed at the end, when $OUT is unset). What it measures: bench/gpu_check.py.
#
#   on the lent GPU machine (carry [".gpu"], prepared here by `bash ../shared/gpu/pack.sh`):
#       source .gpu/setup.sh && bash bench/gpu_check.sh
#   here, on CPU (GPU rows skipped; tests/test_gpu_check.py runs this):
#       GPU_CHECK_SMALL=1 bash bench/gpu_check.sh
#
# Extra arguments go to gpu_check.py (e.g. --melp-weights DIR --ked-weights FILE to reuse
# conformance weights instead of generating them, --records N for the pipeline run).
set -euo pipefail

# The flags of step (d)/(e), besides --input/--output: one place to adjust as the CLI changes
# (or set GPU_CHECK_RUN_FLAGS). Without CUDA, gpu_check.py swaps --device cuda for --device cpu.
RUN_FLAGS=${GPU_CHECK_RUN_FLAGS:-"--stand-in --device cuda --precision bf16 --models melp,ecgfm-ked"}

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
PY=${PYTHON:-python3}
out=${OUT:-$(mktemp -d -t gpu_check_out.XXXXXX)}
work=$(mktemp -d -t gpu_check_work.XXXXXX)
trap 'rm -rf "$work"' EXIT

# Conformance data and the make_weights.py scripts: .gpu/ on the lent machine (pack.sh copies
# them there; ../shared does not travel), the shared folder here.
if [ -d .gpu/conformance/e2e ]; then
  conformance=$root/.gpu/conformance
else
  conformance=$(cd "${ECGEMBED_SHARED:-$root/../shared}" 2>/dev/null && pwd)/conformance
fi
[ -f "$conformance/e2e/expected.npz" ] || { echo "gpu_check: no e2e conformance data under $conformance" >&2; exit 2; }

small=()
[ "${GPU_CHECK_SMALL:-0}" = 1 ] && small=(--small)

export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1
export ECGEMBED_CACHE=${ECGEMBED_CACHE:-$work/cache}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
"$PY" bench/gpu_check.py --out "$out" --work "$work" --conformance "$conformance" \
  --run-flags "$RUN_FLAGS" ${small[@]+"${small[@]}"} "$@"
echo "gpu_check: figures in $out/gpu_check.json and $out/gpu_check.txt"
