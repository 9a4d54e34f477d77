"""Delta Lake access (delta-rs): storage options, data files, and idempotent per-run commits.

Write tasks write plain Parquet files under a table's folder (``<table>/run-<run_id>/...``),
invisible to every Delta reader until the driver commits them. A commit adds one run's files
to one table as one Delta transaction carrying the **application transaction id** (``txn``
action) ``appId = run_id``: before committing, the table is checked for that id, and a
concurrent commit of the same id fails Delta's conflict check, so a run's files are added to a
table at most once however often the commit is retried or resumed.

Object stores: delta-rs needs an atomic put-if-absent for its log. On S3 it uses a conditional
PUT (``conditional_put=etag``, the default here; AWS S3, MinIO and SeaweedFS support it) or,
with ``ECGEMBED_S3_COMMIT=unsafe-rename``, plain PUTs that are safe only with one writer at a
time, which the output lock guarantees for ecgembed's own writers (not for other engines
writing to the same tables).
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
import re
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError
from deltalake.transaction import AddAction, CommitProperties, Transaction

from ecgembed import storage
from ecgembed.errors import ConfigError, EcgembedError
from ecgembed.tables import schemas as S

EVOLVED = "ecgembed.columns_added"   # table property: some files lack columns added later
RUN_TXN_VERSION = 1          # txn version recorded with appId = run id when a run's files are committed
S3_COMMIT_MODES = {"conditional-put": {"conditional_put": "etag"},
                   "unsafe-rename": {"AWS_S3_ALLOW_UNSAFE_RENAME": "true"}}
_MAX_STAT_CHARS = 256        # longer strings get no min/max statistics
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class TablesError(EcgembedError):
    """An output table cannot be written as asked (e.g. a column changed type)."""


def storage_options(uri: str) -> dict[str, str]:
    """delta-rs storage options from the AWS_* environment the rest of ecgembed uses (s3:// only).

    ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` (path-style requests, HTTP allowed when the
    endpoint says http://), the key pair and session token, ``AWS_REGION``/``AWS_DEFAULT_REGION``,
    and the commit mode from ``ECGEMBED_S3_COMMIT`` (``conditional-put`` or ``unsafe-rename``).
    Without keys in the environment delta-rs uses the instance/web-identity credentials.
    """
    if storage.split(uri)[0] != "s3":
        return {}
    env = os.environ
    opts: dict[str, str] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["AWS_ENDPOINT_URL"] = endpoint
        opts["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "false"
        if endpoint.startswith("http://"):
            opts["AWS_ALLOW_HTTP"] = "true"
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        if env.get(var):
            opts[var] = env[var]
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        opts["AWS_REGION"] = region
    mode = env.get("ECGEMBED_S3_COMMIT", "conditional-put")
    if mode not in S3_COMMIT_MODES:
        raise ConfigError(f"ECGEMBED_S3_COMMIT={mode!r}: use one of {', '.join(S3_COMMIT_MODES)}")
    opts.update(S3_COMMIT_MODES[mode])
    return opts


def check_run_id(run_id: str) -> str:
    """Run ids name folders and Delta transaction ids: letters, digits, ``._-``, at most 128."""
    if not RUN_ID.match(run_id):
        raise ConfigError(f"run id {run_id!r}: use letters, digits, '.', '_' and '-' (at most 128, not starting "
                          "with a punctuation mark)")
    return run_id


def run_folder(run_id: str) -> str:
    """The folder of a run's data files inside each table."""
    return f"run-{run_id}"


def table_uri(output: str, table: str) -> str:
    return storage.join(output, table)


def open_table(uri: str) -> DeltaTable | None:
    """The Delta table at ``uri`` (its latest version), or ``None`` when there is none."""
    opts = storage_options(uri)
    if not DeltaTable.is_deltatable(uri, storage_options=opts):
        return None
    return DeltaTable(uri, storage_options=opts)


def folder_names(output: str) -> list[str]:
    """The names directly under ``output`` that may be tables (a listing through ecgembed.storage,
    so a storage problem, e.g. missing credentials, is reported as for any other read)."""
    fs, root = storage.fs_and_path(output)
    fs.invalidate_cache()
    try:
        names = sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False))
    except FileNotFoundError:
        return []
    return [n for n in names if not n.startswith(("_", "."))]


def list_tables(output: str, names: list[str] | None = None) -> dict[str, DeltaTable]:
    """Every Delta table directly under ``output`` (or among ``names``), by folder name."""
    out = {}
    for name in folder_names(output) if names is None else names:
        table = open_table(table_uri(output, name))
        if table is not None:
            out[name] = table
    return out


def schema_to_text(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def schema_from_text(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def table_configuration(schema: pa.Schema) -> dict[str, str]:
    """Delta table properties: what the table holds and each vector's dimension."""
    config = {"ecgembed.schema_version": S.SCHEMA_VERSION}
    config.update({k.decode(): v.decode() for k, v in (schema.metadata or {}).items()})
    for field in schema:
        if field.metadata and S.DIM.encode() in field.metadata:
            config[f"{S.DIM}.{field.name}"] = field.metadata[S.DIM.encode()].decode()
    return config


def ensure_table(uri: str, name: str, schema: pa.Schema) -> DeltaTable:
    """Open the table, creating it (empty, with its configuration) or adding missing columns."""
    opts = storage_options(uri)
    table = open_table(uri)
    if table is None:
        DeltaTable.create(uri, schema, mode="ignore", name=name, storage_options=opts,
                          description=f"ecgembed {schema.metadata.get(S.KIND.encode(), b'').decode()} table",
                          configuration=table_configuration(schema), raise_if_key_not_exists=False)
        return DeltaTable(uri, storage_options=opts)
    current = pa.schema(table.schema().to_arrow())
    missing = [f for f in schema if f.name not in current.names]
    for field in schema:
        if field.name in current.names and not _same_type(current.field(field.name).type, field.type):
            raise TablesError(f"{uri}: column {field.name} is {current.field(field.name).type} in the table but "
                              f"{field.type} in this run; a column's type never changes (write to a new --output)")
    if missing:
        from deltalake import Schema

        table.alter.add_columns(Schema.from_arrow(pa.schema([f.with_nullable(True) for f in missing])).fields)
        # older files now lack columns: readers that scan them as one pyarrow dataset must not (views.py)
        DeltaTable(uri, storage_options=opts).alter.set_table_properties({EVOLVED: "true"}, raise_if_not_exists=False)
        table = DeltaTable(uri, storage_options=opts)
    return table


def _same_type(a: pa.DataType, b: pa.DataType) -> bool:
    """Equal up to list element names and string/large_string (delta-rs reports large types)."""
    def norm(t: pa.DataType) -> pa.DataType:
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return pa.list_(norm(t.value_type))
        if pa.types.is_large_string(t) or pa.types.is_string_view(t):
            return pa.string()
        return t
    return norm(a) == norm(b)


def committed(table: DeltaTable, app_id: str) -> bool:
    """Whether ``app_id`` (a run id) has committed to this table."""
    return table.transaction_version(app_id) is not None


def commit_files(uri: str, name: str, schema: pa.Schema, files: list[dict], app_id: str,
                 metadata: dict[str, str]) -> int | None:
    """Add ``files`` to the table in one transaction tagged ``app_id``; idempotent.

    Returns the new table version, or ``None`` when ``app_id`` had already committed (or there
    is nothing to add: the table is then only created).
    """
    table = ensure_table(uri, name, schema)
    if not files or committed(table, app_id):
        return None
    actions = [AddAction(f["path"], f["size"], {}, f["modification_time"], True, f["stats"]) for f in files]
    props = CommitProperties(custom_metadata={"ecgembed.app_id": app_id, **metadata},
                             app_transactions=[Transaction(app_id, RUN_TXN_VERSION)])
    try:
        table.create_write_transaction(actions, "append", table.schema(), commit_properties=props)
    except CommitFailedError:
        # another process (a recovering run) committed concurrently: fine if it was this run's files
        again = open_table(uri)
        if again is not None and committed(again, app_id):
            return None
        raise
    table.update_incremental()
    return table.version()


# ---------------------------------------------------------------------------- data files (tasks)
def file_stats(data: pa.Table) -> str:
    """Delta per-file statistics: row count, and min/max/null counts of string and integer columns."""
    mins, maxs, nulls = {}, {}, {}
    for field, column in zip(data.schema, data.columns):
        if not (pa.types.is_string(field.type) or pa.types.is_integer(field.type)):
            continue
        nulls[field.name] = column.null_count
        if column.null_count == len(column):
            continue
        bounds = pc.min_max(column)
        lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
        if isinstance(lo, str) and max(len(lo), len(hi)) > _MAX_STAT_CHARS:
            continue
        mins[field.name], maxs[field.name] = lo, hi
    return json.dumps({"numRecords": data.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls})


def write_data_file(table: str, rel_path: str, data: pa.Table) -> dict:
    """Write one Parquet file under the table folder ``table``; returns its add-action fields."""
    fs, path = storage.fs_and_path(storage.join(table, rel_path))
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "wb") as handle:
        pq.write_table(data, handle, **S.PARQUET_OPTIONS)
        size = handle.tell()
    return {"path": rel_path, "size": size, "rows": data.num_rows, "modification_time": int(time.time() * 1000),
            "stats": file_stats(data)}
