"""The in-memory forms of one ECG record: raw bytes as fetched, and the decoded signal."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Physical units the reader converts to millivolts, matched case-insensitively.
_TO_MV = {"mv": 1.0, "millivolt": 1.0, "millivolts": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3,
          "microvolt": 1e-3, "microvolts": 1e-3, "nv": 1e-6, "v": 1e3, "volt": 1e3, "volts": 1e3}


def mv_scale(units: str) -> float | None:
    """Factor that converts a value in ``units`` to mV, or None for a non-voltage unit."""
    return _TO_MV.get(units.strip().lower())


@dataclass(frozen=True)
class RawRecord:
    """A record's bytes as fetched: the header and every signal file it names that exists."""

    record_id: str
    uri: str                                  # the header's URI
    header: bytes
    files: dict[str, bytes] = field(default_factory=dict)   # file name (as in the header) -> bytes
    parsed: Any = field(default=None, compare=False, repr=False)  # the parsed header, when already parsed

    @property
    def content_sha256(self) -> str:
        """sha256 over the header bytes followed by each signal file's bytes, in header order.

        Changes whenever any byte of the record changes (a re-upload), and only then.
        """
        digest = hashlib.sha256(self.header)
        for name in self.files:
            digest.update(self.files[name])
        return digest.hexdigest()


@dataclass
class Record:
    """A decoded record: every stored channel, physical values (mV for voltage channels)."""

    record_id: str
    uri: str                      # the header's URI
    fs: float                     # sampling frequency, Hz
    sig_name: list[str]           # channel names exactly as stored
    units: list[str]              # units exactly as stored (the signal is in mV where mv_scale knows them)
    signal: np.ndarray            # float32 (n_channels, n_samples)
    metadata: dict[str, str]      # "key: value" header comments, e.g. {"Age": "74", "Dx": "RBBB"}
    comments: list[str]           # every header comment line, verbatim
    format: str = "wfdb"

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


def to_mv(signal: np.ndarray, units: list[str]) -> np.ndarray:
    """float32 copy of ``signal`` with every voltage channel in mV (others left as they are)."""
    scale = np.array([mv_scale(u) or 1.0 for u in units], np.float64)[:, None]
    if np.all(scale == 1.0):
        return signal.astype(np.float32)
    return (signal * scale).astype(np.float32)
