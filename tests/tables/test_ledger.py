"""The ledger key covers everything the rows depend on (on the S3 fixture, read back by DuckDB).

Adding a label set scores exactly the settled records without re-embedding; a changed text
model (scores_version) re-scores only; new weights re-embed that model only; permanent errors
settle, transient ones are retried, ``full`` redoes everything; a re-upload redoes the record.
"""

from __future__ import annotations

import uuid

import pytest

from ecgembed.tables.ledger import read_ledger, select_work
from ecgembed.tables.views import connect
from tests.tables.batches import label_set, model_runs, nightly, refs

CPSC = label_set("cpsc", ("AF", "RBBB", "LBBB"))
CHAPMAN = label_set("chapman", ("SB", "SR", "AFIB", "ST"))
N = 5


@pytest.fixture
def output(s3):
    return s3.url(f"ledger-{uuid.uuid4().hex[:8]}")


def _count(output: str, sql: str) -> int:
    return connect(output).execute(sql).fetchone()[0]


def test_adding_a_label_set_scores_only_settled_records_without_re_embedding(output):
    first = nightly(output, "r1", refs(N), model_runs(label_sets=[CPSC]),
                    record_errors={"site/r000": "truncated", "site/r001": "fetch_failed"})
    assert first["counts"]["ecgfm_ked_embeddings"] == N - 2
    runs = model_runs(label_sets=[CPSC, CHAPMAN])
    work = {w.record_id: w for w in select_work(read_ledger(output), refs(N), runs)}
    # r000: permanent error, settled, nothing to score; r001: transient, retried in full
    assert set(work) == {"site/r001", "site/r002", "site/r003", "site/r004"}
    assert work["site/r001"].embed == {"melp", "ecgfm-ked"} and work["site/r001"].scores == {"ecgfm-ked": (0, 1)}
    for rid in ("site/r002", "site/r003", "site/r004"):
        assert work[rid].embed == frozenset() and work[rid].scores == {"ecgfm-ked": (1,)}   # chapman only
    second = nightly(output, "r2", refs(N), runs)
    assert second["counts"]["ecgfm_ked_embeddings"] == 1 and second["counts"]["melp_embeddings"] == 1   # r001 only
    assert second["counts"]["zero_shot_scores"] == 1 * (3 + 4) + 3 * 4
    assert _count(output, "SELECT count(*) FROM ecgfm_ked_embeddings") == N - 1       # no new row for settled records
    assert _count(output, "SELECT count(*) FROM ecgfm_ked_current") == N - 1
    assert _count(output, "SELECT count(*) FROM scores_wide_chapman") == N - 1
    assert _count(output, "SELECT count(*) FROM scores_current WHERE label_set = 'cpsc'") == (N - 1) * 3
    assert nightly(output, "r3", refs(N), runs)["work"] == []


def test_a_changed_text_model_re_scores_only(output):
    nightly(output, "r1", refs(N), model_runs(label_sets=[CPSC], scores_version="text-v1"))
    runs = model_runs(label_sets=[CPSC], scores_version="text-v2")
    again = nightly(output, "r2", refs(N), runs)
    assert {(w.embed, tuple(w.scores.items())) for w in again["work"]} == {(frozenset(), (("ecgfm-ked", (0,)),))}
    assert again["counts"]["zero_shot_scores"] == N * 3
    assert again["counts"]["ecgfm_ked_embeddings"] == again["counts"]["melp_embeddings"] == 0
    got = connect(output).execute("SELECT DISTINCT scores_version FROM scores_current").fetchall()
    assert got == [("text-v2",)]                                         # the old scores are history now
    assert _count(output, "SELECT count(*) FROM zero_shot_scores") == 2 * N * 3


def test_new_weights_re_embed_that_model_only(output):
    nightly(output, "r1", refs(N), model_runs(label_sets=[CPSC]))
    again = nightly(output, "r2", refs(N), model_runs(melp_version="melp-v2", label_sets=[CPSC]))
    assert all(w.embed == {"melp"} and w.scores == {} for w in again["work"]) and len(again["work"]) == N
    assert again["counts"]["melp_embeddings"] == N and again["counts"]["ecgfm_ked_embeddings"] == 0
    con = connect(output)
    assert con.execute("SELECT DISTINCT model_version FROM melp_current").fetchall() == [("melp-v2",)]
    assert _count(output, "SELECT count(*) FROM scores_current") == N * 3       # KED scores untouched, still current
    # new KED weights: re-embedded and re-scored
    third = nightly(output, "r3", refs(N), model_runs(melp_version="melp-v2", ked_version="ked-v2", label_sets=[CPSC]))
    assert all(w.embed == {"ecgfm-ked"} and w.scores == {"ecgfm-ked": (0,)} for w in third["work"])
    assert connect(output).execute("SELECT DISTINCT model_version FROM scores_current").fetchall() == [("ked-v2",)]


def test_errors_settle_or_retry_and_full_redoes_everything(output):
    runs = model_runs(label_sets=[CPSC])
    nightly(output, "r1", refs(N), runs, record_errors={"site/r000": "truncated"},
            model_errors={("site/r001", "melp"): "model_failed"})
    con = connect(output)
    assert con.execute("SELECT record_id, model, error_type FROM errors_current ORDER BY ALL").fetchall() == [
        ("site/r000", None, "truncated"), ("site/r001", "melp", "model_failed")]
    retry = nightly(output, "r2", refs(N), runs)
    assert [(w.record_id, w.embed, w.scores) for w in retry["work"]] == [("site/r001", {"melp"}, {})]
    assert _count(output, "SELECT count(*) FROM errors_current") == 1            # r001 recovered; r000 still bad
    full = nightly(output, "r3", refs(N), runs, full=True)
    assert len(full["work"]) == N and full["counts"]["melp_embeddings"] == N
    assert _count(output, "SELECT count(*) FROM melp_current") == N              # --full retried the permanent one
    assert _count(output, "SELECT count(*) FROM melp_embeddings") == (N - 2) + 1 + N


def test_a_re_uploaded_record_is_redone_for_every_model(output):
    runs = model_runs(label_sets=[CPSC])
    nightly(output, "r1", refs(N), runs)
    changed = refs(N)
    changed[2] = type(changed[2])(changed[2].record_id, changed[2].uri, "wfdb", "fp2")   # new listing fingerprint
    again = nightly(output, "r2", changed, runs)
    assert [(w.record_id, w.embed, w.scores) for w in again["work"]] == [
        ("site/r002", {"melp", "ecgfm-ked"}, {"ecgfm-ked": (0,)})]
    con = connect(output)
    assert con.execute("SELECT run_id FROM melp_current WHERE record_id = 'site/r002'").fetchall() == [("r2",)]
    assert con.execute("SELECT DISTINCT run_id FROM scores_current WHERE record_id = 'site/r002'").fetchall() == [("r2",)]
    assert _count(output, "SELECT count(*) FROM melp_embeddings WHERE record_id = 'site/r002'") == 2   # history kept
