#!/usr/bin/env bash
# The test command of the README: fresh clone -> pinned .venv -> pytest (real S3 server, real Ray).
# Extra arguments go to pytest. pytest's exit 5 ("no tests collected") counts as a failure.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export HF_HUB_OFFLINE=1
# tests/test_report.py opens the run report in a real headless Chromium (Debian's `chromium`).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ||
      echo "scripts/test.sh: could not install chromium: the report's browser tests will skip" >&2
  else
    echo "scripts/test.sh: chromium is not installed and this is not root: the report's browser tests will skip" >&2
  fi
fi
set +e
python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "scripts/test.sh: pytest collected no tests; failing" >&2
  exit 1
fi
exit "$rc"
