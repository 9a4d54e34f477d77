"""What the run report shows, read from a committed output: one run's metadata, its rows, the history.

Everything comes through two functions that survive changes of the table format:
:func:`ecgembed.tables.commit.read_runs` (each committed run's metadata, oldest first) and
:func:`ecgembed.tables.views.connect` (DuckDB views named as in docs/tables.md). Aggregates are
computed in SQL so a run of a million records reads back as a few thousand numbers; only the
embedding map and the quality histograms fetch rows, from a deterministic sample (the same
record ids for every model: ``ORDER BY hash(record_id)``).

Only record ids, versions and numbers are read: never error messages or anything from a header.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb
import numpy as np

from ecgembed.errors import ConfigError
from ecgembed.storage import redact
from ecgembed.models.registry import SPECS
from ecgembed.tables import schemas as S
from ecgembed.tables.commit import read_runs
from ecgembed.tables.views import connect

MAP_POINTS = 5_000          # embeddings per model in the 2-D map
QUALITY_SAMPLE = 50_000     # records behind the quality histograms
SCORE_BINS = 40
ERROR_EXAMPLES = 20
MAP_CLASSES = 9             # most frequent top classes coloured; the rest are "other"


@dataclass
class Quality:
    """Quality flags of the records embedded in the run (docs/tables.md, quality flags)."""

    records: int                                   # records with an embedding row in the run
    sample: dict[str, np.ndarray]                  # column -> (n,) values of up to QUALITY_SAMPLE records
    fs_counts: list[tuple[float, int]]             # (sampling rate, records), exact
    flat_counts: list[tuple[int, int]]             # (flat leads, records), exact
    derived_counts: list[tuple[int, int]]          # (derived leads, records), exact
    amplitude_suspect: int
    nonfinite: int                                 # records with NaN/inf samples


@dataclass
class ScoreStrip:
    """Zero-shot scores of one model x label set in the run: one histogram per class."""

    model: str
    label_set: str
    classes: list[str]
    edges: np.ndarray        # (SCORE_BINS + 1,)
    counts: np.ndarray       # (C, SCORE_BINS) records per class and score bin
    medians: np.ndarray      # (C,)
    records: int


@dataclass
class EmbeddingMap:
    """A sample of one model's embeddings in the run with the top class of each record."""

    model: str
    records: int                   # embedded in the run (the map shows up to MAP_POINTS of them)
    vectors: np.ndarray            # (N, D) float32
    top_class: list[str | None]    # (N,) None: the record has no score
    colour_from: str               # "<model> / <label set>" whose scores gave the classes, "" if none


@dataclass
class ReportData:
    output: str                                   # redacted
    run: dict                                     # the run's committed metadata
    runs: list[dict]                              # every committed run, oldest first
    errors: list[tuple[str, str, int]] = field(default_factory=list)   # (stage, error_type, rows)
    error_records: int = 0
    error_examples: list[dict] = field(default_factory=list)
    quality: Quality | None = None
    scores: list[ScoreStrip] = field(default_factory=list)
    maps: list[EmbeddingMap] = field(default_factory=list)
    evaluations: list = field(default_factory=list)   # pyarrow tables: the newest evaluation per model x label set

    @property
    def run_id(self) -> str:
        return self.run["run_id"]


def pick_run(runs: list[dict], output: str, run_id: str | None) -> dict:
    """The run to report: ``run_id``, or the newest committed one."""
    if not runs:
        raise ConfigError(f"{redact(output)} has no committed run yet: nothing to report (run `ecgembed run` "
                          "into it first, or check the OUTPUT path)")
    if run_id is None:
        return runs[-1]
    for run in runs:
        if run.get("run_id") == run_id:
            return run
    latest = ", ".join(r.get("run_id", "?") for r in runs[-5:])
    raise ConfigError(f"--run {run_id}: no committed run of {redact(output)} has that id (latest: {latest}); "
                      "leave --run out for the newest run")


def load(output: str, run_id: str | None = None) -> ReportData:
    runs = read_runs(output)
    run = pick_run(runs, output, run_id)
    data = ReportData(redact(output), run, runs)
    con = connect(output)
    views = {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    rid = run["run_id"]
    tables = {m: SPECS[m].table for m in run.get("models", {}) if m in SPECS}     # model -> embeddings table
    model_tables = [t for t in tables.values() if t in views]
    if S.ERRORS_TABLE in views:
        _load_errors(con, rid, data)
    if model_tables:
        data.quality = _quality(con, rid, model_tables)
    if S.SCORES_TABLE in views:
        data.scores = _scores(con, rid)
    if "evaluation" in views:
        data.evaluations = _evaluations(con)
    label_set = (run.get("config", {}).get("labels") or [None])[0]
    for model in run.get("models", {}):
        table = tables.get(model)
        if table in views:
            data.maps.append(_embedding_map(con, rid, model, table, data.scores, label_set))
    return data


def _load_errors(con: duckdb.DuckDBPyConnection, rid: str, data: ReportData) -> None:
    data.errors = con.execute("""SELECT stage, error_type, count(*) FROM errors WHERE run_id = ?
                                 GROUP BY ALL ORDER BY count(*) DESC, stage, error_type""", [rid]).fetchall()
    data.error_records = con.execute("SELECT count(DISTINCT record_id) FROM errors WHERE run_id = ?",
                                     [rid]).fetchall()[0][0]
    rows = con.execute("""SELECT record_id, coalesce(model, 'every model'), stage, error_type, permanent
                          FROM errors WHERE run_id = ? ORDER BY error_type, record_id, model LIMIT ?""",
                       [rid, ERROR_EXAMPLES]).fetchall()
    keys = ("record_id", "model", "stage", "error_type", "permanent")
    data.error_examples = [dict(zip(keys, row)) for row in rows]


def _quality(con: duckdb.DuckDBPyConnection, rid: str, tables: list[str]) -> Quality:
    """One row per record of the run (both embedding tables carry the same flags)."""
    cols = ("record_id, fs, duration_s, max_abs_mv, median_ptp_mv, coalesce(n_nonfinite, 0) AS n_nonfinite, "
            "coalesce(len(flat_leads), 0) AS n_flat, coalesce(len(derived_leads), 0) AS n_derived, "
            "coalesce(amplitude_suspect, false) AS amplitude_suspect")
    union = " UNION ALL ".join(f"SELECT {cols} FROM {t} WHERE run_id = $rid" for t in tables)
    con.execute(f"CREATE OR REPLACE TEMP VIEW report_quality AS SELECT DISTINCT ON (record_id) * FROM ({union}) "
                "ORDER BY record_id".replace("$rid", _literal(rid)))
    records, suspect, nonfinite = con.execute("""SELECT count(*), count_if(amplitude_suspect), count_if(n_nonfinite > 0)
                                                 FROM report_quality""").fetchall()[0]
    sample = con.execute("""SELECT fs, duration_s, max_abs_mv, median_ptp_mv FROM report_quality
                            ORDER BY hash(record_id) LIMIT ?""", [QUALITY_SAMPLE]).fetchnumpy()

    def counts(column: str) -> list:
        return con.execute(f"SELECT {column}, count(*) FROM report_quality WHERE {column} IS NOT NULL "
                           f"GROUP BY ALL ORDER BY 1").fetchall()

    return Quality(records, {k: _floats(v) for k, v in sample.items()}, counts("fs"), counts("n_flat"),
                   counts("n_derived"), suspect, nonfinite)


def _scores(con: duckdb.DuckDBPyConnection, rid: str) -> list[ScoreStrip]:
    groups = con.execute("""SELECT model, label_set, min(score), max(score), count(DISTINCT record_id)
                            FROM zero_shot_scores WHERE run_id = ? GROUP BY ALL ORDER BY model, label_set""",
                         [rid]).fetchall()
    strips = []
    for model, label_set, low, high, records in groups:
        lo, hi = (0.0, 1.0) if low >= 0.0 and high <= 1.0 else (-1.0, 1.0)   # probabilities or cosines
        classes = con.execute("""SELECT class_index, any_value(class_name), median(score) FROM zero_shot_scores
                                 WHERE run_id = ? AND model = ? AND label_set = ? GROUP BY class_index
                                 ORDER BY class_index""", [rid, model, label_set]).fetchall()
        position = {index: row for row, (index, _, _) in enumerate(classes)}
        counts = np.zeros((len(classes), SCORE_BINS), np.int64)     # (C, B)
        binned = con.execute(f"""SELECT class_index, least(greatest(floor((score - {lo}) / {hi - lo} * {SCORE_BINS}),
                                        0), {SCORE_BINS - 1})::INTEGER AS bin, count(*)
                                 FROM zero_shot_scores WHERE run_id = ? AND model = ? AND label_set = ?
                                 GROUP BY ALL""", [rid, model, label_set]).fetchall()
        for index, b, n in binned:
            counts[position[index], b] = n
        strips.append(ScoreStrip(model, label_set, [c[1] for c in classes], np.linspace(lo, hi, SCORE_BINS + 1),
                                 counts, np.array([c[2] for c in classes], np.float64), records))
    return strips


def _embedding_map(con: duckdb.DuckDBPyConnection, rid: str, model: str, table: str,
                   strips: list[ScoreStrip], label_set: str | None) -> EmbeddingMap:
    records = con.execute(f"SELECT count(*) FROM {table} WHERE run_id = ?", [rid]).fetchall()[0][0]
    got = con.execute(f"SELECT record_id, embedding FROM {table} WHERE run_id = ? ORDER BY hash(record_id), record_id "
                      "LIMIT ?", [rid, MAP_POINTS]).fetchnumpy()
    ids = list(got["record_id"])
    vectors = np.stack(list(got["embedding"])).astype(np.float32) if ids else np.zeros((0, 2), np.float32)  # (N, D)
    source = _colour_source(model, strips, label_set)
    top: dict[str, str] = {}
    if source is not None:
        top = dict(con.execute("""SELECT record_id, arg_max(class_name, score) FROM zero_shot_scores
                                  WHERE run_id = ? AND model = ? AND label_set = ? GROUP BY record_id""",
                               [rid, source.model, source.label_set]).fetchall())
    return EmbeddingMap(model, records, vectors, [top.get(i) for i in ids],
                        f"{source.model} / {source.label_set}" if source else "")


def _colour_source(model: str, strips: list[ScoreStrip], label_set: str | None) -> ScoreStrip | None:
    """The model's own scores of the run's first label set; else another model's; else any scores."""
    ranked = sorted(strips, key=lambda s: (s.model != model, s.label_set != label_set))
    return ranked[0] if ranked else None


def _evaluations(con: duckdb.DuckDBPyConnection) -> list:
    """The rows of the newest ``ecgembed evaluate`` of each model x label set (``evaluation`` table)."""
    newest = con.execute("""SELECT model, label_set, arg_max(run_id, evaluated_at) FROM evaluation
                            GROUP BY ALL ORDER BY model, label_set""").fetchall()
    return [con.sql("SELECT * FROM evaluation WHERE model = ? AND label_set = ? AND run_id = ? "
                    "ORDER BY average DESC, class_index", params=[m, ls, rid]).to_arrow_table()
            for m, ls, rid in newest]


def failed_records(run: dict) -> int:
    """Records of a run that failed for at least one model (older metadata: rows of the errors table)."""
    if run.get("failed_records") is not None:
        return int(run["failed_records"])
    return int((run.get("counts") or {}).get(S.ERRORS_TABLE, 0))


def _floats(values) -> np.ndarray:
    """A fetched column as float64 with NULLs as NaN."""
    if isinstance(values, np.ma.MaskedArray):
        return values.astype(np.float64).filled(np.nan)
    return np.asarray(values, np.float64)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
