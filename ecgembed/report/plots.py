"""The report's figures, each drawn with matplotlib into a standalone SVG document.

Figures are built with :class:`matplotlib.figure.Figure` (no pyplot: no global state, no GUI
backend). A figure with nothing to show is still drawn, with one line saying why, so the page
always has the same sections and a missing plot never reads as "all fine". Dense marks (the
embedding map's points, the score heat strips) are rasterised inside the SVG to keep it small.
"""

from __future__ import annotations

import io
from collections import Counter
from datetime import datetime, timezone

import matplotlib
import numpy as np
import scipy.linalg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
from matplotlib.figure import Figure

from ecgembed.report.data import MAP_CLASSES, EmbeddingMap, Quality, ScoreStrip, failed_records

STYLE = {"svg.hashsalt": "ecgembed-report", "font.size": 8, "axes.titlesize": 9, "axes.spines.top": False,
         "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 96, "savefig.dpi": 96}
WIDTH = 9.0         # inches; one figure spans the page
ERROR_COLOUR, OK_COLOUR = "#c0392b", "#2e86c1"
STAGE_ORDER = ("fetch", "decode", "leads", "preprocess")
EMPTY = "ecgembed-report-empty"     # the label of a figure that only says why there is no plot


def _figure(height: float) -> Figure:
    return Figure(figsize=(WIDTH, height), layout="constrained")


def svg(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    return buf.getvalue()


def message(title: str, text: str) -> Figure:
    """A figure that says why there is no plot."""
    fig = _figure(1.2)
    fig.set_label(EMPTY)
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_title(title, loc="left")
    ax.text(0.5, 0.4, text, ha="center", va="center", color="#555555", fontsize=10, transform=ax.transAxes)
    return fig


def draw(build, *args) -> tuple[bytes, bool]:
    """``build(*args) -> Figure`` rendered as SVG under the report's style, and whether it is a message."""
    with matplotlib.rc_context(STYLE):
        fig = build(*args)
        return svg(fig), fig.get_label() == EMPTY


# ---- the run -------------------------------------------------------------------------------------
def throughput(run: dict) -> Figure:
    stats = run.get("stats") or {}
    timeline = np.asarray(stats.get("timeline") or [], np.float64).reshape(-1, 3)   # (T, 3) seconds, done, failed
    title = "Throughput over the run"
    if len(timeline) < 2:
        why = "no progress samples in this run's metadata" + (
            " (nothing was processed)" if not run.get("selected") else " (written by an older ecgembed)")
        return message(title, why)
    t, done, failed = timeline.T
    minutes = t[-1] > 600
    t = t / 60 if minutes else t
    unit = "min" if minutes else "s"
    fig = _figure(3.6)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(t, done, color=OK_COLOUR, label="records done")
    top.plot(t, failed, color=ERROR_COLOUR, label="failed (as in the progress line)")
    top.set_ylabel("records")
    top.set_title(title, loc="left")
    top.legend(loc="upper left", frameon=False)
    dt = np.diff(t) * (60 if minutes else 1)                   # (T-1,) seconds between samples
    rate = np.divide(np.diff(done), dt, out=np.zeros_like(dt), where=dt > 0)
    bottom.step(t[1:], rate, where="pre", color=OK_COLOUR, label="records/s between samples")
    steady = stats.get("records_per_s_steady") or 0.0
    if steady:
        bottom.axhline(steady, color="#333333", linestyle="--", linewidth=1, label=f"steady {steady:.2f} rec/s")
    bottom.set_ylabel("records/s")
    bottom.set_xlabel(f"time since the job graph started ({unit})")
    bottom.legend(loc="upper left", frameon=False)
    return fig


def stage_times(run: dict, models: list[str]) -> Figure:
    busy = (run.get("stats") or {}).get("busy_seconds") or {}
    title = "Time per stage (busy seconds, summed over workers)"
    if not any(busy.values()):
        return message(title, "no stage timings in this run's metadata (nothing was processed)")
    order = [s for s in (*STAGE_ORDER, *models, "write") if s in busy] + sorted(set(busy) - {*STAGE_ORDER, *models,
                                                                                             "write"})
    seconds = np.array([busy[s] for s in order], np.float64)
    fig = _figure(0.5 + 0.3 * len(order))
    ax = fig.subplots()
    y = np.arange(len(order))[::-1]
    ax.barh(y, seconds, color=OK_COLOUR)
    ax.set_yticks(y, order)
    total = seconds.sum()
    for yi, s in zip(y, seconds):
        ax.text(s, yi, f" {s:,.1f} s ({100 * s / total:.0f}%)", va="center", fontsize=7)
    ax.set_xlim(0, seconds.max() * 1.25)
    ax.set_xlabel("seconds")
    ax.set_title(title + (f"; wall time {run['seconds']:,.0f} s" if run.get("seconds") else ""), loc="left")
    ax.grid(axis="y", visible=False)
    return fig


def errors(rows: list[tuple[str, str, int]]) -> Figure:
    title = "Errors by type and by stage (rows of the errors table)"
    if not rows:
        return message(title, "no errors in this run")
    types = sorted({t for _, t, _ in rows}, key=lambda t: -sum(n for _, tt, n in rows if tt == t))
    stages = sorted({s for s, _, _ in rows}, key=lambda s: (STAGE_ORDER.index(s) if s in STAGE_ORDER else 99, s))
    colours = {t: matplotlib.colormaps["tab10"](i % 10) for i, t in enumerate(types)}
    fig = _figure(1.2 + 0.28 * max(len(types), len(stages)))
    by_type, by_stage = fig.subplots(1, 2)
    totals = [sum(n for _, t, n in rows if t == tt) for tt in types]
    y = np.arange(len(types))[::-1]
    by_type.barh(y, totals, color=[colours[t] for t in types])
    by_type.set_yticks(y, types)
    for yi, n in zip(y, totals):
        by_type.text(n, yi, f" {n:,}", va="center", fontsize=7)
    by_type.set_xlim(0, max(totals) * 1.2)
    by_type.set_title("by error type", loc="left")
    ys = np.arange(len(stages))[::-1]
    left = np.zeros(len(stages))
    for t in types:
        counts = np.array([sum(n for s, tt, n in rows if s == stage and tt == t) for stage in stages], np.float64)
        by_stage.barh(ys, counts, left=left, color=colours[t], label=t)
        left += counts
    by_stage.set_yticks(ys, stages)
    by_stage.set_title("by stage (coloured by type)", loc="left")
    by_stage.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for ax in (by_type, by_stage):
        ax.grid(axis="y", visible=False)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title, x=0.01, ha="left", fontsize=9)
    return fig


def quality(q: Quality | None) -> Figure:
    title = "Quality flags of the embedded records"
    if q is None or q.records == 0:
        return message(title, "no record was embedded in this run")
    fig = _figure(4.4)
    axes = fig.subplots(2, 3).ravel()
    n = len(q.sample["max_abs_mv"])
    sampled = f" (histograms from {n:,} of them)" if n < q.records else ""
    _histogram(axes[0], q.sample["max_abs_mv"], "max |sample| (mV)", marks=[(20.0, "suspect above 20 mV")])
    _histogram(axes[1], q.sample["median_ptp_mv"], "median peak-to-peak (mV)",
               marks=[(0.05, "0.05 mV"), (5.0, "5 mV")])
    _histogram(axes[2], q.sample["duration_s"], "duration (s)")
    _bars(axes[3], [f"{fs:g}" for fs, _ in q.fs_counts], [n for _, n in q.fs_counts], "sampling rate (Hz)")
    leads = list(range(max([3, *(k + 1 for k, _ in q.flat_counts), *(k + 1 for k, _ in q.derived_counts)])))
    flat, derived = dict(q.flat_counts), dict(q.derived_counts)
    x = np.arange(len(leads))
    axes[4].bar(x - 0.2, [flat.get(k, 0) for k in leads], 0.4, color=OK_COLOUR, label="flat leads")
    axes[4].bar(x + 0.2, [derived.get(k, 0) for k in leads], 0.4, color="#8e44ad", label="derived leads")
    axes[4].set_xticks(x, [str(k) for k in leads])
    axes[4].set_xlabel("leads per record")
    axes[4].set_ylabel("records")
    axes[4].legend(frameon=False, fontsize=7, loc="upper right")
    axes[4].grid(axis="x", visible=False)
    suspect = [q.records - q.amplitude_suspect, q.amplitude_suspect]
    _bars(axes[5], ["plausible", "amplitude_suspect"], suspect, "amplitude (gain/unit check)",
          colours=[OK_COLOUR, ERROR_COLOUR])
    axes[5].set_title(f"{100 * q.amplitude_suspect / q.records:.1f}% suspect, {q.nonfinite:,} with NaN/inf",
                      fontsize=8)
    fig.suptitle(f"{title}: {q.records:,} records{sampled}", x=0.01, ha="left", fontsize=9)
    return fig


def _histogram(ax, values: np.ndarray, label: str, marks=()) -> None:
    values = values[np.isfinite(values)]
    if len(values):
        ax.hist(values, bins=min(40, max(5, len(values))), color=OK_COLOUR)
    for x, text in marks:
        ax.axvline(x, color=ERROR_COLOUR, linestyle="--", linewidth=1)
        ax.text(x, 1.0, f" {text}", color=ERROR_COLOUR, fontsize=6, va="top", transform=ax.get_xaxis_transform())
    ax.set_xlabel(label)
    ax.set_ylabel("records")


def _bars(ax, labels: list[str], counts: list[int], xlabel: str, colours=None) -> None:
    x = np.arange(len(labels))
    ax.bar(x, counts, color=colours or OK_COLOUR)
    ax.set_xticks(x, labels)
    for xi, n in zip(x, counts):
        ax.text(xi, n, f"{n:,}", ha="center", va="bottom", fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("records")
    ax.grid(axis="x", visible=False)


def scores(strip: ScoreStrip) -> Figure:
    """A heat strip per class: the share of the class's records in each score bin, and the median."""
    rows = len(strip.classes)
    fig = _figure(0.9 + 0.22 * rows)
    ax = fig.subplots()
    share = strip.counts / np.maximum(strip.counts.sum(axis=1, keepdims=True), 1)    # (C, B)
    lo, hi = strip.edges[0], strip.edges[-1]
    image = ax.imshow(share, aspect="auto", cmap="Blues", vmin=0, interpolation="nearest",
                      extent=(lo, hi, rows - 0.5, -0.5))
    image.set_rasterized(True)
    ax.plot(strip.medians, np.arange(rows), "|", color=ERROR_COLOUR, markersize=10, markeredgewidth=2,
            label="median")
    ax.set_yticks(np.arange(rows), strip.classes)
    ax.set_xlabel("cosine similarity" if lo < 0 else "score (probability of the class)")
    ax.grid(False)
    ax.legend(loc="upper right", bbox_to_anchor=(1.0, 1.12), frameon=False, fontsize=7)
    fig.colorbar(image, ax=ax, label="share of records", pad=0.01, fraction=0.03)
    ax.set_title(f"Zero-shot scores: {strip.model} x {strip.label_set} ({strip.records:,} records)", loc="left")
    return fig


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) -> the first two principal coordinates (N, 2) and their share of the variance (2,).

    The top two eigenvectors of the smaller Gram matrix (D x D, or N x N for fewer records than
    dimensions), not a full SVD of X: for 5,000 x 768 that is some 20 times faster and gives the
    same coordinates up to sign. The total variance is the Gram matrix's trace.
    """
    x = vectors.astype(np.float64)
    x = x - x.mean(axis=0, keepdims=True)                           # (N, D)
    xy, ratio = np.zeros((len(x), 2)), np.zeros(2)
    n, d = x.shape
    if n < 2:
        return xy, ratio
    gram = x.T @ x if d <= n else x @ x.T                           # (D, D) or (N, N)
    k = min(2, len(gram))
    variances, vectors_ = scipy.linalg.eigh(gram, subset_by_index=[len(gram) - k, len(gram) - 1])  # ascending
    variances, vectors_ = np.clip(variances[::-1], 0.0, None), vectors_[:, ::-1]   # (k,), (D|N, k) largest first
    xy[:, :k] = x @ vectors_ if d <= n else vectors_ * np.sqrt(variances)
    total = float(np.trace(gram))
    if total > 0:
        ratio[:k] = variances / total
    return xy, ratio


def embedding_map(m: EmbeddingMap) -> Figure:
    title = f"Embeddings of {m.model}: PCA"
    if m.records == 0:
        return message(title, f"no {m.model} embedding in this run")
    xy, ratio = pca_2d(m.vectors)
    counts = Counter(c for c in m.top_class if c is not None)
    shown = [c for c, _ in counts.most_common(MAP_CLASSES)]
    groups = [(c, [t == c for t in m.top_class]) for c in shown]
    others = [t is not None and t not in shown for t in m.top_class]
    if any(others):
        groups.append(("other classes", others))
    missing = [t is None for t in m.top_class]
    if any(missing):
        groups.append(("no score", missing))
    fig = _figure(4.6)
    ax = fig.subplots()
    palette = matplotlib.colormaps["tab10"]
    size = 30 if len(xy) < 200 else 6
    for i, (name, mask) in enumerate(groups):
        mask = np.array(mask, bool)
        colour = "#bbbbbb" if name in ("other classes", "no score") else palette(i % 10)
        points = ax.scatter(xy[mask, 0], xy[mask, 1], s=size, color=colour, alpha=0.8, linewidths=0,
                            label=f"{name} ({int(mask.sum()):,})")
        points.set_rasterized(True)
    ax.set_xlabel(f"PC1 ({100 * ratio[0]:.0f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * ratio[1]:.0f}% of variance)")
    ax.legend(title=f"top class ({m.colour_from})" if m.colour_from else "no zero-shot scores in this run",
              loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=7, title_fontsize=7)
    shown_n = f"{len(xy):,} of {m.records:,}" if len(xy) < m.records else f"{m.records:,}"
    ax.set_title(f"{title} of {shown_n} records, coloured by top class", loc="left")
    return fig


# ---- every run --------------------------------------------------------------------------------------
def history(runs: list[dict], current: str, nights: int = 90) -> Figure:
    """Records, errors and steady records/s per night (UTC day of the run's start)."""
    per_day: dict = {}
    rates: list[tuple[datetime, float, bool]] = []
    for run in runs:
        started = _started(run)
        if started is None:
            continue
        day = per_day.setdefault(started.date(), {"records": 0, "errors": 0, "current": False})
        day["records"] += int(run.get("selected") or 0)
        day["errors"] += failed_records(run)
        day["current"] |= run.get("run_id") == current
        steady = (run.get("stats") or {}).get("records_per_s_steady")
        if steady:
            rates.append((started, float(steady), run.get("run_id") == current))
    title = "History of runs (per night, UTC)"
    if not per_day:
        return message(title, "no run metadata with a start time")
    days = sorted(per_day)[-nights:]
    x = date2num(days)
    fig = _figure(4.2)
    top, middle, bottom = fig.subplots(3, 1, sharex=True)
    edge = ["#000000" if per_day[d]["current"] else "none" for d in days]
    top.bar(x, [per_day[d]["records"] for d in days], 0.8, color=OK_COLOUR, edgecolor=edge)
    top.set_ylabel("records")
    top.set_title(title + f": {len(runs)} run(s); outlined: the night of this run", loc="left")
    middle.bar(x, [per_day[d]["errors"] for d in days], 0.8, color=ERROR_COLOUR, edgecolor=edge)
    middle.set_ylabel("failed records")
    if rates:
        rx = date2num([r[0] for r in rates])
        bottom.plot(rx, [r[1] for r in rates], "o-", color="#333333", markersize=3)
        now = [i for i, r in enumerate(rates) if r[2]]
        bottom.plot(rx[now], [rates[i][1] for i in now], "o", color=ERROR_COLOUR, markersize=6)
    else:
        bottom.text(0.5, 0.5, "no run recorded a steady rate (too few records to measure one)", ha="center",
                    va="center", color="#555555", transform=bottom.transAxes)
    bottom.set_ylabel("rec/s steady")
    locator = AutoDateLocator()
    bottom.xaxis.set_major_locator(locator)
    bottom.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    bottom.set_xlim(x[0] - 1, x[-1] + 1)
    for ax in (top, middle):
        ax.yaxis.get_major_locator().set_params(integer=True)
    return fig


def _started(run: dict) -> datetime | None:
    try:
        started = datetime.fromisoformat(run.get("started_at", ""))
    except (TypeError, ValueError):
        return None
    return (started if started.tzinfo else started.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
