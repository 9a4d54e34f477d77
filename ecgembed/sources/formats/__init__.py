"""The registry of input formats: one module per format, listed once in :data:`FORMATS`.

Adding a format = one new module implementing the protocol of :mod:`.base` + one line below.
The order is the sniffing order: the first format whose ``sniff`` accepts a file's first
:data:`~.base.SNIFF_BYTES` bytes decodes it, so a format with a weaker signature goes later.
"""

from __future__ import annotations

from types import ModuleType

from ecgembed.sources.formats import aecg, btl, dicom, edf, matlab, muse, philips, scp, wfdb
from ecgembed.sources.formats.base import SNIFF_BYTES, Decoded, Limits

FORMATS: tuple[ModuleType, ...] = (
    wfdb,
    muse,
    philips,
    aecg,
    btl,
    dicom,
    scp,
    edf,
    matlab,
)

__all__ = ["FORMATS", "SNIFF_BYTES", "Decoded", "Limits", "by_name", "claiming", "sniff"]


class SniffError(RuntimeError):
    """A format's ``sniff`` raised (a bug in that format's code: sniff must never raise)."""


def sniff(head: bytes) -> ModuleType | None:
    """The format of a file from its first bytes, or None."""
    for fmt in FORMATS:
        try:
            matched = fmt.sniff(head)
        except Exception as exc:  # a bug: reported by the caller as internal_error, never a dead run
            raise SniffError(f"{fmt.NAME}.sniff raised {type(exc).__name__}") from exc
        if matched:
            return fmt
    return None


def by_name(name: str) -> ModuleType:
    for fmt in FORMATS:
        if fmt.NAME == name:
            return fmt
    raise KeyError(f"no format named {name!r}; known: {', '.join(f.NAME for f in FORMATS)}")


def claiming(extension: str) -> tuple[ModuleType, ...]:
    """The formats whose ``EXTENSIONS`` include ``extension`` (lower-case, with the dot)."""
    return tuple(fmt for fmt in FORMATS if extension in fmt.EXTENSIONS)
