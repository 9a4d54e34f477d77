"""Read the committed state of an output three ways, to check they agree and hold one copy of each row.

- DuckDB through ``ecgembed.tables.views.connect`` (what ``ecgembed sql`` opens);
- Polars (``pl.read_delta``, delta-rs underneath);
- a plain Parquet reader that honours the Delta log: pyarrow over exactly ``DeltaTable.file_uris()``.
"""

from __future__ import annotations

import polars as pl
import pyarrow.parquet as pq

from ecgembed import storage
from ecgembed.tables import delta
from ecgembed.tables.views import connect


def rows_by_reader(output: str, table: str) -> dict[str, int]:
    """Committed rows of ``table`` as each reader sees them."""
    uri = delta.table_uri(output, table)
    opened = delta.open_table(uri)
    if opened is None:
        return {"duckdb": 0, "polars": 0, "pyarrow": 0}
    con = connect(output)
    files = opened.file_uris()
    protocol = storage.split(output)[0]
    plain = sum(pq.ParquetFile(storage.split(f)[1], filesystem=storage.filesystem(protocol)).metadata.num_rows
                for f in files)
    return {"duckdb": con.execute(f"SELECT count(*) FROM {table}").fetchone()[0],
            "polars": pl.read_delta(uri, storage_options=delta.storage_options(uri) or None).height,
            "pyarrow": plain}


def one_copy(output: str, tables: dict[str, int]) -> None:
    """Every reader sees exactly the expected rows per table, and no row twice."""
    con = connect(output)
    for table, expected in tables.items():
        assert rows_by_reader(output, table) == {"duckdb": expected, "polars": expected, "pyarrow": expected}, table
    for table, key in (("melp_embeddings", "record_id, run_id"), ("ecgfm_ked_embeddings", "record_id, run_id"),
                       ("zero_shot_scores", "record_id, model, label_set, class_index, run_id"),
                       ("ledger", "record_id, model, label_set, run_id")):     # a run writes each of these once
        if table in tables:
            dup = con.execute(f"SELECT {key}, count(*) FROM {table} GROUP BY ALL HAVING count(*) > 1").fetchall()
            assert dup == [], f"{table} holds a row twice: {dup[:3]}"
