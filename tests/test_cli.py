"""The ecgembed command, driven in-process like a user would run it."""

from __future__ import annotations

import json
from importlib import resources

from ecgembed.cli import main


def test_inspect_sample_folder_reports_ok_and_error_rows(capsys):
    samples = str(resources.files("ecgembed") / "samples")
    assert main(["inspect", samples]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_id = {r["record_id"]: r for r in rows}
    assert len(rows) == 6
    assert by_id["broken/E07501"]["status"] == "error" and by_id["broken/E07501"]["error_type"] == "truncated"
    assert by_id["ptbxl/00001_lr"]["fs"] == 100.0 and by_id["ptbxl/00001_lr"]["stored_leads"][3] == "AVR"
    assert "metadata" not in by_id["georgia/E07500"] and "comments" not in by_id["georgia/E07500"]
    assert main(["inspect", "--strict", samples]) == 5
    capsys.readouterr()
    assert main(["inspect", "--show-comments", samples]) == 0
    rows = {r["record_id"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["georgia/E07500"]["metadata"]["diagnosis"] and any(c.startswith("Dx") for c in rows["georgia/E07500"]["comments"])


def test_inspect_single_record_without_extension(ecg_dir, capsys):
    assert main(["inspect", str(ecg_dir / "ptbdb_wfdb-python" / "s0010_re")]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["status"] == "ok" and row["n_samples"] == 38400 and row["fs"] == 1000.0


def test_library_errors_become_one_line_and_exit_2(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing.csv")]) == 2
    assert capsys.readouterr().err.strip() == f"ecgembed: error: manifest '{tmp_path / 'missing.csv'}' does not exist"
