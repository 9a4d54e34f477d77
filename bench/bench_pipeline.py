"""Pipeline efficiency: end-to-end records/s of the job vs model-only records/s, one run, same records.

    python bench/bench_pipeline.py [--records 160] [--labels cpsc2018] [--stand-in | --melp-weights ... --ked-weights ...]

Model-only: the same preprocessed inputs through MELP and through ECGFM-KED in this process,
one torch thread each, at the pipeline's CPU batch sizes. The job runs the two encoders in
two actors at the same time (one thread each), so its ideal rate is the slower encoder's
model-only rate; efficiency = end-to-end rate / that bound. End to end counts everything the
Ray job does for a run (actor start-up and weight loading, fetch, decode, preprocessing, both
models, writing and committing), from `run()` entry to the committed manifest; the second
figure excludes Ray's own start-up (`ray.init`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_reader import make_mimic_like  # noqa: E402


def model_only(models, inputs, feats, batch_sizes) -> dict[str, float]:
    import torch

    torch.set_num_threads(1)
    rates = {}
    for name, model in models.items():
        x, bs = inputs[name], batch_sizes[name]
        run = (lambda b: model.embed(b)) if name == "melp" else (lambda b: model.embed(b, feats))
        run(x[:bs])  # warm-up
        start = time.perf_counter()
        for i in range(0, len(x), bs):
            run(x[i : i + bs])
        rates[name] = len(x) / (time.perf_counter() - start)
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.environ.get("ECGEMBED_SHARED", str(REPO.parent / "shared")))
    ap.add_argument("--records", type=int, default=160)
    ap.add_argument("--labels", default="cpsc2018")
    ap.add_argument("--melp-weights", help="real or conformance weights (default: stand-in)")
    ap.add_argument("--ked-weights", help="real or conformance weights (default: stand-in)")
    ap.add_argument("--ked-text-model")
    args = ap.parse_args()
    stand_in = not (args.melp_weights and args.ked_weights)

    from ecgembed import read_record, standard_leads
    from ecgembed.config import STAND_IN, RunConfig
    from ecgembed.labels import load_label_set
    from ecgembed.models import registry
    from ecgembed.preprocess import ked_input, melp_input
    from ecgembed.stages import ModelStageConfig

    with tempfile.TemporaryDirectory() as tmp:
        made = make_mimic_like(Path(args.shared), -(-args.records // 25), Path(tmp) / "made")[: args.records]
        headers = []
        for i, header in enumerate(made):   # exactly --records records in the job's input folder
            folder = Path(tmp) / "in" / f"p{i:05d}"
            folder.mkdir(parents=True)
            for f in Path(header).parent.glob(Path(header).stem + ".*"):
                shutil.copy(f, folder / f.name)
            headers.append(str(folder / Path(header).name))
        leads = [standard_leads(read_record(h)) for h in headers]
        inputs = {"melp": np.stack([melp_input(s.signal, s.fs) for s in leads]),
                  "ecgfm-ked": np.stack([ked_input(s.signal, s.fs) for s in leads])}
        label_set = load_label_set(args.labels)
        cfg = RunConfig(inputs=[str(Path(tmp) / "in")], output=str(Path(tmp) / "out"), labels=[args.labels],
                        stand_in=stand_in, melp_weights=args.melp_weights, ked_weights=args.ked_weights,
                        ked_text_model=args.ked_text_model, device="cpu", progress_interval_s=30).validate()
        melp_w = STAND_IN if stand_in else args.melp_weights
        ked_w = STAND_IN if stand_in else args.ked_weights
        feats = registry.ked_class_features([label_set], ked_w, args.ked_text_model)[0]
        models = {"melp": registry.load_melp_for_job(ModelStageConfig(melp_w), "cpu"),
                  "ecgfm-ked": registry.load_ked_for_job(ModelStageConfig(ked_w), "cpu")}
        rates = model_only(models, inputs, feats, {"melp": 16, "ecgfm-ked": 32})
        del models

        import ray

        from ecgembed.pipeline import run

        start = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        ray_up = time.perf_counter() - start
        manifest = run(cfg, log_line=lambda line: None)
        total = time.perf_counter() - start
        ray.shutdown()

    n = len(headers)
    bound = min(rates.values())
    print(f"{n} records (12 x 5000, MIMIC layout), labels {args.labels} ({len(label_set)} classes), "
          f"{'stand-in' if stand_in else 'given'} weights, {os.cpu_count()} CPUs")
    print(f"  model-only  MELP        {rates['melp']:7.2f} rec/s (1 thread, batch 16)")
    print(f"  model-only  ECGFM-KED   {rates['ecgfm-ked']:7.2f} rec/s (1 thread, batch 32)")
    print(f"  ideal job rate (the two encoders in parallel, slower one bounds): {bound:.2f} rec/s")
    print(f"  end to end incl. ray.init      {n / total:7.2f} rec/s   efficiency {n / total / bound:.2f}")
    print(f"  end to end excl. ray.init      {n / (total - ray_up):7.2f} rec/s   efficiency {n / (total - ray_up) / bound:.2f}")
    print(f"  committed: {manifest['counts']}")


if __name__ == "__main__":
    main()
