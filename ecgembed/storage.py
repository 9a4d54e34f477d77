"""All access to files and object storage goes through this module.

URIs may be local paths, ``file://``, ``s3://`` (endpoint and credentials from the usual AWS
variables, ``AWS_ENDPOINT_URL`` included), ``gs://`` (needs the optional ``gcsfs``),
``http(s)://`` (read only). Each read of a whole object is one GET (``cat_file``); no temp
files. Many objects are fetched concurrently with :func:`read_many`, which uses the
filesystem's own concurrent ``cat`` (s3fs keeps many requests in flight on one event loop).
"""

from __future__ import annotations

import os
import posixpath
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
        raise ConfigError(f"{uri}: unsupported URI scheme {scheme!r} (use a local path, file://, s3://, gs://, http(s)://)")
    if scheme in ("http", "https"):
        return scheme, uri  # fsspec's HTTP filesystem takes full URLs
    return scheme, rest.rstrip("/")


def unsplit(protocol: str, path: str) -> str:
    """The URI for a ``(protocol, path)`` pair from :func:`split` or a listing."""
    if protocol == "file" or protocol in ("http", "https"):
        return path
    return f"{protocol}://{path}"


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


def read_bytes(uri: str) -> bytes:
    """The whole object in one GET."""
    protocol, path = split(uri)
    if protocol == "file":
        with open(path, "rb") as handle:
            return handle.read()
    return filesystem(protocol).cat_file(path)


def read_many(uris: list[str]) -> dict[str, bytes | Exception]:
    """Fetch many objects concurrently; each value is the bytes or the exception for that URI.

    URIs of one protocol go to one concurrent ``cat`` call; the result never raises for a
    single missing object, so one bad record cannot sink the others.
    """
    out: dict[str, bytes | Exception] = {}
    by_protocol: dict[str, list[tuple[str, str]]] = {}
    for uri in uris:
        protocol, path = split(uri)
        by_protocol.setdefault(protocol, []).append((uri, path))
    for protocol, pairs in by_protocol.items():
        fs = filesystem(protocol)
        if protocol == "file":  # local reads: no benefit from concurrency machinery
            for uri, path in pairs:
                try:
                    with open(path, "rb") as handle:
                        out[uri] = handle.read()
                except OSError as exc:  # returned per URI, never swallowed
                    out[uri] = exc
            continue
        got = fs.cat([p for _, p in pairs], on_error="return")
        for uri, path in pairs:
            value = got.get(path, FileNotFoundError(path))
            out[uri] = value
    return out


def write_atomic(uri: str, data: bytes) -> None:
    """Replace a small object so readers see the old or the new bytes, never a part.

    Object stores: one PUT (atomic by nature). Local files: a per-process temp name, then rename.
    """
    protocol, path = split(uri)
    fs = filesystem(protocol)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    if protocol == "file":
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


_SECRET_QUERY = ("signature", "credential", "security-token", "securitytoken", "token", "sig", "key", "password",
                 "secret", "access_token", "auth")


def redact(uri: str) -> str:
    """``uri`` as it may be stored or printed: no userinfo, no secret-looking query parameters.

    ``https://user:pass@host/a?X-Amz-Signature=..&v=2`` -> ``https://host/a?v=2``. Local paths
    are returned unchanged.
    """
    uri = os.fspath(uri)
    if "://" not in uri:
        return uri
    import urllib.parse

    parts = urllib.parse.urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
             if not any(word in k.lower().replace("_", "-").removeprefix("x-amz-") for word in _SECRET_QUERY)]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, urllib.parse.urlencode(query), ""))


def join(base: str, *parts: str) -> str:
    """Join path parts onto a URI or local path with ``/``."""
    base = os.fspath(base)
    if "://" in base:
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def exists(uri: str) -> bool:
    fs, path = fs_and_path(uri)
    return fs.exists(path)


def isdir(uri: str) -> bool:
    fs, path = fs_and_path(uri)
    return fs.isdir(path)


def parent(uri: str) -> str:
    """The folder/prefix containing a file URI."""
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://{posixpath.dirname(rest)}"
    return os.path.dirname(os.path.abspath(uri))


def basename(uri: str) -> str:
    return posixpath.basename(uri.rstrip("/")) if "://" in uri else os.path.basename(uri)
