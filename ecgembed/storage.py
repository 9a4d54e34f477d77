"""All access to files and object storage goes through this module.

URIs may be local paths, ``file://``, ``s3://`` (endpoint and credentials from the usual AWS
variables, ``AWS_ENDPOINT_URL`` included), ``gs://`` (needs the optional ``gcsfs``),
``http(s)://`` (read only). The object-store quirks live here and nowhere else:

- **Bounded reads.** Every read of input data is capped: :func:`read` / :func:`read_many` read at
  most ``max_bytes`` (the object is refused with :class:`ObjectTooLarge` beyond that) or only the
  first ``n`` bytes (``prefix``). Local files must be regular files (a FIFO, a device such as
  ``/dev/zero`` or a directory raises :class:`NotARegularFile`, never blocks or reads forever);
  S3/GCS reads are ranged GETs; HTTP responses are streamed and cut at the cap. Many objects are
  fetched with all requests in flight at once on the filesystem's event loop.
- **Writes.** :func:`write_atomic` (readers see the old or the new bytes), :func:`create_exclusive`
  (local ``O_EXCL``; S3 conditional PUT ``If-None-Match: *``; other stores refuse with a clear
  error), :func:`move`, :func:`remove`; :func:`write_local_atomic` for the local weights/feature
  caches.
- **Secrets.** :func:`redact` removes userinfo and secret-looking query parameters from a URI; it
  is what error messages, logs and tables show. The real URI is used only for fetching.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import re
import stat
import tempfile
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import fsspec
from fsspec import AbstractFileSystem

from ecgembed.errors import ConfigError

_REMOTE = ("s3", "gs", "gcs", "http", "https")
# Variables that change which S3 endpoint/credentials a filesystem uses. A filesystem object is
# cached per process for the current values, so a changed environment gets a new client.
_AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
             "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE")
_fs_cache: dict[tuple, AbstractFileSystem] = {}
_HTTP_CHUNK = 1 << 16


class ObjectTooLarge(OSError):
    """The object holds more bytes than the read allows."""

    def __init__(self, uri: str, limit: int):
        self.limit = limit
        super().__init__(f"{redact(uri)} is larger than the limit of {limit} bytes")


class NotARegularFile(OSError):
    """A local path that is a FIFO, a device, a socket or a directory: never read."""

    def __init__(self, uri: str, kind: str):
        self.kind = kind
        super().__init__(f"{redact(uri)} is a {kind}, not a regular file")


# --------------------------------------------------------------------------- URIs
def split(uri: str) -> tuple[str, str]:
    """``(protocol, path)``; the protocol is ``"file"`` for local paths.

    Local paths are made absolute; remote paths keep ``bucket/key`` (no scheme), the form
    fsspec filesystems take.
    """
    uri = os.fspath(uri)
    if "://" not in uri:
        return "file", str(Path(uri).expanduser().absolute())
    scheme, rest = uri.split("://", 1)
    scheme = scheme.lower()
    if scheme == "file":
        return "file", str(Path(rest).absolute())
    if scheme == "gcs":
        scheme = "gs"
    if scheme not in _REMOTE:
        raise ConfigError(f"{redact(uri)}: unsupported URI scheme {scheme!r} (use a local path, file://, s3://, "
                          "gs://, http(s)://)")
    if scheme in ("http", "https"):
        return scheme, uri  # fsspec's HTTP filesystem takes full URLs
    return scheme, rest.rstrip("/")


def unsplit(protocol: str, path: str) -> str:
    """The URI for a ``(protocol, path)`` pair from :func:`split` or a listing."""
    if protocol == "file" or protocol in ("http", "https"):
        return path
    return f"{protocol}://{path}"


def join(base: str, *parts: str) -> str:
    """Join path parts onto a URI or local path with ``/`` (no safety check: see :func:`child`)."""
    base = os.fspath(base)
    if "://" in base:
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def is_bare_name(name: str) -> bool:
    """True for a plain file name: not empty, not ``.``/``..``, no ``/`` or ``\\`` (so no scheme, no
    absolute path, no parent folder), no NUL or other control character."""
    return (bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name
            and not any(ord(c) < 32 for c in name))


def child(folder: str, name: str) -> str:
    """``folder/name`` for a bare file ``name`` (see :func:`is_bare_name`); ``ValueError`` otherwise.

    The only way a name read from a file (a header's signal-file name) becomes a URI: it cannot
    leave ``folder`` (no ``..``, no separators, no absolute path, no ``s3://`` or ``https://``).
    """
    if not is_bare_name(name):
        raise ValueError(f"{name[:80]!r} is not a bare file name")
    return join(folder, name)


def parent(uri: str) -> str:
    """The folder/prefix containing a file URI (an http(s) URL's query string is not part of it)."""
    if "://" in uri:
        parts = urllib.parse.urlsplit(uri)
        if parts.scheme in ("http", "https"):
            return urllib.parse.urlunsplit((parts.scheme, parts.netloc, posixpath.dirname(parts.path), "", ""))
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://{posixpath.dirname(rest)}"
    return os.path.dirname(os.path.abspath(uri))


def basename(uri: str) -> str:
    """The file name of a URI (an http(s) URL's query string is not part of it)."""
    if "://" in uri:
        parts = urllib.parse.urlsplit(uri)
        path = parts.path if parts.scheme in ("http", "https") else uri.split("://", 1)[1]
        return posixpath.basename(path.rstrip("/"))
    return os.path.basename(uri)


def with_suffix(uri: str, suffix: str) -> str:
    """``uri`` with ``suffix`` appended to its file name (before an http(s) query string)."""
    parts = urllib.parse.urlsplit(uri) if "://" in uri else None
    if parts is not None and parts.scheme in ("http", "https") and parts.query:
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path + suffix, parts.query, parts.fragment))
    return uri + suffix


_SECRET_PARAM = re.compile(r"(?i)(^x-amz-(signature|credential|security-token)$|^x-goog-(signature|credential)$|"
                           r"sig|token|key|secret|passw|credential|auth)")


def redact(uri: str) -> str:
    """``uri`` without userinfo (``user:pass@``) and without secret-looking query parameters.

    ``https://u:p@host/x?X-Amz-Signature=..&v=1`` -> ``https://host/x?v=1``. Local paths are returned
    unchanged. This is the form every log line, error message and table column shows.
    """
    uri = os.fspath(uri)
    if "://" not in uri:
        return uri
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = parts.query
    if query:
        kept = [(k, v) for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True) if not _SECRET_PARAM.search(k)]
        query = urllib.parse.urlencode(kept)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# --------------------------------------------------------------------------- filesystems
def filesystem(uri_or_protocol: str) -> AbstractFileSystem:
    """The fsspec filesystem for a URI (or a bare protocol name), cached per process."""
    protocol = uri_or_protocol if "://" not in uri_or_protocol and uri_or_protocol in (*_REMOTE, "file") \
        else split(uri_or_protocol)[0]
    key = (protocol, tuple(os.environ.get(v) for v in _AWS_VARS) if protocol == "s3" else ())
    fs = _fs_cache.get(key)
    if fs is None:
        fs = _make_filesystem(protocol)
        _fs_cache[key] = fs
    return fs


def _make_filesystem(protocol: str) -> AbstractFileSystem:
    if protocol == "s3":
        import s3fs

        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        kwargs = {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}
        # skip_instance_cache: our own cache above is keyed on the environment, fsspec's is not.
        return s3fs.S3FileSystem(skip_instance_cache=True, **kwargs)
    if protocol == "gs":
        try:
            import gcsfs  # noqa: F401
        except ImportError as exc:  # optional dependency
            raise ConfigError("gs:// URIs need the optional package gcsfs (pip install 'ecgembed[gcs]')") from exc
    return fsspec.filesystem(protocol)


def fs_and_path(uri: str) -> tuple[AbstractFileSystem, str]:
    protocol, path = split(uri)
    return filesystem(protocol), path


_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()\[\],]+")


def redact_text(text: str) -> str:
    """``text`` with every URL in it passed through :func:`redact` (for messages that quote URIs)."""
    return _URL.sub(lambda m: redact(m.group(0)), text)


def exists(uri: str) -> bool:
    fs, path = fs_and_path(uri)
    return fs.exists(path)


def isdir(uri: str) -> bool:
    fs, path = fs_and_path(uri)
    return fs.isdir(path)


# --------------------------------------------------------------------------- listing
@dataclass(frozen=True)
class Entry:
    """One file of a listing."""

    rel: str          # path relative to the listed root, "/"-separated
    uri: str          # the file's URI (as given to the listing: not redacted)
    size: int
    version: str      # ETag, generation or mtime: changes when the object is rewritten
    regular: bool = True   # False for a local FIFO, device, socket (or a link to one): never read


def listing(root: str) -> list[Entry]:
    """Every file under ``root`` (recursively, one listing), sorted by ``rel``.

    Raises ``FileNotFoundError`` when ``root`` does not exist. Local FIFOs, devices and sockets
    are listed with ``regular=False`` (discovery reports them) and are never read.
    """
    protocol, root_path = split(root)
    fs = filesystem(protocol)
    fs.invalidate_cache()
    entries = fs.find(root_path, detail=True)
    if not entries and not fs.exists(root_path):
        raise FileNotFoundError(root)
    out = []
    for path, info in entries.items():
        kind = info.get("type", "file")
        if kind not in ("file", "other"):
            continue
        if protocol == "file":
            rel = os.path.relpath(path, root_path).replace(os.sep, "/")
        else:
            rel = posixpath.relpath(path, root_path)
        version = info.get("ETag") or info.get("etag") or info.get("generation") or info.get("mtime") \
            or info.get("LastModified") or ""
        out.append(Entry(rel, unsplit(protocol, path), int(info.get("size") or 0), str(version), kind == "file"))
    return sorted(out, key=lambda e: e.rel)


# --------------------------------------------------------------------------- bounded reads
def read_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """The whole object (one GET); with ``max_bytes``, :class:`ObjectTooLarge` beyond it."""
    return read(uri, max_bytes)


def read(uri: str, max_bytes: int | None = None) -> bytes:
    """The whole object, at most ``max_bytes`` (``None``: unbounded; use only for trusted files)."""
    value = read_many([uri], max_bytes)[uri]
    if isinstance(value, Exception):
        raise value
    return value


def read_head(uri: str, n: int) -> bytes:
    """The first ``n`` bytes of an object (fewer when it is shorter): one ranged read."""
    value = read_many([uri], prefix={uri: n})[uri]
    if isinstance(value, Exception):
        raise value
    return value


def read_many(uris: list[str], max_bytes: int | None = None,
              prefix: Mapping[str, int] | None = None) -> dict[str, bytes | Exception]:
    """Fetch many objects with every request in flight at once; never raises for one object.

    Each value is the bytes or the exception for that URI (``FileNotFoundError``,
    :class:`ObjectTooLarge`, :class:`NotARegularFile`, or the store's error). A URI in ``prefix``
    is read only up to ``prefix[uri]`` bytes (a longer object is fine); any other is read whole,
    refused beyond ``max_bytes``.
    """
    prefix = prefix or {}
    out: dict[str, bytes | Exception] = {}
    by_protocol: dict[str, list[tuple[str, str, int | None, bool]]] = {}
    for uri in dict.fromkeys(uris):
        try:
            protocol, path = split(uri)
        except ConfigError as exc:   # e.g. ftp:// in a manifest row: that object's error, not the batch's
            out[uri] = exc
            continue
        cap, whole = (prefix[uri], False) if uri in prefix else (max_bytes, True)
        by_protocol.setdefault(protocol, []).append((uri, path, cap, whole))
    for protocol, items in by_protocol.items():
        if protocol == "file":
            for uri, path, cap, whole in items:
                out[uri] = _guard(uri, lambda: _read_local(uri, path, cap, whole))
            continue
        fs = filesystem(protocol)
        if protocol in ("http", "https"):
            coros = [_read_http(fs, uri, cap, whole) for uri, _, cap, whole in items]
        elif getattr(fs, "async_impl", False):
            coros = [_read_ranged(fs, uri, path, cap, whole) for uri, path, cap, whole in items]
        else:
            for uri, path, cap, whole in items:
                end = None if cap is None else cap + whole
                out[uri] = _guard(uri, lambda: _cut(uri, fs.cat_file(path, start=0, end=end), cap, whole))
            continue
        results = fsspec.asyn.sync(fs.loop, _gather, coros)
        for (uri, *_), result in zip(items, results):
            out[uri] = result
    return out


async def _gather(coros):
    return await asyncio.gather(*coros, return_exceptions=True)


def _guard(uri, read):
    try:
        return read()
    except (OSError, ValueError) as exc:   # returned per URI, never swallowed
        return exc


def _cut(uri: str, data: bytes, cap: int | None, whole: bool) -> bytes:
    if cap is None:
        return data
    if whole and len(data) > cap:
        raise ObjectTooLarge(uri, cap)
    return data[:cap]


def _read_local(uri: str, path: str, cap: int | None, whole: bool) -> bytes:
    # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused right after by fstat.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("directory" if stat.S_ISDIR(mode) else "FIFO" if stat.S_ISFIFO(mode) else
                    "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "socket" if stat.S_ISSOCK(mode)
                    else "special file")
            raise NotARegularFile(uri, kind)
        with os.fdopen(fd, "rb", closefd=True) as handle:
            fd = -1
            data = handle.read() if cap is None else handle.read(cap + whole)
    finally:
        if fd >= 0:
            os.close(fd)
    return _cut(uri, data, cap, whole)


async def _read_ranged(fs, uri: str, path: str, cap: int | None, whole: bool) -> bytes:
    """S3/GCS: one GET, ranged when capped (reading ``cap + 1`` bytes tells "larger than cap")."""
    if cap is None:
        return await fs._cat_file(path)
    try:
        data = await fs._cat_file(path, start=0, end=cap + whole)
    except OSError as exc:
        # A range on an empty object is "416 InvalidRange" on S3: the object is empty.
        message = str(exc).lower()
        if "invalidrange" in message or "416" in message or "not satisfiable" in message:
            info = await fs._info(path)
            if int(info.get("size") or 0) == 0:
                return b""
        raise
    return _cut(uri, data, cap, whole)


async def _read_http(fs, uri: str, cap: int | None, whole: bool) -> bytes:
    """HTTP(S): the response is streamed and cut at the cap (a server may ignore ``Range``)."""
    session = await fs.set_session()
    headers = dict(fs.kwargs.get("headers") or {})
    if cap is not None and not whole:
        headers["Range"] = f"bytes=0-{max(cap - 1, 0)}"
    async with session.get(fs.encode_url(uri), headers=headers) as response:
        if response.status == 404:
            raise FileNotFoundError(redact(uri))
        if response.status == 416:
            return b""
        if response.status >= 400:
            raise OSError(f"HTTP {response.status} for {redact(uri)}")
        chunks, total = [], 0
        async for chunk in response.content.iter_chunked(_HTTP_CHUNK):
            chunks.append(chunk)
            total += len(chunk)
            if cap is not None and total > cap:
                break
    return _cut(uri, b"".join(chunks), cap, whole)


def open_ranged(uri: str, block_size: int = 1 << 20):
    """A seekable read-only file object over an object, fetched in ranged blocks (zip archives).

    Local: the file itself (must be regular). Remote: fsspec's buffered random-access file.
    """
    protocol, path = split(uri)
    if protocol == "file":
        handle = open(path, "rb")  # noqa: SIM115 - the caller closes it
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            handle.close()
            raise NotARegularFile(uri, "non-regular file")
        return handle
    return filesystem(protocol).open(path, "rb", block_size=block_size, cache_type="readahead")


# --------------------------------------------------------------------------- writes
def write_atomic(uri: str, data: bytes) -> None:
    """Replace a small object so readers see the old or the new bytes, never a part.

    Object stores: one PUT (atomic by nature). Local files: a unique temp name, then rename.
    """
    protocol, path = split(uri)
    if protocol == "file":
        write_local_atomic(path, data)
        return
    fs = filesystem(protocol)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe_file(path, data)


def write_local_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Local atomic write: a unique temp file in the same folder, fsync, rename over ``path``.

    For the weights and class-text feature caches, where several processes may write the same
    file at once: each writes its own temp file and the last rename wins with complete bytes.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class ExclusiveCreateUnsupported(ConfigError):
    """The store has no atomic create-if-absent."""


# S3 error codes of a conditional PUT that lost: the object exists, or another conditional
# write to the same key is in flight (AWS answers 409 for that).
_CREATE_LOST = ("PreconditionFailed", "ConditionalRequestConflict")


def create_exclusive(uri: str, data: bytes) -> None:
    """Create ``uri`` holding ``data`` unless it exists (then ``FileExistsError``).

    Local: the bytes go to a private temp file, fsynced, then hard-linked to the name; ``link``
    fails if the name exists, so a reader never sees a created-but-empty file and two creators
    cannot both win. S3: a conditional PUT (``If-None-Match: *``; AWS S3, MinIO and SeaweedFS
    honour it atomically), a lost race recognised by its error code. Other stores (gs://, http)
    have no such call here: :class:`ExclusiveCreateUnsupported`.
    """
    protocol, path = split(uri)
    if protocol == "file":
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".create-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.link(tmp, path)            # atomic; FileExistsError if the name is taken
        finally:
            os.unlink(tmp)
        return
    if protocol != "s3":
        raise ExclusiveCreateUnsupported(f"{redact(uri)}: {protocol}:// has no create-if-absent (conditional PUT) "
                                         "here; the output lock and the commit need one: use a local path or s3://")
    fs = filesystem(protocol)
    try:
        fs.pipe_file(path, data, mode="create")
    except OSError as exc:
        code = getattr(exc.__cause__, "response", {}).get("Error", {}).get("Code")
        if isinstance(exc, FileExistsError) or code in _CREATE_LOST:
            raise FileExistsError(f"{redact(uri)} exists") from exc
        raise


def move(src: str, dst: str) -> None:
    """Move one object/file (local: atomic rename; object stores: copy then delete)."""
    protocol, src_path = split(src)
    dst_protocol, dst_path = split(dst)
    if protocol != dst_protocol:
        raise ConfigError(f"cannot move across stores: {redact(src)} -> {redact(dst)}")
    if protocol == "file":
        os.makedirs(os.path.dirname(dst_path), exist_ok=True)
        os.replace(src_path, dst_path)
        return
    fs = filesystem(protocol)
    fs.mv(src_path, dst_path)


def remove(uri: str, recursive: bool = False, missing_ok: bool = True) -> None:
    """Delete a file/object (or a folder/prefix with ``recursive``).

    Object stores delete a missing key without complaint, so ``missing_ok=False`` asks first.
    """
    fs, path = fs_and_path(uri)
    if not missing_ok and split(uri)[0] != "file":
        fs.invalidate_cache()
        if not fs.exists(path):
            raise FileNotFoundError(redact(uri))
    try:
        fs.rm(path, recursive=recursive)
    except FileNotFoundError:
        if not missing_ok:
            raise
