"""Query the stored index: the records whose embeddings are most cosine-similar.

    from ecgembed.search import neighbours
    neighbours("s3://bucket/out", "georgia/E07500", k=10)     # [(record_id, cosine), ...]

A loaded index is kept in memory per (output, model) and reused while the stored manifest is
the same version, so repeated queries cost one small GET each. If runs were committed after
the index was written, the answer may miss new records or include superseded rows: a warning
says so (``ecgembed index OUTPUT`` brings it up to date).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import faiss
import numpy as np

from ecgembed.search import ann, store
from ecgembed.search.store import SearchError
from ecgembed.tables.commit import read_runs

log = logging.getLogger("ecgembed")


@dataclass
class Loaded:
    token: str
    manifest: dict
    index: faiss.Index
    record_ids: np.ndarray          # id -> record id (ids are 0..next_id-1; holes are "")
    id_of: dict[str, int]


_cache: dict[tuple[str, str], Loaded] = {}


def load(output: str, model: str) -> Loaded:
    """The stored index of ``model`` (cached while its manifest is unchanged)."""
    for attempt in (1, 2):          # a writer may replace the version between manifest and files
        manifest = store.read_manifest(output, model)
        if manifest is None:
            raise SearchError(f"no index of model {model!r} in this output; build it first: ecgembed index OUTPUT "
                              f"--model {model}")
        cached = _cache.get((output, model))
        if cached is not None and cached.token == manifest["token"]:
            return cached
        try:
            index = ann.from_bytes(store.read_index(output, model, manifest))
            ids = store.read_ids(output, model, manifest)
        except FileNotFoundError:
            if attempt == 2:
                raise
            continue
        if manifest["kind"] == "ivf":
            index.nprobe = int(manifest["nprobe"])
        record_ids = np.full(int(manifest["next_id"]), "", dtype=object)
        id_list = ids.column("id").to_numpy()
        record_ids[id_list] = np.array(ids.column("record_id").to_pylist(), dtype=object)
        loaded = Loaded(manifest["token"], manifest, index, record_ids,
                        dict(zip(ids.column("record_id").to_pylist(), id_list.tolist())))
        _cache[(output, model)] = loaded
        _warn_if_stale(output, model, manifest)
        return loaded
    raise AssertionError("unreachable")


def _warn_if_stale(output: str, model: str, manifest: dict) -> None:
    newer = [r["run_id"] for r in read_runs(output) if r["run_id"] not in set(manifest.get("runs", []))]
    if newer:
        log.warning("[ecgembed] the %s index was written before %d committed run(s) (latest %s): answers may miss new "
                    "records or include superseded ones; update it with: ecgembed index OUTPUT --model %s",
                    model, len(newer), newer[-1], model)


def neighbours(output: str, record_id: str, k: int = 10, model: str = "melp") -> list[tuple[str, float]]:
    """The ``k`` records most similar to ``record_id`` (itself excluded), best first, with cosines."""
    _check_k(k)
    loaded = load(output, model)
    if record_id not in loaded.id_of:
        raise SearchError(f"record {record_id[:200]!r} is not in the {model} index ({loaded.manifest['count']} records, "
                          f"updated {loaded.manifest['updated_at']}): it may be new since (ecgembed index OUTPUT "
                          f"--model {model}) or have no current embedding (see errors_current)")
    own = loaded.id_of[record_id]
    vector = loaded.index.reconstruct(own)[None, :]                         # (1, d), already unit length
    return _answer(loaded, vector, k, exclude=own)


def neighbours_of_vector(output: str, vector, k: int = 10, model: str = "melp") -> list[tuple[str, float]]:
    """The ``k`` records most cosine-similar to ``vector`` (any length-d sequence), best first."""
    _check_k(k)
    loaded = load(output, model)
    query = np.asarray(vector, dtype=np.float32).reshape(1, -1)              # (1, d)
    if query.shape[1] != loaded.manifest["dim"]:
        raise SearchError(f"the {model} index holds {loaded.manifest['dim']}-d vectors; got {query.shape[1]}-d")
    unit, ok = ann.normalise(query)
    if not ok[0]:
        raise SearchError("the query vector is all zeros or not finite; it has no direction to compare")
    return _answer(loaded, unit, k, exclude=None)


def _answer(loaded: Loaded, query: np.ndarray, k: int, exclude: int | None) -> list[tuple[str, float]]:
    scores, ids = ann.search(loaded.index, query, k + (exclude is not None))   # (1, k+1)
    out = []
    for score, i in zip(scores[0].tolist(), ids[0].tolist()):
        if i < 0 or i == exclude:
            continue
        out.append((str(loaded.record_ids[i]), float(score)))
    return out[:k]


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1 or k > 10_000:
        raise SearchError(f"k must be an integer from 1 to 10000, not {k!r}")
