"""What users ask to carry along, end to end: manifest columns (--manifest-columns) and the files'
own patient fields (--metadata, PHI) reach their opt-in tables, and nothing else does.
Also `ecgembed inspect` on a file of every format."""

from __future__ import annotations

import json

from ecgembed.cli import main
from ecgembed.config import RunConfig
from ecgembed.pipeline import run
from ecgembed.tables.views import connect
from tests.ecgs import copy_cinc_records


def test_manifest_columns_and_opted_in_metadata_reach_their_tables_only(ecg_dir, ray_local, tmp_path):
    names = ("E07500", "E07501", "E07502")
    archive = copy_cinc_records(ecg_dir, tmp_path / "in", names)
    manifest = archive / "record_list.csv"
    manifest.write_text("path,site,study_time,patient_id\n"
                        + "".join(f"{n},ward-{i},2026-11-2{i}T08:00,P{i:04d}\n" for i, n in enumerate(names)))
    out = tmp_path / "out"
    run(RunConfig(inputs=[str(manifest)], output=str(out), stand_in=True, labels=["cpsc2018"],
                  manifest_columns=("site", "study_time"), metadata=("sex", "age")))
    con = connect(str(out))
    attributes = sorted(con.execute("SELECT record_id, site, study_time FROM record_attributes_current").fetchall())
    assert attributes == [(n, f"ward-{i}", f"2026-11-2{i}T08:00") for i, n in enumerate(names)]
    columns = {c for (c,) in con.execute("SELECT column_name FROM information_schema.columns "
                                         "WHERE table_name = 'record_attributes'").fetchall()}
    assert "patient_id" not in columns                       # only the columns asked for
    metadata = dict((r, (sex, age)) for r, sex, age in
                    con.execute("SELECT record_id, sex, age FROM record_metadata_current").fetchall())
    for name in names:
        header = (archive / f"{name}.hea").read_text()
        age = next(line.split(":", 1)[1].strip() for line in header.splitlines() if line.startswith("# Age"))
        sex = next(line.split(":", 1)[1].strip() for line in header.splitlines() if line.startswith("# Sex"))
        assert metadata[name] == (sex, age)
    # the fields stay in their table: no other table or the run's manifest holds them
    for table in ("melp_embeddings", "ecgfm_ked_embeddings", "zero_shot_scores", "ledger", "runs"):
        cols = {c for (c,) in con.execute("SELECT column_name FROM information_schema.columns "
                                          f"WHERE table_name = '{table}'").fetchall()}
        assert not cols & {"sex", "age", "site", "study_time"}, table


def test_inspect_prints_format_fs_and_leads_for_every_format(shared_dir, ecg_dir, capsys):
    """One vendor file of each format (the conformance set): its format by content, rate and leads."""
    facts = json.loads((shared_dir / "conformance" / "formats" / "manifest.json").read_text())["files"]
    expected = {"GE MUSE": "muse", "Philips": "philips", "HL7": "aecg", "DICOM": "dicom", "SCP-ECG": "scp",
                "EDF": "edf"}
    seen = set()
    for entry in facts:
        assert main(["inspect", str(ecg_dir / entry["path"])]) == 0, entry["path"]
        row = json.loads(capsys.readouterr().out)
        assert row["status"] == "ok" and row["fs"] == entry["fs"], (entry["path"], row)
        assert row["stored_leads"] == entry["raw_leads"] or len(row["stored_leads"]) >= len(entry["raw_leads"])
        fmt = next(ours for theirs, ours in expected.items() if entry["format"].startswith(theirs))
        assert row["format"] == fmt, (entry["path"], row["format"])
        seen.add(fmt)
    assert seen == set(expected.values())
