"""Discovery: records from a folder/prefix listing or a manifest CSV, locally and on S3."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from ecgembed import discover, read_record
from ecgembed.errors import ConfigError
from ecgembed.sources.discover import Discovery


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


def test_listing_groups_headers_and_accounts_for_other_files(archive):
    refs = discover(str(archive))
    assert isinstance(refs, Discovery) and [r.record_id for r in refs] == EXPECTED_IDS
    assert refs.by_format == {"wfdb": 4} and refs.companions == 5
    assert refs.skipped == {"unknown format": {".txt": 1, ".csv": 1}, "hidden": {".hea": 1}}
    assert refs.summary().endswith("4 records (wfdb 4); 5 companion files; skipped: hidden: 1 file (.hea 1); "
                                   "unknown format: 2 files (.csv 1, .txt 1)")
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

    with pytest.raises(ECGError, match="record file does not exist"):
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


# --------------------------------------------------------------------------- other formats, by content
def test_the_sample_set_is_fully_accounted_for(ecg_dir):
    found = discover(str(ecg_dir))
    n_files = sum(1 for p in ecg_dir.rglob("*") if p.is_file())
    assert len(found) + found.companions + sum(sum(v.values()) for v in found.skipped.values()) == n_files
    assert found.by_format == {"wfdb": 69, "?.xml": 8, "dicom": 2, "scp": 2, "edf": 1}
    assert found.skipped == {"unknown format": {".csv": 2, ".md": 1}}
    ids = {r.record_id for r in found}
    # a MUSE export beside its own WFDB conversion: two records, two ids
    assert {"ge-muse_EGM/muse-sinus", "ge-muse_EGM/muse-sinus.xml", "contec_edf-scp/0000050.ECG.edf"} <= ids


def test_files_without_a_known_extension_are_sniffed(ecg_dir, tmp_path, s3):
    drop = tmp_path / "drop"
    drop.mkdir()
    shutil.copy(ecg_dir / "ecgtoolkit" / "Example.dcm", drop / "IM000001")          # PACS exports: no extension
    shutil.copy(ecg_dir / "hl7-aecg" / "Example aECG.xml", drop / "study.ecgdata")   # unknown extension
    (drop / "blob.bin").write_bytes(b"\x00\x01" * 5000)
    (drop / "report.pdf").write_bytes(b"%PDF-1.4 ...")
    root = s3.put_dir(drop, "sniffed-drop")
    os.mkfifo(drop / "pipe")                     # local only: listed, reported, never opened
    (drop / "zero").symlink_to("/dev/zero")
    local = discover(str(drop))
    assert local.skipped["not a regular file"] == {"(none)": 2}
    for root in (str(drop), root):
        found = discover(root)
        assert [(r.record_id, r.format) for r in found] == [("IM000001", "dicom"), ("study.ecgdata", "aecg")]
        assert found.skipped["unknown format"] == {".bin": 1, ".pdf": 1}
        assert read_record(found[0].uri).format == "dicom" and read_record(found[1].uri).format == "aecg"
    single = discover(str(drop / "IM000001"))           # one extension-less file as the input
    assert [(r.record_id, r.format, r.input_root) for r in single] == [("IM000001", "dicom", str(drop))]


def test_fingerprint_covers_oddly_named_signal_files_but_not_label_tables(tmp_path, ecg_dir):
    folder = tmp_path / "flat"
    folder.mkdir()
    shutil.copy(ecg_dir / "cinc2021_torch-ecg" / "E07500.hea", folder / "E07500.hea")
    (folder / "E07500.hea").write_text((folder / "E07500.hea").read_text().replace("E07500.mat", "signal.raw"))
    shutil.copy(ecg_dir / "cinc2021_torch-ecg" / "E07500.mat", folder / "signal.raw")
    (folder / "labels.csv").write_text("a,b\n")
    before = discover(str(folder))[0].fingerprint
    (folder / "labels.csv").write_text("a,b\n1,2\n")
    assert discover(str(folder))[0].fingerprint == before
    (folder / "signal.raw").write_bytes((folder / "signal.raw").read_bytes()[:-2] + b"\x00\x07")
    assert discover(str(folder))[0].fingerprint != before
    assert read_record(folder / "E07500").n_samples == 5000


# --------------------------------------------------------------------------- zip archives
def _zip_drop(ecg_dir, path):
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(ecg_dir / "ge-muse_EGM" / "muse-sinus.xml", "muse/muse-sinus.xml")
        z.write(ecg_dir / "philips-sierra" / "129DYPRG.XML", "129DYPRG.XML")
        for ext in (".hea", ".mat"):
            z.write(ecg_dir / "cinc2021_torch-ecg" / f"E07500{ext}", f"wfdb/E07500{ext}")
        z.writestr("README.txt", "export of 2024-01-01")
        z.writestr("__MACOSX/._muse-sinus.xml", b"\x00\x05\x16\x07")
        z.writestr("inner.zip", b"PK\x05\x06" + b"\x00" * 18)
        z.writestr("../escape.xml", "<RestingECG/>")
    return path


def test_zip_archive_members_are_records(ecg_dir, tmp_path, s3):
    folder = tmp_path / "nightly"
    folder.mkdir()
    _zip_drop(ecg_dir, folder / "drop.zip")
    expected = ["drop.zip/129DYPRG.XML", "drop.zip/muse/muse-sinus.xml", "drop.zip/wfdb/E07500"]
    for root in (str(folder), s3.put_dir(folder, "zip-drop")):
        found = discover(root)
        assert [r.record_id for r in found] == expected
        assert found[2].uri == f"{root}/drop.zip!/wfdb/E07500.hea" and found[2].format == "wfdb"
        assert found.companions == 1
        assert found.skipped == {"unknown format": {".txt": 1}, "hidden": {".xml": 1}, "nested archive": {".zip": 1},
                                 "unsafe path in archive": {".xml": 1}}
        records = [read_record(r.uri, r.record_id) for r in found]
        assert [r.format for r in records] == ["philips", "muse", "wfdb"]
        np.testing.assert_array_equal(records[1].signal, read_record(ecg_dir / "ge-muse_EGM" / "muse-sinus.xml").signal)
        np.testing.assert_array_equal(records[2].signal, read_record(ecg_dir / "cinc2021_torch-ecg" / "E07500").signal)
    # a single archive as the input; a changed archive changes every member's fingerprint
    single = discover(str(folder / "drop.zip"))
    assert [r.record_id for r in single] == expected
    import zipfile

    with zipfile.ZipFile(folder / "drop.zip", "a") as z:
        z.writestr("extra.txt", "x")
    assert all(a.fingerprint != b.fingerprint for a, b in zip(single, discover(str(folder / "drop.zip"))))


def test_zip_bombs_and_hostile_members_are_error_rows(tmp_path):
    import zipfile

    from ecgembed import ECGError
    from ecgembed.sources import Limits

    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("big.xml", b'<?xml version="1.0"?><RestingECG>' + b" " * 5_000_000 + b"</RestingECG>")
        z.writestr("ok.hea", "ok 1 500 10\nok.dat 16 1000/mV 16 0 0 0 0 I\n")
        z.writestr("ok.dat", b"\x00\x00" * 10)
        z.writestr("esc.hea", "esc 1 500 10\n../../etc/passwd 16 1000/mV 16 0 0 0 0 I\n")
    uri = str(tmp_path / "bomb.zip")
    with pytest.raises(ECGError) as info:
        read_record(f"{uri}!/big.xml", limits=Limits(max_object_bytes=2**20))
    assert info.value.error_type == "too_large"            # refused from the declared size, before inflating
    assert read_record(f"{uri}!/ok.hea").signal.shape == (1, 10)
    with pytest.raises(ECGError) as info:
        read_record(f"{uri}!/esc.hea")
    assert info.value.error_type == "unsafe_path"
    with pytest.raises(ECGError) as info:
        read_record(f"{uri}!/../x.xml")
    assert info.value.error_type == "unsafe_path"
    with pytest.raises(ECGError) as info:
        read_record(f"{uri}!/missing.xml")
    assert info.value.error_type == "missing_file"


def test_manifest_naming_vendor_files_and_archive_members(ecg_dir, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(ecg_dir / "ge-muse_EGM" / "muse-sinus.xml", folder / "a.xml")
    _zip_drop(ecg_dir, folder / "drop.zip")
    (folder / "list.csv").write_text("path\na.xml\ndrop.zip/wfdb/E07500\n")
    found = discover(str(folder / "list.csv"))
    assert [(r.record_id, r.format) for r in found] == [("a.xml", ""), ("drop.zip/wfdb/E07500", "wfdb")]
    assert all(r.fingerprint for r in found)
    assert [read_record(r.uri).format for r in found] == ["muse", "wfdb"]


def test_sidecars_of_single_file_formats_are_companions(tmp_path, monkeypatch):
    """A format may declare optional same-stem sidecars (MATLAB's ``<stem>.json`` rate/lead file):
    they are companions, covered by the record's fingerprint, not skipped files."""
    from scipy.io import savemat

    from ecgembed.sources.formats import matlab

    assert matlab.COMPANION_EXTENSIONS == (".json",)
    savemat(tmp_path / "A0001.mat", {"ECG": {"data": np.zeros((12, 5000)), "sex": "F", "age": 50}})
    (tmp_path / "A0001.json").write_text('{"fs": 500}')
    (tmp_path / "REFERENCE.csv").write_text("Recording,First_label\nA0001,1\n")
    found = discover(str(tmp_path))
    assert [(r.record_id, r.format) for r in found] == [("A0001.mat", "matlab")]
    assert found.companions == 1 and found.skipped == {"unknown format": {".csv": 1}}
    before = found[0].fingerprint
    (tmp_path / "A0001.json").write_text('{"fs": 250}')
    assert discover(str(tmp_path))[0].fingerprint != before
