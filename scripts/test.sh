#!/usr/bin/env bash
# The test command of the README: fresh clone -> pinned .venv -> pytest (real S3 server, real Ray).
# Extra arguments go to pytest. pytest's exit 5 ("no tests collected") counts as a failure.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export HF_HUB_OFFLINE=1
set +e
python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "scripts/test.sh: pytest collected no tests; failing" >&2
  exit 1
fi
exit "$rc"
