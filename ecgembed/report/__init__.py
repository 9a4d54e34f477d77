"""``ecgembed report OUTPUT [--run ID]``: one self-contained HTML page about a committed run.

    from ecgembed.report import write_report
    write_report("s3://hospital-ml/ecgembed/")                  # -> s3://.../_reports/<run_id>.html
    write_report("/data/out", dest="night.html", run_id="20260101T020000Z-a1b2c3")

:mod:`~ecgembed.report.data` reads the run (SQL aggregates and samples), :mod:`~ecgembed.report.plots`
draws each figure as SVG, :mod:`~ecgembed.report.html` lays out the page. See docs/report.md.
"""

from __future__ import annotations

from ecgembed import storage
from ecgembed.report import data as _data
from ecgembed.report.html import render

REPORTS_DIR = "_reports"


def build_report(output: str, run_id: str | None = None) -> tuple[str, str]:
    """``(run_id, html)`` of the run ``run_id`` of ``output`` (default: its newest committed run).

    Raises :class:`ecgembed.errors.ConfigError` when the output has no committed run or no run
    with that id.
    """
    report = _data.load(output, run_id)
    return report.run_id, render(report)


def write_report(output: str, dest: str | None = None, run_id: str | None = None) -> str:
    """Write the report of a run and return where it went.

    ``dest``: a file path or URI; an existing folder gets ``<run_id>.html`` inside it; default
    ``OUTPUT/_reports/<run_id>.html`` (next to the tables, so it lives as long as they do).
    """
    rid, page = build_report(output, run_id)
    if dest is None:
        dest = storage.join(output, REPORTS_DIR, f"{rid}.html")
    elif storage.isdir(dest):
        dest = storage.join(dest, f"{rid}.html")
    storage.write_atomic(dest, page.encode("utf-8"))
    return dest
