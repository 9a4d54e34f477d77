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
    """Records/s of each loaded job model on its inputs, one thread, the job's CPU batch size."""
    import torch

    torch.set_num_threads(1)
    rates = {}
    for name, model in models.items():
        x, bs = inputs[name], batch_sizes[name]
        on_device = model.to_device(feats[name])

        def run(b, model=model, on_device=on_device):
            return model.embed(b, on_device)

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
    ap.add_argument("--ecgfm-ked-weights", help="real or conformance weights (default: stand-in)")
    ap.add_argument("--ecgfm-ked-text-model")
    args = ap.parse_args()
    stand_in = not (args.melp_weights and args.ecgfm_ked_weights)

    from ecgembed import read_record, standard_leads
    from ecgembed.config import RunConfig
    from ecgembed.labels import load_label_set
    from ecgembed.models.registry import SPECS

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
        inputs = {name: np.stack([spec.preprocess(s.signal, s.fs) for s in leads]) for name, spec in SPECS.items()}
        label_set = load_label_set(args.labels)
        weights = {} if stand_in else {"melp": args.melp_weights, "ecgfm-ked": args.ecgfm_ked_weights}
        options = {} if stand_in else {"ecgfm-ked": {"text_model": args.ecgfm_ked_text_model}}
        cfg = RunConfig(inputs=[str(Path(tmp) / "in")], output=str(Path(tmp) / "out"), labels=[args.labels],
                        stand_in=stand_in, weights=weights, model_options=options, device="cpu",
                        progress_interval_s=30).validate()
        feats = {name: spec.class_features([label_set], cfg.weights_for(name), cfg.options_for(name))
                 if spec.scores(cfg.options_for(name)) else [] for name, spec in SPECS.items()}
        models = {name: spec.load(cfg.weights_for(name), "cpu") for name, spec in SPECS.items()}
        rates = model_only(models, inputs, feats, {name: spec.batch_size["cpu"] for name, spec in SPECS.items()})
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
