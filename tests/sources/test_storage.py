"""storage.py, the one boundary to files and object stores: bounded reads, exclusive create, redaction."""

from __future__ import annotations

import os

import pytest

from ecgembed import storage


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "small.bin").write_bytes(b"0123456789")
    (tmp_path / "empty.bin").write_bytes(b"")
    (tmp_path / "big.bin").write_bytes(b"x" * 300_000)
    return tmp_path


def _check_bounded_reads(base: str):
    join = lambda name: f"{base}/{name}"   # noqa: E731
    assert storage.read(join("small.bin"), 10) == b"0123456789"
    with pytest.raises(storage.ObjectTooLarge):
        storage.read(join("small.bin"), 9)
    assert storage.read_head(join("big.bin"), 4) == b"xxxx"
    assert storage.read_head(join("small.bin"), 100) == b"0123456789"
    assert storage.read_head(join("empty.bin"), 100) == b""
    assert storage.read(join("empty.bin"), 10) == b""
    got = storage.read_many([join("small.bin"), join("missing.bin"), join("big.bin")], max_bytes=1000,
                            prefix={join("small.bin"): 3})
    assert got[join("small.bin")] == b"012"
    assert isinstance(got[join("missing.bin")], FileNotFoundError)
    assert isinstance(got[join("big.bin")], storage.ObjectTooLarge)


def test_bounded_reads_local(folder):
    _check_bounded_reads(str(folder))


def test_bounded_reads_s3(folder, s3):
    _check_bounded_reads(s3.put_dir(folder, "storage-bounded"))


def test_bounded_reads_http(folder, http_server):
    _check_bounded_reads(http_server(folder))


def test_only_regular_local_files_are_read(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "dir").mkdir()
    (tmp_path / "zero").symlink_to("/dev/zero")
    got = storage.read_many([str(fifo), str(tmp_path / "dir"), str(tmp_path / "zero"), "/dev/zero"], max_bytes=100)
    kinds = [getattr(got[u], "kind", type(got[u]).__name__) for u in got]
    assert kinds == ["FIFO", "directory", "device", "device"]      # refused at once: no block, no endless read


def test_redact_removes_userinfo_and_signed_query_parameters():
    url = ("https://user:secret@host.example/a/b.hea?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA%2F1&"
           "X-Amz-Signature=abc123&X-Amz-Security-Token=tok&version=2&sig=s&token=t&api_key=k")
    shown = storage.redact(url)
    assert shown == "https://host.example/a/b.hea?X-Amz-Algorithm=AWS4&version=2"
    for secret in ("user", "secret", "AKIA", "abc123", "tok"):
        assert secret not in shown
    assert storage.redact("s3://bucket/key.hea") == "s3://bucket/key.hea"
    assert storage.redact("/local/path with spaces/x.hea") == "/local/path with spaces/x.hea"


@pytest.mark.parametrize("name, ok", [
    ("rec.dat", True), ("rec 1.dat", True), ("~", True), ("..", False), (".", False), ("", False),
    ("../rec.dat", False), ("/dev/zero", False), ("s3://b/k", False), ("a\\b", False), ("a\x00b", False),
])
def test_bare_names(name, ok):
    assert storage.is_bare_name(name) is ok
    if not ok:
        with pytest.raises(ValueError):
            storage.child("/data", name)


def _check_writes(base: str):
    target = f"{base}/w/lock.json"
    storage.create_exclusive(target, b"one")
    with pytest.raises(FileExistsError):
        storage.create_exclusive(target, b"two")
    assert storage.read(target, 10) == b"one"
    storage.write_atomic(target, b"three")
    assert storage.read(target, 10) == b"three"
    storage.move(target, f"{base}/w/moved.json")
    assert not storage.exists(target) and storage.read(f"{base}/w/moved.json", 10) == b"three"
    storage.remove(f"{base}/w/moved.json")
    storage.remove(f"{base}/w/moved.json")          # missing_ok
    with pytest.raises(FileNotFoundError):
        storage.remove(f"{base}/w/moved.json", missing_ok=False)


def test_writes_local(tmp_path):
    _check_writes(str(tmp_path))


def test_writes_s3(s3):
    _check_writes(s3.url("storage-writes"))


def test_exclusive_create_refused_where_unsupported(http_server, tmp_path):
    with pytest.raises(storage.ExclusiveCreateUnsupported, match="no create-if-absent"):
        storage.create_exclusive(http_server(tmp_path) + "/lock", b"x")


def test_local_atomic_write_leaves_no_temp_files(tmp_path):
    path = tmp_path / "cache" / "features.npy"
    storage.write_local_atomic(path, b"a" * 10)
    storage.write_local_atomic(path, b"b" * 5)
    assert path.read_bytes() == b"bbbbb" and os.listdir(path.parent) == ["features.npy"]


def test_listing_local_and_s3(folder, s3):
    for root in (str(folder), s3.put_dir(folder, "storage-listing")):
        entries = storage.listing(root)
        assert [e.rel for e in entries] == ["big.bin", "empty.bin", "small.bin"]
        assert [e.size for e in entries] == [300_000, 0, 10] and all(e.version for e in entries)
    with pytest.raises(FileNotFoundError):
        storage.listing(str(folder / "nope"))
