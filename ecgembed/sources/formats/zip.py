"""Zip archives of exports, read member by member without extracting anything to disk.

A nightly drop is often one ``.zip`` of vendor files. Each member is a record of its own, with
record id ``<archive path>/<member path>`` and URI ``<archive URI>!/<member path>`` (the ``!/``
separator, as in ``jar:`` URLs; a real object key containing ``.zip!/`` cannot be read). A
WFDB header inside an archive finds its signal files in the same archive folder.

Safety (the archive is as hostile as any input):

- **Sizes.** A member's declared size is checked against ``Limits.max_object_bytes`` before it
  is decompressed, and the decompressed stream is read with the same cap (``zipfile`` also
  stops at the declared size and checks the CRC), so a zip bomb costs at most the cap.
- **Paths.** A member name that is absolute, holds ``..``, a backslash or a drive letter is never
  a record (discovery skips it as ``unsafe path in archive``; fetching it is ``unsafe_path``).
  Nothing is ever written to disk, so no name can escape anyway.
- **Nesting.** An archive inside an archive is refused (skipped as ``nested archive``).
- **Encryption and exotic compression** are ``unsupported_format``.

The archive is read with ranged requests (its central directory, then each member's bytes), so
records from one large archive on S3 do not download the whole file per record.
"""

from __future__ import annotations

import posixpath
import re
import zipfile
import zlib
from dataclasses import dataclass

from ecgembed import storage
from ecgembed.errors import ECGError

EXTENSIONS = (".zip",)
SEPARATOR = "!/"
_MEMBER_RE = re.compile(r"(?i)^(?P<archive>.+?\.zip)!/(?P<member>.+)$")
_SUPPORTED = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}


def is_archive(name: str) -> bool:
    return name.lower().endswith(EXTENSIONS)


def split_member(uri: str) -> tuple[str, str] | None:
    """``(archive URI, member path)`` for a member URI, else None."""
    match = _MEMBER_RE.match(uri)
    return (match["archive"], match["member"]) if match else None


def member_uri(archive_uri: str, member: str) -> str:
    return f"{archive_uri}{SEPARATOR}{member}"


def safe_member(name: str) -> bool:
    """True for a relative member path that stays inside the archive."""
    if not name or name.startswith(("/", "\\")) or "\\" in name or "\x00" in name:
        return False
    parts = name.split("/")
    return not any(p in ("..",) for p in parts) and not re.match(r"^[A-Za-z]:", name)


@dataclass(frozen=True)
class Member:
    name: str          # path inside the archive
    size: int          # declared uncompressed size
    crc: int


def list_members(archive_uri: str) -> list[Member]:
    """The file members of an archive (its central directory, via ranged reads)."""
    with storage.open_ranged(archive_uri) as handle:
        try:
            with zipfile.ZipFile(handle) as archive:
                return [Member(i.filename, i.file_size, i.CRC) for i in archive.infolist() if not i.is_dir()]
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
            raise ECGError(storage.redact(archive_uri), "corrupt", f"not a readable zip archive "
                                                                   f"({type(exc).__name__})") from None


class ArchiveReader:
    """Open archives once per batch of fetches; read members with the record limits."""

    def __init__(self):
        self._open: dict[str, tuple[object, zipfile.ZipFile] | Exception] = {}

    def _archive(self, archive_uri: str) -> zipfile.ZipFile:
        got = self._open.get(archive_uri)
        if got is None:
            try:
                handle = storage.open_ranged(archive_uri)
                try:
                    got = (handle, zipfile.ZipFile(handle))
                except BaseException:
                    handle.close()
                    raise
            except FileNotFoundError as exc:
                got = exc
            except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
                got = ECGError(storage.redact(archive_uri), "corrupt",
                               f"not a readable zip archive ({type(exc).__name__})")
            except OSError as exc:
                got = exc
            self._open[archive_uri] = got
        if isinstance(got, Exception):
            raise got
        return got[1]

    def read(self, uri: str, cap: int | None, whole: bool) -> bytes:
        """A member's bytes: whole (refused beyond ``cap``) or its first ``cap`` bytes."""
        archive_uri, member = split_member(uri)
        if not safe_member(member):
            raise ECGError(storage.redact(uri), "unsafe_path", "member path leaves the archive")
        if is_archive(member):
            raise ECGError(storage.redact(uri), "unsupported_format", "an archive inside an archive is not read")
        archive = self._archive(archive_uri)
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise FileNotFoundError(storage.redact(uri)) from None
        if info.flag_bits & 0x1:
            raise ECGError(storage.redact(uri), "unsupported_format", "encrypted archive member")
        if info.compress_type not in _SUPPORTED:
            raise ECGError(storage.redact(uri), "unsupported_format", f"compression method {info.compress_type}")
        if whole and cap is not None and info.file_size > cap:
            raise storage.ObjectTooLarge(uri, cap)
        try:
            with archive.open(info) as stream:
                data = stream.read() if cap is None else stream.read(cap + whole)
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as exc:
            raise ECGError(storage.redact(uri), "corrupt", f"archive member cannot be decompressed "
                                                           f"({type(exc).__name__})") from None
        if whole and cap is not None and len(data) > cap:
            raise storage.ObjectTooLarge(uri, cap)
        return data

    def close(self) -> None:
        for got in self._open.values():
            if not isinstance(got, Exception):
                got[1].close()
                got[0].close()
        self._open.clear()


def sibling(member_uri_: str, name: str) -> str:
    """The URI of ``name`` in the same archive folder as a member."""
    archive_uri, member = split_member(member_uri_)
    folder = posixpath.dirname(member)
    return member_uri(archive_uri, posixpath.join(folder, name) if folder else name)
