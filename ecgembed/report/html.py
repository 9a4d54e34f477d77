"""The report page: one self-contained HTML file, readable offline and with no way to load anything.

A strict Content-Security-Policy (``default-src 'none'; img-src data:; style-src 'unsafe-inline'``)
is the first thing in ``<head>``: the page has no script, and a browser refuses (and reports) any
attempt to fetch a URL, so the file can be mailed or opened from a bucket without reaching out.
Each figure is an ``<img>`` whose source is its SVG as a ``data:`` URI: each SVG stays its own
document (matplotlib's element ids cannot clash between figures).

Every text that comes from the output (run ids, record ids, versions, config values) is escaped.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime, timezone
from html import escape

from ecgembed import __version__
from ecgembed.report import plots
from ecgembed.report.data import ReportData, failed_records

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1000px; padding: 0 16px 40px; color: #222; }
h1 { font-size: 22px; margin: 20px 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; }
code, pre { font: 12px/1.4 ui-monospace, monospace; } pre { background: #f6f6f6; padding: 8px; overflow-x: auto; }
.standin { background: #c0392b; color: #fff; font-weight: bold; padding: 10px 14px; margin: 10px 0; }
.cards { display: flex; flex-wrap: wrap; gap: 8px; margin: 12px 0; }
.card { border: 1px solid #ddd; border-radius: 4px; padding: 6px 12px; min-width: 110px; }
.card b { display: block; font-size: 20px; } .card.bad b { color: #c0392b; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 3px 10px 3px 0; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
figure.plot { margin: 12px 0 20px; } figure.plot img { max-width: 100%; height: auto; display: block; }
figcaption { color: #555; font-size: 13px; margin-top: 4px; }
"""


def figure(plot_id: str, drawn: tuple[bytes, bool], alt: str, caption: str) -> str:
    """``drawn``: the SVG and whether it only says why there is no plot (``data-empty``)."""
    svg, empty = drawn
    uri = "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")
    return (f'<figure class="plot" id="{escape(plot_id)}" data-empty="{str(empty).lower()}">'
            f'<img alt="{escape(alt)}" src="{uri}"><figcaption>{escape(caption)}</figcaption></figure>')


def ident(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "-", text.lower()).strip("-")


def render(data: ReportData) -> str:
    run = data.run
    models = list(run.get("models", {}))
    sections = [
        _header(data),
        "<h2>Throughput</h2>",
        figure("plot-throughput", plots.draw(plots.throughput, run), "records done and records/s over time",
               "Records that left the last model stage, sampled by the progress reporter, and the rate between "
               "samples. The dashed line is the steady rate (after the first record completed)."),
        "<h2>Time per stage</h2>",
        figure("plot-stages", plots.draw(plots.stage_times, run, models), "busy seconds per stage",
               "Seconds each stage was busy, summed over all workers (so they can exceed the wall time). The "
               "largest bar is where the time went."),
        "<h2>Errors</h2>",
        figure("plot-errors", plots.draw(plots.errors, data.errors), "errors by type and by stage",
               f"{sum(n for *_, n in data.errors):,} error rows for {data.error_records:,} records. A model stage "
               "means the model failed on a batch; fetch/decode/leads/preprocess mean the file itself."),
        _error_tables(data),
        "<h2>Quality flags</h2>",
        figure("plot-quality", plots.draw(plots.quality, data.quality), "quality flag distributions",
               "Amplitudes, lengths and sampling rates of the records embedded in this run. Records are embedded "
               "even when flagged; filter them in SQL."),
        "<h2>Zero-shot scores</h2>",
        *_score_figures(data),
        "<h2>Embedding maps</h2>",
        *_map_figures(data),
        *_evaluation_figures(data),
        "<h2>History of runs</h2>",
        figure("plot-history", plots.draw(plots.history, data.runs, data.run_id), "records and errors per night",
               "Every committed run of this output, summed per UTC day of its start, and each run's steady rate."),
        _runs_table(data),
        "<h2>Configuration</h2><p>As recorded with the run (credentials are never recorded).</p>",
        _table(["option", "value"],
               [[k, json.dumps(v, default=str)] for k, v in sorted((run.get("config") or {}).items())],
               "config"),
        f"<footer><p>Generated {escape(_now())} by ecgembed {escape(__version__)} from {escape(data.output)}.</p>"
        "</footer>",
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>ecgembed run {escape(data.run_id)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(sections) + "\n</body></html>\n")


def _header(data: ReportData) -> str:
    run = data.run
    stats = run.get("stats") or {}
    counts = run.get("counts") or {}
    models = run.get("models", {})
    stand_in = [name for name, m in models.items() if str(m.get("model_version", "")).startswith("stand-in")]
    out = [f"<h1>ecgembed run <code>{escape(data.run_id)}</code></h1>",
           f"<p>Output {escape(data.output)} · started {escape(_time(run.get('started_at')))} · finished "
           f"{escape(_time(run.get('finished_at')))} · ecgembed {escape(str(run.get('ecgembed_version', '?')))} · "
           f"Ray {escape(str(run.get('ray_version', '?')))}</p>"]
    if stand_in:
        out.append(f'<div class="standin" id="stand-in">STAND-IN WEIGHTS ({escape(", ".join(stand_in))}): random '
                   "weights for trying the pipeline. These embeddings and scores mean nothing clinically.</div>")
    failed = failed_records(run)
    cards = [("discovered", f"{run.get('discovered', 0):,}"), ("processed", f"{run.get('selected', 0):,}"),
             *[(table, f"{rows:,}") for table, rows in sorted(counts.items()) if not table.startswith("_")],
             ("failed records", f"{failed:,}"),
             ("steady rec/s", f"{stats['records_per_s_steady']:.1f}" if stats.get("records_per_s_steady") else "-"),
             ("wall time", f"{run['seconds']:,.0f} s" if run.get("seconds") else "-")]
    out.append('<div class="cards">' + "".join(
        f'<div class="card{" bad" if label == "failed records" and failed else ""}"><b>{escape(value)}</b>'
        f"{escape(label)}</div>" for label, value in cards) + "</div>")
    rows = []
    for name, m in models.items():
        sets = ", ".join(f"{ls['name']} ({len(ls.get('classes', []))} classes, {ls.get('sha256', '')[:8]})"
                         for ls in m.get("label_sets", [])) or "no scores"
        version = str(m.get("model_version", ""))
        rows.append([name, (version[:24] + "…") if len(version) > 24 else version, m.get("preproc_version", ""),
                     m.get("precision", ""), sets])
    out.append(_table(["model", "model_version", "preproc_version", "precision", "label sets"], rows, "models"))
    formats = ", ".join(f"{fmt} {n:,}" for fmt, n in sorted((run.get("formats") or {}).items())) or "-"
    skipped = "; ".join(f"{reason}: " + ", ".join(f"{ext or '(none)'} {n:,}" for ext, n in sorted(exts.items()))
                        for reason, exts in sorted((run.get("skipped_files") or {}).items())) or "none"
    recovered = run.get("recovered") or {}
    out.append(f"<p>Records per format: {escape(formats)}. Files skipped: {escape(skipped)}. Files reached "
               f"under two record ids: {len(run.get('duplicates') or []):,}. Leftovers of crashed runs: "
               f"{sum(len(v) for v in recovered.values()):,}.</p>")
    return "\n".join(out)


def _error_tables(data: ReportData) -> str:
    if not data.errors:
        return ""
    by_type = _table(["stage", "error_type", "rows"], [[s, t, n] for s, t, n in data.errors], "errors-by-type")
    examples = _table(["record_id", "model", "stage", "error_type", "permanent"],
                      [[e[k] for k in ("record_id", "model", "stage", "error_type", "permanent")]
                       for e in data.error_examples], "error-examples")
    query = (f"ecgembed sql {data.output} \"SELECT record_id, model, stage, error_type, message FROM errors "
             f"WHERE run_id = '{data.run_id}'\"")
    return (f"{by_type}<p>First {len(data.error_examples)} error rows (messages stay in the table; see them "
            f"with the query below):</p>{examples}<pre>{escape(query)}</pre>")


def _score_figures(data: ReportData) -> list[str]:
    if not data.scores:
        return [figure("plot-scores", plots.draw(plots.message, "Zero-shot scores",
                                                 "no zero-shot scores in this run"), "no scores", "")]
    return [figure(f"plot-scores-{ident(s.model)}-{ident(s.label_set)}", plots.draw(plots.scores, s),
                   f"score distribution per class, {s.model} x {s.label_set}",
                   "Each row is a class: the share of records in each score bin (darker: more records) and the "
                   "median (red tick). A class whose strip is one dark cell scores every record alike.")
            for s in data.scores]


def _map_figures(data: ReportData) -> list[str]:
    if not data.maps:
        return [figure("plot-map", plots.draw(plots.message, "Embedding maps", "no embedding table in this output"),
                       "no embeddings", "")]
    return [figure(f"plot-map-{ident(m.model)}", plots.draw(plots.embedding_map, m),
                   f"PCA of {m.model} embeddings coloured by top class",
                   "The first two principal components of a sample of the run's embeddings. Tight islands of one "
                   "colour are records the model finds alike; a single blob is expected from stand-in weights.")
            for m in data.maps]


def _evaluation_figures(data: ReportData) -> list[str]:
    """ROC and precision-recall curves of the newest evaluation of each model x label set, if any."""
    from ecgembed.evaluate import pr_svg, roc_svg

    if not data.evaluations:
        return []
    out = ["<h2>Zero-shot evaluation</h2>",
           "<p>From <code>ecgembed evaluate</code>: the newest evaluation of each model and label set against "
           "its truth source. With stand-in weights these numbers mean nothing.</p>"]
    for rows in data.evaluations:
        first = rows.slice(0, 1).to_pylist()[0]
        name = f"{first['model']}-{first['label_set']}"
        macro = [r for r in rows.to_pylist() if r["average"] == "macro"]
        caption = (f"evaluation {first['run_id']} against {first['truth_kind']} truth ({first['truth_source']})"
                   + (f"; macro AUROC {macro[0]['auroc']:.3f}, macro AUPRC {macro[0]['auprc']:.3f}"
                      if macro and macro[0]["auroc"] is not None else ""))
        for kind, draw in (("roc", roc_svg), ("pr", pr_svg)):
            out.append(figure(f"plot-eval-{kind}-{ident(name)}", (draw(rows).encode(), False),
                              f"{kind.upper()} curves of {name}", caption))
    return out


def _runs_table(data: ReportData) -> str:
    rows = []
    for run in reversed(data.runs[-15:]):
        stats = run.get("stats") or {}
        rate = stats.get("records_per_s_steady")
        rows.append([run.get("run_id", "?"), _time(run.get("started_at")), run.get("discovered", 0),
                     run.get("selected", 0), failed_records(run), f"{rate:.1f}" if rate else "-",
                     f"{run['seconds']:,.0f}" if run.get("seconds") else "-"])
    return _table(["run", "started", "discovered", "processed", "failed", "rec/s", "seconds"], rows, "runs")


def _table(head: list[str], rows: list[list], table_id: str) -> str:
    def cell(v) -> str:
        numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
        return f'<td class="n">{v:,}</td>' if numeric else f"<td>{escape(str(v))}</td>"

    return (f'<table id="{escape(table_id)}"><thead><tr>' + "".join(f"<th>{escape(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
            + "</tbody></table>")


def _time(iso: str | None) -> str:
    """An ISO timestamp to the second, as UTC."""
    try:
        return datetime.fromisoformat(iso).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError):
        return "?"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
