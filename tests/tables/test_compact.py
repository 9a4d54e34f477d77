"""compact: fewer files, every row (current and history) kept, replaced files deleted past retention."""

from __future__ import annotations

from pathlib import Path

from ecgembed.tables import delta
from ecgembed.tables.compact import compact
from ecgembed.tables.views import connect
from tests.tables.batches import label_set, model_runs, nightly, refs
from tests.tables.readers import one_copy

RUNS = model_runs(label_sets=[label_set("cpsc", ("AF", "RBBB", "LBBB"))])
N = 6


def _parquet_files(output: str, table: str) -> set[Path]:
    return set((Path(output) / table).rglob("*.parquet"))


def _current(output: str) -> list:
    con = connect(output)
    return [con.execute("SELECT record_id, run_id, embedding FROM melp_current ORDER BY record_id").fetchall(),
            con.execute("SELECT * FROM scores_wide_cpsc ORDER BY record_id").fetchall(),
            con.execute("SELECT count(*) FROM melp_embeddings").fetchall()]


def test_compact_keeps_every_row_and_deletes_replaced_files(tmp_path):
    output = str(tmp_path / "out")
    nightly(output, "r1", refs(N), RUNS)
    nightly(output, "r2", refs(N), RUNS, full=True)                 # every row superseded once: history
    changed = refs(N)[:3] + refs(N, fingerprint="fp2")[3:]
    nightly(output, "r3", changed, RUNS)                             # three records re-uploaded
    before = _current(output)
    files_before = _parquet_files(output, "melp_embeddings")
    assert len(files_before) == 6                                   # 3 runs x 2 write tasks

    kept = compact(output, retention_hours=24)                       # optimize, but keep what it replaced
    assert kept["melp_embeddings"]["files_removed"] == 6 and kept["melp_embeddings"]["files_added"] == 1
    assert kept["melp_embeddings"]["files_deleted"] == 0 and files_before <= _parquet_files(output, "melp_embeddings")
    assert _current(output) == before
    old = delta.open_table(delta.table_uri(output, "melp_embeddings"))
    old.load_as_version(kept["melp_embeddings"]["version"] - 1)      # before optimize: its small files are kept
    assert old.to_pyarrow_table().num_rows == N + N + 3

    dropped = compact(output, retention_hours=0)
    assert dropped["melp_embeddings"]["files_deleted"] == 6
    remaining = _parquet_files(output, "melp_embeddings")
    assert len(remaining) == 1 and not remaining & files_before
    assert _current(output) == before                                # current rows and history unchanged
    one_copy(output, {"melp_embeddings": N + N + 3, "ecgfm_ked_embeddings": N + N + 3, "zero_shot_scores": (N + N + 3) * 3,
                      "ledger": (N + N + 3) * 3, "runs": 3})
    assert nightly(output, "r4", changed, RUNS)["work"] == []        # the ledger is intact: nothing to redo
