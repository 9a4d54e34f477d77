"""No record can stop a run: an unexpected exception becomes that record's error row."""

from __future__ import annotations

from ecgembed.config import RunConfig
from ecgembed.pipeline import run
from ecgembed.tables.views import connect


def test_a_bug_on_one_record_is_an_internal_error_row_counted_and_settled(ecg_dir, ray_local, tmp_path, monkeypatch):
    archive = tmp_path / "in"
    archive.mkdir()
    for name in ("E07500", "E07501", "E07502"):
        for ext in (".hea", ".mat"):
            (archive / f"{name}{ext}").write_bytes((ecg_dir / "cinc2021_torch-ecg" / f"{name}{ext}").read_bytes())
    monkeypatch.setenv("ECGEMBED_PREPARE_FAULT_HOOK", "tests.faults:bug_for:E07501")
    lines: list[str] = []
    config = dict(inputs=[str(archive)], output=str(tmp_path / "out"), stand_in=True, labels=["cpsc2018"])
    first = run(RunConfig(**config), log_line=lines.append)
    assert first["stats"]["records"]["internal_errors"] == 1
    assert first["stats"]["errors_by_type"] == {"internal_error": 1}
    assert any("1 internal_error row(s)" in line for line in lines)
    con = connect(str(tmp_path / "out"))
    rows = con.execute("SELECT record_id, stage, error_type, message FROM errors").fetchall()
    assert len(rows) == 1
    record_id, stage, error_type, message = rows[0]
    assert (record_id, stage, error_type) == ("E07501", "leads", "internal_error")
    # the exception type and where it was raised, never its message (which could quote file content)
    assert "ZeroDivisionError at faults.py:" in message and "nobody expected" not in message
    assert con.execute("SELECT count(*) FROM melp_current").fetchall()[0][0] == 2
    # the next night does not trip on it again: the record is settled until --full
    monkeypatch.delenv("ECGEMBED_PREPARE_FAULT_HOOK")
    assert run(RunConfig(**config), log_line=lines.append)["selected"] == 0
    assert run(RunConfig(full=True, dry_run=True, **config), log_line=lines.append)["selected"] == 3
