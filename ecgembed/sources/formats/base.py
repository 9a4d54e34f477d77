"""The format protocol: what one input format provides, the decoded result, and per-record limits.

A format is one module under ``ecgembed/sources/formats/`` exposing:

``NAME: str``
    short name stored in ``Record.format`` and in discovery reports (``"wfdb"``, ``"muse"``...).
``EXTENSIONS: tuple[str, ...]``
    lower-case file extensions (with the dot) that hint at the format. Discovery treats a file
    with one of them as a candidate record; the format is confirmed from the bytes at fetch time.
``sniff(head: bytes) -> bool``
    True when the first :data:`SNIFF_BYTES` bytes (or fewer, for a short file) are this format.
    By content, never by name: UTF-16 BOMs, ``<?xml`` + root element (:func:`xml_root`), DICOM
    ``DICM`` at offset 128, SCP-ECG's CRC + section 0, EDF's ``0       ``, ``MATLAB 5.0``. Must be
    cheap and must not raise.
``companions(primary: bytes, name: str) -> list[str]``
    the other files the record needs, as BARE names in the primary file's folder (``[]`` for a
    single-file format). The reader refuses any name that is not bare (``unsafe_path``); a
    malformed primary raises :class:`~ecgembed.errors.ECGError`.
``decode(name: str, files: dict[str, bytes], limits: Limits) -> Decoded``
    ``files`` maps ``name`` (the primary) and every companion that exists to its bytes (a missing
    companion is absent: the decoder reports it as ``missing_file``). Raises ``ECGError`` whose
    ``uri`` is the bare name of the file at fault; the reader turns it into the full (redacted)
    URI. Sizes are checked before anything large is allocated (:func:`check_size`).

Optional: ``companion_bytes(primary: bytes, name: str, limits: Limits) -> int | None``, the most
bytes of companion ``name`` the decoder needs from its start (``None``: the whole file, bounded by
``limits.max_object_bytes``), so a long record costs one bounded ranged read.

A format is registered by adding its module to :data:`ecgembed.sources.formats.FORMATS`; the order
there is the sniffing order (the first whose ``sniff`` is true wins).

**Patient data.** ``Decoded.metadata`` may hold protected health information. Its keys are fixed
(:data:`METADATA_KEYS`); it is never logged or put in an error message, and is written only to
the opt-in ``record_metadata`` table. ``notes`` are quality notes ("truncated to the first 600 s")
and never contain anything read from the file that could identify a patient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ecgembed.errors import ECGError

SNIFF_BYTES = 8192        # bytes read from the start of a file to tell its format

# Fixed keys of Decoded.metadata (all values are strings, as stored, unparsed). PHI: opt-in only.
METADATA_KEYS = (
    "sex",                # as stored ("F", "Female", "2"...)
    "age",                # as stored, with its unit if the file gives one ("74", "6 months")
    "birth_date",
    "patient_id",         # MRN or any patient identifier
    "patient_name",
    "acquisition_time",   # when the ECG was recorded, as stored (ISO 8601 where the format says so)
    "device",             # cart / recorder model and serial
    "site",               # institution, department, location
    "diagnosis",          # the device's or reader's statements / codes, joined with "; "
    "height",
    "weight",
    "race",
    "operator",           # technician
    "physician",          # referring / confirming physician
)


@dataclass(frozen=True)
class Limits:
    """What one record may cost; checked before allocating. Each excess is a clear ``ECGError``.

    The pipeline builds one from the run's flags (``--max-object-mb``, ``--max-signal-files``,
    ``--max-record-seconds``); every reader entry point takes ``limits: Limits = Limits()``.
    """

    max_object_bytes: int = 256 * 2**20     # any one file read for a record (--max-object-mb 256): too_large
    max_signal_files: int = 64              # companion files per record (--max-signal-files): too_large
    max_record_seconds: float = 600.0       # longer records: the first 600 s are kept, with a note
    min_fs: float = 50.0                    # sampling rate range, Hz: bad_sampling_rate outside
    max_fs: float = 20_000.0
    max_channels: int = 256                 # stored channels per record: too_large
    max_decoded_bytes: int = 2 * 2**30      # float64 signal kept per record: too_large
    size_margin_bytes: int = 64 * 1024      # a signal file may exceed what its header implies by this much

    @classmethod
    def from_flags(cls, max_object_mb: float | None = None, max_signal_files: int | None = None,
                   max_record_seconds: float | None = None) -> Limits:
        """Limits from the command-line flags (``None`` keeps the default)."""
        base = cls()
        return cls(
            max_object_bytes=base.max_object_bytes if max_object_mb is None else int(max_object_mb * 2**20),
            max_signal_files=base.max_signal_files if max_signal_files is None else int(max_signal_files),
            max_record_seconds=base.max_record_seconds if max_record_seconds is None else float(max_record_seconds),
        ).validate()

    def validate(self) -> Limits:
        from ecgembed.errors import ConfigError

        if not self.max_object_bytes > 0:
            raise ConfigError(f"--max-object-mb must be positive, got {self.max_object_bytes / 2**20:g}")
        if not self.max_signal_files >= 1:
            raise ConfigError(f"--max-signal-files must be at least 1, got {self.max_signal_files}")
        if not self.max_record_seconds >= 10:
            raise ConfigError(f"--max-record-seconds must be at least 10 (the models read 10 s), "
                              f"got {self.max_record_seconds:g}")
        return self


@dataclass
class Decoded:
    """One record as a format decoder returns it; the reader turns it into a ``Record``."""

    leads: list[str]               # stored channel names; standard ones as I, II, III, aVR, aVL, aVF, V1..V6
    signal: np.ndarray             # float64 (n_leads, n_samples); mV for voltage channels, NaN = invalid
    fs: float                      # Hz
    units: list[str]               # as stored (the signal is in mV wherever the unit is a voltage)
    notes: list[str] = field(default_factory=list)            # quality notes, never PHI
    metadata: dict[str, str] = field(default_factory=dict)    # PHI-capable, keys from METADATA_KEYS
    comments: list[str] = field(default_factory=list)         # free text from the file (PHI-capable)

    def __post_init__(self):
        unknown = sorted(set(self.metadata) - set(METADATA_KEYS))
        if unknown:  # a decoder bug, not a property of the input
            raise ValueError(f"metadata keys {unknown} are not in METADATA_KEYS")
        n = self.signal.shape[0] if self.signal.ndim == 2 else -1
        if self.signal.ndim != 2 or len(self.leads) != n or len(self.units) != n:
            raise ValueError(f"signal shape {self.signal.shape} does not match {len(self.leads)} leads "
                             f"and {len(self.units)} units")


class Format(Protocol):
    """The module-level names a format module provides (checked structurally by the registry test)."""

    NAME: str
    EXTENSIONS: tuple[str, ...]

    def sniff(self, head: bytes) -> bool: ...

    def companions(self, primary: bytes, name: str) -> list[str]: ...

    def decode(self, name: str, files: dict[str, bytes], limits: Limits) -> Decoded: ...


# --------------------------------------------------------------------------- checks for decoders
def check_fs(fs: float, limits: Limits, uri: str) -> float:
    """``fs`` as a float within ``[limits.min_fs, limits.max_fs]``, else ``bad_sampling_rate``."""
    try:
        value = float(fs)
    except (TypeError, ValueError):
        raise ECGError(uri, "bad_sampling_rate", f"sampling rate {excerpt(str(fs))!r} is not a number") from None
    if not (math.isfinite(value) and limits.min_fs <= value <= limits.max_fs):
        raise ECGError(uri, "bad_sampling_rate", f"sampling rate {value:g} Hz is outside "
                                                 f"[{limits.min_fs:g}, {limits.max_fs:g}] Hz")
    return value


def samples_to_keep(n_samples: int, fs: float, limits: Limits) -> tuple[int, list[str]]:
    """How many samples of a record to decode: all, or the first ``max_record_seconds`` (with a note)."""
    cap = int(limits.max_record_seconds * fs)
    if n_samples <= cap:
        return n_samples, []
    return cap, [f"truncated to the first {limits.max_record_seconds:g} s of {n_samples / fs:.1f} s "
                 f"(--max-record-seconds)"]


def check_size(n_leads: int, n_samples: int, limits: Limits, uri: str) -> None:
    """Refuse, before allocating, a signal of ``n_leads`` x ``n_samples`` float64 beyond the limits."""
    if n_leads <= 0:
        raise ECGError(uri, "empty_signal", f"the record declares {n_leads} channels")
    if n_samples <= 0:
        raise ECGError(uri, "empty_signal", f"the record declares {n_samples} samples")
    if n_leads > limits.max_channels:
        raise ECGError(uri, "too_large", f"{n_leads} channels, more than the limit of {limits.max_channels}")
    n_bytes = n_leads * n_samples * 8
    if n_bytes > limits.max_decoded_bytes:
        raise ECGError(uri, "too_large", f"{n_leads} x {n_samples} samples would take {n_bytes / 2**30:.1f} GiB, "
                                         f"more than the limit of {limits.max_decoded_bytes / 2**30:.1f} GiB")


def excerpt(text: str, width: int = 40) -> str:
    """A short, printable excerpt of a malformed value for an error message.

    Never pass a whole line that may hold free text (names, MRNs): pass the one field at fault.
    Digits, letters and a few punctuation marks are kept; anything else becomes ``?``.
    """
    clean = "".join(c if c.isascii() and (c.isalnum() or c in " .,:;+-_/()=<>#~") else "?" for c in text)
    return clean if len(clean) <= width else clean[: width - 3] + "..."


# --------------------------------------------------------------------------- sniffing helpers
_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))


def text_head(head: bytes) -> str:
    """The start of a possibly-text file as str: UTF-8/UTF-16 BOMs honoured (also UTF-16 without a
    BOM when it starts with ``<``), otherwise latin-1. Never raises; a cut character is dropped."""
    for bom, codec in _BOMS:
        if head.startswith(bom):
            return head[len(bom):].decode(codec, errors="ignore")
    if head[:2] == b"<\x00":
        return head.decode("utf-16-le", errors="ignore")
    if head[:2] == b"\x00<":
        return head.decode("utf-16-be", errors="ignore")
    return head.decode("latin-1")


def xml_root(head: bytes) -> str | None:
    """The root element's local name (namespace prefix dropped) of an XML document's start, or None.

    Skips the XML declaration, comments, processing instructions and the DOCTYPE. Used by the
    XML formats' ``sniff`` (``xml_root(head) == "RestingECG"``).
    """
    text = text_head(head).lstrip()
    pos = 0
    while pos < len(text):
        if text.startswith("<?", pos):
            end = text.find("?>", pos)
            pos = -1 if end < 0 else end + 2
        elif text.startswith("<!--", pos):
            end = text.find("-->", pos)
            pos = -1 if end < 0 else end + 3
        elif text.startswith("<!", pos):  # DOCTYPE, possibly with an internal subset [...]
            bracket, close = text.find("[", pos), text.find(">", pos)
            if 0 <= bracket < close:
                end = text.find("]", bracket)
                close = -1 if end < 0 else text.find(">", end)
            pos = -1 if close < 0 else close + 1
        elif text.startswith("<", pos):
            name = []
            for c in text[pos + 1:]:
                if c.isspace() or c in "/>":
                    break
                name.append(c)
            tag = "".join(name)
            if not tag or pos + 1 + len(tag) >= len(text):   # no name, or cut by the end of the head
                return None
            return tag.rsplit(":", 1)[-1]
        else:
            return None
        if pos < 0:
            return None
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return None


# --------------------------------------------------------------------------- safe XML
def parse_xml(data: bytes, uri: str):
    """The root ``xml.etree.ElementTree.Element`` of a document, parsed safely.

    ``defusedxml`` refuses entity declarations (billion laughs, quadratic blow-up) and external
    entities/DTDs are never fetched; UTF-8/UTF-16 with BOM and any encoding the declaration names
    are handled by the parser. A malformed or refused document raises ``ECGError(corrupt)``.
    """
    import xml.etree.ElementTree as ElementTree

    import defusedxml
    import defusedxml.ElementTree as SafeTree

    try:
        return SafeTree.fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException as exc:
        raise ECGError(uri, "corrupt", f"XML refused: {type(exc).__name__} (entity declarations and external "
                                       "references are not allowed)") from None
    except ElementTree.ParseError as exc:
        raise ECGError(uri, "corrupt", f"malformed XML ({excerpt(str(exc), 60)})") from None
    except (ValueError, LookupError) as exc:   # e.g. an unknown encoding in the declaration
        raise ECGError(uri, "corrupt", f"XML cannot be decoded ({type(exc).__name__})") from None


def local_name(tag: str) -> str:
    """``{namespace}Name`` -> ``Name``."""
    return tag.rsplit("}", 1)[-1]
