"""Fetch model files once per node, cache them, name them by their sha256, and check them
against the ``weights.lock.json`` of a pulled weights folder.

``fetch(uri)`` accepts a local path, ``file://``, ``s3://``, ``gs://``, ``http(s)://`` or
``hf://org/repo[@revision]/path/in/repo`` and returns a :class:`FetchedFile`: a local path plus
the file's sha256, which ecgembed records as ``model_version``. Remote files are downloaded
once into the cache (``$ECGEMBED_CACHE``, default ``~/.cache/ecgembed``) under a per-URI
folder; concurrent fetches of the same URI on one node (several actors starting at once) wait
on a file lock so the file is downloaded once. A download goes to a ``.partial`` file and is
renamed into place only when complete and its size checked, so a crash never leaves a
truncated file that looks cached.

A folder written by ``ecgembed weights pull`` (:mod:`ecgembed.weights_pull`) holds a
``weights.lock.json`` with the sha256 of every file. ``fetch`` looks for it next to the file
and one folder up (local folders and object stores only) and refuses a file whose digest
differs: the digest it compares is the one it computes anyway (memoised per size and mtime
for local files, computed once at download for remote ones), so the check costs one small
read per folder and process. :func:`expected_sha256` reads the locked digest without
downloading the file, for a cheap ``model_version`` on the driver.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ecgembed import storage
from ecgembed.errors import WeightsError

_CHUNK = 8 << 20
LOCK_FILE = "weights.lock.json"
LOCK_FORMAT = 1
SHA256_RE = re.compile(r"[0-9a-f]{64}")
_LOCKED_PROTOCOLS = ("file", "s3", "gs")  # where a pulled weights folder can live


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
        fetched = FetchedFile(local, sha256_memo(local), uri)
        _check_locked(fetched)
        return fetched
    fetched = _fetch_remote(uri)
    try:
        _check_locked(fetched)
    except WeightsError:
        _drop_cached(uri)  # a copy that fails the lock must not be served from the cache next time
        raise
    return fetched


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
        stream, expected_size = open_source(uri)
        partial = slot / (name + ".partial")
        digest = hashlib.sha256()
        written = 0
        try:
            with stream as src, open(partial, "wb") as out:
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


def open_source(uri: str):
    """``(readable stream, size or None)`` of a local or remote file, every failure a WeightsError.

    http(s) is streamed (block_size=0) so servers without Range support work; object stores
    are read in big blocks. Nothing is held in memory beyond one block.
    """
    fs, path = storage.fs_and_path(uri)
    try:
        size = fs.size(path)
    except FileNotFoundError as exc:
        unreachable = _unreachable(uri)
        if unreachable:
            raise WeightsError(f"{uri}: cannot reach the server ({unreachable}). If this machine is offline, "
                               "stage the weights with `ecgembed weights pull DEST` on one that is not and pass "
                               "a local path or s3:// URI (docs/weights.md).") from exc
        raise WeightsError(f"{uri}: no such file") from exc
    except Exception as exc:  # noqa: BLE001 - any client error is reported with the URI
        raise WeightsError(f"{uri}: cannot reach the file ({type(exc).__name__}: {exc})") from exc
    block_size = 0 if storage.split(uri)[0] in ("http", "https") else _CHUNK
    try:
        return fs.open(path, "rb", block_size=block_size), size
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"{uri}: cannot open the file ({type(exc).__name__}: {exc})") from exc


def _drop_cached(uri: str) -> None:
    """Forget the node's copy of a remote file (the next fetch downloads it again)."""
    slot = _slot(uri)
    name = storage.basename(uri) or "file"
    with _locked(slot / ".lock"):
        for path in (slot / (name + ".meta.json"), slot / name):
            path.unlink(missing_ok=True)


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


def parse_hf(uri: str) -> tuple[str, str | None, str]:
    """``(repo_id, revision or None, filename)`` of ``hf://org/repo[@revision]/path/in/repo``."""
    parts = uri[len("hf://"):].strip("/").split("/")
    if not uri.startswith("hf://") or len(parts) < 3:
        raise WeightsError(f"{uri}: expected hf://org/repo[@revision]/file")
    org, repo, filename = parts[0], parts[1], "/".join(parts[2:])
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
    return f"{org}/{repo}", revision, filename


def _fetch_hf(uri: str) -> FetchedFile:
    """``hf://org/repo[@revision]/path`` through huggingface_hub (honours HF_ENDPOINT, HF_HUB_OFFLINE)."""
    repo_id, revision, filename = parse_hf(uri)
    from huggingface_hub import hf_hub_download

    try:
        local = hf_hub_download(repo_id=repo_id, filename=filename, revision=revision,
                                cache_dir=str(cache_dir() / "hf"))
    except Exception as exc:  # noqa: BLE001 - offline, missing repo/file, auth: all reported plainly
        raise WeightsError(
            f"{uri}: could not fetch from the Hugging Face Hub ({type(exc).__name__}: {exc}). "
            "If this machine is offline, stage the weights with `ecgembed weights pull DEST` on one "
            "that is not and pass a local folder, s3:// or https:// URI instead (docs/weights.md)."
        ) from exc
    path = Path(local)
    return FetchedFile(path, sha256_memo(path), uri)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_memo(path: Path) -> str:
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
    storage.write_local_atomic(meta_path, json.dumps({"sha256": sha, "size": stat.st_size,
                                                      "mtime_ns": stat.st_mtime_ns}).encode())



# --------------------------------------------------------------------------- weights.lock.json
# {"format": 1, "created": ISO time, "files": {"melp/model.safetensors": {"sha256", "size",
#  "source", "pin", "revision", "license", "pulled"}, ...}}; paths relative to the lock's folder.
_LOCKS: dict[str, tuple[object, dict | None]] = {}  # lock URI -> (freshness key, parsed lock or None)


def read_lock(folder: str) -> dict | None:
    """The parsed ``weights.lock.json`` of a folder, or None when it has none."""
    uri = storage.join(os.fspath(folder), LOCK_FILE)
    try:
        raw = storage.read_bytes(uri)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        # PermissionError: object stores answer 403, not 404, for a missing key when the
        # reader may not list the bucket; such a reader sees no lock (nothing to check against).
        return None
    except Exception as exc:  # noqa: BLE001 - storage errors reach the user with the URI
        raise WeightsError(f"{uri}: cannot read the weights lock ({type(exc).__name__}: {exc})") from exc
    try:
        lock = json.loads(raw)
        files = lock["files"]
        if lock.get("format") != LOCK_FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {lock.get('format')!r}, expected {LOCK_FORMAT}")
        for rel, entry in files.items():
            if not SHA256_RE.fullmatch(str(entry.get("sha256"))) or not isinstance(entry.get("size"), int):
                raise ValueError(f"entry {rel!r} has no valid sha256/size")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WeightsError(f"{uri}: not a readable weights lock ({exc}); restore it from the machine that "
                           "pulled the weights, or pull into a new folder") from None
    return lock


def write_lock(folder: str, lock: dict) -> None:
    """Replace the folder's lock atomically (readers see the old or the new one, never a part)."""
    uri = storage.join(os.fspath(folder), LOCK_FILE)
    storage.write_atomic(uri, (json.dumps(lock, indent=2, sort_keys=True) + "\n").encode())
    _LOCKS.pop(uri, None)


def _cached_lock(folder: str) -> dict | None:
    """:func:`read_lock` memoised per process: local locks by (size, mtime), remote ones once."""
    uri = storage.join(folder, LOCK_FILE)
    key: object = "remote"
    if "://" not in uri:
        try:
            stat = os.stat(uri)
            key = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            key = None
    cached = _LOCKS.get(uri)
    if cached is not None and cached[0] == key:
        return cached[1]
    lock = None if key is None else read_lock(folder)
    _LOCKS[uri] = (key, lock)
    return lock


def _lock_candidates(uri: str) -> list[tuple[str, str]]:
    """``(folder, path relative to it)`` for the file's folder and the one above it."""
    if uri.startswith("hf://"):
        return []
    protocol, path = storage.split(uri)
    if protocol not in _LOCKED_PROTOCOLS:
        return []
    if protocol == "file":
        local = Path(path)
        return [(str(folder), local.relative_to(folder).as_posix()) for folder in list(local.parents)[:2]]
    parts = path.split("/")  # bucket/key...: never above the bucket
    return [(f"{protocol}://{'/'.join(parts[:-up])}", "/".join(parts[-up:]))
            for up in (1, 2) if len(parts) - up >= 1]


def lock_for(uri: str) -> dict | None:
    """The lock entry of a file in a pulled weights folder (plus ``lock``: the lock's URI), or None.

    Looks in the file's folder and the one above (``DEST/melp/model.safetensors`` ->
    ``DEST/weights.lock.json``); only local folders and object stores have locks.
    """
    for folder, rel in _lock_candidates(os.fspath(uri)):
        lock = _cached_lock(folder)
        if lock is not None and rel in lock["files"]:
            return {**lock["files"][rel], "lock": storage.join(folder, LOCK_FILE), "path": rel}
    return None


def expected_sha256(uri: str) -> str | None:
    """The sha256 locked for ``uri`` (no download: one small read), or None if it is not locked."""
    entry = lock_for(uri)
    return entry["sha256"] if entry else None


def _check_locked(fetched: FetchedFile) -> None:
    entry = lock_for(fetched.uri)
    if entry is not None and entry["sha256"] != fetched.sha256:
        raise WeightsError(
            f"{fetched.uri}: sha256 {fetched.sha256} does not match {entry['sha256']} recorded for "
            f"{entry['path']} in {entry['lock']}: the file changed after it was pulled (a corrupt or partial "
            "copy, or another file). Copy it again from the machine that pulled it, or run "
            "`ecgembed weights pull` into a new folder."
        )


# --------------------------------------------------------------------------- staging (weights_pull)
def pull(dest: str, *, progress: Callable[[str, int, int | None], None] | None = None,
         sources: dict[str, str] | None = None) -> dict:
    """Fetch the pinned MELP, ECGFM-KED and Bio_ClinicalBERT files into ``dest`` (see
    :func:`ecgembed.weights_pull.pull`)."""
    from ecgembed.weights_pull import pull as _pull

    return _pull(dest, progress=progress, sources=sources)


def weights_dir_uris(dest: str, *, check: bool = True) -> dict[str, str]:
    """The per-model weight URIs inside a pulled folder (see :func:`ecgembed.weights_pull.weights_dir_uris`)."""
    from ecgembed.weights_pull import weights_dir_uris as _uris

    return _uris(dest, check=check)
