"""Nightly cost: a no-op run and a run with 1 % new records, as ratios to the full run. One run.

Also prints each run's Delta commit time (every table's transaction, summed) as a share of the run.

    python bench/bench_nightly.py [--records 240] [--local]

Records are the 25 real 12 x 5000 CinC-2021 records rewritten in MIMIC-IV-ECG's layout
(format-16 .dat), copied to reach ``--records``, on a SeaweedFS S3 server on loopback (or a
local folder with ``--local``); output on the same store. Stand-in weights (the model cost is
the same as with real weights: same architectures). All three runs share one local Ray, so the
ratios compare the job's own work: discovery, ledger anti-join, and the pipeline for what is new.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_reader import make_mimic_like  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.environ.get("ECGEMBED_SHARED", str(REPO.parent / "shared")))
    ap.add_argument("--records", type=int, default=240)
    ap.add_argument("--local", action="store_true", help="local folders instead of the S3 server")
    args = ap.parse_args()

    import ray

    from ecgembed.config import RunConfig
    from ecgembed.pipeline import run
    from tests.services import S3Server

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        new_count = max(1, math.ceil(args.records / 100))
        made = make_mimic_like(Path(args.shared), math.ceil((args.records + new_count) / 25), tmp / "made")
        source = tmp / "archive"
        for i, header in enumerate(made[: args.records + new_count]):
            folder = source / ("later" if i >= args.records else "now") / f"p{i:05d}"
            folder.mkdir(parents=True)
            for f in Path(header).parent.glob(Path(header).stem + ".*"):
                shutil.copy(f, folder / f.name)
        later = source / "later"
        hold = tmp / "held-back"
        shutil.move(str(later), str(hold))   # 1 % of records arrive after the first run

        server = None
        if args.local:
            archive, output = str(source), str(tmp / "out")

            def arrive():
                shutil.move(str(hold), str(later))
        else:
            server = S3Server(tmp / "s3")
            server.start()
            os.environ.update(server.env)
            archive, output = server.put_dir(source, "archive"), server.url("out")

            def arrive():
                server.put_dir(hold, "archive/later")
        try:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": server.env if server else {}})
            config = dict(inputs=[archive], output=output, stand_in=True, labels=["cpsc2018"], progress_interval_s=60)
            timings = {}
            for name in ("full", "no-op", "1% new"):
                if name == "1% new":
                    arrive()
                start = time.perf_counter()
                manifest = run(RunConfig(**config), log_line=lambda line: None)
                commit = sum(t["seconds"] for t in manifest.get("commit", {}).values())
                timings[name] = (time.perf_counter() - start, manifest["selected"], manifest["discovered"], commit,
                                 len(manifest.get("commit", {})))
            ray.shutdown()
        finally:
            if server:
                server.stop()

    full = timings["full"][0]
    print(f"{'S3 (SeaweedFS)' if not args.local else 'local files'}, {os.cpu_count()} CPUs, stand-in weights, both models")
    for name, (seconds, selected, discovered, commit, tables) in timings.items():
        print(f"  {name:7s} {selected:5d} of {discovered:5d} records processed  {seconds:8.1f} s   "
              f"ratio to the full run {seconds / full:.3f}   commit of {tables} table(s): {commit / seconds:.1%} of the run")


if __name__ == "__main__":
    main()
