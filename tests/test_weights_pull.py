"""ecgembed weights pull: pinned artefacts staged into a folder or bucket, locked by sha256.

The real files (Hub, Zenodo) are unreachable here, so small stand-ins are served by the
loopback fixtures: the MELP and Bio_ClinicalBERT files by the fake Hugging Face Hub under their
real repo names (so the pinned ``hf://...@revision`` URIs themselves are exercised), the
ECGFM-KED checkpoint over HTTP through the documented sources override. One test pulls the
MELP conformance checkpoint in its released layout and loads it through the pulled folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from ecgembed import storage, weights, weights_pull
from ecgembed.errors import ConfigError, WeightsError
from ecgembed.models.ecgfm_ked import config as ked_config
from ecgembed.models.melp import config as melp_config
from tests.conftest import FAKE_HF_COMMIT
from tests.services import free_port

KED_FILE = ked_config.WEIGHTS_FILE
ALL_FILES = ("melp/model.safetensors", "melp/config.json", f"ecgfm-ked/{KED_FILE}",
             "ecgfm-ked-text/config.json", "ecgfm-ked-text/vocab.txt")


class Mirror:
    """Stand-in artefacts on the fake hub + an HTTP server; ``sources`` is the override to pass."""

    def __init__(self, root: Path, http_server, hf_hub):
        self.hub = root / "hub"
        self.web = root / "web"
        self.blobs = {
            "melp/model.safetensors": os.urandom(3 << 20) + b"melp",
            "melp/config.json": b'{"model_type": "melp", "n_queries_contrast": 14}',
            f"ecgfm-ked/{KED_FILE}": os.urandom(5 << 20) + b"ked",
            "ecgfm-ked-text/config.json": b'{"hidden_size": 768}',
            "ecgfm-ked-text/vocab.txt": b"[PAD]\n[CLS]\n[SEP]\nheart\n",
        }
        self.where = {"melp": self.hub / "fuyingw" / "MELP_Encoder", "ecgfm-ked": self.web / "records",
                      "ecgfm-ked-text": self.hub / "emilyalsentzer" / "Bio_ClinicalBERT"}
        for rel, data in self.blobs.items():
            self.put(rel, data)
        hf_hub(self.hub)
        self.sources = {"ecgfm-ked": f"{http_server(self.web)}/records/{KED_FILE}"}

    def put(self, rel: str, data: bytes) -> None:
        name, file = rel.split("/")
        self.where[name].mkdir(parents=True, exist_ok=True)
        (self.where[name] / file).write_bytes(data)

    def remove(self, rel: str) -> None:
        name, file = rel.split("/")
        (self.where[name] / file).unlink()

    def sha(self, rel: str) -> str:
        return hashlib.sha256(self.blobs[rel]).hexdigest()


@pytest.fixture
def mirror(tmp_path, http_server, hf_hub):
    return Mirror(tmp_path / "mirror", http_server, hf_hub)


def _dead_sources() -> dict[str, str]:
    """Sources nobody serves: a pull that only verifies must never touch them."""
    dead = f"http://127.0.0.1:{free_port()}"
    return {"melp": f"{dead}/melp", "ecgfm-ked": f"{dead}/{KED_FILE}", "ecgfm-ked-text": f"{dead}/text"}


# --------------------------------------------------------------------------- local folder
def test_pull_into_a_folder_writes_the_layout_and_the_lock(mirror, tmp_path, tmp_cache):
    dest = tmp_path / "weights"
    calls = []
    result = weights_pull.pull(str(dest), progress=lambda *a: calls.append(a), sources=mirror.sources)

    assert sorted(result["files"]) == sorted(ALL_FILES)
    assert {f["status"] for f in result["files"].values()} == {"downloaded"}
    for rel in ALL_FILES:
        assert (dest / rel).read_bytes() == mirror.blobs[rel]
    assert not list(dest.rglob("*.partial"))

    lock = json.loads((dest / "weights.lock.json").read_text())
    assert lock["format"] == 1 and sorted(lock["files"]) == sorted(ALL_FILES)
    for rel, entry in lock["files"].items():
        assert entry["sha256"] == mirror.sha(rel) and entry["size"] == len(mirror.blobs[rel])
    melp = lock["files"]["melp/model.safetensors"]
    assert melp["pin"] == melp["source"] == "hf://fuyingw/MELP_Encoder@2518c74/model.safetensors"
    assert melp["revision"] == FAKE_HF_COMMIT          # the full commit the hub resolved the pin to
    assert melp["license"] == "Apache-2.0"
    ked = lock["files"][f"ecgfm-ked/{KED_FILE}"]
    assert ked["pin"] == ked_config.DEFAULT_WEIGHTS_URI and ked["source"] == mirror.sources["ecgfm-ked"]
    assert ked["revision"] == "zenodo:14881564"
    vocab = lock["files"]["ecgfm-ked-text/vocab.txt"]
    assert vocab["pin"] == f"{ked_config.DEFAULT_TEXT_MODEL}/vocab.txt" and vocab["license"] == "MIT"

    # progress: starts at 0 and ends at the file's size, for every file
    for rel in ALL_FILES:
        mine = [(done, total) for name, done, total in calls if name == rel]
        assert mine[0] == (0, len(mirror.blobs[rel])) and mine[-1] == (len(mirror.blobs[rel]),) * 2

    uris = weights_pull.weights_dir_uris(str(dest))
    assert uris == result["uris"] == {"melp": str(dest / "melp"), "ecgfm-ked": str(dest / "ecgfm-ked" / KED_FILE),
                                      "ecgfm-ked-text": str(dest / "ecgfm-ked-text")}
    assert weights.fetch(uris["ecgfm-ked"]).sha256 == mirror.sha(f"ecgfm-ked/{KED_FILE}")


def test_second_pull_verifies_and_downloads_nothing(mirror, tmp_path, tmp_cache):
    dest = tmp_path / "weights"
    weights_pull.pull(str(dest), sources=mirror.sources)
    lock_before = (dest / "weights.lock.json").read_bytes()
    mtimes = {rel: (dest / rel).stat().st_mtime_ns for rel in ALL_FILES}

    calls = []
    again = weights_pull.pull(str(dest), progress=lambda *a: calls.append(a), sources=_dead_sources())
    assert {f["status"] for f in again["files"].values()} == {"verified"}
    assert calls == []
    assert (dest / "weights.lock.json").read_bytes() == lock_before
    assert {rel: (dest / rel).stat().st_mtime_ns for rel in ALL_FILES} == mtimes


def test_an_interrupted_pull_resumes_where_it_stopped(mirror, tmp_path, tmp_cache):
    dest = tmp_path / "weights"
    mirror.remove("ecgfm-ked-text/vocab.txt")   # the last file fails to download
    with pytest.raises(WeightsError, match=r"Bio_ClinicalBERT@d5892b39\w+/vocab\.txt: cannot fetch it"):
        weights_pull.pull(str(dest), sources=mirror.sources)
    lock = json.loads((dest / "weights.lock.json").read_text())
    assert sorted(lock["files"]) == sorted(ALL_FILES[:4])          # every finished file is locked
    assert not (dest / "ecgfm-ked-text" / "vocab.txt").exists() and not list(dest.rglob("*.partial"))
    with pytest.raises(WeightsError, match="the pull did not finish.*vocab.txt"):
        weights_pull.weights_dir_uris(str(dest))

    mirror.put("ecgfm-ked-text/vocab.txt", mirror.blobs["ecgfm-ked-text/vocab.txt"])
    result = weights_pull.pull(str(dest), sources=mirror.sources)
    assert {rel: f["status"] for rel, f in result["files"].items()} == {
        **{rel: "verified" for rel in ALL_FILES[:4]}, "ecgfm-ked-text/vocab.txt": "downloaded"}
    weights_pull.weights_dir_uris(str(dest))


def test_a_tampered_file_is_refused_on_load_and_on_pull(mirror, tmp_path, tmp_cache):
    dest = tmp_path / "weights"
    weights_pull.pull(str(dest), sources=mirror.sources)
    uris = weights_pull.weights_dir_uris(str(dest))
    ked = Path(uris["ecgfm-ked"])
    locked = mirror.sha(f"ecgfm-ked/{KED_FILE}")
    data = bytearray(ked.read_bytes())
    data[1000] ^= 0xFF                                    # same size, one byte flipped
    ked.write_bytes(bytes(data))
    tampered = hashlib.sha256(data).hexdigest()

    with pytest.raises(WeightsError) as info:
        weights.fetch(uris["ecgfm-ked"])
    message = str(info.value)
    assert str(ked) in message and tampered in message and locked in message
    assert f"ecgfm-ked/{KED_FILE}" in message and "weights.lock.json" in message

    with pytest.raises(WeightsError, match=f"sha256 {tampered} does not match {locked}"):
        weights_pull.pull(str(dest), sources=mirror.sources)
    assert weights.expected_sha256(uris["ecgfm-ked"]) == locked      # the lock is never rewritten

    ked.unlink()                                          # the documented fix: delete and pull again
    result = weights_pull.pull(str(dest), sources=mirror.sources)
    assert result["files"][f"ecgfm-ked/{KED_FILE}"]["status"] == "downloaded"
    assert weights.fetch(uris["ecgfm-ked"]).sha256 == locked


def test_a_source_serving_other_bytes_than_the_lock_is_refused(mirror, tmp_path, tmp_cache):
    dest = tmp_path / "weights"
    weights_pull.pull(str(dest), sources=mirror.sources)
    (dest / "melp" / "config.json").unlink()
    mirror.put("melp/config.json", b'{"model_type": "melp", "changed": true}')
    with pytest.raises(WeightsError, match=r"source no longer serves the file first pulled; nothing was written"):
        weights_pull.pull(str(dest), sources=mirror.sources)
    assert not (dest / "melp" / "config.json").exists() and not list(dest.rglob("*.partial"))


def test_a_folder_pulled_at_another_pin_is_never_overwritten(mirror, tmp_path, tmp_cache):
    dest = tmp_path / "weights"
    weights_pull.pull(str(dest), sources=mirror.sources)
    lock = json.loads((dest / "weights.lock.json").read_text())
    lock["files"]["melp/model.safetensors"]["pin"] = "hf://fuyingw/MELP_Encoder@0000000/model.safetensors"
    (dest / "weights.lock.json").write_text(json.dumps(lock))
    with pytest.raises(WeightsError, match=r"pulled from hf://fuyingw/MELP_Encoder@0000000.* pins "
                                           r"hf://fuyingw/MELP_Encoder@2518c74.*new folder"):
        weights_pull.pull(str(dest), sources=mirror.sources)


# --------------------------------------------------------------------------- S3
def test_pull_into_s3_streams_locks_and_verifies(mirror, s3, tmp_path, tmp_cache, monkeypatch):
    prefix = f"pulled-{uuid.uuid4().hex[:8]}"
    dest = s3.url(prefix)
    result = weights_pull.pull(dest, sources=mirror.sources)
    assert {f["status"] for f in result["files"].values()} == {"downloaded"}
    for rel in ALL_FILES:
        assert s3.fs.cat_file(f"{s3.bucket}/{prefix}/{rel}") == mirror.blobs[rel]
    lock = json.loads(s3.fs.cat_file(f"{s3.bucket}/{prefix}/weights.lock.json"))
    assert {rel: e["sha256"] for rel, e in lock["files"].items()} == {rel: mirror.sha(rel) for rel in ALL_FILES}

    uris = weights_pull.weights_dir_uris(dest)
    assert uris["ecgfm-ked"] == f"{dest}/ecgfm-ked/{KED_FILE}"
    # the locked digest is known without downloading the 1.3 GB file (a cheap model_version)
    assert weights.expected_sha256(uris["ecgfm-ked"]) == mirror.sha(f"ecgfm-ked/{KED_FILE}")
    assert not (tmp_cache / "files").exists()
    assert weights.fetch(uris["ecgfm-ked"]).sha256 == mirror.sha(f"ecgfm-ked/{KED_FILE}")

    again = weights_pull.pull(dest, sources=_dead_sources())
    assert {f["status"] for f in again["files"].values()} == {"verified"}

    # a replaced object is refused by a node that has not cached it, and the bad copy is not kept
    key = f"{s3.bucket}/{prefix}/ecgfm-ked-text/vocab.txt"
    s3.fs.pipe_file(key, b"[PAD]\n[CLS]\n[SEP]\nother\n")
    monkeypatch.setenv("ECGEMBED_CACHE", str(tmp_path / "other-node-cache"))
    vocab_uri = storage.join(uris["ecgfm-ked-text"], "vocab.txt")
    with pytest.raises(WeightsError, match=f"does not match {mirror.sha('ecgfm-ked-text/vocab.txt')}"):
        weights.fetch(vocab_uri)
    with pytest.raises(WeightsError, match="does not match"):
        weights_pull.pull(dest, sources=_dead_sources())
    s3.fs.pipe_file(key, mirror.blobs["ecgfm-ked-text/vocab.txt"])    # restored: loads again
    assert weights.fetch(vocab_uri).sha256 == mirror.sha("ecgfm-ked-text/vocab.txt")


def test_an_s3_upload_that_fails_its_checks_is_never_published(mirror, s3, tmp_cache):
    """The multipart upload is completed only after size and digest are checked; else aborted."""
    prefix = f"refused-{uuid.uuid4().hex[:8]}"
    dest = s3.url(prefix)
    weights_pull.pull(dest, sources=mirror.sources)
    key = f"{s3.bucket}/{prefix}/ecgfm-ked/{KED_FILE}"
    s3.fs.rm(key)
    mirror.put(f"ecgfm-ked/{KED_FILE}", os.urandom(9 << 20))     # other bytes, two S3 parts
    with pytest.raises(WeightsError, match="source no longer serves the file first pulled; nothing was written"):
        weights_pull.pull(dest, sources=mirror.sources)
    s3.fs.invalidate_cache()
    assert not s3.fs.exists(key)


# --------------------------------------------------------------------------- a real layout
def test_melp_loaded_through_a_pulled_folder_equals_a_direct_load(melp_weights_dir, shared_dir, tmp_path,
                                                                 tmp_cache):
    """The released MELP layout, pulled (from a local mirror) and loaded via the --weights-dir URIs."""
    from ecgembed.models.ecgfm_ked.text import text_model_files
    from ecgembed.models.melp import load_melp

    tiny_bert = shared_dir / "conformance" / "ecgfm-ked" / "tiny_bert"
    ked = tmp_path / "mirror" / KED_FILE
    ked.parent.mkdir()
    ked.write_bytes(b"not loaded in this test")
    dest = tmp_path / "weights"
    weights_pull.pull(str(dest), sources={"melp": str(melp_weights_dir), "ecgfm-ked": str(ked),
                                          "ecgfm-ked-text": str(tiny_bert)})
    uris = weights_pull.weights_dir_uris(str(dest))

    direct, pulled = load_melp(str(melp_weights_dir)), load_melp(uris["melp"])
    assert pulled.model_version == direct.model_version
    assert weights.expected_sha256(storage.join(uris["melp"], "model.safetensors")) == direct.model_version
    x = np.load(shared_dir / "conformance" / "melp" / "inputs.npy")[:1]
    a, b = direct.embed(x), pulled.embed(x)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert text_model_files(uris["ecgfm-ked-text"]).fingerprint == text_model_files(str(tiny_bert)).fingerprint


# --------------------------------------------------------------------------- options
def test_sources_come_from_the_environment_and_unknown_names_are_refused(mirror, tmp_path, tmp_cache,
                                                                         monkeypatch):
    monkeypatch.setenv(weights_pull.SOURCES_ENV, f"ecgfm-ked={mirror.sources['ecgfm-ked']}")
    result = weights_pull.pull(str(tmp_path / "weights"))
    assert result["files"][f"ecgfm-ked/{KED_FILE}"]["source"] == mirror.sources["ecgfm-ked"]

    assert weights_pull.parse_sources(" melp=s3://m/melp , ecgfm-ked=https://h/x.pt?a=b ") == {
        "melp": "s3://m/melp", "ecgfm-ked": "https://h/x.pt?a=b"}
    with pytest.raises(ConfigError, match="'melp' is not NAME=URI"):
        weights_pull.parse_sources("melp")
    monkeypatch.setenv(weights_pull.SOURCES_ENV, "bert=s3://m/bert")
    with pytest.raises(ConfigError, match="unknown weights source name.*bert.*known: melp"):
        weights_pull.pull(str(tmp_path / "other"))


def test_bad_destinations(tmp_path, tmp_cache):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        weights_pull.pull(str(afile))
    with pytest.raises(ConfigError, match="local folder or s3://"):
        weights_pull.pull("https://example.org/weights")
    with pytest.raises(WeightsError, match=r"no weights\.lock\.json.*ecgembed weights pull"):
        weights_pull.weights_dir_uris(str(tmp_path))


def test_loaders_default_to_the_pinned_revisions():
    from ecgembed.models.ecgfm_ked import DEFAULT_TEXT_MODEL
    from ecgembed.models.melp import DEFAULT_WEIGHTS_URI

    assert DEFAULT_WEIGHTS_URI == melp_config.DEFAULT_WEIGHTS_URI == "hf://fuyingw/MELP_Encoder@2518c74"
    assert DEFAULT_TEXT_MODEL == "hf://emilyalsentzer/Bio_ClinicalBERT@d5892b39a4adaed74b92212a44081509db72f87b"
    assert {a.name: a.pin for a in weights_pull.artefacts()} == {
        "melp": DEFAULT_WEIGHTS_URI, "ecgfm-ked": ked_config.DEFAULT_WEIGHTS_URI, "ecgfm-ked-text": DEFAULT_TEXT_MODEL}


# --------------------------------------------------------------------------- progress lines
def test_progress_printer_writes_a_line_every_5_percent_or_10_seconds():
    out, now = io.StringIO(), [0.0]
    printer = weights_pull.ProgressPrinter(out, clock=lambda: now[0])
    total = 200_000_000
    printer("ecgfm-ked/x.pt", 0, total)
    for done in range(1_000_000, total + 1, 1_000_000):     # 200 chunks, 0.05 s apart
        now[0] += 0.05
        printer("ecgfm-ked/x.pt", done, total)
    lines = out.getvalue().splitlines()
    assert lines[0] == "[ecgembed] weights: ecgfm-ked/x.pt: downloading 200.0 MB"
    assert [line.split(": ")[2].split(" of")[0] for line in lines[1:-1]] == [f"{p}%" for p in range(5, 100, 5)]
    assert "20.0 MB/s, ETA 9 s" in lines[1]
    assert lines[-1] == "[ecgembed] weights: ecgfm-ked/x.pt: done, 200.0 MB in 10 s"

    out, now = io.StringIO(), [0.0]
    printer = weights_pull.ProgressPrinter(out, clock=lambda: now[0])
    printer("melp/model.safetensors", 0, None)           # size unknown: a line every 10 s
    for step in range(1, 26):
        now[0] += 1.0
        printer("melp/model.safetensors", step * 1_000_000, None)
    lines = out.getvalue().splitlines()
    assert lines[1:] == ["[ecgembed] weights: melp/model.safetensors: 10.0 MB so far, 1.0 MB/s",
                         "[ecgembed] weights: melp/model.safetensors: 20.0 MB so far, 1.0 MB/s"]
