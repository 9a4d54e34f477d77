"""ecgembed.weights: one fetch per node, cached, named by sha256, from every supported source."""

from __future__ import annotations

import hashlib
import os

import pytest

from ecgembed import weights
from ecgembed.errors import WeightsError


@pytest.fixture
def blob(tmp_path):
    data = os.urandom(3 << 20) + b"end"
    folder = tmp_path / "src" / "org" / "repo"
    folder.mkdir(parents=True)
    (folder / "model.bin").write_bytes(data)
    return folder / "model.bin", hashlib.sha256(data).hexdigest()


def test_local_path_and_file_uri(blob, tmp_cache):
    path, sha = blob
    for uri in (str(path), f"file://{path}"):
        got = weights.fetch(uri)
        assert got.path == path and got.sha256 == sha
    # the digest is memoised per (path, size, mtime): a changed file gets a new digest
    path.write_bytes(b"changed")
    assert weights.fetch(str(path)).sha256 == hashlib.sha256(b"changed").hexdigest()


def test_missing_local_file_is_a_weights_error(tmp_path, tmp_cache):
    with pytest.raises(WeightsError, match="no such file"):
        weights.fetch(str(tmp_path / "nope.safetensors"))


def test_s3_download_is_cached(blob, s3, tmp_cache):
    path, sha = blob
    s3.fs.pipe_file(f"{s3.bucket}/weights/model.bin", path.read_bytes())
    first = weights.fetch(s3.url("weights/model.bin"))
    assert first.sha256 == sha and first.path.read_bytes() == path.read_bytes()
    assert str(first.path).startswith(str(tmp_cache))
    mtime = first.path.stat().st_mtime_ns
    s3.fs.rm(f"{s3.bucket}/weights/model.bin")  # a cached file needs no round trip
    again = weights.fetch(s3.url("weights/model.bin"))
    assert again.path == first.path and again.path.stat().st_mtime_ns == mtime and again.sha256 == sha


def test_s3_missing_object(s3, tmp_cache):
    with pytest.raises(WeightsError, match="no such file"):
        weights.fetch(s3.url("weights/does-not-exist.pt"))


def test_https_download(blob, http_server, tmp_cache):
    path, sha = blob
    base = http_server(path.parent)
    got = weights.fetch(f"{base}/model.bin")
    assert got.sha256 == sha and got.path.stat().st_size == path.stat().st_size
    with pytest.raises(WeightsError, match="model-missing.bin"):
        weights.fetch(f"{base}/model-missing.bin")


def test_hf_uri_through_a_local_hub(blob, hf_hub, tmp_cache):
    path, sha = blob
    hf_hub(path.parent.parent.parent)  # serves <src>/org/repo/model.bin
    got = weights.fetch("hf://org/repo/model.bin")
    assert got.sha256 == sha and got.path.read_bytes() == path.read_bytes()


def test_hf_offline_message_says_what_to_do(tmp_cache, monkeypatch):
    import huggingface_hub.constants as hfc

    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match="offline.*local folder"):
        weights.fetch("hf://fuyingw/MELP_Encoder/model.safetensors")


def test_unreachable_server_is_not_reported_as_a_missing_file(tmp_cache):
    from tests.services import free_port

    port = free_port()   # nothing listens there
    with pytest.raises(WeightsError, match="cannot reach the server.*offline"):
        weights.fetch(f"http://127.0.0.1:{port}/model.pt")


def test_a_lock_next_to_the_file_or_one_folder_up_is_checked(blob, tmp_path, tmp_cache):
    path, sha = blob                                    # <src>/org/repo/model.bin
    folder = path.parent.parent                         # the lock sits one folder up: <src>/org
    weights.write_lock(str(folder), {"format": 1, "files": {"repo/model.bin": {"sha256": sha, "size": 1}}})
    assert weights.expected_sha256(str(path)) == sha
    assert weights.lock_for(str(path))["lock"] == str(folder / weights.LOCK_FILE)
    assert weights.fetch(str(path)).sha256 == sha

    path.write_bytes(b"replaced")
    changed = hashlib.sha256(b"replaced").hexdigest()
    with pytest.raises(WeightsError, match=f"{path}: sha256 {changed} does not match {sha} recorded for "
                                           "repo/model.bin"):
        weights.fetch(str(path))

    other = path.parent / "unlisted.bin"                # files the lock does not list are not checked
    other.write_bytes(b"free")
    assert weights.fetch(str(other)).sha256 == hashlib.sha256(b"free").hexdigest()
    assert weights.expected_sha256(str(other)) is None

    (folder / weights.LOCK_FILE).write_text("{not json")
    with pytest.raises(WeightsError, match="not a readable weights lock"):
        weights.fetch(str(other))
