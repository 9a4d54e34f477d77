"""Entry point for ``ray job submit``: exactly ``ecgembed run`` (same flags, same exit codes).

    ray job submit --working-dir . --submission-id ecgembed-2026-11-21 \
        -- python jobs/embed_ecgs.py --input s3://hospital/ecg/ --output s3://hospital/ecgembed/
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the working dir's ecgembed

from ecgembed.cli import run_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_main(prog="embed_ecgs.py"))
