"""The opt-in tables: record metadata (--metadata, possibly PHI) and manifest attributes."""

from __future__ import annotations

import pytest

from ecgembed.tables import schemas as S
from ecgembed.tables.views import connect
from tests.tables.batches import model_runs, nightly, refs

RUNS = model_runs()


def test_metadata_and_attributes_tables_only_when_asked(tmp_path):
    output = str(tmp_path / "out")
    nightly(output, "plain", refs(2), RUNS)
    assert not (tmp_path / "out" / S.RECORD_METADATA_TABLE).exists()
    assert not (tmp_path / "out" / S.RECORD_ATTRIBUTES_TABLE).exists()

    ids = [r.record_id for r in refs(4)]
    first = nightly(output, "meta1", refs(4, fingerprint="fp2"), RUNS, record_errors={ids[3]: "truncated"},
                    metadata={"sex": {i: "F" for i in ids}, "age": {ids[0]: "61"}},
                    attributes={"site": {i: "north" for i in ids[:2]}})
    assert first["counts"][S.RECORD_METADATA_TABLE] == 3                  # the record that could not be read has none
    assert first["counts"][S.RECORD_ATTRIBUTES_TABLE] == 4
    con = connect(output)
    assert con.execute("SELECT record_id, sex, age FROM record_metadata_current ORDER BY ALL").fetchall() == [
        (ids[0], "F", "61"), (ids[1], "F", None), (ids[2], "F", None)]
    assert con.execute("SELECT count(*) FROM record_attributes_current WHERE site IS NULL").fetchone()[0] == 2

    # a later run asks for one more field: the column is added, earlier rows read it as null
    nightly(output, "meta2", refs(4, fingerprint="fp3"), RUNS, metadata={"sex": {ids[0]: "M"}, "weight": {ids[0]: "80"}})
    con = connect(output)
    assert con.execute(f"SELECT sex, age, weight, run_id FROM record_metadata_current WHERE record_id = '{ids[0]}'"
                       ).fetchall() == [("M", None, "80", "meta2")]
    assert con.execute("SELECT count(*) FROM record_metadata WHERE weight IS NULL").fetchone()[0] == 3 + 3


def test_a_column_name_every_engine_accepts():
    assert S.check_column_name("ecg_site_2") == "ecg_site_2"
    for bad in ("run_id", "2nd", "a-b", "x" * 65, "name; DROP"):
        with pytest.raises(ValueError, match="column name"):
            S.check_column_name(bad)
