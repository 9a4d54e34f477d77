"""The commit protocol: intent = commit point, publishing idempotent, recovery rolls forward."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ecgembed import storage
from ecgembed.tables import commit


def _stage(output, run_id, table, name, rows):
    uri = commit.staging_uri(output, run_id, table, name)
    fs, path = storage.fs_and_path(uri)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    pq.write_table(pa.table({"record_id": [f"r{i}" for i in range(rows)]}), path)
    return {table: {"path": uri, "rows": rows}}


def _published(output):
    fs, root = storage.fs_and_path(output)
    return sorted(p[len(root) + 1:] for p in fs.find(root) if "/run=" in p)


def test_crash_while_publishing_is_rolled_forward(tmp_path, monkeypatch):
    output = str(tmp_path / "out")
    written = [_stage(output, "r1", "melp_embeddings", "part-00000.parquet", 3),
               _stage(output, "r1", "melp_embeddings", "part-00001.parquet", 2),
               _stage(output, "r1", "_ledger", "part-00000.parquet", 5)]
    fs = storage.filesystem("file")
    real_mv, moves = fs.mv, []

    def crash_after_one(src, dst, **kw):
        if "/_staging/" in src:          # moves of data files (the intent's own rename is not one)
            if moves:
                raise OSError("killed mid-publish")
            moves.append(src)
        return real_mv(src, dst, **kw)

    monkeypatch.setattr(fs, "mv", crash_after_one)
    with pytest.raises(OSError, match="killed mid-publish"):
        commit.commit_run(output, "r1", written, {"run_id": "r1"})
    assert (tmp_path / "out" / "_commits" / "r1.json").exists()       # committed...
    assert not (tmp_path / "out" / "_runs" / "r1.json").exists()      # ...but not yet published
    assert len(_published(output)) == 1
    monkeypatch.setattr(fs, "mv", real_mv)

    assert commit.recover(output) == {"published": ["r1"], "abandoned": []}
    assert _published(output) == ["_ledger/run=r1/part-00000.parquet", "melp_embeddings/run=r1/part-00000.parquet",
                                  "melp_embeddings/run=r1/part-00001.parquet"]
    manifest = json.loads((tmp_path / "out" / "_runs" / "r1.json").read_text())
    assert sum(f["rows"] for f in manifest["files"]["melp_embeddings"]) == 5
    assert not (tmp_path / "out" / "_commits" / "r1.json").exists()
    assert not (tmp_path / "out" / "_staging").exists()
    assert commit.recover(output) == {"published": [], "abandoned": []}   # idempotent


def test_staging_without_intent_is_abandoned_not_published(tmp_path):
    output = str(tmp_path / "out")
    _stage(output, "dead", "melp_embeddings", "part-00000.parquet", 3)
    _stage(output, "live", "melp_embeddings", "part-00000.parquet", 3)
    assert commit.recover(output, current_run="live") == {"published": [], "abandoned": ["dead"]}
    assert _published(output) == []
    assert not (tmp_path / "out" / "_staging" / "dead").exists()
    assert (tmp_path / "out" / "_staging" / "live").exists()             # the running run's files stay


def test_a_committed_file_that_vanished_is_an_error_not_a_silent_loss(tmp_path):
    output = str(tmp_path / "out")
    written = [_stage(output, "r2", "errors", "part-00000.parquet", 1)]
    (tmp_path / "out" / "_staging" / "r2" / "errors" / "part-00000.parquet").unlink()
    with pytest.raises(commit.CommitError, match="is gone"):
        commit.commit_run(output, "r2", written, {"run_id": "r2"})
