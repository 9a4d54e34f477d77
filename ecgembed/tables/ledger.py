"""The ledger: which record x model x version a committed run has settled, and what is still to do.

Why a Parquet table of our own rather than Delta Lake or Iceberg: every SQL engine reads it with
no extension or catalog (DuckDB offline included); nightly volumes are small (one file per run);
and the commit protocol it needs, one writer at a time under a lease lock, publishing a run
with an intent file written before any file is moved, is short enough to read in one sitting
(:mod:`ecgembed.tables.commit`). Table formats pay off with many concurrent writers, which a
nightly job does not have.

A record x model is *settled* for a model and preprocessing version when the ledger holds a row
with the same record id and listing fingerprint that is either ``ok`` or a permanent error.
Everything else is work: new records, re-uploaded records (their fingerprint changed), records
whose error was transient, and every record for a model whose weights or preprocessing changed.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from ecgembed import storage
from ecgembed.tables.schemas import LEDGER_SCHEMA, LEDGER_TABLE


def read_ledger(output: str) -> pa.Table:
    """Every committed ledger row (empty table when the output is new)."""
    root = storage.join(output, LEDGER_TABLE)
    fs, path = storage.fs_and_path(root)
    fs.invalidate_cache()
    if not fs.exists(path):
        return LEDGER_SCHEMA.empty_table()
    files = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
    if not files:
        return LEDGER_SCHEMA.empty_table()
    tables = []
    for file in files:
        with fs.open(file, "rb") as handle:
            tables.append(pq.read_table(handle, schema=LEDGER_SCHEMA))
    return pa.concat_tables(tables)


def settled(ledger: pa.Table, model: str, model_version: str, preproc_version: str) -> set[tuple[str, str]]:
    """(record_id, fingerprint) pairs that need no more work for this model version."""
    if ledger.num_rows == 0:
        return set()
    data = ledger.select(["record_id", "fingerprint", "model", "model_version", "preproc_version", "status",
                          "permanent"]).to_pydict()
    out = set()
    for rid, fp, m, mv, pv, status, permanent in zip(*data.values()):
        if m == model and mv == model_version and pv == preproc_version and (status == "ok" or permanent):
            out.add((rid, fp))
    return out


def select_work(ledger: pa.Table, refs: list, runs: list, full: bool) -> list:
    """The anti-join with the ledger: records x models not yet settled for these versions."""
    from ecgembed.columns import Work

    done = {r.name: set() if full else settled(ledger, r.name, r.model_version, r.preproc_version) for r in runs}
    work = []
    for ref in refs:
        embed = frozenset(r.name for r in runs if (ref.record_id, ref.fingerprint) not in done[r.name])
        scores = {r.name: tuple(range(len(r.label_sets))) for r in runs if r.name in embed and r.label_sets}
        if embed:
            work.append(Work(ref.record_id, ref.uri, getattr(ref, "format", "wfdb"), ref.fingerprint, embed, scores))
    return work
