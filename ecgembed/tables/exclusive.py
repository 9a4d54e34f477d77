"""Create-if-absent for small objects: the one conditional write the lock and the commit need.

Local files: the bytes go to a private temp file first and are then hard-linked to the target
name; ``link`` fails if the name exists, so a reader never sees a created-but-empty file and
two creators cannot both win. S3: a conditional PUT (``If-None-Match: *``), which AWS S3, MinIO
and SeaweedFS honour atomically. Other stores have no such call here: refused.

Meant to move into :mod:`ecgembed.storage` (``storage.create_exclusive``) once that lands; the
semantics are the same: ``FileExistsError`` when the object exists.
"""

from __future__ import annotations

import os
import posixpath
import tempfile

from ecgembed import storage
from ecgembed.errors import ConfigError

# S3 error codes of a conditional PUT that lost: the object exists, or another conditional
# write to the same key is in flight (AWS answers 409 for that).
_LOST = ("PreconditionFailed", "ConditionalRequestConflict")


def create_exclusive(uri: str, data: bytes) -> None:
    """Create ``uri`` holding ``data`` unless it exists (then ``FileExistsError``)."""
    protocol, path = storage.split(uri)
    if protocol == "file":
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".create-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.link(tmp, path)            # atomic, fails with FileExistsError if the name is taken
        finally:
            os.unlink(tmp)
        return
    if protocol != "s3":
        raise ConfigError(f"{protocol}:// has no create-if-absent (conditional PUT) in ecgembed: the output lock "
                          "and the commit need one; use a local path or s3:// for --output")
    fs = storage.filesystem(protocol)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    try:
        fs.pipe_file(path, data, mode="create")
    except OSError as exc:
        code = getattr(exc.__cause__, "response", {}).get("Error", {}).get("Code")
        if isinstance(exc, FileExistsError) or code in _LOST:
            raise FileExistsError(f"{uri} exists") from exc
        raise
