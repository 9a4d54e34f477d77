"""An index on storage: ``OUTPUT/_index/<model>/``.

    manifest.json             what is indexed, how, and which files hold it (written last)
    index-<token>.faiss       the serialised FAISS index (ids are int64 row numbers)
    ids-<token>.parquet       id -> record_id, run_id (the embedding row each vector came from)

A new version writes new files under a new token, then replaces ``manifest.json`` (one atomic
PUT or rename): a reader sees the old index or the new one, never a mix. The old version's
files are deleted afterwards; a reader that read the old manifest just before retries once.
The folder starts with ``_`` so table listings (and SQL engines) skip it.
"""

from __future__ import annotations

import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

from ecgembed import storage
from ecgembed.errors import EcgembedError

INDEX_DIR = "_index"
MANIFEST = "manifest.json"
IDS_SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("record_id", pa.string(), nullable=False),
                        pa.field("run_id", pa.string(), nullable=False)])


class SearchError(EcgembedError, ValueError):
    """A search or index operation that cannot be done as asked."""


def folder(output: str, model: str) -> str:
    if not model or "/" in model or model.startswith("."):
        raise SearchError(f"bad model name {model!r}")
    return storage.join(output, INDEX_DIR, model)


def read_manifest(output: str, model: str) -> dict | None:
    uri = storage.join(folder(output, model), MANIFEST)
    fs, path = storage.fs_and_path(uri)
    fs.invalidate_cache()
    try:
        return json.loads(storage.read_bytes(uri))
    except FileNotFoundError:
        return None


def write_version(output: str, model: str, manifest: dict, index_bytes: bytes, ids: pa.Table) -> dict:
    """Write the files of a new version, then its manifest; delete the previous version's files."""
    base = folder(output, model)
    previous = read_manifest(output, model)
    token = os.urandom(6).hex()
    manifest = {**manifest, "token": token, "index_file": f"index-{token}.faiss", "ids_file": f"ids-{token}.parquet"}
    storage.write_atomic(storage.join(base, manifest["index_file"]), index_bytes)
    buffer = io.BytesIO()
    pq.write_table(ids.cast(IDS_SCHEMA), buffer, compression="zstd")
    storage.write_atomic(storage.join(base, manifest["ids_file"]), buffer.getvalue())
    storage.write_atomic(storage.join(base, MANIFEST), json.dumps(manifest, indent=1, sort_keys=True).encode())
    if previous:
        for key in ("index_file", "ids_file"):
            if previous.get(key) and previous[key] != manifest[key]:
                fs, path = storage.fs_and_path(storage.join(base, previous[key]))
                try:
                    fs.rm(path)
                except FileNotFoundError:
                    pass
    return manifest


def replace_manifest(output: str, model: str, manifest: dict) -> dict:
    """Rewrite the manifest of the current version (same files), e.g. to record newer runs."""
    storage.write_atomic(storage.join(folder(output, model), MANIFEST),
                         json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


def read_ids(output: str, model: str, manifest: dict) -> pa.Table:
    """id -> record_id, run_id of one version."""
    data = storage.read_bytes(storage.join(folder(output, model), manifest["ids_file"]))
    return pq.read_table(io.BytesIO(data)).cast(IDS_SCHEMA)


def read_index(output: str, model: str, manifest: dict) -> bytes:
    return storage.read_bytes(storage.join(folder(output, model), manifest["index_file"]))
