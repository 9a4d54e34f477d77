"""ROC and precision-recall plots as self-contained SVG strings (no scripts, fonts or links).

Drawn from the rows of the ``evaluation`` table (its downsampled ``roc_*``/``pr_*`` curves), so
a report can be rebuilt from the table alone::

    rows = con.sql("SELECT * FROM evaluation WHERE run_id = ? AND model = 'ecgfm-ked'").arrow()
    svg = roc_svg(rows)          # or pr_svg(rows)

The classes with the most positives get a colour and a legend line (figure and interval);
the others are thin grey lines.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

import pyarrow as pa

WIDTH, HEIGHT = 640, 420
PLOT = (60, 40, 320, 320)                  # x, y, width, height of the axes
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f")


def roc_svg(rows: pa.Table, title: str | None = None) -> str:
    return _svg(rows, "roc_fpr", "roc_tpr", "auroc", "False positive rate", "True positive rate",
                title or _title(rows, "ROC"), diagonal=True)


def pr_svg(rows: pa.Table, title: str | None = None) -> str:
    return _svg(rows, "pr_recall", "pr_precision", "auprc", "Recall", "Precision",
                title or _title(rows, "Precision-recall"), diagonal=False)


def _title(rows: pa.Table, what: str) -> str:
    data = rows.select(["model", "label_set"]).to_pylist()[:1]
    return f"{what}: {data[0]['model']} on {data[0]['label_set']}" if data else what


def _svg(rows: pa.Table, x_col: str, y_col: str, metric: str, x_label: str, y_label: str, title: str,
         diagonal: bool) -> str:
    x0, y0, w, h = PLOT
    classes = [r for r in rows.to_pylist() if r["average"] == "class" and r[x_col]]
    classes.sort(key=lambda r: (-(r["n_pos"] or 0), r["class_index"]))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
           f'<title>{escape(title)}</title>', f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           f'<text x="{x0}" y="22" font-size="13">{escape(title)}</text>',
           f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#333"/>']
    for i in range(6):
        t = i / 5
        gx, gy = x0 + t * w, y0 + h - t * h
        out.append(f'<line x1="{gx:.1f}" y1="{y0 + h}" x2="{gx:.1f}" y2="{y0 + h + 4}" stroke="#333"/>'
                   f'<text x="{gx:.1f}" y="{y0 + h + 16}" text-anchor="middle">{t:.1f}</text>'
                   f'<line x1="{x0 - 4}" y1="{gy:.1f}" x2="{x0}" y2="{gy:.1f}" stroke="#333"/>'
                   f'<text x="{x0 - 7}" y="{gy + 4:.1f}" text-anchor="end">{t:.1f}</text>')
    out.append(f'<text x="{x0 + w / 2}" y="{y0 + h + 34}" text-anchor="middle">{escape(x_label)}</text>'
               f'<text transform="translate({x0 - 40},{y0 + h / 2}) rotate(-90)" text-anchor="middle">'
               f'{escape(y_label)}</text>')
    if diagonal:
        out.append(f'<line x1="{x0}" y1="{y0 + h}" x2="{x0 + w}" y2="{y0}" stroke="#bbb" stroke-dasharray="4 3"/>')
    coloured = classes[:len(COLOURS)]
    for row in reversed(classes[len(COLOURS):]):
        out.append(_polyline(row[x_col], row[y_col], "#c8c8c8", 0.8))
    legend_x, legend_y = x0 + w + 14, y0 + 6
    for i, row in enumerate(coloured):
        colour = COLOURS[i]
        out.append(_polyline(row[x_col], row[y_col], colour, 1.6))
        ci = (f" ({row[metric + '_lo']:.2f}-{row[metric + '_hi']:.2f})"
              if row.get(metric + "_lo") is not None else "")
        label = f"{row['class_name'][:22]} {row[metric]:.2f}{ci}"
        ly = legend_y + 16 * i
        out.append(f'<line x1="{legend_x}" y1="{ly}" x2="{legend_x + 14}" y2="{ly}" stroke="{colour}" '
                   f'stroke-width="2"/><text x="{legend_x + 18}" y="{ly + 4}">{escape(label)}</text>')
    more = len(classes) - len(coloured)
    footer = [f"{metric.upper()} (95% bootstrap interval),", "classes with most positives"]
    if more:
        footer.append(f"{more} more class(es) in grey")
    if not coloured:
        footer = ["no class has figures"]
    for i, line in enumerate(footer):
        out.append(f'<text x="{legend_x}" y="{legend_y + 16 * len(coloured) + 8 + 14 * i}" fill="#555">'
                   f'{escape(line)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _polyline(xs, ys, colour: str, width: float) -> str:
    x0, y0, w, h = PLOT
    points = " ".join(f"{x0 + x * w:.1f},{y0 + h - y * h:.1f}" for x, y in zip(xs, ys))
    return f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="{width}"/>'
