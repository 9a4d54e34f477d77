"""The FAISS side of the search: which index for how many vectors, how to build and tune it.

Cosine similarity is the inner product of L2-normalised float32 vectors, so every index here
uses ``METRIC_INNER_PRODUCT`` on normalised rows and its scores are cosines.

- Up to :data:`EXACT_MAX` vectors: an exact flat index (``IndexIDMap2(IndexFlatIP)``). A query
  scans every vector, which at 50 k x 768 is a few milliseconds, and the answer is exact.
- Above: ``IndexIVFFlat`` with ``nlist = 2 * sqrt(n)`` k-means lists (trained on at most
  50 vectors per list) and a hashtable id map. IVF, not HNSW, because a nightly update must
  *remove* superseded vectors, which FAISS's HNSW cannot. ``nprobe`` (lists visited per query)
  is tuned at build time: the smallest value whose recall@10 against exact search, on
  :data:`CALIBRATION_QUERIES` indexed vectors (themselves excluded), reaches
  :data:`TARGET_RECALL`. The vectors are stored uncompressed, so a probed list is scored
  exactly; recall is lost only to lists not visited.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

EXACT_MAX = 50_000
TARGET_RECALL = 0.98
CALIBRATION_QUERIES = 500
POINTS_PER_LIST = 50            # k-means training sample: at most this many vectors per list
SEED = 1234


@dataclass
class Built:
    index: faiss.Index
    kind: str                    # flat | ivf
    nlist: int = 0
    nprobe: int = 0
    recall_at_10: float = 1.0    # measured at build (1.0: exact)
    trained_count: int = 0       # vectors the IVF lists were trained with (or 0)


def normalise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) -> float32 unit rows and a mask of the rows that could be normalised (finite, non-zero)."""
    x = np.ascontiguousarray(x, dtype=np.float32)                            # (n, d)
    norms = np.linalg.norm(x, axis=1)                                        # (n,)
    ok = np.isfinite(norms) & (norms > 0)
    out = np.zeros_like(x)
    out[ok] = x[ok] / norms[ok, None]
    return out, ok


def choose_kind(n: int, kind: str = "auto") -> str:
    if kind not in ("auto", "flat", "ivf"):
        raise ValueError(f"index kind must be auto, flat or ivf, not {kind!r}")
    if kind == "auto":
        return "flat" if n <= EXACT_MAX else "ivf"
    if kind == "ivf" and n < 2_000:
        raise ValueError(f"an IVF index needs at least 2000 vectors to train its lists, not {n}; use flat")
    return kind


def build(x: np.ndarray, ids: np.ndarray, kind: str = "auto") -> Built:
    """An index over unit rows ``x`` (n, d) with int64 ``ids``; ``kind`` from :func:`choose_kind`."""
    n, d = x.shape
    kind = choose_kind(n, kind)
    if kind == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
        index.add_with_ids(x, ids)
        return Built(index, "flat")
    nlist = max(16, min(int(round(2 * math.sqrt(n))), n // 39))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(SEED)
    sample = x[np.sort(rng.choice(n, size=min(n, nlist * POINTS_PER_LIST), replace=False))]
    index.cp.seed = SEED
    index.train(sample)
    index.set_direct_map_type(faiss.DirectMap.Hashtable)                     # reconstruct/remove by id
    index.add_with_ids(x, ids)
    nprobe, recall = calibrate(index, x, ids)
    index.nprobe = nprobe
    return Built(index, "ivf", nlist, nprobe, recall, n)


def calibrate(index: faiss.IndexIVFFlat, x: np.ndarray, ids: np.ndarray, k: int = 10) -> tuple[int, float]:
    """The smallest nprobe reaching :data:`TARGET_RECALL` recall@k, and that recall.

    Doubles nprobe until the target is met, then bisects between the last two values (recall
    grows with nprobe, up to sampling noise).
    """
    rng = np.random.default_rng(SEED + 1)
    queries = np.sort(rng.choice(len(x), size=min(len(x), CALIBRATION_QUERIES), replace=False))
    _, exact = faiss.knn(x[queries], x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)     # (q, k+1) positions
    truth = [set(ids[row].tolist()) - {ids[q]} for q, row in zip(queries, exact)]

    def recall(nprobe: int) -> float:
        index.nprobe = nprobe
        _, found = index.search(x[queries], k + 1)                                  # (q, k+1) ids
        return recall_at(truth, found, ids[queries], k)

    low, high = 0, 1                         # recall(low) < target (0: nothing searched)
    measured = recall(high)
    while measured < TARGET_RECALL and high < index.nlist:
        low, high = high, min(2 * high, index.nlist)
        measured = recall(high)
    while high - low > 1:
        middle = (low + high) // 2
        got = recall(middle)
        if got >= TARGET_RECALL:
            high, measured = middle, got
        else:
            low = middle
    return high, measured


def recall_at(truth: list[set], found: np.ndarray, query_ids: np.ndarray, k: int) -> float:
    """Mean |found top-k (query itself dropped) & exact top-k| / k."""
    hits = 0
    for want, row, qid in zip(truth, found, query_ids):
        got = [i for i in row.tolist() if i != qid and i >= 0][:k]
        hits += len(want & set(got)) / max(1, min(k, len(want)))
    return hits / max(1, len(truth))


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(q, d) unit queries -> cosines (q, k) and ids (q, k); missing neighbours have id -1."""
    k = max(1, min(k, index.ntotal))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def to_bytes(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def from_bytes(data: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
