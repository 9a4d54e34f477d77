"""``ecgembed weights pull DEST``: stage the pinned model files for a cluster without internet.

A hospital cluster usually cannot reach the Hugging Face Hub or Zenodo. :func:`pull` fetches,
on a machine that can, the three artefacts the job needs at the revisions pinned in the model
configs, into one folder the job reads with one flag (``--weights-dir DEST``)::

    DEST/weights.lock.json
    DEST/melp/model.safetensors          MELP ECG encoder      (hf://fuyingw/MELP_Encoder@2518c74)
    DEST/melp/config.json
    DEST/ecgfm-ked/best_valid_all_increase_with_augment_epoch_3.pt   (Zenodo record 14881564)
    DEST/ecgfm-ked-text/config.json      tokenizer + BERT shapes (emilyalsentzer/Bio_ClinicalBERT@d5892b3)
    DEST/ecgfm-ked-text/vocab.txt

DEST is a local folder or ``s3://bucket/prefix``. The first pull records every file's sha256,
size, source, pin, revision and licence in ``weights.lock.json``; a later pull verifies the
files against it instead of downloading them, and downloads only files the lock does not list
(or listed files that are missing, which must then have the locked digest). Every later load
from DEST checks the lock too (:func:`ecgembed.weights.fetch`).

Each file is written whole or not at all: locally to ``<name>.partial``, renamed when its size
and digest are checked; on S3 as a multipart upload completed only after those checks (a crash
leaves no object, only parts that the bucket's abort-incomplete-uploads rule removes). The lock
is rewritten after each file, so a crash leaves complete files, and a rerun resumes. Nothing is
held in memory beyond one 8 MiB block.

Sources are the pins, or mirrors of them given by ``sources=`` / ``$ECGEMBED_WEIGHTS_SOURCES``
(``melp=URI,ecgfm-ked=URI,ecgfm-ked-text=URI``; any URI ``ecgembed.weights`` reads). A mirror
stands for the pinned artefact: the lock records the pin and the source actually read.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ecgembed import storage, weights
from ecgembed.errors import ConfigError, WeightsError

SOURCES_ENV = "ECGEMBED_WEIGHTS_SOURCES"
NAMES = ("melp", "ecgfm-ked", "ecgfm-ked-text")  # folders under DEST = keys of weights_dir_uris()
_CHUNK = 8 << 20  # read size and S3 part size

Progress = Callable[[str, int, "int | None"], None]  # (file, bytes done, total bytes or None)


@dataclass(frozen=True)
class Artefact:
    name: str                 # folder under DEST
    pin: str                  # pinned source: a folder (hf://org/repo@revision) or the file's URL
    files: tuple[str, ...]    # file names fetched from the pin
    revision: str             # the pin in words (recorded when the source gives no commit)
    license: str


def artefacts() -> tuple[Artefact, ...]:
    """The three artefacts, from the pins in the model configs (one source of truth with loading)."""
    from ecgembed.models.ecgfm_ked import config as ked
    from ecgembed.models.ecgfm_ked.text import TEXT_MODEL_FILES
    from ecgembed.models.melp import config as melp
    from ecgembed.models.melp.load import CONFIG_FILE, WEIGHTS_FILE

    return (
        Artefact("melp", melp.DEFAULT_WEIGHTS_URI, (WEIGHTS_FILE, CONFIG_FILE),
                 f"fuyingw/MELP_Encoder@{melp.DEFAULT_WEIGHTS_REVISION}", melp.WEIGHTS_LICENSE),
        Artefact("ecgfm-ked", ked.DEFAULT_WEIGHTS_URI, (ked.WEIGHTS_FILE,),
                 f"zenodo:{ked.ZENODO_RECORD}", ked.WEIGHTS_LICENSE),
        Artefact("ecgfm-ked-text", ked.DEFAULT_TEXT_MODEL, tuple(TEXT_MODEL_FILES),
                 f"emilyalsentzer/Bio_ClinicalBERT@{ked.DEFAULT_TEXT_MODEL_REVISION}", ked.TEXT_MODEL_LICENSE),
    )


def weights_dir_uris(dest: str, *, check: bool = True) -> dict[str, str]:
    """``{"melp": folder, "ecgfm-ked": .pt file, "ecgfm-ked-text": folder}`` inside a pulled DEST.

    The values are what ``--melp-weights``, ``--ked-weights`` and ``--ked-text-model`` take.
    ``check`` reads the lock (one small read) and fails unless every file was pulled.
    """
    from ecgembed.models.ecgfm_ked.config import WEIGHTS_FILE

    dest = os.fspath(dest)
    uris = {"melp": storage.join(dest, "melp"),
            "ecgfm-ked": storage.join(dest, "ecgfm-ked", WEIGHTS_FILE),
            "ecgfm-ked-text": storage.join(dest, "ecgfm-ked-text")}
    if check:
        lock = weights.read_lock(dest)
        if lock is None:
            raise WeightsError(
                f"{dest}: no {weights.LOCK_FILE}, so not a folder written by `ecgembed weights pull`. Run "
                "`ecgembed weights pull DEST` on a machine with internet access and copy the whole folder.")
        missing = [f"{a.name}/{name}" for a in artefacts() for name in a.files
                   if f"{a.name}/{name}" not in lock["files"]]
        if missing:
            raise WeightsError(f"{dest}: the pull did not finish ({', '.join(missing)} not in "
                               f"{weights.LOCK_FILE}); run `ecgembed weights pull` into it again")
    return uris


# --------------------------------------------------------------------------- sources
def parse_sources(text: str) -> dict[str, str]:
    """``"melp=URI,ecgfm-ked=URI"`` -> ``{"melp": URI, ...}`` (the ``$ECGEMBED_WEIGHTS_SOURCES`` form)."""
    out = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, uri = item.partition("=")
        if not sep or not uri.strip():
            raise ConfigError(f"{SOURCES_ENV}: {item!r} is not NAME=URI (names: {', '.join(NAMES)})")
        out[name.strip()] = uri.strip()
    return out


def _chosen_sources(arts: tuple[Artefact, ...], overrides: Mapping[str, str] | None) -> dict[str, str]:
    given = {**parse_sources(os.environ.get(SOURCES_ENV, "")), **(overrides or {})}
    unknown = sorted(set(given) - set(NAMES))
    if unknown:
        raise ConfigError(f"unknown weights source name(s) {', '.join(unknown)}; known: {', '.join(NAMES)}")
    return {a.name: os.fspath(given.get(a.name, a.pin)) for a in arts}


def _file_uri(source: str, name: str) -> str:
    """A file of an artefact: the source itself when it names that file, else source/name."""
    return source if storage.basename(source) == name else storage.join(source, name)


@dataclass
class _Source:
    stream: object           # readable binary stream
    size: int | None
    revision: str | None     # the commit the Hub resolved (hf:// only)
    sha256: str | None       # the Hub's digest of the content (LFS files), checked after download


def _open(uri: str) -> _Source:
    if not uri.startswith("hf://"):
        stream, size = weights.open_source(uri)
        return _Source(stream, size, None, None)
    repo_id, revision, filename = weights.parse_hf(uri)
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:  # honours HF_ENDPOINT and HF_HUB_OFFLINE; one HEAD gives size, commit and (LFS) sha256
        meta = get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision))
        stream = storage.filesystem(meta.location).open(meta.location, "rb", block_size=0, size=meta.size)
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo/file/revision: all reported plainly
        raise WeightsError(f"{uri}: cannot fetch it from the Hugging Face Hub ({type(exc).__name__}: {exc}). "
                           "Pull on a machine that can reach the Hub, or give a mirror with "
                           f"{SOURCES_ENV}.") from exc
    etag = (meta.etag or "").lower()
    return _Source(stream, meta.size, meta.commit_hash, etag if weights.SHA256_RE.fullmatch(etag) else None)


# --------------------------------------------------------------------------- writing one file
class _Sink:
    """Where one pulled file goes: visible under its name only after :meth:`commit`."""

    def __init__(self, target: str):
        protocol, path = storage.split(target)
        self.local = protocol == "file"
        if self.local:
            self.final = Path(path)
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self.partial = self.final.with_name(self.final.name + ".partial")
            self.handle = open(self.partial, "wb")
        else:  # S3: a multipart upload, completed by commit(), aborted by discard()
            self.handle = storage.filesystem(protocol).open(path, "wb", block_size=_CHUNK, autocommit=False)

    def write(self, chunk: bytes) -> None:
        self.handle.write(chunk)

    def commit(self) -> None:
        self.handle.close()
        if self.local:
            os.replace(self.partial, self.final)
        else:
            self.handle.commit()

    def discard(self) -> None:
        if self.local:
            self.handle.close()
            self.partial.unlink(missing_ok=True)
        else:
            self.handle.discard()


def _download(uri: str, target: str, name: str, progress: Progress | None,
              locked: str | None) -> tuple[str, int, str | None]:
    """Stream ``uri`` into ``target`` whole or not at all; ``(sha256, size, hub commit)``."""
    source = _open(uri)
    try:
        sink = _Sink(target)
    except Exception as exc:  # noqa: BLE001 - an unwritable DEST is reported with its URI
        source.stream.close()
        raise WeightsError(f"{target}: cannot write it ({type(exc).__name__}: {exc})") from exc
    digest, written = hashlib.sha256(), 0
    try:
        if progress:
            progress(name, 0, source.size)
        try:
            with source.stream as stream:
                while chunk := stream.read(_CHUNK):
                    digest.update(chunk)
                    sink.write(chunk)
                    written += len(chunk)
                    if progress:
                        progress(name, written, source.size)
        except Exception as exc:  # noqa: BLE001 - network or storage failure, reported with the URI
            raise WeightsError(f"{uri}: download failed after {written} bytes ({type(exc).__name__}: {exc}); "
                               "nothing was written, run the pull again") from exc
        sha = digest.hexdigest()
        if source.size is not None and written != source.size:
            raise WeightsError(f"{uri}: download truncated: got {written} of {source.size} bytes; "
                               "nothing was written, run the pull again")
        if source.sha256 and sha != source.sha256:
            raise WeightsError(f"{uri}: downloaded sha256 {sha} but the Hub says {source.sha256}: "
                               "a corrupt transfer; nothing was written, run the pull again")
        if locked and sha != locked:
            raise WeightsError(f"{uri}: downloaded sha256 {sha} but {weights.LOCK_FILE} records {locked} for "
                               f"{name}: the source no longer serves the file first pulled; nothing was written")
        sink.commit()
    except BaseException:
        sink.discard()
        raise
    return sha, written, source.revision


def _digest(target: str) -> str:
    """sha256 of a file already in DEST (local: memoised; S3: streamed, never held in memory)."""
    protocol, path = storage.split(target)
    if protocol == "file":
        return weights.sha256_memo(Path(path))
    stream, _ = weights.open_source(target)
    digest = hashlib.sha256()
    with stream as src:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- pull
def _check_dest(dest: str) -> str:
    protocol, path = storage.split(os.fspath(dest))
    if protocol == "file":
        if os.path.exists(path) and not os.path.isdir(path):
            raise ConfigError(f"{dest}: is a file; DEST must be a folder (it is created if missing)")
        os.makedirs(path, exist_ok=True)
        return path
    if protocol != "s3":
        raise ConfigError(f"{dest}: DEST must be a local folder or s3://bucket/prefix")
    return storage.unsplit(protocol, path)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def pull(dest: str, *, progress: Progress | None = None, sources: Mapping[str, str] | None = None) -> dict:
    """Fetch or verify every pinned file in DEST; returns what was done.

    ``{"dest", "lock": lock URI, "uris": weights_dir_uris(dest), "files": {"melp/model.safetensors":
    {"status": "downloaded" | "verified", "sha256", "size", "source", "pin", "revision", "license",
    "pulled"}, ...}}``. ``progress(name, done_bytes, total_bytes)`` is called while downloading
    (``total_bytes`` None when the server does not say); :class:`ProgressPrinter` is the plain
    default. Raises :class:`WeightsError` (a file differs from its lock, a source is unreachable
    or serves other bytes) or :class:`ConfigError` (bad DEST or sources).
    """
    dest = _check_dest(dest)
    arts = artefacts()
    chosen = _chosen_sources(arts, sources)
    lock = weights.read_lock(dest) or {"format": weights.LOCK_FORMAT, "created": _now(), "files": {}}
    lock_uri = storage.join(dest, weights.LOCK_FILE)
    done: dict[str, dict] = {}
    for art in arts:
        for name in art.files:
            rel, target, pin = f"{art.name}/{name}", storage.join(dest, art.name, name), _file_uri(art.pin, name)
            entry = lock["files"].get(rel)
            if entry is not None and entry.get("pin") != pin:
                raise WeightsError(
                    f"{target}: pulled from {entry.get('pin')} but this ecgembed pins {pin}; files in a pulled "
                    "folder are never replaced: pull into a new folder")
            if entry is not None and storage.exists(target):
                sha = _digest(target)
                if sha != entry["sha256"]:
                    raise WeightsError(
                        f"{target}: sha256 {sha} does not match {entry['sha256']} recorded in {lock_uri} at the "
                        "first pull: the file changed since (a corrupt or partial copy, or another file). Delete "
                        "it and pull again to fetch the pinned file, or pull into a new folder.")
                done[rel] = {**entry, "status": "verified"}
                continue
            source = _file_uri(chosen[art.name], name)
            sha, size, commit = _download(source, target, rel, progress, entry["sha256"] if entry else None)
            lock["files"][rel] = {"sha256": sha, "size": size, "source": source, "pin": pin,
                                  "revision": commit or art.revision, "license": art.license, "pulled": _now()}
            weights.write_lock(dest, lock)  # after the file: a crash before this line re-fetches it
            done[rel] = {**lock["files"][rel], "status": "downloaded"}
    return {"dest": dest, "lock": lock_uri, "uris": weights_dir_uris(dest, check=False), "files": done}


# --------------------------------------------------------------------------- progress
class ProgressPrinter:
    """The default ``progress``: one plain line per file every 5 % or 10 s, and one when done.

    Lines, not a bar, so that a log file or a CI console stays readable::

        [ecgembed] weights: ecgfm-ked/best_valid_...pt 35% of 1.31 GB, 21.4 MB/s, ETA 40 s
    """

    def __init__(self, stream=None, *, step: float = 0.05, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = stream
        self.steps = round(1 / step)  # lines per file at most, in exact integer arithmetic
        self.interval_s, self.clock = interval_s, clock
        self._files: dict[str, dict] = {}

    def __call__(self, name: str, done: int, total: int | None) -> None:
        now = self.clock()
        state = self._files.get(name)
        if state is None or done == 0:
            state = self._files[name] = {"start": now, "last": now, "next": 1, "finished": False}
            self._line(f"{name}: downloading {_size(total) if total else '(size unknown)'}")
            return
        if state["finished"]:
            return
        if total and done >= total:
            state["finished"] = True
            self._line(f"{name}: done, {_size(done)} in {now - state['start']:.0f} s")
        elif (total and done * self.steps >= state["next"] * total) or now - state["last"] >= self.interval_s:
            rate = done / max(now - state["start"], 1e-9)
            if not total:
                self._line(f"{name}: {_size(done)} so far, {_size(rate)}/s")
            else:
                eta = (total - done) / rate if rate > 0 else float("inf")
                self._line(f"{name}: {done / total:.0%} of {_size(total)}, {_size(rate)}/s, ETA {eta:.0f} s")
                state["next"] = done * self.steps // total + 1
        else:
            return
        state["last"] = now

    def _line(self, text: str) -> None:
        print(f"[ecgembed] weights: {text}", file=self.stream or sys.stderr, flush=True)


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if unit == "GB" else f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"
