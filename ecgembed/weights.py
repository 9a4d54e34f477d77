"""Fetch model files once per node, cache them, and name them by their sha256.

``fetch(uri)`` accepts a local path, ``file://``, ``s3://``, ``gs://``, ``http(s)://`` or
``hf://org/repo[@revision]/path/in/repo`` and returns a :class:`FetchedFile`: a local path plus
the file's sha256, which ecgembed records as ``model_version``. Remote files are downloaded
once into the cache (``$ECGEMBED_CACHE``, default ``~/.cache/ecgembed``) under a per-URI
folder; concurrent fetches of the same URI on one node (several actors starting at once) wait
on a file lock so the file is downloaded once. A download goes to a ``.partial`` file and is
renamed into place only when complete and its size checked, so a crash never leaves a
truncated file that looks cached.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ecgembed import storage
from ecgembed.errors import WeightsError

_CHUNK = 8 << 20


@dataclass(frozen=True)
class FetchedFile:
    path: Path     # a local file, ready to open
    sha256: str    # hex digest of the file's bytes
    uri: str       # what was asked for


def cache_dir() -> Path:
    """The cache root: ``$ECGEMBED_CACHE`` or ``~/.cache/ecgembed``."""
    root = os.environ.get("ECGEMBED_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ecgembed")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def join(uri: str, name: str) -> str:
    """A file inside a folder URI (also for ``hf://org/repo``)."""
    return storage.join(uri, name)


def fetch(uri: str) -> FetchedFile:
    """A local copy of ``uri`` and its sha256 (downloaded once per node, then cached)."""
    uri = os.fspath(uri)
    if uri.startswith("hf://"):
        return _fetch_hf(uri)
    protocol, path = storage.split(uri)
    if protocol == "file":
        local = Path(path)
        if not local.is_file():
            raise WeightsError(f"{uri}: no such file")
        return FetchedFile(local, _sha256_memo(local), uri)
    return _fetch_remote(uri)


def _slot(uri: str) -> Path:
    """The cache folder of one URI."""
    digest = hashlib.sha256(uri.encode()).hexdigest()[:20]
    slot = cache_dir() / "files" / digest
    slot.mkdir(parents=True, exist_ok=True)
    return slot


@contextmanager
def _locked(path: Path):
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fetch_remote(uri: str) -> FetchedFile:
    slot = _slot(uri)
    name = storage.basename(uri) or "file"
    dest, meta_path = slot / name, slot / (name + ".meta.json")
    with _locked(slot / ".lock"):
        cached = _read_meta(meta_path, dest)
        if cached:
            return FetchedFile(dest, cached, uri)
        fs, path = storage.fs_and_path(uri)
        try:
            expected_size = fs.size(path)
        except FileNotFoundError as exc:
            unreachable = _unreachable(uri)
            if unreachable:
                raise WeightsError(f"{uri}: cannot reach the server ({unreachable}). If this machine is offline, "
                                   "download the file elsewhere and pass a local path or s3:// URI instead.") from exc
            raise WeightsError(f"{uri}: no such file") from exc
        except Exception as exc:  # noqa: BLE001 - any client error is reported with the URI
            raise WeightsError(f"{uri}: cannot reach the file ({type(exc).__name__}: {exc})") from exc
        partial = slot / (name + ".partial")
        digest = hashlib.sha256()
        written = 0
        # http(s): stream (block_size=0) so servers without Range support work; object stores: big blocks
        block_size = 0 if storage.split(uri)[0] in ("http", "https") else _CHUNK
        try:
            with fs.open(path, "rb", block_size=block_size) as src, open(partial, "wb") as out:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    written += len(chunk)
        except Exception as exc:  # noqa: BLE001
            partial.unlink(missing_ok=True)
            raise WeightsError(f"{uri}: download failed after {written} bytes ({type(exc).__name__}: {exc})") from exc
        if expected_size is not None and written != expected_size:
            partial.unlink(missing_ok=True)
            raise WeightsError(f"{uri}: download truncated: got {written} of {expected_size} bytes")
        os.replace(partial, dest)
        sha = digest.hexdigest()
        _write_meta(meta_path, dest, sha)
        return FetchedFile(dest, sha, uri)


def _unreachable(uri: str) -> str | None:
    """Why an http(s) server cannot be reached (fsspec reports that as a missing file), or None."""
    if storage.split(uri)[0] not in ("http", "https"):
        return None
    import socket
    import urllib.parse

    parsed = urllib.parse.urlparse(uri)
    try:
        socket.create_connection((parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)),
                                 timeout=10).close()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _fetch_hf(uri: str) -> FetchedFile:
    """``hf://org/repo[@revision]/path`` through huggingface_hub (honours HF_ENDPOINT, HF_HUB_OFFLINE)."""
    rest = uri[len("hf://"):].strip("/")
    parts = rest.split("/")
    if len(parts) < 3:
        raise WeightsError(f"{uri}: expected hf://org/repo[@revision]/file")
    org, repo, filename = parts[0], parts[1], "/".join(parts[2:])
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
    from huggingface_hub import hf_hub_download

    try:
        local = hf_hub_download(repo_id=f"{org}/{repo}", filename=filename, revision=revision,
                                cache_dir=str(cache_dir() / "hf"))
    except Exception as exc:  # noqa: BLE001 - offline, missing repo/file, auth: all reported plainly
        raise WeightsError(
            f"{uri}: could not fetch from the Hugging Face Hub ({type(exc).__name__}: {exc}). "
            "If this machine is offline, download the files elsewhere and pass a local folder, "
            "s3:// or https:// URI instead."
        ) from exc
    path = Path(local)
    return FetchedFile(path, _sha256_memo(path), uri)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256_memo(path: Path) -> str:
    """sha256 of a local file, remembered per (path, size, mtime) so actors do not re-hash GBs."""
    path = path.resolve()
    memo = cache_dir() / "sha256" / (hashlib.sha256(str(path).encode()).hexdigest()[:20] + ".json")
    cached = _read_meta(memo, path)
    if cached:
        return cached
    sha = sha256_file(path)
    memo.parent.mkdir(parents=True, exist_ok=True)
    _write_meta(memo, path, sha)
    return sha


def _read_meta(meta_path: Path, file_path: Path) -> str | None:
    try:
        meta = json.loads(meta_path.read_text())
        stat = file_path.stat()
    except (OSError, ValueError):
        return None
    if meta.get("size") == stat.st_size and meta.get("mtime_ns") == stat.st_mtime_ns:
        return meta["sha256"]
    return None


def _write_meta(meta_path: Path, file_path: Path, sha: str) -> None:
    stat = file_path.stat()
    tmp = meta_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"sha256": sha, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}))
    os.replace(tmp, meta_path)

