"""Shared helpers for the vendor-format tests: decode a file from bytes, build a Record, read the
conformance manifest. Decoders are called directly (``decode(name, files, limits)``), the way the
reader calls them, so these tests do not depend on storage or discovery."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ecgembed.sources import formats
from ecgembed.sources.formats.base import Decoded, Limits
from ecgembed.sources.record import Record


def decode_bytes(name: str, data: bytes, extra: dict[str, bytes] | None = None,
                 limits: Limits = Limits()) -> tuple[str, Decoded]:
    """(format NAME, Decoded) of one file's bytes, the format chosen by sniffing its head."""
    fmt = formats.sniff(data[: formats.SNIFF_BYTES])
    assert fmt is not None, f"no format sniffs {name}"
    return fmt.NAME, fmt.decode(name, {name: data, **(extra or {})}, limits)


def decode_path(path: Path) -> tuple[str, Decoded]:
    return decode_bytes(path.name, path.read_bytes())


def to_record(decoded: Decoded, name: str = "rec", fmt: str = "test") -> Record:
    """The Record the reader builds from a Decoded (the fields every version of Record has)."""
    return Record(record_id=name, uri=name, fs=decoded.fs, sig_name=list(decoded.leads), units=list(decoded.units),
                  signal=decoded.signal, metadata=dict(decoded.metadata), comments=list(decoded.comments), format=fmt)


def load_manifest(shared_dir: Path) -> tuple[list[dict], np.lib.npyio.NpzFile]:
    folder = shared_dir / "conformance" / "formats"
    manifest = json.loads((folder / "manifest.json").read_text())
    return manifest["files"], np.load(folder / "expected.npz")
