"""Build and update the nearest-neighbour index of a model's current embeddings.

The index covers exactly the rows of ``<model>_current`` (read through
:func:`ecgembed.tables.views.connect`) at the time it was written; its manifest records the
``(record_id, run_id)`` pairs it covers (their digest and count) and the committed run ids, so
it is tied to one state of the tables and a later state can be compared with it.

After a nightly run, :func:`update_index` adds the new current rows and removes the rows that
are no longer current (a re-uploaded record's old embedding, a record whose new bytes failed).
It rebuilds instead when the change is large (more than :data:`REBUILD_CHURN` of the index),
when an IVF index has grown by more than :data:`RETRAIN_GROWTH` since its lists were trained
(they would no longer fit the data), or when the size calls for the other kind of index.
"""

from __future__ import annotations

import hashlib
import re
import time
from datetime import datetime, timezone

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ecgembed import __version__
from ecgembed.search import ann, store
from ecgembed.search.store import SearchError
from ecgembed.tables import views
from ecgembed.tables.commit import read_runs

REBUILD_CHURN = 0.2
RETRAIN_GROWTH = 0.5


def view_name(model: str) -> str:
    return re.sub(r"[^0-9a-zA-Z_]", "_", model).lower() + "_current"


def _connect(output: str, model: str):
    con = views.connect(output)
    present = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if view_name(model) not in present:
        have = sorted(v.removesuffix("_current") for v in present if v.endswith("_current") and v not in
                      ("scores_current", "errors_current"))
        raise SearchError(f"no current embeddings of model {model!r} in this output; models with embeddings: "
                          f"{', '.join(have) or 'none'}")
    return con


def current_pairs(con, model: str) -> pa.Table:
    """(record_id, run_id) of every current embedding row, sorted by record id."""
    pairs = con.sql(f"SELECT record_id, run_id FROM {view_name(model)} ORDER BY record_id, run_id").to_arrow_table()
    if pc.count_distinct(pairs.column("record_id")).as_py() != pairs.num_rows:
        raise SearchError(f"{view_name(model)} has more than one row for some record; the index needs one per record")
    return pairs


def fetch_vectors(con, model: str, wanted: pa.Table | None = None) -> tuple[pa.Table, np.ndarray]:
    """Pairs and (n, d) embeddings of the current rows (only ``wanted`` pairs when given), by record id."""
    view = view_name(model)
    if wanted is None:
        data = con.sql(f"SELECT record_id, run_id, embedding FROM {view} ORDER BY record_id").to_arrow_table()
    else:
        con.register("_wanted_pairs", wanted)
        data = con.sql(f"""SELECT v.record_id, v.run_id, v.embedding FROM {view} v
                           JOIN _wanted_pairs w USING (record_id, run_id) ORDER BY v.record_id""").to_arrow_table()
        con.unregister("_wanted_pairs")
    column = data.column("embedding").combine_chunks()
    lengths = set(pc.list_value_length(column).to_pylist()) if len(column) else set()
    if len(lengths) > 1:
        raise SearchError(f"{view}: embeddings of different lengths {sorted(lengths)}")
    dim = lengths.pop() if lengths else 0
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    return data.select(["record_id", "run_id"]), flat.reshape(len(column), dim).astype(np.float32)     # (n, d)


def digest(pairs: pa.Table) -> str:
    """sha256 over the sorted ``record_id\\x1frun_id`` lines of the covered rows."""
    h = hashlib.sha256()
    for record_id, run_id in sorted(zip(pairs.column("record_id").to_pylist(), pairs.column("run_id").to_pylist())):
        h.update(f"{record_id}\x1f{run_id}\n".encode())
    return h.hexdigest()


def build_index(output: str, model: str = "melp", kind: str = "auto") -> dict:
    """Build the index of ``model``'s current embeddings from scratch; returns its manifest.

    ``kind``: ``auto`` (exact flat up to :data:`ann.EXACT_MAX` vectors, IVF above), ``flat`` or ``ivf``.
    """
    t0 = time.monotonic()
    con = _connect(output, model)
    runs = [r["run_id"] for r in read_runs(output)]
    pairs, vectors = fetch_vectors(con, model)
    return _write_full(output, model, kind, pairs, vectors, runs, t0, reason="full build")


def _write_full(output, model, kind, pairs, vectors, runs, t0, reason) -> dict:
    unit, ok = ann.normalise(vectors)
    if not ok.any():
        raise SearchError(f"model {model!r}: no current embedding to index (rows: {pairs.num_rows}; a vector that is "
                          "all zeros or not finite cannot be indexed)")
    mask = pa.array(ok)
    kept, skipped = pairs.filter(mask), pairs.filter(pc.invert(mask))
    ids = np.arange(kept.num_rows, dtype=np.int64)
    built = ann.build(unit[ok], ids, ann.choose_kind(kept.num_rows, kind))
    id_table = pa.table({"id": ids, "record_id": kept.column("record_id"), "run_id": kept.column("run_id")})
    now = datetime.now(timezone.utc).isoformat()
    manifest = {
        "model": model, "column": "embedding", "metric": "cosine", "dim": int(vectors.shape[1]),
        "kind": built.kind, "requested_kind": kind, "count": kept.num_rows, "next_id": kept.num_rows,
        "nlist": built.nlist, "nprobe": built.nprobe, "recall_at_10": built.recall_at_10,
        "trained_count": built.trained_count, "added_since_train": 0,
        "covered_sha256": digest(kept), "skipped": _pairs_list(skipped), "runs": runs,
        "built_at": now, "updated_at": now, "ecgembed_version": __version__, "faiss_version": faiss.__version__,
    }
    manifest = store.write_version(output, model, manifest, ann.to_bytes(built.index), id_table)
    return {**manifest, "action": "built", "reason": reason, "added": kept.num_rows, "removed": 0,
            "seconds": round(time.monotonic() - t0, 3)}


def _pairs_list(pairs: pa.Table) -> list[list[str]]:
    return [[r, u] for r, u in zip(pairs.column("record_id").to_pylist(), pairs.column("run_id").to_pylist())]


def _diff(current: pa.Table, indexed: pa.Table, skipped: list) -> tuple[pa.Table, np.ndarray]:
    """Current pairs not yet indexed (nor skipped before), and ids of indexed pairs no longer current."""
    now = set(zip(current.column("record_id").to_pylist(), current.column("run_id").to_pylist()))
    have = dict(zip(zip(indexed.column("record_id").to_pylist(), indexed.column("run_id").to_pylist()),
                    indexed.column("id").to_pylist()))
    gone = np.array(sorted(i for pair, i in have.items() if pair not in now), dtype=np.int64)
    known = set(have) | {tuple(p) for p in skipped}
    new = sorted(p for p in now if p not in known)
    return pa.table({"record_id": [p[0] for p in new], "run_id": [p[1] for p in new]},
                    schema=pa.schema([("record_id", pa.string()), ("run_id", pa.string())])), gone


def update_index(output: str, model: str = "melp", kind: str = "auto", rebuild_above: float = REBUILD_CHURN) -> dict:
    """Bring the index up to date with the current rows: incrementally, or by a rebuild (see module doc).

    ``rebuild_above``: the churn (added + removed, as a fraction of the index) above which it rebuilds.
    """
    t0 = time.monotonic()
    manifest = store.read_manifest(output, model)
    con = _connect(output, model)
    runs = [r["run_id"] for r in read_runs(output)]
    if manifest is None:
        pairs, vectors = fetch_vectors(con, model)
        return _write_full(output, model, kind, pairs, vectors, runs, t0, reason="no index yet")
    indexed = store.read_ids(output, model, manifest)
    current = current_pairs(con, model)
    new, gone = _diff(current, indexed, manifest.get("skipped", []))
    current_set = set(zip(current.column("record_id").to_pylist(), current.column("run_id").to_pylist()))
    still_skipped = [p for p in manifest.get("skipped", []) if tuple(p) in current_set]
    count_after = manifest["count"] - len(gone) + new.num_rows
    reason = _rebuild_reason(manifest, kind, new.num_rows, len(gone), count_after, rebuild_above)
    if reason:
        pairs, vectors = fetch_vectors(con, model)
        return _write_full(output, model, kind, pairs, vectors, runs, t0, reason=reason)
    if not new.num_rows and not len(gone):
        manifest = store.replace_manifest(output, model, {**manifest, "runs": runs, "skipped": still_skipped,
                                                          "updated_at": datetime.now(timezone.utc).isoformat()})
        return {**manifest, "action": "unchanged", "reason": "index covers the current rows", "added": 0,
                "removed": 0, "seconds": round(time.monotonic() - t0, 3)}
    index = ann.from_bytes(store.read_index(output, model, manifest))
    if len(gone):
        index.remove_ids(gone)
        indexed = indexed.filter(pc.invert(pc.is_in(indexed.column("id"), pa.array(gone))))
    added = 0
    if new.num_rows:
        pairs, vectors = fetch_vectors(con, model, new)
        if vectors.shape[1] != manifest["dim"]:
            raise SearchError(f"new {model} embeddings have {vectors.shape[1]} dimensions, the index {manifest['dim']}")
        unit, ok = ann.normalise(vectors)
        kept = pairs.filter(pa.array(ok))
        still_skipped += _pairs_list(pairs.filter(pc.invert(pa.array(ok))))
        ids = np.arange(manifest["next_id"], manifest["next_id"] + kept.num_rows, dtype=np.int64)
        index.add_with_ids(unit[ok], ids)
        indexed = pa.concat_tables([indexed.cast(store.IDS_SCHEMA), pa.table(
            {"id": ids, "record_id": kept.column("record_id"), "run_id": kept.column("run_id")}).cast(store.IDS_SCHEMA)])
        manifest = {**manifest, "next_id": int(manifest["next_id"] + kept.num_rows)}
        added = kept.num_rows
    indexed = indexed.sort_by("id")
    manifest = {**manifest, "count": indexed.num_rows, "covered_sha256": digest(indexed), "runs": runs,
                "skipped": still_skipped, "added_since_train": manifest.get("added_since_train", 0) + added,
                "updated_at": datetime.now(timezone.utc).isoformat()}
    manifest = store.write_version(output, model, manifest, ann.to_bytes(index), indexed)
    return {**manifest, "action": "updated", "reason": "incremental", "added": added, "removed": int(len(gone)),
            "seconds": round(time.monotonic() - t0, 3)}


def _rebuild_reason(manifest: dict, kind: str, n_new: int, n_gone: int, count_after: int,
                    rebuild_above: float) -> str | None:
    if manifest.get("requested_kind", "auto") != kind:
        return f"index kind changed ({manifest.get('requested_kind')} -> {kind})"
    if count_after <= 0:
        return "every indexed row is superseded"
    try:
        wanted = ann.choose_kind(count_after, kind)
    except ValueError:
        wanted = manifest["kind"]
    if wanted != manifest["kind"]:
        return f"{count_after} vectors call for a {wanted} index (was {manifest['kind']})"
    churn = (n_new + n_gone) / max(1, manifest["count"])
    if churn > rebuild_above:
        return f"{n_new} added + {n_gone} removed is {churn:.0%} of the index (rebuild above {rebuild_above:.0%})"
    grown = manifest.get("added_since_train", 0) + n_new
    if manifest["kind"] == "ivf" and grown > RETRAIN_GROWTH * manifest["trained_count"]:
        return f"the IVF lists were trained on {manifest['trained_count']} vectors; retraining after this much growth"
    return None


def index_status(output: str, model: str = "melp") -> dict:
    """How the stored index compares with the current rows (reads the pairs only, no vectors)."""
    manifest = store.read_manifest(output, model)
    if manifest is None:
        return {"model": model, "exists": False, "up_to_date": False}
    indexed = store.read_ids(output, model, manifest)
    current = current_pairs(_connect(output, model), model)
    new, gone = _diff(current, indexed, manifest.get("skipped", []))
    keys = ("kind", "count", "dim", "nprobe", "recall_at_10", "built_at", "updated_at", "covered_sha256")
    return {"model": model, "exists": True, **{k: manifest.get(k) for k in keys},
            "to_add": new.num_rows, "to_remove": int(len(gone)), "up_to_date": not new.num_rows and not len(gone)}
