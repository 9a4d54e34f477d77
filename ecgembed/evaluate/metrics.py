"""AUROC and AUPRC per class, with percentile bootstrap intervals over records.

The figures are scikit-learn's definitions, computed here so that 1000 bootstrap replicates
of every class cost a few array operations instead of 1000 x C library calls:

- AUROC: the area under the ROC curve by the trapezoidal rule over the distinct score
  thresholds (``sklearn.metrics.roc_auc_score``); ties are one threshold.
- AUPRC: average precision, sum over thresholds of (R_k - R_{k-1}) * P_k with no
  interpolation (``sklearn.metrics.average_precision_score``).

Bootstrap: records (not scores) are resampled with replacement, all classes with the same
draw, so the macro average gets an interval too. Replicate ``b`` is row ``b`` of
``numpy.random.default_rng(seed).integers(0, n, size=(B, n))`` over the records sorted by
record id; a resampled record counts as many times as it was drawn (a weight), which equals
scoring the resampled arrays. A replicate without a positive or without a negative is
undefined for that class and left out; the interval is the 2.5th and 97.5th percentile
(``numpy.percentile``, linear) of the defined replicates.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

CI_LEVEL = 0.95
_CHUNK_ELEMENTS = 4_000_000      # bootstrap draws held at once (B_chunk x n: 16-32 MB per array)
CURVE_POINTS = 200               # points kept per stored ROC/PR curve (for plots)


@dataclass
class ClassMetrics:
    """One class's figures; ``status`` says why a figure is missing."""

    n_pos: int
    n_neg: int
    status: str                      # ok | no_positives | no_negatives | no_truth
    reason: str = ""
    auroc: float | None = None
    auprc: float | None = None
    auroc_ci: tuple[float, float] | None = None
    auprc_ci: tuple[float, float] | None = None
    n_bootstrap_valid: int = 0
    roc: tuple[np.ndarray, np.ndarray] | None = None        # fpr, tpr (downsampled)
    pr: tuple[np.ndarray, np.ndarray] | None = None         # recall, precision (downsampled)
    replicates: dict[str, np.ndarray] = field(default_factory=dict, repr=False)   # "auroc"/"auprc" -> (B,)


def bootstrap_indices(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Chunks ``(b, n)`` of resampled record positions; together the rows of
    ``default_rng(seed).integers(0, n, size=(n_boot, n))`` in order."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, _CHUNK_ELEMENTS // max(n, 1)))
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        yield rng.integers(0, n, size=(b, n))
        done += b


def counts_of(indices: np.ndarray, n: int) -> np.ndarray:
    """(b, n) indices -> (b, n) int32 draw counts per record (integers: every sum below is exact)."""
    b = indices.shape[0]
    flat = (indices + (np.arange(b)[:, None] * n)).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.int32)


class SortedClass:
    """One class's labels and scores sorted by descending score, with its distinct thresholds."""

    def __init__(self, y: np.ndarray, score: np.ndarray):
        order = np.argsort(score, kind="mergesort")[::-1]
        self.order = order
        self.y = y[order].astype(np.int32)
        s = score[order]
        self.last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]     # last position of each threshold group

    def tps_fps(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cumulative weighted true/false positives at each threshold; integer weights (b, n) in
        record order. Counts stay integers until the end, so they are exact."""
        w = weights[:, self.order]                                   # (b, n) sorted by score
        total = np.cumsum(w, axis=1, dtype=np.int64)[:, self.last]   # (b, K)
        tps = np.cumsum(w * self.y, axis=1, dtype=np.int64)[:, self.last]
        return tps.astype(np.float64), (total - tps).astype(np.float64)


def auroc_of(tps: np.ndarray, fps: np.ndarray) -> np.ndarray:
    """(b, K) cumulative counts -> (b,) trapezoidal ROC area; NaN where a side is empty."""
    p, n = tps[:, -1:], fps[:, -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        tpr = np.hstack([np.zeros_like(p), tps / p])
        fpr = np.hstack([np.zeros_like(n), fps / n])
        area = np.sum(np.diff(fpr, axis=1) * (tpr[:, 1:] + tpr[:, :-1]) / 2.0, axis=1)
    return np.where((p[:, 0] > 0) & (n[:, 0] > 0), area, np.nan)


def auprc_of(tps: np.ndarray, fps: np.ndarray) -> np.ndarray:
    """(b, K) cumulative counts -> (b,) average precision; NaN where a side is empty."""
    p, n = tps[:, -1:], fps[:, -1:]
    predicted = tps + fps
    precision = np.divide(tps, predicted, out=np.zeros_like(tps), where=predicted != 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.hstack([np.zeros_like(p), tps / p])
        ap = np.sum(np.diff(recall, axis=1) * precision, axis=1)
    return np.where((p[:, 0] > 0) & (n[:, 0] > 0), ap, np.nan)


def _downsample(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    k = len(arrays[0])
    if k <= CURVE_POINTS:
        return arrays
    keep = np.unique(np.linspace(0, k - 1, CURVE_POINTS).round().astype(np.int64))
    return tuple(a[keep] for a in arrays)


def point_metrics(y: np.ndarray, score: np.ndarray) -> ClassMetrics:
    """Figures on all records of one class (no bootstrap)."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0:
        return ClassMetrics(n_pos, n_neg, "no_positives", "no record with truth is positive for this class")
    if n_neg == 0:
        return ClassMetrics(n_pos, n_neg, "no_negatives", "every record with truth is positive for this class")
    sc = SortedClass(y, np.asarray(score, np.float64))
    tps, fps = sc.tps_fps(np.ones((1, len(y)), np.int32))
    fpr = np.r_[0.0, fps[0] / fps[0, -1]]
    tpr = np.r_[0.0, tps[0] / tps[0, -1]]
    precision = tps[0] / (tps[0] + fps[0])
    recall = tps[0] / tps[0, -1]
    return ClassMetrics(n_pos, n_neg, "ok", auroc=float(auroc_of(tps, fps)[0]), auprc=float(auprc_of(tps, fps)[0]),
                        roc=_downsample(fpr, tpr), pr=_downsample(np.r_[0.0, recall], np.r_[1.0, precision]))


def evaluate_classes(labels: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n_records: int, n_boot: int,
                     seed: int) -> list[ClassMetrics]:
    """Per class: ``(record positions, y, score)``, positions into the ``n_records`` sorted records.

    Every class is resampled with the same draws of the ``n_records`` records.
    """
    results = [point_metrics(y, s) for _, y, s in labels]
    live = [(i, SortedClass(np.asarray(y).astype(bool), np.asarray(s, np.float64)), pos)
            for i, ((pos, y, s), r) in enumerate(zip(labels, results)) if r.status == "ok"]
    if n_boot <= 0 or not live:
        return results
    values = {i: {"auroc": [], "auprc": []} for i, _, _ in live}
    for indices in bootstrap_indices(n_records, n_boot, seed):
        counts = counts_of(indices, n_records)                     # (b, n_records)
        for i, sc, pos in live:
            tps, fps = sc.tps_fps(counts[:, pos])                  # (b, K)
            values[i]["auroc"].append(auroc_of(tps, fps))
            values[i]["auprc"].append(auprc_of(tps, fps))
    for i, _, _ in live:
        result = results[i]
        result.replicates = {k: np.concatenate(v) for k, v in values[i].items()}
        result.auroc_ci = interval(result.replicates["auroc"])
        result.auprc_ci = interval(result.replicates["auprc"])
        result.n_bootstrap_valid = int(np.isfinite(result.replicates["auroc"]).sum())
    return results


def interval(replicates: np.ndarray) -> tuple[float, float] | None:
    """Percentile interval of the defined replicates (None when there is none)."""
    ok = replicates[np.isfinite(replicates)]
    if not len(ok):
        return None
    lo, hi = np.percentile(ok, [100 * (1 - CI_LEVEL) / 2, 100 * (1 + CI_LEVEL) / 2])
    return float(lo), float(hi)


@dataclass
class MacroMetrics:
    n_classes: int
    auroc: float | None
    auprc: float | None
    auroc_ci: tuple[float, float] | None
    auprc_ci: tuple[float, float] | None


def macro(results: list[ClassMetrics]) -> MacroMetrics:
    """Unweighted mean over the classes with figures; per replicate, over the classes defined in it."""
    ok = [r for r in results if r.status == "ok"]
    if not ok:
        return MacroMetrics(0, None, None, None, None)
    out = {}
    for metric in ("auroc", "auprc"):
        point = float(np.mean([getattr(r, metric) for r in ok]))
        ci = None
        if all(metric in r.replicates for r in ok):
            stacked = np.vstack([r.replicates[metric] for r in ok])        # (C_ok, B)
            defined = np.isfinite(stacked).any(axis=0)
            per_replicate = np.full(stacked.shape[1], np.nan)
            per_replicate[defined] = np.nanmean(stacked[:, defined], axis=0)
            ci = interval(per_replicate)
        out[metric] = (point, ci)
    return MacroMetrics(len(ok), out["auroc"][0], out["auprc"][0], out["auroc"][1], out["auprc"][1])
