"""Entry point for ``ray job submit``: the same flags as ``ecgembed run``.

    ray job submit --working-dir . --submission-id ecgembed-2026-11-21 \
        --runtime-env-json '{"env_vars": {"AWS_DEFAULT_REGION": "eu-west-1"}}' \
        -- python jobs/embed_ecgs.py --input s3://hospital/ecg/ --output s3://hospital/ecgembed/
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the working dir's ecgembed

from ecgembed.cli import add_run_arguments, config_from_args  # noqa: E402
from ecgembed.errors import EcgembedError  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(prog="embed_ecgs.py", description="ecgembed run, for ray job submit")
    add_run_arguments(parser)
    args = parser.parse_args()
    try:
        from ecgembed.pipeline import run

        run(config_from_args(args))
    except EcgembedError as err:
        print(f"ecgembed: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
