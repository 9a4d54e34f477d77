"""The sink in a real Ray Data write: tasks write uncommitted files, the driver commits them once."""

from __future__ import annotations

import uuid

import ray

from ecgembed.tables import delta
from ecgembed.tables.commit import commit_run, read_runs
from ecgembed.tables.ledger import read_ledger, select_work
from ecgembed.tables.sink import EcgTablesDatasink
from ecgembed.tables.views import connect
from tests.tables.batches import label_set, model_runs, refs, stage_batch, to_block
from tests.tables.readers import one_copy, rows_by_reader

CPSC = label_set("cpsc", ("AF", "RBBB", "LBBB"))
N = 12


def test_ray_write_tasks_then_one_commit_on_s3(s3, ray_local):
    output = s3.url(f"sink-{uuid.uuid4().hex[:8]}")
    runs = model_runs(label_sets=[CPSC])
    work = select_work(read_ledger(output), refs(N), runs)
    batches = [stage_batch(work[i : i + 4], runs, record_errors={"site/r005": "truncated"}) for i in range(0, N, 4)]
    ds = ray.data.from_arrow([to_block(b) for b in batches])
    sink = EcgTablesDatasink(output, "ray-run", tuple(runs), rows_per_file=4)
    ds.write_datasink(sink)
    assert len(sink.write_returns) == 3                                     # one result per write task
    assert all(rows_by_reader(output, t)["pyarrow"] == 0 for t in ("melp_embeddings", "ledger"))   # nothing visible yet
    manifest = commit_run(output, "ray-run", sink.write_returns, {"started_at": "2026-01-01T00:00:00+00:00"})
    assert manifest["counts"] == {"melp_embeddings": N - 1, "ecgfm_ked_embeddings": N - 1, "zero_shot_scores": (N - 1) * 3,
                                  "errors": 1, "ledger": N * 3}
    one_copy(output, {**manifest["counts"], "runs": 1})
    files = delta.open_table(delta.table_uri(output, "melp_embeddings")).file_uris()
    assert sorted(f.rsplit("/", 2)[-2] for f in files) == ["run-ray-run"] * 3
    assert read_runs(output)[0]["label_sets"]["cpsc"]["classes"] == ["AF", "RBBB", "LBBB"]
    con = connect(output)
    assert con.execute("SELECT count(*) FROM scores_wide_cpsc").fetchone()[0] == N - 1
    config = delta.open_table(delta.table_uri(output, "ecgfm_ked_embeddings")).metadata().configuration
    assert config["ecgembed.dim.embedding"] == "768" and config["ecgembed.model"] == "ecgfm-ked"
