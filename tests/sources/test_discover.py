"""Discovery: records from a folder/prefix listing or a manifest CSV, locally and on S3."""

from __future__ import annotations

import shutil

import pytest

from ecgembed import discover, read_record
from ecgembed.errors import ConfigError


@pytest.fixture
def archive(ecg_dir, tmp_path):
    """A MIMIC-IV-ECG-like tree of real records plus files that are not records."""
    root = tmp_path / "mimic"
    for i, name in enumerate(("E07500", "E07501", "HR06000")):
        folder = root / "files" / f"p100{i}" / f"p100000{i}" / f"s4000000{i}"
        folder.mkdir(parents=True)
        for ext in (".hea", ".mat"):
            shutil.copy(ecg_dir / "cinc2021_torch-ecg" / (name + ext), folder / (name + ext))
    shutil.copy(ecg_dir / "ptbdb_wfdb-python" / "s0010_re.hea", root / "s0010_re.hea")
    for ext in (".dat", ".xyz"):
        shutil.copy(ecg_dir / "ptbdb_wfdb-python" / ("s0010_re" + ext), root / ("s0010_re" + ext))
    (root / "README.txt").write_text("not a record")
    (root / "machine_measurements.csv").write_text("subject_id,study_id\n")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.hea").write_text("junk")
    return root


EXPECTED_IDS = ["files/p1000/p1000000/s40000000/E07500", "files/p1001/p1000001/s40000001/E07501",
                "files/p1002/p1000002/s40000002/HR06000", "s0010_re"]


def test_listing_groups_headers_and_ignores_other_files(archive):
    refs = discover(str(archive))
    assert [r.record_id for r in refs] == EXPECTED_IDS
    assert all(r.uri.endswith(".hea") and r.input_root == str(archive) for r in refs)
    # the PTB record's two signal files come with its header
    rec = read_record(refs[-1].uri, refs[-1].record_id)
    assert rec.record_id == "s0010_re" and rec.signal.shape[0] == 15


def test_listing_on_s3(archive, s3):
    root = s3.put_dir(archive, "discover-test/mimic")
    refs = discover(root)
    assert [r.record_id for r in refs] == EXPECTED_IDS
    assert refs[0].uri == f"{root}/{EXPECTED_IDS[0]}.hea"
    assert read_record(refs[0].uri).signal.shape == (12, 5000)


def test_fingerprint_changes_when_a_signal_file_is_reuploaded(archive):
    before = {r.record_id: r.fingerprint for r in discover(str(archive))}
    mat = archive / "files" / "p1000" / "p1000000" / "s40000000" / "E07500.mat"
    mat.write_bytes(mat.read_bytes()[:-2] + b"\x00\x01")
    after = {r.record_id: r.fingerprint for r in discover(str(archive))}
    assert [k for k in before if before[k] != after[k]] == [EXPECTED_IDS[0]]


def test_manifest_csv_like_mimic_record_list(archive, s3):
    (archive / "record_list.csv").write_text(
        "subject_id,study_id,file_name,ecg_time,path\n"
        + "".join(f"1,2,3,2180-07-23,{rid}\n" for rid in EXPECTED_IDS[:3])
        + "1,2,3,2180-07-23,files/p9999/p9999999/s9/missing\n")
    for root in (str(archive), s3.put_dir(archive, "manifest-test")):
        refs = discover(root.rstrip("/") + "/record_list.csv")
        assert [r.record_id for r in refs] == EXPECTED_IDS[:3] + ["files/p9999/p9999999/s9/missing"]
        assert read_record(refs[1].uri).fs == 500
    # a manifest row without files is discovered, so it will end up in the errors table
    from ecgembed import ECGError

    with pytest.raises(ECGError, match="header file does not exist"):
        read_record(refs[-1].uri)


def test_manifest_csv_like_ptbxl_database(archive):
    (archive / "ptbxl_database.csv").write_text(
        "ecg_id,patient_id,filename_lr,filename_hr\n"
        f"1,1,x_lr,{EXPECTED_IDS[0]}\n2,1,y_lr,{EXPECTED_IDS[2]}.hea\n")
    refs = discover(str(archive / "ptbxl_database.csv"))
    assert [r.record_id for r in refs] == [EXPECTED_IDS[0], EXPECTED_IDS[2]]
    refs = discover(str(archive / "ptbxl_database.csv"), manifest_column="filename_lr")
    assert [r.record_id for r in refs] == ["x_lr", "y_lr"]


def test_manifest_without_a_path_column(archive):
    (archive / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="no record-path column"):
        discover(str(archive / "bad.csv"))


def test_missing_input(tmp_path, s3):
    with pytest.raises(ConfigError, match="does not exist"):
        discover(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="does not exist"):
        discover(s3.url("no/such/prefix"))


def test_single_header_uri(ecg_dir):
    refs = discover(str(ecg_dir / "cinc2021_torch-ecg" / "E07500.hea"))
    assert [r.record_id for r in refs] == ["E07500"]
