"""Every engine's way in, run where it can run here: the SQL of docs/tables.md executed by a real
Spark (pyspark, local) over each table's committed files, against DuckDB through `ecgembed sql`'s
views and Polars through the Delta log."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from ecgembed.config import RunConfig
from ecgembed.pipeline import run
from ecgembed.tables import delta
from ecgembed.tables.views import connect

REPO = Path(__file__).resolve().parent.parent
DOCS = (REPO / "docs" / "tables.md").read_text()
TABLES = ("melp_embeddings", "ecgfm_ked_embeddings", "zero_shot_scores", "errors", "ledger", "runs")


def _sql_blocks(after_heading: str) -> list[str]:
    section = DOCS.split(after_heading, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.S)


def _spark_statements(block: str) -> list[str]:
    """docs SQL for a catalog schema `ecg` -> statements over this session's temporary views."""
    block = block.replace("ecg.", "").replace("CREATE VIEW", "CREATE OR REPLACE TEMPORARY VIEW")
    return [s.strip() for s in block.split(";") if s.strip()]


@pytest.fixture(scope="module")
def output(ecg_dir, ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    archive = root / "in" / "georgia"
    archive.mkdir(parents=True)
    for name in ("E07500", "E07501", "E07502", "E07503", "E07504", "E07505"):
        for ext in (".hea", ".mat"):
            shutil.copy(ecg_dir / "cinc2021_torch-ecg" / f"{name}{ext}", archive / f"{name}{ext}")
    (archive / "E07505.mat").write_bytes((archive / "E07505.mat").read_bytes()[:5000])    # one error row
    out = root / "out"
    config = dict(inputs=[str(root / "in")], output=str(out), stand_in=True, labels=["cpsc2018"])
    run(RunConfig(**config))
    (archive / "E07503.mat").write_bytes((archive / "E07503.mat").read_bytes()[:-2] + b"\x01\x02")  # a re-upload
    run(RunConfig(**config))            # history: the old E07503 rows stay, not current
    return out


@pytest.fixture(scope="module")
def spark():
    pyspark = pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("needs a Java runtime for Spark")
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[1]").appName("ecgembed-test")
               .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2")
               .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    assert pyspark.__version__
    yield session
    session.stop()


def test_spark_runs_the_documented_current_views_and_neighbour_query(output, spark):
    for table in TABLES:                                  # each table's committed files, nothing else
        files = delta.open_table(delta.table_uri(str(output), table)).file_uris()
        spark.read.parquet(*files).createOrReplaceTempView(table)
    for block in _sql_blocks("### The current rows in Spark, Databricks, Trino, Athena"):
        for statement in _spark_statements(block):
            spark.sql(statement)
    con = connect(str(output))
    for view in ("current_state", "melp_current", "ecgfm_ked_current", "scores_current", "errors_current"):
        ours = sorted(con.execute(f"SELECT record_id, run_id FROM {view}").fetchall())
        theirs = sorted((r.record_id, r.run_id) for r in spark.sql(f"SELECT record_id, run_id FROM {view}").collect())
        assert theirs == ours, view
    # history is there, and is not current: the re-uploaded record has two rows, one current
    assert spark.sql("SELECT count(*) FROM melp_embeddings WHERE record_id = 'georgia/E07503'").first()[0] == 2
    assert spark.sql("SELECT count(*) FROM melp_current WHERE record_id = 'georgia/E07503'").first()[0] == 1
    assert con.execute("SELECT count(*) FROM errors_current").fetchall() == [(1,)]
    # the documented nearest-neighbour query gives DuckDB's answer
    spark_nn = _sql_blocks("### Nearest neighbours by cosine, per engine")
    duck, spark_sql = spark_nn[0], spark_nn[1]
    theirs = [(r.record_id, r.cosine) for r in spark.sql(_spark_statements(spark_sql)[0]).collect()]
    ours = con.execute(duck.replace("'georgia/E07500'", "'georgia/E07500'")).fetchall()
    assert [r for r, _ in theirs] == [r for r, _ in ours] and len(ours) == 4
    assert all(abs(a - b) < 1e-5 for (_, a), (_, b) in zip(theirs, ours))


def test_polars_reads_the_committed_state_through_the_delta_log(output):
    import polars as pl

    con = connect(str(output))
    for table in TABLES:
        uri = delta.table_uri(str(output), table)
        frame = pl.read_delta(uri)
        assert frame.height == con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0], table
    vectors = pl.read_delta(delta.table_uri(str(output), "melp_embeddings")).select(
        pl.col("embedding").list.to_array(256))
    assert vectors.schema["embedding"] == pl.Array(pl.Float32, 256)
