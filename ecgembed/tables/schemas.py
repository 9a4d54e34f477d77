"""Every Arrow schema ecgembed writes, defined once. Writers, views and tests import from here.

Tables under ``OUTPUT/`` (each a folder of Parquet files, zstd):

- ``melp_embeddings/``, ``ecgfm_ked_embeddings/``: one row per record embedded by that model.
- ``zero_shot_scores/``: long, one row per record x label set x class.
- ``errors/``: one row per record (x model, for model failures) that could not be embedded.

Vectors are Arrow ``fixed_size_list<float32>[D]``; Parquet stores them as a LIST (there is no
fixed-size list in Parquet), pyarrow restores the fixed size from the file's Arrow schema, and
DuckDB reads ``FLOAT[]`` (cast with ``embedding::FLOAT[256]`` for the array functions).
Model, preprocessing and label-set versions are columns (every engine sees them) and are also
written as Parquet key-value metadata (``ecgembed.*`` keys).
"""

from __future__ import annotations

import pyarrow as pa

MELP_DIM = 256
KED_DIM = 768

MELP_TABLE = "melp_embeddings"
KED_TABLE = "ecgfm_ked_embeddings"
SCORES_TABLE = "zero_shot_scores"
ERRORS_TABLE = "errors"
TABLES = (MELP_TABLE, KED_TABLE, SCORES_TABLE, ERRORS_TABLE)

# model name (as in --models and the `model` columns) -> embeddings table
MODEL_TABLES = {"melp": MELP_TABLE, "ecgfm-ked": KED_TABLE}

TIMESTAMP = pa.timestamp("us", tz="UTC")


def vector(dim: int) -> pa.DataType:
    return pa.list_(pa.float32(), dim)


# Where a row came from and what produced it: on every row of every model table.
PROVENANCE = [
    pa.field("source_uri", pa.string(), nullable=False),       # the record's header URI
    pa.field("content_sha256", pa.string(), nullable=False),   # sha256 of the record's bytes
    pa.field("model_version", pa.string(), nullable=False),    # checkpoint sha256 ("stand-in:..." for stand-in weights)
    pa.field("preproc_version", pa.string(), nullable=False),  # changes whenever the model input would
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("processed_at", TIMESTAMP, nullable=False),
]

# Per-record quality flags (docs/preprocessing.md §5), on both embedding tables.
QUALITY = [
    pa.field("fs", pa.float32()),                      # original sampling rate, Hz
    pa.field("n_samples", pa.int32()),                 # original length, samples
    pa.field("duration_s", pa.float32()),
    pa.field("n_nonfinite", pa.int32()),
    pa.field("flat_leads", pa.list_(pa.string())),
    pa.field("max_abs_mv", pa.float32()),
    pa.field("median_ptp_mv", pa.float32()),
    pa.field("amplitude_suspect", pa.bool_()),
    pa.field("derived_leads", pa.list_(pa.string())),
]

MELP_SCHEMA = pa.schema([
    pa.field("record_id", pa.string(), nullable=False),
    pa.field("embedding", vector(MELP_DIM), nullable=False),        # rhythm vector after proj_contrast, L2-normalised
    pa.field("probe_embedding", vector(MELP_DIM), nullable=False),  # linear-probe vector, raw
    *PROVENANCE,
    *QUALITY,
])

KED_SCHEMA = pa.schema([
    pa.field("record_id", pa.string(), nullable=False),
    pa.field("embedding", vector(KED_DIM), nullable=False),         # mean of the 32 ECG tokens, raw
    *PROVENANCE,
    *QUALITY,
])

SCORES_SCHEMA = pa.schema([
    pa.field("record_id", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),                 # "ecgfm-ked" or "melp"
    pa.field("label_set", pa.string(), nullable=False),
    pa.field("label_set_sha256", pa.string(), nullable=False),      # scores depend on the whole class list
    pa.field("class_index", pa.int16(), nullable=False),            # position in the label set
    pa.field("class_name", pa.string(), nullable=False),
    pa.field("score", pa.float32(), nullable=False),
    *PROVENANCE,
])

ERRORS_SCHEMA = pa.schema([
    pa.field("record_id", pa.string(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("model", pa.string()),                 # null: the record failed before any model (applies to all)
    pa.field("stage", pa.string(), nullable=False),  # fetch | decode | leads | preprocess | <model name>
    pa.field("error_type", pa.string(), nullable=False),  # vocabulary: ecgembed.errors.ERROR_TYPES
    pa.field("permanent", pa.bool_(), nullable=False),    # same bytes -> same error; not retried by nightly runs
    pa.field("message", pa.string(), nullable=False),
    pa.field("content_sha256", pa.string()),        # null when the bytes could not be fetched
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("processed_at", TIMESTAMP, nullable=False),
])

# The ledger: one row per record x model of every committed run. It is what makes runs
# incremental (the anti-join key is record_id + fingerprint + model + model_version +
# preproc_version) and what the "current" views read. Not for analysis: use the tables above.
LEDGER_TABLE = "_ledger"
LEDGER_SCHEMA = pa.schema([
    pa.field("record_id", pa.string(), nullable=False),
    pa.field("fingerprint", pa.string(), nullable=False),       # listing digest at discovery ("" if unknown)
    pa.field("content_sha256", pa.string()),                    # null when the bytes could not be fetched
    pa.field("model", pa.string(), nullable=False),
    pa.field("model_version", pa.string(), nullable=False),
    pa.field("preproc_version", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),            # "ok" | "error"
    pa.field("error_type", pa.string()),
    pa.field("permanent", pa.bool_(), nullable=False),          # an error the same bytes will always give
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("processed_at", TIMESTAMP, nullable=False),
])

SCHEMAS = {MELP_TABLE: MELP_SCHEMA, KED_TABLE: KED_SCHEMA, SCORES_TABLE: SCORES_SCHEMA, ERRORS_TABLE: ERRORS_SCHEMA,
           LEDGER_TABLE: LEDGER_SCHEMA}

PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 3, "use_dictionary": True,
                   "write_statistics": True, "row_group_size": 64 * 1024}


def with_metadata(schema: pa.Schema, metadata: dict[str, str]) -> pa.Schema:
    """``schema`` with ``ecgembed.<key>`` key-value metadata (read by DuckDB's parquet_kv_metadata())."""
    return schema.with_metadata({f"ecgembed.{k}".encode(): str(v).encode() for k, v in metadata.items()})
