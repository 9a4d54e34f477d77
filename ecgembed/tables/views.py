"""DuckDB views over the committed state of the Delta tables: what is current, scores long and wide.

    con = ecgembed.tables.views.connect("s3://hospital-ml/ecgembed/")
    con.sql("SELECT * FROM melp_current LIMIT 5").show()

or from the shell ``ecgembed sql OUTPUT "SELECT ..."``. Works offline (DuckDB's delta extension is
not needed): each table is opened by delta-rs at its latest version and registered as the
pyarrow dataset of exactly its committed files; a file a run wrote but did not commit is never
read. The ledger is opened first, so every run it names has its data files committed already.

Views (model names come from the tables' Delta configuration, none is hard-coded):

- ``<table>`` for every table: every committed row (history included);
- ``current_state``: the latest ledger row per record x model for its embedding;
- ``<ident>_current`` (``melp_current``, ``ecgfm_ked_current``): one row per record, its
  current embedding, vectors typed ``FLOAT[D]`` (no cast needed for the array functions);
- ``scores_current``: per record x model x label set, the latest settled scores, provided they
  were computed for the record's current bytes and model version;
- ``scores_wide_<label_set>``: the same, one column per class;
- ``errors_current``: records whose current state is an error, with the reason;
- ``record_metadata_current``, ``record_attributes_current`` (when a run wrote those opt-in
  tables): the latest row per record.
"""

from __future__ import annotations

import re

import duckdb

from ecgembed import storage
from ecgembed.tables import delta
from ecgembed.tables import schemas as S
from ecgembed.tables.commit import read_runs

_LATEST = "ORDER BY processed_at DESC, run_id DESC"


def _ident(text: str) -> str:
    return re.sub(r"[^0-9a-zA-Z_]", "_", text).lower()


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(output: str, con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views of this module over ``output``."""
    con = con or duckdb.connect()
    names = delta.folder_names(output)
    ledger = delta.open_table(delta.table_uri(output, S.LEDGER_TABLE)) if S.LEDGER_TABLE in names else None
    tables = delta.list_tables(output, [n for n in names if n != S.LEDGER_TABLE])   # after the ledger: see above
    if ledger is not None:
        tables[S.LEDGER_TABLE] = ledger
    for name, table in tables.items():
        _base_view(con, name, table)
    if ledger is None:
        return con
    con.execute(f"""CREATE OR REPLACE VIEW current_state AS SELECT * FROM ledger WHERE label_set IS NULL
                    QUALIFY row_number() OVER (PARTITION BY record_id, model {_LATEST}) = 1""")
    for name, table in tables.items():
        config = table.metadata().configuration
        if config.get(S.KIND) == "embeddings":
            _current_view(con, name, config)
    if S.SCORES_TABLE in tables:
        con.execute(f"""CREATE OR REPLACE VIEW scores_current AS
            WITH latest AS (SELECT * FROM ledger WHERE label_set IS NOT NULL
                            QUALIFY row_number() OVER (PARTITION BY record_id, model, label_set {_LATEST}) = 1)
            SELECT s.* FROM {S.SCORES_TABLE} s
            JOIN latest l ON l.status = 'ok' AND s.record_id = l.record_id AND s.model = l.model
                         AND s.label_set = l.label_set AND s.run_id = l.run_id
            JOIN current_state c ON c.status = 'ok' AND c.record_id = l.record_id AND c.model = l.model
                         AND c.fingerprint = l.fingerprint AND c.model_version = l.model_version""")
        for label_set, classes in _label_sets(output).items():
            columns = ", ".join(_quote(c) for c in classes)
            con.execute(f"""CREATE OR REPLACE VIEW scores_wide_{_ident(label_set)} AS
                PIVOT (SELECT record_id, model, class_name, score FROM scores_current WHERE label_set = {_quote(label_set)})
                ON class_name IN ({columns}) USING first(score) GROUP BY record_id, model""")
    for name in S.OPT_IN:
        if name in tables:      # the latest row per record
            con.execute(f"""CREATE OR REPLACE VIEW {name}_current AS SELECT * FROM {name}
                            QUALIFY row_number() OVER (PARTITION BY record_id {_LATEST}) = 1""")
    if S.ERRORS_TABLE in tables:
        con.execute(f"""CREATE OR REPLACE VIEW errors_current AS
            SELECT DISTINCT e.* FROM {S.ERRORS_TABLE} e JOIN current_state c
            ON c.status = 'error' AND e.record_id = c.record_id AND e.run_id = c.run_id
               AND (e.model IS NULL OR e.model = c.model)""")
    return con


def _base_view(con: duckdb.DuckDBPyConnection, name: str, table) -> None:
    """``name``: the table's committed files at its current version, as delta-rs lists them.

    Read as a pyarrow dataset, which DuckDB scans with projection and filter pushdown and which
    costs nothing to create. A table whose columns grew after some files were written (property
    ``ecgembed.columns_added``) is read with ``read_parquet([...], union_by_name = true)``
    instead: pyarrow's filter pushdown drops the rows of files that lack a column in a filter
    such as ``WHERE new_column IS NULL`` (pyarrow 26), where union_by_name reads them as null.
    """
    files = table.file_uris()
    if table.metadata().configuration.get(delta.EVOLVED) != "true" or not files:
        con.register(name, table.to_pyarrow_dataset())       # a view named after the table
        return
    protocol = storage.split(files[0])[0]
    if protocol != "file":
        con.register_filesystem(storage.filesystem(protocol))
    listed = ", ".join(_quote(f) for f in files)
    con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet([{listed}], union_by_name = true)")


def _current_view(con: duckdb.DuckDBPyConnection, name: str, config: dict[str, str]) -> None:
    """``<ident>_current``: the embedding of each record's current ledger state, vectors as FLOAT[D]."""
    prefix = f"{S.DIM}."
    dims = {k[len(prefix):]: int(v) for k, v in config.items() if k.startswith(prefix)}
    replace = ", ".join(f"e.{_ident(col)}::FLOAT[{dim}] AS {_ident(col)}" for col, dim in dims.items())
    select = f"e.* REPLACE ({replace})" if replace else "e.*"
    view = _ident(name.removesuffix(S.EMBEDDINGS_SUFFIX)) + "_current"
    con.execute(f"""CREATE OR REPLACE VIEW {view} AS SELECT {select} FROM {name} e JOIN current_state c
                    ON c.model = {_quote(config[S.MODEL])} AND c.status = 'ok'
                       AND e.record_id = c.record_id AND e.run_id = c.run_id""")


def _label_sets(output: str) -> dict[str, list[str]]:
    """Label set name -> class names in order, from the committed runs (newest definition wins)."""
    out: dict[str, list[str]] = {}
    for manifest in read_runs(output):
        for name, label_set in manifest.get("label_sets", {}).items():
            out[name] = list(label_set["classes"])
    return out

