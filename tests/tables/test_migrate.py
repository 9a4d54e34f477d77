"""Migration of an output written by ecgembed 0.1 (its own table code, from git) to Delta Lake."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from ray.data.block import BlockAccessor

from ecgembed.models.registry import SPECS
from ecgembed.tables.commit import recover
from ecgembed.tables.ledger import read_ledger, select_work
from ecgembed.tables.migrate import V1Layout, migrate
from ecgembed.tables.views import connect
from tests.tables.batches import Ref, label_set, model_runs

REPO = Path(__file__).resolve().parents[2]
V1_COMMIT = "331c46a"            # the last commit of ecgembed 0.1's table layer
CPSC = label_set("cpsc", ("AF", "RBBB", "LBBB"))


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    """ecgembed 0.1's tables package (schemas, rows, commit, sink) as it was, importable as ``v1tables``."""
    folder = tmp_path_factory.mktemp("v1") / "v1tables"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    for name in ("schemas", "rows", "commit", "sink"):
        got = subprocess.run(["git", "-C", str(REPO), "show", f"{V1_COMMIT}:ecgembed/tables/{name}.py"],
                             capture_output=True, text=True)
        if got.returncode != 0:
            pytest.skip(f"needs the project's git history (commit {V1_COMMIT}) to write an ecgembed 0.1 output")
        (folder / f"{name}.py").write_text(got.stdout.replace("ecgembed.tables", "v1tables"))
    sys.path.insert(0, str(folder.parent))
    try:
        yield SimpleNamespace(**{n: importlib.import_module(f"v1tables.{n}") for n in ("schemas", "rows", "commit", "sink")})
    finally:
        sys.path.remove(str(folder.parent))


def _v1_batch(ids, fingerprint, failed=()):
    """The columns ecgembed 0.1's stages handed its sink."""
    n = len(ids)
    rng = np.random.default_rng(len(ids))
    batch = {"record_id": np.array(ids, object), "fingerprint": np.array([fingerprint] * n, object),
             "source_uri": np.array([f"/archive/{i}.hea" for i in ids], object),
             "content_sha256": np.array([f"sha-{i}-{fingerprint}" for i in ids], object),
             "status": np.array(["error" if i in failed else "ok" for i in ids], object),
             "error_stage": np.array(["decode" if i in failed else "" for i in ids], object),
             "error_type": np.array(["truncated" if i in failed else "" for i in ids], object),
             "error_message": np.array(["truncated" if i in failed else "" for i in ids], object),
             "fs": np.full(n, 500.0, np.float32), "n_samples": np.full(n, 5000, np.int32),
             "duration_s": np.full(n, 10.0, np.float32), "n_nonfinite": np.zeros(n, np.int32),
             "flat_leads": np.array(["V1"] * n, object), "max_abs_mv": np.ones(n, np.float32),
             "median_ptp_mv": np.ones(n, np.float32), "amplitude_suspect": np.zeros(n, bool),
             "derived_leads": np.array([""] * n, object),
             "needs_melp": np.ones(n, bool), "needs_ked": np.ones(n, bool),
             "melp_embedding": rng.standard_normal((n, 256)).astype(np.float32),
             "melp_probe": rng.standard_normal((n, 256)).astype(np.float32),
             "ked_embedding": rng.standard_normal((n, 768)).astype(np.float32),
             "ked_scores_0": rng.random((n, 3)).astype(np.float32),
             "melp_error_type": np.array([""] * n, object), "melp_error": np.array([""] * n, object),
             "ked_error_type": np.array([""] * n, object), "ked_error": np.array([""] * n, object)}
    return BlockAccessor.batch_to_block(batch)


def _v1_run(v1, output, run_id, ids, fingerprint, failed=()):
    """One ecgembed 0.1 run's table side: its sink's write task, then its commit."""
    infos = (v1.rows.ModelInfo("melp", "melp", "melp-v1", SPECS["melp"].preproc_version),
             v1.rows.ModelInfo("ecgfm-ked", "ked", "ked-v1", SPECS["ecgfm-ked"].preproc_version,
                               (v1.rows.LabelSetInfo(CPSC.name, CPSC.sha256, CPSC.class_names),)))
    sink = v1.sink.EcgTablesDatasink(output, run_id, infos, 1000)
    written = sink.write([_v1_batch(ids, fingerprint, failed)], SimpleNamespace(task_idx=0))
    manifest = {"run_id": run_id, "started_at": "2026-01-01T01:30:00+00:00", "finished_at": "2026-01-01T01:31:00+00:00",
                "discovered": len(ids), "models": {"ecgfm-ked": {"label_sets": [
                    {"name": CPSC.name, "sha256": CPSC.sha256, "classes": list(CPSC.class_names)}]}}}
    empty = {t: v1.schemas.SCHEMAS[t] for t in (*v1.schemas.TABLES, v1.schemas.LEDGER_TABLE)}
    return v1.commit.commit_run(output, run_id, [written], manifest, empty_schemas=empty)


def test_an_ecgembed_01_output_is_refused_then_migrated_with_its_ledger(v1, tmp_path):
    output = str(tmp_path / "out")
    ids = [f"site/r{i}" for i in range(4)]
    _v1_run(v1, output, "v1-a", ids, "fp1", failed=("site/r0",))
    _v1_run(v1, output, "v1-b", ["site/r1"], "fp2")                        # r1 re-uploaded: history
    (tmp_path / "out" / "_staging" / "crashed" / "errors").mkdir(parents=True)  # an uncommitted 0.1 run
    (tmp_path / "out" / "_lock.json").write_text(json.dumps({"run_id": "v1-b", "heartbeat_at": time.time() - 3600}))

    with pytest.raises(V1Layout, match=r"ecgembed 0\.1 .*ecgembed migrate"):
        recover(output, "v2-run")
    got = migrate(output)
    assert got["migrated"] and got["counts"] == {"melp_embeddings": 4, "ecgfm_ked_embeddings": 4,
                                                  "zero_shot_scores": 12, "errors": 1, "ledger": 10 + 4, "runs": 2}
    assert not [p for p in Path(output).rglob("*") if "run=" in p.name or p.name.startswith(("_ledger", "_runs",
                                                                                              "_staging", "_lock.json"))]
    con = connect(output)
    assert con.execute("SELECT count(*) FROM melp_current").fetchone()[0] == 3
    assert con.execute("SELECT run_id FROM melp_current WHERE record_id = 'site/r1'").fetchall() == [("v1-b",)]
    assert con.execute("SELECT record_id, error_type FROM errors_current").fetchall() == [("site/r0", "truncated")]
    assert con.execute("SELECT count(*) FROM scores_wide_cpsc").fetchone()[0] == 3
    assert con.execute("SELECT DISTINCT format FROM melp_embeddings").fetchall() == [("wfdb",)]
    # the ledger carried over: nothing to embed again; 0.1 did not record its text model, so scores are redone once
    refs = [Ref("site/r0", "", "wfdb", "fp1"), Ref("site/r1", "", "wfdb", "fp2"), Ref("site/r2", "", "wfdb", "fp1"),
            Ref("site/r3", "", "wfdb", "fp1")]
    work = select_work(read_ledger(output), refs, model_runs(label_sets=[CPSC]))
    assert [(w.record_id, w.embed, w.scores) for w in work] == [
        (rid, frozenset(), {"ecgfm-ked": (0,)}) for rid in ("site/r1", "site/r2", "site/r3")]
    assert migrate(output)["migrated"] is False                           # idempotent
    assert recover(output, "v2-run") == {"rolled_forward": [], "abandoned": []}


def test_a_01_run_committed_but_not_published_is_refused_with_the_way_out(v1, tmp_path):
    output = str(tmp_path / "out")
    _v1_run(v1, output, "v1-a", ["site/r0"], "fp1")
    (tmp_path / "out" / "_commits").mkdir(exist_ok=True)     # 0.1 leaves the folder after publishing
    (tmp_path / "out" / "_commits" / "v1-b.json").write_text("{}")
    with pytest.raises(V1Layout, match=r"run ecgembed 0\.1 once more on this output .* then migrate"):
        migrate(output)
