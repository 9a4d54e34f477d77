"""The in-memory forms of one ECG record: raw bytes as fetched, and the decoded signal."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

# Physical units the reader converts to millivolts, matched case-insensitively.
_TO_MV = {"mv": 1.0, "millivolt": 1.0, "millivolts": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3,
          "microvolt": 1e-3, "microvolts": 1e-3, "nv": 1e-6, "nanovolt": 1e-6, "nanovolts": 1e-6,
          "v": 1e3, "volt": 1e3, "volts": 1e3}


def mv_scale(units: str) -> float | None:
    """Factor that converts a value in ``units`` to mV, or None for a non-voltage unit."""
    return _TO_MV.get(units.strip().lower())


@dataclass(frozen=True)
class RawRecord:
    """A record's bytes as fetched: the primary file and every companion it needs that exists.

    ``uri`` is the primary file's URI as stored in tables and messages (credentials and signed
    query parameters removed, :func:`ecgembed.storage.redact`).
    """

    record_id: str
    uri: str                                  # the primary file's URI, redacted
    format: str                               # the format module's NAME
    name: str                                 # the primary file's bare name (key into ``files``)
    files: dict[str, bytes] = field(default_factory=dict)   # bare name -> bytes; the primary first

    @property
    def primary(self) -> bytes:
        return self.files[self.name]

    @property
    def header(self) -> bytes:
        """The primary file (a WFDB header for WFDB records)."""
        return self.primary

    @property
    def content_sha256(self) -> str:
        """sha256 over the primary file's bytes followed by each companion's, in the order needed.

        Changes whenever a byte read for the record changes (a re-upload). For WFDB this is the
        header then each signal file in header order, as in earlier versions.
        """
        digest = hashlib.sha256()
        for data in self.files.values():
            digest.update(data)
        return digest.hexdigest()


@dataclass
class Record:
    """A decoded record: every stored channel, physical values (mV for voltage channels)."""

    record_id: str
    uri: str                      # the primary file's URI, redacted
    fs: float                     # sampling frequency, Hz
    sig_name: list[str]           # channel names as stored (standard leads named I..V6 where the format defines them)
    units: list[str]              # units exactly as stored (the signal is in mV where mv_scale knows them)
    signal: np.ndarray            # float64 (n_channels, n_samples)
    metadata: dict[str, str]      # PHI-capable, keys from formats.base.METADATA_KEYS ("age", "sex", "diagnosis"...)
    comments: list[str]           # free-text comments of the file, verbatim (PHI-capable: never logged)
    format: str = "wfdb"
    notes: list[str] = field(default_factory=list)   # quality notes ("truncated to the first 600 s"), never PHI

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs


def parse_comments(comments: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``key: value`` pairs of header comments (first occurrence wins); other lines are skipped."""
    out: dict[str, str] = {}
    for line in comments:
        key, sep, value = line.partition(":")
        if sep and key.strip() and " " not in key.strip():
            out.setdefault(key.strip(), value.strip())
    return out


def to_mv_inplace(signal: np.ndarray, units: list[str]) -> np.ndarray:
    """Scale every voltage channel of a float64 ``signal`` to mV, in place (others left as they are)."""
    for i, unit in enumerate(units):
        scale = mv_scale(unit)
        if scale is not None and scale != 1.0:
            signal[i] *= scale
    return signal


def to_mv(signal: np.ndarray, units: list[str]) -> np.ndarray:
    """float64 copy of ``signal`` with every voltage channel in mV."""
    return to_mv_inplace(np.array(signal, dtype=np.float64), units)
