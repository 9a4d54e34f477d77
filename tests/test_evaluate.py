"""Zero-shot evaluation: figures equal scikit-learn's, truth sources, hostile truth, a real output on S3."""

from __future__ import annotations

import csv
import io
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from ecgembed.config import RunConfig
from ecgembed.evaluate import EvaluationError, evaluate, pr_svg, read_truth, roc_svg, summary_lines
from ecgembed.evaluate import mapping, metrics
from ecgembed.evaluate.table import SCHEMA
from ecgembed.tables.delta import storage_options
from ecgembed.labels import BUILTIN_NAMES, builtin_label_set
from ecgembed.pipeline import run
from ecgembed.tables import views

REPO = Path(__file__).resolve().parent.parent
MAPPINGS = REPO / "ecgembed" / "labels" / "mappings"
TOL = 1e-12


def _sk(y, s):
    return roc_auc_score(y, s), average_precision_score(y, s)


# ----------------------------------------------------------------------------------- metrics
def test_figures_equal_sklearn_on_random_inputs_with_ties():
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(300):
        n = int(rng.integers(2, 400))
        y = rng.random(n) < rng.uniform(0.01, 0.9)
        s = np.round(rng.random(n) + 0.3 * y, int(rng.integers(1, 5)))       # few decimals: many ties
        result = metrics.point_metrics(y, s)
        if y.all() or not y.any():
            assert result.status in ("no_positives", "no_negatives") and result.auroc is None
            continue
        auroc, auprc = _sk(y, s)
        assert abs(result.auroc - auroc) <= TOL and abs(result.auprc - auprc) <= TOL
        checked += 1
    assert checked > 250


def test_bootstrap_replicates_are_sklearn_on_the_resampled_records_and_reproducible(monkeypatch):
    rng = np.random.default_rng(5)
    n, n_boot, seed = 150, 60, 11
    y = np.stack([rng.random(n) < p for p in (0.3, 0.0, 0.5)], axis=1)           # (n, 3)
    y[[5, 77], 1] = True                                                           # a rare class: 2 positives
    s = np.round(rng.random((n, 3)) + 0.4 * y, 2)
    subset = np.sort(rng.choice(n, 120, replace=False))                            # class 2: only some records
    labels = [(np.arange(n), y[:, 0], s[:, 0]), (np.arange(n), y[:, 1], s[:, 1]),
              (subset, y[subset, 2], s[subset, 2])]
    first = metrics.evaluate_classes(labels, n, n_boot, seed)
    draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))         # the documented draw
    for c, (pos, yc, sc) in enumerate(labels):
        local = {p: i for i, p in enumerate(pos)}
        ref = {"auroc": [], "auprc": []}
        for row in draws:
            picked = [local[p] for p in row if p in local]
            yy, ss = yc[picked], sc[picked]
            a, p = _sk(yy, ss) if 0 < yy.sum() < len(yy) else (np.nan, np.nan)
            ref["auroc"].append(a)
            ref["auprc"].append(p)
        for metric in ("auroc", "auprc"):
            got, want = first[c].replicates[metric], np.array(ref[metric])
            assert np.array_equal(np.isnan(got), np.isnan(want))
            assert np.nanmax(np.abs(got - want)) <= TOL
            lo, hi = np.percentile(want[~np.isnan(want)], [2.5, 97.5])
            ci = getattr(first[c], f"{metric}_ci")
            assert abs(ci[0] - lo) <= TOL and abs(ci[1] - hi) <= TOL
            assert ci[0] <= getattr(first[c], metric) <= ci[1]
        assert first[c].n_bootstrap_valid == int(np.isfinite(np.array(ref["auroc"])).sum())
    # the rare class loses replicates without a positive; the others keep all
    assert first[1].n_bootstrap_valid < n_boot == first[0].n_bootstrap_valid
    # same seed -> same intervals, even drawn in smaller chunks; another seed -> other intervals
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", n * 7)
    again = metrics.evaluate_classes(labels, n, n_boot, seed)
    assert [r.auroc_ci for r in again] == [r.auroc_ci for r in first]
    other = metrics.evaluate_classes(labels, n, n_boot, seed + 1)
    assert [r.auroc_ci for r in other] != [r.auroc_ci for r in first]
    summary = metrics.macro(first)
    assert summary.auroc == pytest.approx(np.mean([r.auroc for r in first]), abs=TOL)
    assert summary.auroc_ci[0] <= summary.auroc <= summary.auroc_ci[1]


def test_classes_without_positives_or_negatives_get_null_figures_and_a_reason():
    y_none, y_all = np.zeros(20, bool), np.ones(20, bool)
    s = np.linspace(0, 1, 20)
    results = metrics.evaluate_classes([(np.arange(20), y_none, s), (np.arange(20), y_all, s),
                                        (np.arange(0), y_none[:0], s[:0])], 20, 50, 0)
    assert [r.status for r in results] == ["no_positives", "no_negatives", "no_positives"]
    assert all(r.auroc is None and r.auroc_ci is None and r.reason for r in results)
    assert metrics.macro(results).n_classes == 0


# ----------------------------------------------------------------------------------- mappings
def test_mapping_tables_name_real_classes_and_real_codes():
    challenge = {}
    for name in ("dx_mapping_scored.csv", "dx_mapping_unscored.csv"):
        for row in csv.DictReader((MAPPINGS / name).open()):
            challenge[row["SNOMEDCTCode"]] = row["Abbreviation"]
    rows = list(csv.DictReader((MAPPINGS / "snomed_classes.csv").open()))
    assert {r["label_set"] for r in rows} == set(BUILTIN_NAMES)
    for r in rows:
        assert r["class_name"] in builtin_label_set(r["label_set"]).names, r
        assert r["snomed_code"] in challenge, r
        assert r["basis"] in ("abbreviation", "scored-as-same", "cinc2020-cpsc", "cinc2021-ptbxl", "same-finding",
                              "subtype"), r
        if r["basis"] == "abbreviation":
            assert challenge[r["snomed_code"]] == r["class_name"], r
    assert len({(r["label_set"], r["class_name"], r["snomed_code"]) for r in rows}) == len(rows)
    # georgia's 20 classes are Challenge abbreviations: every one is mapped
    codes = mapping.class_codes("georgia", builtin_label_set("georgia").names)
    assert all(codes.values()) and codes["LBBB"] == {"164909002", "733534002"}
    # the early CPSC text labels map to the cpsc2018 class of the same name
    cpsc = mapping.class_codes("cpsc2018", builtin_label_set("cpsc2018").names)
    for token, code in mapping.text_codes().items():
        assert code in cpsc[token], token
    # a user set is matched by code or abbreviation; anything else is unmapped
    user = mapping.class_codes("my-set", ["164889003", "RBBB", "sinus rhythm?"])
    assert user == {"164889003": {"164889003"}, "RBBB": {"59118001", "713427006"}, "sinus rhythm?": frozenset()}
    assert mapping.parse_dx(" 164889003, I-AVB ,foo,,") == ({"164889003", "270492004"}, ["foo"])


def test_docs_list_every_mapping_and_say_what_the_numbers_mean():
    doc = (REPO / "docs" / "evaluation.md").read_text()
    for r in csv.DictReader((MAPPINGS / "snomed_classes.csv").open()):
        line = next((ln for ln in doc.splitlines() if ln.startswith(f"| `{r['label_set']}` | {r['class_name']} |")), "")
        assert r["snomed_code"] in line, f"docs/evaluation.md lacks {r['label_set']}/{r['class_name']}/{r['snomed_code']}"
    for label_set in BUILTIN_NAMES:
        codes = mapping.class_codes(label_set, builtin_label_set(label_set).names)
        unmapped = [c for c, v in codes.items() if not v]
        section = doc.split(f"Unmapped in `{label_set}`", 1)[1].split("\n\n", 1)[0]
        for name in unmapped:
            assert f"`{name}`" in section, (label_set, name)
    assert re.search(r"stand-in weights.{0,80}mean nothing", doc, re.S | re.I)


# ----------------------------------------------------------------------------------- truth sources
def test_header_truth_reads_dx_lines_from_s3_and_reports_every_header_without_one(ecg_dir, s3):
    src = ecg_dir / "cinc2021_torch-ecg"
    good = (src / "E07509.hea").read_bytes()                        # Dx: 59118001 (RBBB), 426177001 (SB)
    files = {
        "t/ok.hea": good,
        "t/text.hea": (ecg_dir / "cpsc2018_cinc2020" / "A0011.hea").read_bytes(),      # #Dx: LBBB
        "t/odd.hea": good.replace(b"# Dx: 59118001,426177001", b"# Dx: 59118001,NotACode"),
        "t/nodx.hea": b"\n".join(ln for ln in good.splitlines() if b"Dx" not in ln) + b"\n",
        "t/garbage.hea": b"\x00\x01\x02\x03 binary",
    }
    for key, data in files.items():
        s3.fs.pipe_file(f"{s3.bucket}/{key}", data)
    s3.fs.invalidate_cache()
    records = {k.split("/")[1][:-4]: s3.url(k) for k in files}
    records["gone"] = s3.url("t/gone.hea")
    records["xml"] = s3.url("t/muse.xml")
    names = builtin_label_set("cpsc2018").names
    truth = read_truth("header", records, "cpsc2018", names)
    assert truth.kind == "header" and not truth.unavailable
    assert set(truth.labels["RBBB"]) == {"ok", "text", "odd"}                      # the others have no truth
    assert truth.labels["RBBB"] == {"ok": True, "text": False, "odd": True}
    assert truth.labels["LBBB"] == {"ok": False, "text": True, "odd": False}
    notes = " | ".join(truth.notes)
    for expected in ("1 record(s) without truth: no '# Dx:' line", "header no longer parses (bad_header)",
                     "header could not be read again (FileNotFoundError)", "not a WFDB record",
                     "'NotACode' x1"):
        assert expected in notes, notes
    chapman = read_truth("header", records, "chapman", builtin_label_set("chapman").names)
    assert chapman.labels["SB"]["ok"] is True and chapman.labels["SB"]["text"] is False
    mimic = read_truth("header", records, "mimic", builtin_label_set("mimic").names)
    assert "normal ECG" in mimic.unavailable and "sinus bradycardia" in mimic.labels


def test_csv_and_ptbxl_truth_files_are_checked(tmp_path):
    records = {"a/1": "x.hea", "a/2": "y.hea", "a/3": "z.hea"}
    names = ["AF", "RBBB", "never"]

    def truth_of(text: str, name="t.csv"):
        path = tmp_path / name
        path.write_text(text)
        return read_truth(str(path), records, "my-set", names)

    got = truth_of("record_id,class,label\na/1,AF,1\na/2,AF,0\na/2,RBBB,true\nother,AF,1\na/3,Typo,1\n")
    assert got.kind == "csv" and got.labels == {"AF": {"a/1": True, "a/2": False}, "RBBB": {"a/2": True}}
    assert got.unavailable == {"never": "no row of the truth CSV names this class"}
    assert any("Typo" in n for n in got.notes) and any("without current scores" in n for n in got.notes)
    for bad, message in (("record_id,class,label\na/1,AF,maybe\n", "is not 1/0/true/false"),
                         ("record_id,class,label\na/1,AF,1\na/1,AF,0\n", "rows 2 and 3 label the same record as both"),
                         ("record_id,class,label\na/1,Foo,1\n", "no row names a class of the label set"),
                         ("id,diagnosis\n1,AF\n", "neither a PTB-XL database"),
                         ("", "no header line")):
        with pytest.raises(EvaluationError, match=message):
            truth_of(bad)
    with pytest.raises(EvaluationError, match="cannot read it"):
        read_truth(str(tmp_path / "missing.csv"), records, "my-set", names)
    # PTB-XL: scp_codes are parsed, never evaluated; ids keep their zeros; records match by path suffix
    ptb = {"records100/00000/00001_lr": "u", "mine/00002_lr": "v", "HR00003": "w"}
    path = tmp_path / "ptbxl_database.csv"
    path.write_text('ecg_id,scp_codes,filename_lr,filename_hr\n'
                    '1,"{\'NORM\': 100.0, \'LVOLT\': 0.0, \'SR\': 0.0}",records100/00000/00001_lr,records500/00000/00001_hr\n'
                    '2,"{\'AFIB\': 100.0}",records100/00000/00002_lr,records500/00000/00002_hr\n')
    truth = read_truth(str(path), ptb, "ptbxl", ["NORM", "SR", "AFIB", "not-a-code"])
    assert truth.kind == "ptbxl" and truth.unavailable == {"not-a-code": "not a PTB-XL SCP statement code"}
    assert truth.labels["NORM"] == {"records100/00000/00001_lr": True}
    assert truth.labels["SR"]["records100/00000/00001_lr"] is True                  # likelihood 0 still listed
    assert any("2 record(s) without truth" in n for n in truth.notes)              # mine/00002_lr, HR00003: no match
    path.write_text('ecg_id,scp_codes,filename_lr\n1,"__import__(\'os\').system(\'true\')",records100/x\n')
    with pytest.raises(EvaluationError, match="not a PTB-XL scp_codes value"):
        read_truth(str(path), ptb, "ptbxl", ["NORM"])


# ----------------------------------------------------------------------------------- a real output
CPSC = [f"A{i:04d}" for i in range(1, 13)]
CINC = [f"E075{i:02d}" for i in range(10)] + [f"JS2000{i}" for i in range(4)]
PTBXL_HR = [f"HR0600{i}" for i in range(5)]


@pytest.fixture(scope="module")
def scored_output(ecg_dir, s3, ray_local):
    """A job output on S3 from real CinC/PTB-XL records, stand-in weights, three label sets (ECGFM-KED
    only: MELP scores zero-shot only with a text tower, which the stand-in weights lack)."""
    puts = {f"cpsc/{n}{e}": ecg_dir / "cpsc2018_cinc2020" / f"{n}{e}" for n in CPSC for e in (".hea", ".mat")}
    puts |= {f"cinc/{n}{e}": ecg_dir / "cinc2021_torch-ecg" / f"{n}{e}" for n in CINC for e in (".hea", ".mat")}
    puts |= {f"records500/06000/{n}{e}": ecg_dir / "cinc2021_torch-ecg" / f"{n}{e}" for n in PTBXL_HR
             for e in (".hea", ".mat")}
    puts |= {f"chapman/JS00001{e}": ecg_dir / "chapman_cinc2021" / f"JS00001{e}" for e in (".hea", ".mat")}
    puts |= {f"records100/00000/00001_lr{e}": ecg_dir / "ptbxl_records100" / f"00001_lr{e}" for e in (".hea", ".dat")}
    for key, path in puts.items():
        s3.fs.pipe_file(f"{s3.bucket}/evaluate/archive/{key}", path.read_bytes())
    s3.fs.invalidate_cache()
    output = s3.url("evaluate/out")
    manifest = run(RunConfig(inputs=[s3.url("evaluate/archive")], output=output, stand_in=True, models=("ecgfm-ked",),
                             labels=["cpsc2018", "chapman", "ptbxl"], progress_interval_s=30, records_per_task=8))
    assert manifest["counts"]["ecgfm_ked_embeddings"] == len(puts) // 2
    return output


def _independent_truth(ecg_dir, label_set: str) -> dict[str, set[str]]:
    """record_id -> positive classes, from the local header files and the CSV mapping read here."""
    rows = list(csv.DictReader((MAPPINGS / "snomed_classes.csv").open()))
    text = {r["token"]: r["snomed_code"] for r in csv.DictReader((MAPPINGS / "dx_text_codes.csv").open())}
    out = {}
    for rid, path in ([(f"cpsc/{n}", ecg_dir / "cpsc2018_cinc2020" / f"{n}.hea") for n in CPSC]
                      + [(f"cinc/{n}", ecg_dir / "cinc2021_torch-ecg" / f"{n}.hea") for n in CINC]
                      + [(f"records500/06000/{n}", ecg_dir / "cinc2021_torch-ecg" / f"{n}.hea") for n in PTBXL_HR]
                      + [("chapman/JS00001", ecg_dir / "chapman_cinc2021" / "JS00001.hea")]):
        dx = re.search(r"^#\s*Dx:\s*(.*)$", path.read_text(), re.M).group(1)
        codes = {text.get(t.strip(), t.strip()) for t in dx.split(",")}
        out[rid] = {r["class_name"] for r in rows if r["label_set"] == label_set and r["snomed_code"] in codes}
    return out


@pytest.mark.parametrize("label_set", ["cpsc2018", "chapman"])
def test_evaluation_of_a_real_output_equals_sklearn(scored_output, ecg_dir, label_set):
    rows = evaluate(scored_output, "header", label_set, bootstrap=40, seed=3)
    positives = _independent_truth(ecg_dir, label_set)
    con = views.connect(scored_output)
    scores = con.sql("SELECT record_id, class_name, score FROM scores_current WHERE model = 'ecgfm-ked' AND "
                     "label_set = ?", params=[label_set]).fetchall()
    by_class: dict[str, dict[str, float]] = {}
    for rid, name, score in scores:
        by_class.setdefault(name, {})[rid] = score
    records = sorted(positives)                                     # 00001_lr has no '# Dx:' line: no truth
    draws = np.random.default_rng(3).integers(0, len(records), size=(40, len(records)))
    table = {r["class_name"]: r for r in rows.to_pylist() if r["average"] == "class"}
    assert set(table) == set(builtin_label_set(label_set).names)
    statuses = set()
    for name, row in table.items():
        y = np.array([name in positives[r] for r in records])
        s = np.array([by_class[name][r] for r in records], np.float64)
        assert (row["n_pos"], row["n_neg"], row["n_records"]) == (y.sum(), (~y).sum(), len(records))
        statuses.add(row["status"])
        if not 0 < y.sum() < len(y):
            assert row["status"] in ("no_positives", "no_negatives") and row["auroc"] is None and row["reason"]
            continue
        assert abs(row["auroc"] - roc_auc_score(y, s)) <= TOL and abs(row["auprc"] - average_precision_score(y, s)) <= TOL
        reps = np.array([_sk(y[d], s[d]) if 0 < y[d].sum() < len(d) else (np.nan, np.nan) for d in draws])
        for k, metric in enumerate(("auroc", "auprc")):
            lo, hi = np.percentile(reps[~np.isnan(reps[:, k]), k], [2.5, 97.5])
            assert abs(row[f"{metric}_lo"] - lo) <= TOL and abs(row[f"{metric}_hi"] - hi) <= TOL
        assert row["bootstrap_valid"] == int((~np.isnan(reps[:, 0])).sum())
    assert "ok" in statuses and "no_positives" in statuses            # e.g. cpsc2018 I-AVB, chapman AF
    macro = next(r for r in rows.to_pylist() if r["average"] == "macro")
    ok = [r for r in table.values() if r["status"] == "ok"]
    assert macro["n_classes"] == len(ok) and abs(macro["auroc"] - np.mean([r["auroc"] for r in ok])) <= TOL
    assert macro["notes"] == ["1 record(s) without truth: no '# Dx:' line in the header"]
    assert macro["truth_source"] == "header" and macro["model_versions"][0].startswith("stand-in")
    lines = summary_lines(rows)
    assert "mean nothing" in lines[-1] and f"ecgfm-ked on {label_set}: macro AUROC" in lines[0]


def test_the_evaluation_table_on_s3_is_appended_once_per_run_with_plots(scored_output, s3):
    from deltalake import DeltaTable

    first = evaluate(scored_output, "header", "cpsc2018", bootstrap=10, run_id="eval-a")
    evaluate(scored_output, "header", "cpsc2018", bootstrap=10, run_id="eval-b")
    uri = scored_output + "/evaluation"
    stored = DeltaTable(uri, storage_options=storage_options(uri)).to_pyarrow_table()
    mine = stored.filter(pc.is_in(stored.column("run_id"), value_set=pa.array(["eval-a", "eval-b"])))
    assert mine.num_rows == 2 * first.num_rows == 2 * 10                          # 9 classes + macro, twice
    assert set(stored.schema.names) == set(SCHEMA.names)
    with pytest.raises(EvaluationError, match="already in"):
        evaluate(scored_output, "header", "cpsc2018", bootstrap=0, run_id="eval-a")
    for kind in ("roc", "pr"):
        svg = s3.fs.cat_file(f"{scored_output[5:]}/_evaluation/eval-a/ecgfm-ked__cpsc2018_{kind}.svg").decode()
        root = ET.fromstring(svg)
        lines = [e for e in root.iter() if e.tag.endswith("polyline")]
        assert len(lines) == sum(r == "ok" for r in first.column("status").to_pylist()[:-1])
        assert "http" not in svg.replace('xmlns="http://www.w3.org/2000/svg"', "") and "<script" not in svg
    assert roc_svg(first) == roc_svg(first) and pr_svg(first) != roc_svg(first)
    with pytest.raises(EvaluationError, match="no current scores for label set 'georgia'"):
        evaluate(scored_output, "header", "georgia", write=False)


def test_ptbxl_and_csv_truth_on_a_real_output(scored_output, ecg_dir, s3, tmp_path):
    # a ptbxl_database.csv in PTB-XL's format: 00001_lr with PTB-XL's statements for ecg_id 1, and
    # the five PTB-XL records of the CinC release, each with the statements its Dx codes map to
    positives = _independent_truth(ecg_dir, "ptbxl")
    lines = ['ecg_id,scp_codes,filename_lr,filename_hr',
             '1,"{\'NORM\': 100.0, \'LVOLT\': 0.0, \'SR\': 0.0}",records100/00000/00001_lr,records500/00000/00001_hr']
    for n in PTBXL_HR:
        codes = ", ".join(f"'{c}': 100.0" for c in sorted(positives[f"records500/06000/{n}"]))
        lines.append(f'{int(n[2:])},"{{{codes}}}",records100/06000/{n}_lr,records500/06000/{n}')
    s3.fs.pipe_file(f"{s3.bucket}/evaluate/ptbxl_database.csv", ("\n".join(lines) + "\n").encode())
    rows = evaluate(scored_output, s3.url("evaluate/ptbxl_database.csv"), "ptbxl", bootstrap=0, write=False)
    table = {r["class_name"]: r for r in rows.to_pylist() if r["average"] == "class"}
    assert all(r["n_records"] == 6 for r in table.values())                       # 6 matched of the 33 scored
    assert table["SR"]["n_pos"] == 6 and table["SR"]["status"] == "no_negatives"
    assert table["NORM"]["n_pos"] == 1 and table["NORM"]["auroc"] is not None
    assert table["NORM"]["auroc_lo"] is None                                      # bootstrap=0: no intervals
    con = views.connect(scored_output)
    got = dict(con.sql("SELECT record_id, score FROM scores_current WHERE model = 'ecgfm-ked' AND label_set = 'ptbxl' "
                       "AND class_name = 'NORM'").fetchall())
    ids = ["records100/00000/00001_lr"] + [f"records500/06000/{n}" for n in PTBXL_HR]
    y, s = np.array([1, 0, 0, 0, 0, 0]), np.array([got[r] for r in ids], np.float64)
    assert abs(table["NORM"]["auroc"] - roc_auc_score(y, s)) <= TOL
    assert rows.column("truth_kind")[0].as_py() == "ptbxl"
    assert rows.column("notes")[0].as_py() == ["27 record(s) without truth: no PTB-XL row whose filename_lr/filename_hr "
                                               "matches the record id"]
    # a label CSV naming two classes for a few records
    path = tmp_path / "labels.csv"
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["record_id", "class", "label"])
    picked = [f"cinc/{n}" for n in CINC[:8]]
    for rid in picked:
        writer.writerow([rid, "SB", int("SB" in _independent_truth(ecg_dir, "chapman")[rid])])
    path.write_text(buf.getvalue())
    rows = evaluate(scored_output, str(path), "chapman", bootstrap=0, write=False)
    table = {r["class_name"]: r for r in rows.to_pylist() if r["average"] == "class"}
    assert table["SB"]["n_records"] == 8 and table["SB"]["status"] == "ok"
    assert {r["status"] for n, r in table.items() if n != "SB"} == {"no_truth"}
