"""Every Arrow schema ecgembed writes, defined once and generated from the model specs.

Tables under ``OUTPUT/`` (each a Delta Lake table; docs/tables.md describes every column):

- ``<spec.table>`` (``melp_embeddings``, ``ecgfm_ked_embeddings``, ...): one row per record
  embedded by that model, one ``list<float32>`` column per ``spec.vectors``.
- ``zero_shot_scores``: long, one row per record x label set x class.
- ``errors``: one row per record (x model, for model failures) that could not be processed.
- ``ledger``: one row per record x model (embedding) and per record x model x label set
  (scores) that a committed run settled; what makes runs incremental and rows "current".
- ``runs``: one row per committed run, its manifest as JSON.
- opt-in, only when a run asks for them: ``record_metadata`` (fields of the files' own metadata
  chosen with ``--metadata``: possibly PHI) and ``record_attributes`` (manifest CSV columns
  passed through with ``--manifest-columns``), one row per record x run.

No model is named here: embedding schemas come from :class:`~ecgembed.models.spec.ModelSpec`.
Delta Lake has no fixed-size list, so vectors are ``list<float32>`` whose dimension is recorded
in the field metadata (``ecgembed.dim``, also in the Delta table configuration) and restored
by a cast such as ``embedding::FLOAT[256]`` (DuckDB).
"""

from __future__ import annotations

import re

import pyarrow as pa

from ecgembed.models.spec import ModelSpec

SCHEMA_VERSION = "2"          # 1: Parquet + intent files (ecgembed 0.1); 2: Delta Lake

SCORES_TABLE = "zero_shot_scores"
ERRORS_TABLE = "errors"
LEDGER_TABLE = "ledger"
RUNS_TABLE = "runs"
RECORD_METADATA_TABLE = "record_metadata"
RECORD_ATTRIBUTES_TABLE = "record_attributes"
EMBEDDINGS_SUFFIX = "_embeddings"

TIMESTAMP = pa.timestamp("us", tz="UTC")
VECTOR = pa.list_(pa.field("element", pa.float32(), nullable=False))

# schema-level metadata keys (become the Delta table configuration, see delta.table_configuration)
KIND, MODEL, DIM = "ecgembed.kind", "ecgembed.model", "ecgembed.dim"


def _string(name: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, pa.string(), nullable=nullable)


# Where a row came from and what produced it: on every row of the embedding and score tables.
PROVENANCE = [
    _string("source_uri"),            # the record's URI, without userinfo or signed query
    _string("content_sha256"),        # sha256 of the record's bytes (every file the header names)
    _string("format"),                # input format that decoded it (wfdb, ...)
    _string("model_version"),         # weights sha256 + precision tag ("stand-in:..." for stand-in weights)
    _string("preproc_version"),       # changes whenever the model input would
    _string("run_id"),
    pa.field("processed_at", TIMESTAMP, nullable=False),
]

# Per-record quality flags (docs/preprocessing.md), on every embeddings table. The stages
# carry list flags as comma-joined strings; the writer splits them.
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
NOTES = pa.field("notes", pa.list_(pa.string()))       # the decoder's notes on the record (e.g. truncated)


def embedding_schema(spec: ModelSpec) -> pa.Schema:
    """``record_id``, one vector column per ``spec.vectors``, provenance, quality, notes."""
    vectors = [pa.field(v.name, VECTOR, nullable=False,
                        metadata={DIM: str(v.dim), "comment": f"float32[{v.dim}]: {v.doc}"})
               for v in spec.vectors]
    return pa.schema([_string("record_id"), *vectors, *PROVENANCE, *QUALITY, NOTES],
                     metadata={KIND: "embeddings", MODEL: spec.name})


SCORES_SCHEMA = pa.schema([
    _string("record_id"),
    _string("model"),
    _string("label_set"),
    _string("label_set_sha256"),      # scores depend on the whole class list
    _string("scores_version"),        # what else they depend on (the text model), from the spec
    pa.field("class_index", pa.int16(), nullable=False),
    _string("class_name"),
    pa.field("score", pa.float32(), nullable=False),
    *PROVENANCE,
], metadata={KIND: "scores"})

ERRORS_SCHEMA = pa.schema([
    _string("record_id"),
    _string("source_uri"),
    _string("format"),
    _string("model", nullable=True),                  # null: failed before any model (applies to all)
    _string("stage"),                                 # fetch | decode | leads | preprocess | <model name>
    _string("error_type"),                            # vocabulary: ecgembed.errors.ERROR_TYPES
    pa.field("permanent", pa.bool_(), nullable=False),  # same bytes -> same error; settled, not retried
    _string("message"),
    _string("content_sha256", nullable=True),         # null when the bytes could not be fetched
    _string("run_id"),
    pa.field("processed_at", TIMESTAMP, nullable=False),
], metadata={KIND: "errors"})

# One row per record x model (label_set null: the embedding) or record x model x label set (the
# scores) that a run was asked to settle. The anti-join key: embedding rows on (record_id,
# fingerprint, model, model_version, preproc_version); score rows on those plus (label_set,
# label_set_sha256, scores_version). See ledger.py.
LEDGER_SCHEMA = pa.schema([
    _string("record_id"),
    _string("fingerprint"),                           # listing digest at discovery ("" if unknown)
    _string("content_sha256", nullable=True),
    _string("model"),
    _string("model_version"),
    _string("preproc_version"),
    _string("label_set", nullable=True),              # null on embedding rows
    _string("label_set_sha256", nullable=True),
    _string("scores_version", nullable=True),
    _string("status"),                                # "ok" | "error"
    _string("error_type", nullable=True),
    pa.field("permanent", pa.bool_(), nullable=False),  # an error the same bytes will always give
    _string("run_id"),
    pa.field("processed_at", TIMESTAMP, nullable=False),
], metadata={KIND: "ledger"})

RUNS_SCHEMA = pa.schema([
    _string("run_id"),
    pa.field("started_at", TIMESTAMP),
    pa.field("committed_at", TIMESTAMP, nullable=False),
    _string("manifest"),                              # the run manifest (counts, timings, config), JSON
], metadata={KIND: "runs"})

FIXED = {SCORES_TABLE: SCORES_SCHEMA, ERRORS_TABLE: ERRORS_SCHEMA, LEDGER_TABLE: LEDGER_SCHEMA,
         RUNS_TABLE: RUNS_SCHEMA}
OPT_IN = (RECORD_METADATA_TABLE, RECORD_ATTRIBUTES_TABLE)

_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_RESERVED = {"record_id", "source_uri", "content_sha256", "format", "run_id", "processed_at"}


def check_column_name(name: str) -> str:
    """A user-chosen column name (``--metadata``, ``--manifest-columns``) every SQL engine accepts."""
    if not _COLUMN.match(name) or name.lower() in _RESERVED:
        raise ValueError(f"column name {name!r}: use letters, digits and '_' (not starting with a digit, at most 64), "
                         f"and none of {', '.join(sorted(_RESERVED))}")
    return name


def record_metadata_schema(fields: list[str]) -> pa.Schema:
    """``record_metadata``: the opted-in metadata fields of each record (strings, null when absent)."""
    return pa.schema([_string("record_id"), *(_string(check_column_name(f), nullable=True) for f in fields),
                      _string("source_uri"), _string("content_sha256"), _string("format"), _string("run_id"),
                      pa.field("processed_at", TIMESTAMP, nullable=False)], metadata={KIND: RECORD_METADATA_TABLE})


def record_attributes_schema(names: list[str]) -> pa.Schema:
    """``record_attributes``: the manifest CSV columns passed through (strings, null when empty)."""
    return pa.schema([_string("record_id"), *(_string(check_column_name(n), nullable=True) for n in names),
                      _string("run_id"), pa.field("processed_at", TIMESTAMP, nullable=False)],
                     metadata={KIND: RECORD_ATTRIBUTES_TABLE})

# Data files are written by pyarrow with these options (Delta's own rewrites use zstd too).
PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 3, "use_dictionary": True,
                   "write_statistics": True, "row_group_size": 64 * 1024}


def commit_order(tables) -> list[str]:
    """Data tables first (sorted), then the ledger (what says "settled"), then the runs table."""
    last = [LEDGER_TABLE, RUNS_TABLE]
    return sorted(t for t in tables if t not in last) + [t for t in last if t in tables]
