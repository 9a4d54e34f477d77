#!/usr/bin/env bash
# Pack .gpu/ for bench/gpu_check.sh on the lent GPU machine: what ../shared/gpu/pack.sh packs (a
# stripped Ray, the wheels Ray imports, the e2e conformance data) plus Delta Lake, which the run
# writes its tables with and the machine's image lacks. Ray (42 MB gzipped) and deltalake (52 MB
# wheel) together exceed the 64 MiB that travels, so both go as xz tarballs (25 + 29 MB).
#
#   bash bench/gpu_pack.sh                         # here, once, from the project root (~4 min)
#   device run, carry [".gpu"]:  source .gpu/setup.sh && bash bench/gpu_check.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
shared=$(cd "${ECGEMBED_SHARED:-$root/../shared}" && pwd)
bash "$shared/gpu/pack.sh"

pin() { sed -n "s/^$1==//p" requirements.txt; }
plat="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# deltalake's own needs, at the versions the tests run with (the image has wrapt and pyarrow)
python3 -m pip download -q --no-deps $plat -d .gpu/whl "arro3-core==0.9.1" "deprecated==1.3.1"
python3 -m pip download -q --no-deps $plat -d "$tmp" "deltalake==$(pin deltalake)"
mkdir "$tmp/site"
(cd "$tmp/site" && python3 -m zipfile -e "$tmp"/deltalake-*.whl .)
tar cf - -C "$tmp/site" . | xz -9 -T0 > .gpu/deltalake.txz
gzip -dc .gpu/ray.tgz | xz -9 -T0 > .gpu/ray.txz
rm .gpu/ray.tgz
chmod u+w .gpu/setup.sh
cat > .gpu/setup.sh <<'SH'
# Sourced on the GPU machine, from the project root: the wheels, Ray and deltalake into /tmp/site,
# which then goes on PYTHONPATH with the project (Ray's workers inherit it).
S=/tmp/site
mkdir -p "$S"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$S" .gpu/whl/*.whl
python3 -c 'import sys, tarfile
for f in sys.argv[1:]:
    with tarfile.open(f) as t:
        t.extractall("/tmp/site", filter="tar")' .gpu/ray.txz .gpu/deltalake.txz
export PYTHONPATH="$S:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1
SH
du -sh .gpu
echo "carry [\".gpu\"]; on the device: source .gpu/setup.sh && bash bench/gpu_check.sh"
