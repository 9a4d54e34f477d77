"""The job end to end on real Ray, real S3 and real Delta tables read back by DuckDB (``ecgembed sql``'s views)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ecgembed.config import RunConfig
from ecgembed.models.registry import SPECS
from ecgembed.pipeline import run
from ecgembed.tables import delta
from ecgembed.tables.commit import read_runs
from ecgembed.tables.views import connect

MELP_TABLE, KED_TABLE = SPECS["melp"].table, SPECS["ecgfm-ked"].table


def _committed(output: str, table: str):
    return delta.open_table(delta.table_uri(output, table)).to_pyarrow_table()


@pytest.fixture(scope="module")
def conformance_weights(shared_dir, melp_weights_dir, ked_weights_file):
    return {"weights": {"melp": str(melp_weights_dir), "ecgfm-ked": str(ked_weights_file)},
            "model_options": {"ecgfm-ked": {"text_model": str(shared_dir / "conformance" / "ecgfm-ked" / "tiny_bert")}}}


def test_job_from_s3_to_s3_read_back_with_duckdb(ecg_dir, s3, ray_local, conformance_weights, tmp_cache):
    archive = s3.put_dir(ecg_dir, "pipeline/archive")
    # two bad records next to the real ones: a truncated signal file and a garbage header
    mat = (ecg_dir / "cinc2021_torch-ecg" / "E07500.mat").read_bytes()
    s3.fs.pipe_file(f"{s3.bucket}/pipeline/archive/bad/E07500.hea", (ecg_dir / "cinc2021_torch-ecg" / "E07500.hea").read_bytes())
    s3.fs.pipe_file(f"{s3.bucket}/pipeline/archive/bad/E07500.mat", mat[: len(mat) // 3])
    s3.fs.pipe_file(f"{s3.bucket}/pipeline/archive/bad/garbage.hea", b"\x00\x01\x02 not a header")
    output = s3.url("pipeline/out")
    manifest = run(RunConfig(inputs=[archive], output=output, labels=["cpsc2018", "chapman"], progress_interval_s=5,
                             **conformance_weights))
    discovered = manifest["discovered"]
    from ecgembed.sources import discover

    assert discovered == len(discover(archive).refs) == len(list(ecg_dir.rglob("*.hea"))) + 2 + 13  # + 13 vendor files
    con = connect(output)
    errors = {m: con.execute("select count(*) from errors where model is null or model = ?",
                             [m]).fetchall()[0][0] for m in ("melp", "ecgfm-ked")}
    for model, table, dim in (("melp", MELP_TABLE, 256), ("ecgfm-ked", KED_TABLE, 768)):
        embedded, distinct = con.execute(f"select count(*), count(distinct record_id) from {table}").fetchall()[0]
        assert embedded == distinct and embedded + errors[model] == discovered, model
        assert con.execute(f"select min(len(embedding)), max(len(embedding)) from {table}").fetchall() == [(dim, dim)]
        config = delta.open_table(delta.table_uri(output, table)).metadata().configuration
        assert config["ecgembed.dim.embedding"] == str(dim)                   # the dimension Delta cannot type
    # every record is embedded xor an error row, by record id
    ids = con.execute(f"""select count(*) from (select record_id from {MELP_TABLE}
                          union all select record_id from errors where model is null or model = 'melp')""").fetchall()
    assert ids[0][0] == discovered
    # vectors are FLOAT[256] once cast; cosine of a normalised vector with itself is 1
    cos = con.execute(f"""select min(array_cosine_similarity(a.embedding::FLOAT[256], a.embedding::FLOAT[256])),
                                 max(array_cosine_similarity(a.embedding::FLOAT[256], b.embedding::FLOAT[256]))
                          from {MELP_TABLE} a join {MELP_TABLE} b
                          on a.record_id < b.record_id""").fetchall()[0]
    assert cos[0] == pytest.approx(1.0, abs=1e-5) and cos[1] <= 1.0 + 1e-6
    # different ECGs, different vectors: only the cross-format twins (the same recording exported as
    # aECG, DICOM and SCP; two Philips files with the same rhythm data) share one
    distinct, total = con.execute(f"select count(distinct embedding), count(*) from {MELP_TABLE}").fetchall()[0]
    assert total - distinct <= 3
    assert con.execute("select typeof(embedding) from melp_current limit 1").fetchall() == [("FLOAT[256]",)]
    # zero-shot scores: one row per embedded record x class, for each chosen label set
    scores = dict(con.execute("select label_set, count(*) from zero_shot_scores group by label_set").fetchall())
    ked_embedded = manifest["counts"][KED_TABLE]
    assert scores == {"cpsc2018": ked_embedded * 9, "chapman": ked_embedded * 8}
    bad = con.execute("select count(*) from zero_shot_scores where score < 0 or score > 1").fetchall()
    assert bad[0][0] == 0
    assert con.execute("select count(*) from scores_wide_chapman").fetchall()[0][0] == ked_embedded
    # provenance and versions: columns, and each commit's Delta commitInfo
    row = con.execute(f"select model_version, preproc_version, run_id, format from {MELP_TABLE} limit 1").fetchall()[0]
    assert row == (manifest["models"]["melp"]["model_version"], manifest["models"]["melp"]["preproc_version"],
                   manifest["run_id"], "wfdb")
    commit = delta.open_table(delta.table_uri(output, MELP_TABLE)).history(1)[0]
    assert commit["ecgembed.run_id"] == manifest["run_id"] and commit["ecgembed.melp.model_version"] == row[0]
    # the error rows say why, with a type from the vocabulary
    got = dict(con.execute("select record_id, error_type from errors").fetchall())
    assert got == {"bad/E07500": "truncated", "bad/garbage": "bad_header"}
    # the run's manifest is committed with it, in the runs table
    committed = read_runs(output)[-1]
    assert committed["run_id"] == manifest["run_id"] and committed["counts"][MELP_TABLE] == manifest["counts"][MELP_TABLE]
    # every data file in a table folder is committed: nothing left behind
    s3.fs.invalidate_cache()
    for table in (MELP_TABLE, KED_TABLE, "zero_shot_scores", "errors", "ledger", "runs"):
        on_disk = {p for p in s3.fs.find(f"{s3.bucket}/pipeline/out/{table}") if p.endswith(".parquet")}
        listed = {u.split("://", 1)[1] for u in delta.open_table(delta.table_uri(output, table)).file_uris()}
        assert on_disk == listed, table


def test_job_output_equals_the_original_code(shared_dir, ray_local, conformance_weights, tmp_path, tmp_cache):
    """conformance/e2e: raw WFDB files -> the whole job -> Parquet == expected.npz (original code)."""
    e2e = shared_dir / "conformance" / "e2e"
    records = json.loads((e2e / "records.json").read_text())["records"]
    texts = json.loads((shared_dir / "conformance" / "ecgfm-ked" / "class_texts.json").read_text())["class_texts"]
    assert len(texts) == 5
    label_file = tmp_path / "e2e_labels.json"
    label_file.write_text(json.dumps({"name": "e2e", "classes": [{"name": f"c{i}", "text": t} for i, t in enumerate(texts)]}))
    output = tmp_path / "out"
    manifest = run(RunConfig(inputs=[str(shared_dir / r["path"]) + ".hea" for r in records], output=str(output),
                             labels=[str(label_file)], **conformance_weights))
    assert manifest["counts"][MELP_TABLE] == manifest["counts"][KED_TABLE] == 8
    expected = np.load(e2e / "expected.npz")
    order = [r["path"].rsplit("/", 1)[1] for r in records]

    def vectors(table, column):
        data = _committed(str(output), table).to_pydict()
        by_id = dict(zip(data["record_id"], data[column]))
        return np.array([by_id[rid] for rid in order], np.float32)

    np.testing.assert_allclose(vectors(MELP_TABLE, "embedding"), expected["melp_global_norm"], atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(vectors(MELP_TABLE, "probe_embedding"), expected["melp_probe"], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(vectors(KED_TABLE, "embedding"), expected["ked_embedding"], atol=1e-4, rtol=1e-4)
    scores = _committed(str(output), "zero_shot_scores").to_pandas()
    got = scores.pivot(index="record_id", columns="class_index", values="score").loc[order].to_numpy()
    np.testing.assert_allclose(got, expected["ked_scores"], atol=1e-4, rtol=1e-4)
    assert set(scores["class_name"]) == {f"c{i}" for i in range(len(texts))}


def test_precision_is_part_of_the_version_so_switching_it_re_embeds(ecg_dir, ray_local, tmp_path, tmp_cache):
    archive = tmp_path / "in"
    archive.mkdir()
    for name in ("E07500", "E07501"):
        for ext in (".hea", ".mat"):
            (archive / f"{name}{ext}").write_bytes((ecg_dir / "cinc2021_torch-ecg" / f"{name}{ext}").read_bytes())
    config = dict(inputs=[str(archive)], output=str(tmp_path / "out"), stand_in=True, labels=["cpsc2018"])
    bf16 = run(RunConfig(precision="bf16", **config))
    versions = {name: m["model_version"] for name, m in bf16["models"].items()}
    # MELP's bf16 policy changes its numbers (a new version); ECGFM-KED runs fp32 under both (same version)
    assert versions["melp"].startswith("stand-in:melp") and versions["melp"].endswith("+bf16-fp32front-tf32pos")
    assert "+bf16" not in versions["ecgfm-ked"]
    got = connect(str(tmp_path / "out")).execute(f"SELECT DISTINCT model_version FROM {MELP_TABLE}").fetchall()
    assert got == [(bf16["models"]["melp"]["model_version"],)]
    fp32 = run(RunConfig(**config))
    assert fp32["selected"] == 2 and "+bf16" not in fp32["models"]["melp"]["model_version"]
