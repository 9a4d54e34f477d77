#!/usr/bin/env bash
# Sourced by the other scripts: create .venv once and install the pinned dependencies + ecgembed.
# torch goes first with pip (it takes the machine's local CPU wheel; uv would fetch a CUDA build),
# then everything else with uv, which keeps the installed torch because requirements.txt pins it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ] || [ requirements.txt -nt .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
  echo "ecgembed: installing the pinned environment into .venv (about a minute)" >&2
  python3 -m venv .venv
  .venv/bin/pip install -q torch==2.13.0 uv
  .venv/bin/uv pip install -q --python .venv/bin/python -r requirements.txt
  .venv/bin/uv pip install -q --python .venv/bin/python --no-deps -e .
  .venv/bin/python -c "import torch; print('ecgembed: torch', torch.__version__)" >&2
  touch .venv/.installed
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export RAY_USAGE_STATS_ENABLED=0
