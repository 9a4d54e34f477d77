"""``evaluate``: zero-shot scores of the current rows against a truth source -> ``evaluation`` table.

    from ecgembed.evaluate import evaluate
    rows = evaluate("s3://bucket/out", truth="header", label_set="cpsc2018")

Reads the tables only through :func:`ecgembed.tables.views.connect` (``scores_current``): a
record counts with the scores of its current bytes and model version, never a superseded row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ecgembed import __version__, storage
from ecgembed.evaluate import metrics, plots
from ecgembed.evaluate import table as T
from ecgembed.evaluate.truth import EvaluationError, Truth, read_truth
from ecgembed.tables import views

_WHERE = "FROM scores_current WHERE label_set = $label_set AND ($model IS NULL OR model = $model)"


@dataclass
class ModelScores:
    """One model's current scores of the label set, as a dense matrix."""

    model: str
    label_set_sha256: str
    record_ids: list[str]                # sorted
    classes: list[tuple[int, str]]       # (class_index, class_name) by index
    matrix: np.ndarray                   # (n_records, n_classes) float64
    model_versions: list[str]
    runs: list[str]


def evaluate(output: str, truth: str, label_set: str, model: str | None = None, run_id: str | None = None,
             bootstrap: int = 1000, seed: int = 0, write: bool = True) -> pa.Table:
    """AUROC/AUPRC per class (+ macro) of each model's current scores for ``label_set``.

    ``truth``: ``"header"``, a ``ptbxl_database.csv`` or a ``record_id,class,label`` CSV (any
    URI). ``model``: one model, or every model with scores for the set. ``run_id``: this
    evaluation's id (default ``eval-<UTC time>-<random>``). With ``write`` the rows are appended
    to ``OUTPUT/evaluation`` (Delta) and ROC/PR SVGs written under ``OUTPUT/_evaluation/<run_id>/``.
    Returns the rows (schema :data:`ecgembed.evaluate.table.SCHEMA`).
    """
    if bootstrap < 0 or bootstrap > 100_000:
        raise EvaluationError(f"--bootstrap must be between 0 and 100000, not {bootstrap}")
    now = datetime.now(timezone.utc)
    run_id = run_id or f"eval-{now.strftime('%Y%m%dT%H%M%SZ')}-{os.urandom(3).hex()}"
    con = _connect(output)
    params = {"label_set": label_set, "model": model}
    metas = con.sql(f"""SELECT model, list(DISTINCT label_set_sha256), list(DISTINCT model_version),
                               list(DISTINCT run_id) {_WHERE} GROUP BY model ORDER BY model""", params=params).fetchall()
    if not metas:
        have = con.sql("SELECT DISTINCT model, label_set FROM scores_current ORDER BY 1, 2").fetchall()
        listed = ", ".join(f"{m}/{ls}" for m, ls in have) or "none"
        raise EvaluationError(f"{storage.redact(output)}: no current scores for label set {label_set!r}"
                              f"{f' and model {model!r}' if model else ''}; current model/label set pairs: {listed}")
    records = dict(con.sql(f"SELECT DISTINCT record_id, source_uri {_WHERE}", params=params).fetchall())
    classes = [name for _, name in con.sql(f"SELECT DISTINCT class_index, class_name {_WHERE} ORDER BY 1",
                                           params=params).fetchall()]
    truth_of = read_truth(truth, records, label_set, classes)
    rows = []
    for name, shas, versions, runs in metas:
        scores = _model_scores(con, name, label_set, shas, sorted(versions), sorted(runs))
        rows.extend(_evaluate_model(scores, label_set, truth_of, run_id, now, bootstrap, seed))
    table = pa.Table.from_pylist(rows, schema=T.SCHEMA)
    if write:
        T.append(output, table, run_id)
        for name, *_ in metas:
            mine = table.filter(pc.equal(table.column("model"), name))
            T.write_plot(output, run_id, name, label_set, "roc", plots.roc_svg(mine))
            T.write_plot(output, run_id, name, label_set, "pr", plots.pr_svg(mine))
    return table


def _connect(output: str):
    con = views.connect(output)
    present = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "scores_current" not in present:
        raise EvaluationError(f"{storage.redact(output)}: no zero-shot scores to evaluate (no zero_shot_scores "
                              "table); run the job with --labels first")
    return con


def _model_scores(con, model: str, label_set: str, shas: list[str], versions: list[str], runs: list[str]) -> ModelScores:
    if len(shas) != 1:
        raise EvaluationError(f"{model}: the current scores of label set {label_set!r} come from {len(shas)} different "
                              "class lists (label_set_sha256); scores of different lists are not comparable: re-score "
                              "with one list, or give the sets different names")
    params = {"label_set": label_set, "model": model}
    classes = con.sql(f"SELECT DISTINCT class_index, class_name {_WHERE} ORDER BY 1", params=params).fetchall()
    if len({i for i, _ in classes}) != len(classes) or len({n for _, n in classes}) != len(classes):
        raise EvaluationError(f"{model}/{label_set}: class index and name do not pair up one to one in the scores")
    long = con.sql(f"SELECT record_id, class_index, score {_WHERE}", params=params).to_arrow_table()
    record_ids = pc.unique(long.column("record_id")).sort()
    rows = pc.index_in(long.column("record_id"), value_set=record_ids).to_numpy(zero_copy_only=False)
    cols = pc.index_in(long.column("class_index"), value_set=pa.array([i for i, _ in classes], pa.int16()))
    matrix = np.full((len(record_ids), len(classes)), np.nan)                  # (n, C)
    matrix[rows, cols.to_numpy(zero_copy_only=False)] = long.column("score").to_numpy()
    if long.num_rows != matrix.size or np.isnan(matrix).any():
        raise EvaluationError(f"{model}/{label_set}: {long.num_rows} current score rows for {len(record_ids)} records "
                              f"x {len(classes)} classes; every record needs exactly one score per class")
    return ModelScores(model, shas[0], record_ids.to_pylist(), classes, matrix, versions, runs)


def _evaluate_model(scores: ModelScores, label_set: str, truth: Truth, run_id: str, now: datetime,
                    bootstrap: int, seed: int) -> list[dict]:
    record_ids, classes, matrix = scores.record_ids, scores.classes, scores.matrix
    scored = set(record_ids)
    universe = sorted({r for labels in truth.labels.values() for r in labels if r in scored})
    position = {r: i for i, r in enumerate(universe)}
    row_of = {r: i for i, r in enumerate(record_ids)}
    inputs, evaluated = [], []
    for j, (_, name) in enumerate(classes):
        if name not in truth.labels:
            continue
        pairs = sorted((r, y) for r, y in truth.labels[name].items() if r in scored)
        pos = np.array([position[r] for r, _ in pairs], np.int64)
        y = np.array([v for _, v in pairs], bool)
        s = matrix[[row_of[r] for r, _ in pairs], j] if pairs else np.zeros(0)
        inputs.append((pos, y, s))
        evaluated.append(j)
    results = dict(zip(evaluated, metrics.evaluate_classes(inputs, len(universe), bootstrap, seed)))
    common = {
        "run_id": run_id, "evaluated_at": now, "model": scores.model, "label_set": label_set,
        "label_set_sha256": scores.label_set_sha256, "n_scored": len(record_ids),
        "bootstrap": bootstrap, "seed": seed, "truth_kind": truth.kind, "truth_source": truth.source,
        "truth_sha256": truth.digest, "model_versions": scores.model_versions, "scored_runs": scores.runs,
        "notes": list(truth.notes), "ecgembed_version": __version__,
    }
    rows = []
    for j, (index, name) in enumerate(classes):
        result = results.get(j)
        row = {**common, "average": "class", "class_index": index, "class_name": name}
        if result is None:
            row.update(status="no_truth", reason=truth.unavailable.get(name, "no truth for this class"))
        else:
            row.update(_figures(result), n_records=result.n_pos + result.n_neg)
        rows.append(row)
    summary = metrics.macro(list(results.values()))
    rows.append({**common, "average": "macro", "class_index": None, "class_name": None,
                 "status": "ok" if summary.n_classes else "no_truth",
                 "reason": None if summary.n_classes else "no class has figures",
                 "auroc": summary.auroc, "auprc": summary.auprc,
                 "auroc_lo": summary.auroc_ci[0] if summary.auroc_ci else None,
                 "auroc_hi": summary.auroc_ci[1] if summary.auroc_ci else None,
                 "auprc_lo": summary.auprc_ci[0] if summary.auprc_ci else None,
                 "auprc_hi": summary.auprc_ci[1] if summary.auprc_ci else None,
                 "n_records": len(universe), "n_classes": summary.n_classes})
    return rows


def _figures(r: metrics.ClassMetrics) -> dict:
    out = {"status": r.status, "reason": r.reason or None, "n_pos": r.n_pos, "n_neg": r.n_neg,
           "auroc": r.auroc, "auprc": r.auprc, "bootstrap_valid": r.n_bootstrap_valid if r.status == "ok" else None}
    if r.auroc_ci:
        out.update(auroc_lo=r.auroc_ci[0], auroc_hi=r.auroc_ci[1])
    if r.auprc_ci:
        out.update(auprc_lo=r.auprc_ci[0], auprc_hi=r.auprc_ci[1])
    if r.roc is not None:
        out.update(roc_fpr=r.roc[0].tolist(), roc_tpr=r.roc[1].tolist(), pr_recall=r.pr[0].tolist(),
                   pr_precision=r.pr[1].tolist())
    return out


def summary_lines(rows: pa.Table) -> list[str]:
    """What ``ecgembed evaluate`` prints: per model, the macro figures, counts and notes."""
    lines = []
    data = rows.to_pylist()
    for row in (r for r in data if r["average"] == "macro"):
        mine = [r for r in data if r["model"] == row["model"] and r["average"] == "class"]
        ok = sum(r["status"] == "ok" for r in mine)
        head = f"[ecgembed] {row['model']} on {row['label_set']}: "
        if row["auroc"] is None:
            head += "no class has figures"
        else:
            head += f"macro AUROC {row['auroc']:.3f}" + _ci(row, "auroc") + f", macro AUPRC {row['auprc']:.3f}" \
                + _ci(row, "auprc")
        lines.append(head + f" over {ok} of {len(mine)} classes, {row['n_records']} of {row['n_scored']} scored "
                     f"records with truth ({row['truth_kind']})")
        skipped = {}
        for r in mine:
            if r["status"] != "ok":
                skipped.setdefault(r["status"], []).append(r["class_name"])
        for status, names in sorted(skipped.items()):
            lines.append(f"[ecgembed]   {status}: {', '.join(names[:12])}{' ...' if len(names) > 12 else ''}")
        for note in row["notes"]:
            lines.append(f"[ecgembed]   note: {note}")
        if any(v.startswith("stand-in") for v in row["model_versions"]):
            lines.append("[ecgembed]   STAND-IN weights: these figures measure random weights and mean nothing")
    return lines


def _ci(row: dict, metric: str) -> str:
    lo, hi = row[f"{metric}_lo"], row[f"{metric}_hi"]
    return f" (95% CI {lo:.3f}-{hi:.3f})" if lo is not None else ""
