"""Similarity-search benchmark: the IVF index ecgembed builds vs exact search, measured in one run.

    python bench/bench_search.py [--n 100000] [--dims 256,768] [--spreads 1.0,1.5] [--clusters 1000]

Synthetic clustered vectors (the shape of real embeddings: many diagnoses/morphologies, each a
cloud): ``--clusters`` centres drawn from N(0, I), each vector a centre plus N(0, spread^2 I),
then L2-normalised. Queries are ``--queries`` further vectors from the same clouds, not indexed.
For each spread and dimension it prints: the index build time (k-means training + adding + nprobe
calibration), the nprobe chosen, recall@10 of the held-out queries against exact search
(``IndexFlatIP`` over all vectors), queries/s of both in batches and one at a time, and the
speed-up ratio. Threads: FAISS's default (all cores); the ratio is what carries across machines.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ecgembed.search import ann  # noqa: E402


def clustered(n: int, d: int, clusters: int, spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)              # (C, d)
    labels = rng.integers(0, clusters, size=n)
    x = centres[labels] + spread * rng.standard_normal((n, d)).astype(np.float32)  # (n, d)
    return ann.normalise(x)[0]


def per_second(fn, count: int, min_seconds: float = 1.0) -> float:
    fn()                                        # warm-up (page-in, thread pool)
    done, t0 = 0, time.perf_counter()
    while True:
        fn()
        done += count
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return done / elapsed


def run(n: int, d: int, clusters: int, spread: float, n_queries: int, k: int = 10) -> dict:
    data = clustered(n + n_queries, d, clusters, spread, seed=d)
    x, queries = data[:n], data[n:]
    ids = np.arange(n, dtype=np.int64)
    t0 = time.perf_counter()
    built = ann.build(x, ids, "ivf")
    build_s = time.perf_counter() - t0
    exact = faiss.IndexFlatIP(d)
    exact.add(x)
    _, truth = exact.search(queries, k)
    _, found = built.index.search(queries, k)
    recall = np.mean([len(set(t) & set(f)) / k for t, f in zip(truth.tolist(), found.tolist())])
    single = queries[:200]
    return {
        "d": d, "n": n, "build_s": build_s, "nlist": built.nlist, "nprobe": built.nprobe,
        "recall": float(recall), "calibration_recall": built.recall_at_10,
        "ivf_batch_qps": per_second(lambda: built.index.search(queries, k), len(queries)),
        "exact_batch_qps": per_second(lambda: exact.search(queries, k), len(queries)),
        "ivf_single_qps": per_second(lambda: [built.index.search(q[None], k) for q in single], len(single)),
        "exact_single_qps": per_second(lambda: [exact.search(q[None], k) for q in single], len(single)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dims", default="256,768")
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spreads", default="1.0,1.5",
                        help="noise per dimension around a centre, one table block each (default 1.0,1.5: "
                             "tight clouds, then clouds wider than the distance between centres)")
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; {args.n} vectors, {args.clusters} "
          f"clusters, {args.queries} held-out queries, k=10")
    header = (f"{'spread':>6} {'d':>4} {'build s':>8} {'nlist':>6} {'nprobe':>6} {'recall@10':>9} {'IVF q/s':>9} "
              f"{'exact q/s':>9} {'ratio':>6} {'IVF 1q/s':>9} {'exact 1q/s':>10} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    spreads = [float(v) for v in args.spreads.split(",")]
    for spread, d in itertools.product(spreads, [int(v) for v in args.dims.split(",")]):
        r = run(args.n, d, args.clusters, spread, args.queries)
        print(f"{spread:>6.1f} {d:>4} {r['build_s']:>8.1f} {r['nlist']:>6} {r['nprobe']:>6} {r['recall']:>9.3f} "
              f"{r['ivf_batch_qps']:>9.0f} {r['exact_batch_qps']:>9.0f} {r['ivf_batch_qps'] / r['exact_batch_qps']:>5.1f}x "
              f"{r['ivf_single_qps']:>9.0f} {r['exact_single_qps']:>10.0f} "
              f"{r['ivf_single_qps'] / r['exact_single_qps']:>5.1f}x", flush=True)

if __name__ == "__main__":
    main()
