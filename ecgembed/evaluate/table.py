"""The ``evaluation`` Delta table under ``OUTPUT/evaluation`` and the plots beside it.

One row per evaluation x model x label set x class, plus one ``macro`` row (``class_index``
and ``class_name`` null) per evaluation x model x label set. Each evaluation appends its rows
in one Delta commit, so SQL engines see an evaluation whole or not at all; ``run_id`` is the
evaluation's own id (never a pipeline run's), ``scored_runs`` the pipeline runs whose scores
it read.
"""

from __future__ import annotations


import pyarrow as pa

from ecgembed import storage
from ecgembed.evaluate.truth import EvaluationError
from ecgembed.tables.delta import storage_options

TABLE = "evaluation"
PLOTS_DIR = "_evaluation"      # SVGs: _evaluation/<run_id>/<model>__<label_set>_{roc,pr}.svg
TIMESTAMP = pa.timestamp("us", tz="UTC")
CURVE = pa.list_(pa.float32())

SCHEMA = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),              # this evaluation's id
    pa.field("evaluated_at", TIMESTAMP, nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("label_set", pa.string(), nullable=False),
    pa.field("label_set_sha256", pa.string(), nullable=False),
    pa.field("average", pa.string(), nullable=False),             # "class" | "macro"
    pa.field("class_index", pa.int16()),                           # null on the macro row
    pa.field("class_name", pa.string()),
    pa.field("status", pa.string(), nullable=False),               # ok | no_positives | no_negatives | no_truth
    pa.field("reason", pa.string()),                               # why figures are null
    pa.field("auroc", pa.float64()),
    pa.field("auroc_lo", pa.float64()),
    pa.field("auroc_hi", pa.float64()),
    pa.field("auprc", pa.float64()),
    pa.field("auprc_lo", pa.float64()),
    pa.field("auprc_hi", pa.float64()),
    pa.field("n_pos", pa.int64()),
    pa.field("n_neg", pa.int64()),
    pa.field("n_records", pa.int64()),                             # records with truth for this class (macro: any)
    pa.field("n_classes", pa.int64()),                             # macro row: classes averaged
    pa.field("n_scored", pa.int64(), nullable=False),              # current scored records of model x label set
    pa.field("bootstrap", pa.int64(), nullable=False),             # replicates drawn (0: no intervals)
    pa.field("bootstrap_valid", pa.int64()),                       # replicates with both a positive and a negative
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("truth_kind", pa.string(), nullable=False),           # header | ptbxl | csv
    pa.field("truth_source", pa.string(), nullable=False),         # --truth, redacted
    pa.field("truth_sha256", pa.string(), nullable=False),         # the truth file's sha256 (header: the mapping tables')
    pa.field("model_versions", pa.list_(pa.string()), nullable=False),
    pa.field("scored_runs", pa.list_(pa.string()), nullable=False),
    pa.field("notes", pa.list_(pa.string()), nullable=False),
    pa.field("roc_fpr", CURVE), pa.field("roc_tpr", CURVE),        # downsampled curves, for plots
    pa.field("pr_recall", CURVE), pa.field("pr_precision", CURVE),
    pa.field("ecgembed_version", pa.string(), nullable=False),
])


def append(output: str, rows: pa.Table, run_id: str) -> int:
    """Append one evaluation's rows in one Delta commit tagged with its run id; returns the version.

    An id that already committed is refused: every evaluation is one commit, never two.
    """
    from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

    uri = storage.join(output, TABLE)
    opts = storage_options(uri)
    if not DeltaTable.is_deltatable(uri, storage_options=opts):
        DeltaTable.create(uri, SCHEMA, mode="ignore", name=TABLE, storage_options=opts,
                          description="ecgembed zero-shot evaluation: AUROC/AUPRC per class with bootstrap intervals",
                          configuration={"ecgembed.kind": "evaluation"}, raise_if_key_not_exists=False)
    elif DeltaTable(uri, storage_options=opts).transaction_version(run_id) is not None:
        raise EvaluationError(f"evaluation run id {run_id!r} is already in {storage.redact(uri)}; ids are never reused")
    write_deltalake(uri, rows.cast(SCHEMA), mode="append", storage_options=opts,
                    commit_properties=CommitProperties(app_transactions=[Transaction(run_id, 1)],
                                                       custom_metadata={"ecgembed.app_id": run_id}))
    return DeltaTable(uri, storage_options=opts).version()


def write_plot(output: str, run_id: str, model: str, label_set: str, kind: str, svg: str) -> str:
    """Store one SVG next to the tables; returns its URI."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in f"{model}__{label_set}_{kind}")
    uri = storage.join(output, PLOTS_DIR, run_id, f"{safe}.svg")
    storage.write_atomic(uri, svg.encode("utf-8"))
    return uri
