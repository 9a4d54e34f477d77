"""The ledger: what committed runs settled, and what a new run still has to do.

The ``ledger`` Delta table has one row per record x model a run was asked to embed
(``label_set`` null) and one per record x model x label set it was asked to score. A row is
*settled* when it is ``ok`` or a permanent error (the same bytes always give it; this includes
``internal_error``: a bug in ecgembed must not make every night fail on the same record; rerun
with ``--full`` once fixed). Transient errors (``fetch_failed``, ``model_failed``) are retried.

The key covers everything the rows depend on:

- an **embedding** is settled for (record_id, fingerprint, model, model_version, preproc_version);
- its **scores** for one label set additionally for (label_set, label_set_sha256,
  scores_version), where ``scores_version`` names what the scores depend on besides the model
  (the text model and its weights, from the spec).

So adding a label set scores exactly the records whose embedding is settled ``ok`` without
writing new embedding rows; a changed text model re-scores only; new weights re-embed (and
re-score) that model only; a re-uploaded record (new fingerprint) is redone for every model.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from ecgembed.columns import Work
from ecgembed.models.spec import ModelRun
from ecgembed.tables import delta
from ecgembed.tables import schemas as S


def read_ledger(output: str) -> pa.Table:
    """Every committed ledger row (an empty table with the ledger schema for a new output)."""
    table = delta.open_table(delta.table_uri(output, S.LEDGER_TABLE))
    if table is None:
        return S.LEDGER_SCHEMA.empty_table()
    data = pa.table(table.to_pyarrow_table())
    return pa.table({f.name: data[f.name].cast(f.type) for f in S.LEDGER_SCHEMA}, schema=S.LEDGER_SCHEMA)


@dataclass(frozen=True)
class _Settled:
    embeddings: dict[tuple[str, str], bool]          # (record_id, fingerprint) -> embedded ok (else: permanent error)
    scores: set[tuple[str, str, str, str, str]]      # (record_id, fingerprint, label_set, sha256, scores_version)


def _settled(ledger: pa.Table, run: ModelRun) -> _Settled:
    keep = pc.and_(pc.and_(pc.equal(ledger["model"], run.name), pc.equal(ledger["model_version"], run.model_version)),
                   pc.equal(ledger["preproc_version"], run.preproc_version))
    keep = pc.and_(keep, pc.or_(pc.equal(ledger["status"], "ok"), ledger["permanent"]))
    rows = ledger.filter(keep).select(["record_id", "fingerprint", "label_set", "label_set_sha256",
                                       "scores_version", "status"]).to_pydict()
    embeddings: dict[tuple[str, str], bool] = {}
    scores = set()
    for rid, fp, label_set, sha, version, status in zip(*rows.values()):
        if label_set is None:
            embeddings[(rid, fp)] = embeddings.get((rid, fp), False) or status == "ok"
        else:
            scores.add((rid, fp, label_set, sha, version))
    return _Settled(embeddings, scores)


def select_work(ledger: pa.Table, refs, runs: list[ModelRun], full: bool = False) -> list[Work]:
    """The anti-join of the discovered records with the ledger, per model and label set.

    ``refs`` have ``record_id``, ``uri``, ``format`` and ``fingerprint``. ``full`` ignores the
    ledger: every record, every model, every label set.
    """
    settled = {run.name: _settled(ledger, run) for run in runs} if not full else {}
    work = []
    for ref in refs:
        key = (ref.record_id, ref.fingerprint)
        embed, scores = set(), {}
        for run in runs:
            embedded_ok = None if full else settled[run.name].embeddings.get(key)
            if embedded_ok is None:                       # not settled: embed (and score every label set)
                embed.add(run.name)
                wanted = tuple(range(len(run.label_sets)))
            elif embedded_ok:                             # settled ok: only label sets not scored yet
                done = settled[run.name].scores
                wanted = tuple(i for i, ls in enumerate(run.label_sets)
                               if key + (ls.name, ls.sha256, run.scores_version) not in done)
            else:                                         # settled by a permanent error: nothing to score
                wanted = ()
            if wanted:
                scores[run.name] = wanted
        if embed or scores:
            # refs gain ``format`` with the format registry (issue 11); until then every record is WFDB
            work.append(Work(ref.record_id, ref.uri, getattr(ref, "format", "wfdb"), ref.fingerprint,
                             frozenset(embed), scores))
    return work
