"""The exceptions ecgembed raises, and the small vocabulary of error types it records.

Every problem with an input record is an :class:`ECGError` carrying the URI of the file at
fault, a machine-readable ``error_type`` from :data:`ERROR_TYPES`, and a message a person can
act on. The pipeline turns these into rows of the ``errors/`` table (``error_type`` and
``message`` columns); notebook users see them as ordinary exceptions.

Problems with configuration or model files are separate classes (:class:`WeightsError`,
:class:`LabelSetError`, :class:`ConfigError`): they stop a run before it starts instead of
becoming per-record rows.
"""

from __future__ import annotations

# error_type -> (permanent?, what it means). "Permanent" errors depend only on the record's
# bytes: re-running on unchanged bytes gives the same error, so a nightly run need not retry
# them. Transient ones (I/O) are retried.
ERROR_TYPES: dict[str, tuple[bool, str]] = {
    "bad_header": (True, "the header or metadata cannot be parsed (a malformed line, field or attribute)"),
    "missing_file": (True, "a file the record needs (header, signal file, companion) does not exist"),
    "truncated": (True, "a file holds fewer samples or bytes than it declares"),
    "unsupported_format": (True, "a storage format this reader does not decode"),
    "empty_signal": (True, "the record has no samples"),
    "missing_leads": (True, "the 12 standard leads are not all present and cannot be derived"),
    "non_finite": (True, "a required lead has no finite sample at all"),
    "bad_sampling_rate": (True, "the sampling rate is missing, zero or absurd"),
    "not_ecg": (True, "the input is not an ECG record ecgembed can read"),
    "corrupt": (True, "the payload cannot be decoded (malformed XML, bad base64, bad compression, checksum mismatch)"),
    "too_large": (True, "the record exceeds a size limit (object bytes, signal files, channels, samples)"),
    "unsafe_path": (True, "a file name in the record points outside the record's folder or is not a regular file"),
    "fetch_failed": (False, "the bytes could not be fetched (network or storage error)"),
    "model_failed": (False, "the model raised while embedding a batch containing the record"),
    "internal_error": (True, "an unexpected exception (a bug in ecgembed or a library): the message names its type "
                             "and where it was raised; settled until --full, so one record cannot stop every night"),
}


def is_permanent(error_type: str) -> bool:
    """True when retrying the same bytes cannot succeed."""
    return ERROR_TYPES[error_type][0]


class EcgembedError(Exception):
    """Base class of every error ecgembed raises on purpose."""


class ECGError(EcgembedError, ValueError):
    """A record that cannot be turned into model input.

    ``uri`` names the file at fault (header or signal file), ``error_type`` is one of
    :data:`ERROR_TYPES`, ``problem`` says what is wrong in words.
    """

    def __init__(self, uri: str, error_type: str, problem: str):
        if error_type not in ERROR_TYPES:
            raise KeyError(f"unknown error_type {error_type!r}; known: {sorted(ERROR_TYPES)}")
        self.uri = str(uri)
        self.error_type = error_type
        self.problem = problem
        super().__init__(f"{self.uri}: {problem} [{error_type}]")

    def __reduce__(self):  # keep the fields when pickled across Ray workers
        return (type(self), (self.uri, self.error_type, self.problem))


class WeightsError(EcgembedError, ValueError):
    """A model file that is missing, truncated, or not the checkpoint the loader expects."""


class LabelSetError(EcgembedError, ValueError):
    """A label set (built-in name or user file) that cannot be used."""


class ConfigError(EcgembedError, ValueError):
    """Invalid options; raised before any work starts."""
