"""DuckDB views over the committed tables: what is current per record, scores long and wide.

    con = ecgembed.tables.views.connect("s3://hospital-ml/ecgembed/")
    con.sql("SELECT * FROM melp_current LIMIT 5").show()

or from the shell ``ecgembed sql OUTPUT "SELECT ..."``. Works offline (no DuckDB extension is
downloaded): object stores are read through fsspec.

Views:

- ``ledger``: every committed record x model outcome.
- ``current_state``: the latest ledger row per record x model (the record's current bytes and
  the newest model version that settled it).
- ``melp_current``, ``ecgfm_ked_current``: one embedding row per record, the current one. Rows
  superseded by a re-upload or a newer model version are not shown; a record whose current
  bytes failed has no current embedding (see ``errors_current``).
- ``scores_current``: zero-shot scores of the current embeddings, long (record x label set x class).
- ``scores_wide_<label_set>``: the same, one column per class.
- ``errors_current``: records whose current state is an error, with the reason.
- ``melp_embeddings``, ``ecgfm_ked_embeddings``, ``zero_shot_scores``, ``errors``: every committed row.
"""

from __future__ import annotations

import re

import duckdb

from ecgembed import storage
from ecgembed.tables import schemas as S
from ecgembed.tables.commit import read_manifests


def _scan(output: str, table: str) -> str | None:
    fs, path = storage.fs_and_path(storage.join(output, table))
    if not fs.exists(path) or not any(p.endswith(".parquet") for p in fs.find(path)):
        return None
    return (f"read_parquet('{storage.join(output, table)}/**/*.parquet', hive_partitioning = true, "
            f"union_by_name = true)")


def _ident(text: str) -> str:
    return re.sub(r"[^0-9a-zA-Z_]", "_", text).lower()


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(output: str, con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views of this module over ``output``."""
    con = con or duckdb.connect()
    protocol = storage.split(output)[0]
    if protocol != "file":
        con.register_filesystem(storage.filesystem(protocol))
    storage.filesystem(protocol).invalidate_cache()
    scans = {t: _scan(output, t) for t in (*S.TABLES, S.LEDGER_TABLE)}
    for table in S.TABLES:
        if scans[table]:
            con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM {scans[table]}")
    if not scans[S.LEDGER_TABLE]:
        return con
    con.execute(f"CREATE OR REPLACE VIEW ledger AS SELECT * FROM {scans[S.LEDGER_TABLE]}")
    con.execute("""CREATE OR REPLACE VIEW current_state AS SELECT * FROM ledger
                   QUALIFY row_number() OVER (PARTITION BY record_id, model ORDER BY processed_at DESC, run_id DESC) = 1""")
    for model, table in S.MODEL_TABLES.items():
        if scans[table]:
            con.execute(f"""CREATE OR REPLACE VIEW {_ident(table.replace('_embeddings', ''))}_current AS
                SELECT e.* FROM {table} e JOIN current_state c
                ON c.model = {_quote(model)} AND c.status = 'ok' AND e.record_id = c.record_id AND e.run_id = c.run_id""")
    if scans[S.SCORES_TABLE]:
        con.execute("""CREATE OR REPLACE VIEW scores_current AS
            SELECT s.* FROM zero_shot_scores s JOIN current_state c
            ON c.model = s.model AND c.status = 'ok' AND s.record_id = c.record_id AND s.run_id = c.run_id""")
        for label_set, classes in _label_sets(output).items():
            columns = ", ".join(_quote(c) for c in classes)
            con.execute(f"""CREATE OR REPLACE VIEW scores_wide_{_ident(label_set)} AS
                PIVOT (SELECT record_id, model, class_name, score FROM scores_current WHERE label_set = {_quote(label_set)})
                ON class_name IN ({columns}) USING first(score) GROUP BY record_id, model""")
    if scans[S.ERRORS_TABLE]:
        con.execute("""CREATE OR REPLACE VIEW errors_current AS
            SELECT DISTINCT e.* FROM errors e JOIN current_state c
            ON c.status = 'error' AND e.record_id = c.record_id AND e.run_id = c.run_id
               AND (e.model IS NULL OR e.model = c.model)""")
    return con


def _label_sets(output: str) -> dict[str, list[str]]:
    """Label set name -> class names, from the committed run manifests (newest definition wins)."""
    out: dict[str, list[str]] = {}
    for manifest in read_manifests(output):
        for model in manifest.get("models", {}).values():
            for label_set in model.get("label_sets", []):
                out[label_set["name"]] = label_set["classes"]
    return out
