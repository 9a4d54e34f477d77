"""Find the 12 standard leads by name, in the order the models were trained on.

Stored names vary (``aVR``, ``AVR``, ``avr``, ``Lead aVR``, ``MDC_ECG_LEAD_AVR``, ``DII``...);
they are matched case-insensitively after removing decorations. Both models were pre-trained
on MIMIC-IV-ECG, whose headers store **I, II, III, aVR, aVF, aVL, V1-V6** (aVF before aVL), so
that is the order fed to both (:data:`MODEL_ORDER`).

Missing limb leads are derived when the record holds enough of them (Einthoven and Goldberger):
any two of I, II, III give the third (II = I + III), and aVR = -(I + II)/2, aVL = I - II/2,
aVF = II - I/2. Exports that store 8 leads (I, II, V1-V6: GE MUSE, some SCP) are therefore
complete. Derived leads are listed in :attr:`StandardLeads.derived`. Channels that are not one
of the 12 (Frank ``vx vy vz``, ``STATUS``, pacemaker) are ignored. A precordial lead that is
missing, or a lead whose every sample is non-finite, is an error: never a silent zero lead.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from ecgembed.errors import ECGError
from ecgembed.sources.record import Record, mv_scale

STANDARD_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
MODEL_ORDER = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")

_CANONICAL = {name.lower(): name for name in STANDARD_LEADS}
_CANONICAL.update({"di": "I", "dii": "II", "diii": "III", "d1": "I", "d2": "II", "d3": "III"})
_PREFIX = re.compile(r"^(mdc_ecg_lead_|lead_|lead|ecg_|ecg)")


@functools.lru_cache(maxsize=4096)
def canonical_lead(name: str) -> str | None:
    """The standard lead a stored channel name denotes, or None (e.g. ``vx``, ``STATUS``)."""
    key = re.sub(r"\(.*?\)", "", name.strip().lower())          # "Lead I (Einthoven)" -> "lead i "
    if key.startswith(("-", "–")):  # "-aVR" (Cabrera display) is the inverted lead, not aVR
        return None
    key = re.sub(r"[\s\-]+", "_", key.strip())
    key = _PREFIX.sub("", key).strip("_").replace("_", "")
    return _CANONICAL.get(key)


@dataclass(frozen=True)
class StandardLeads:
    signal: np.ndarray          # float64 (12, n_samples) in MODEL_ORDER, mV
    fs: float
    source_index: tuple[int, ...]   # stored channel of each row, -1 where derived
    derived: tuple[str, ...]        # names of derived leads

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[1])


def standard_leads(record: Record) -> StandardLeads:
    """The 12 leads of ``record`` in :data:`MODEL_ORDER` (derived limb leads flagged)."""
    found: dict[str, int] = {}
    for i, name in enumerate(record.sig_name):
        lead = canonical_lead(name)
        if lead is not None and lead not in found:   # a repeated lead (rhythm strip): the first one
            found[lead] = i
    for lead, i in found.items():
        if mv_scale(record.units[i]) is None:
            raise ECGError(record.uri, "not_ecg", f"lead {lead} ({record.sig_name[i]!r}) has units "
                                                  f"{record.units[i]!r}, not a voltage")
        if not np.isfinite(record.signal[i]).any():
            raise ECGError(record.uri, "non_finite", f"lead {lead} ({record.sig_name[i]!r}) has no finite sample")

    rows = {lead: record.signal[i] for lead, i in found.items()}
    derived = _derive_limb_leads(rows)
    missing = [lead for lead in MODEL_ORDER if lead not in rows]
    if missing:
        stored = ", ".join(repr(n) for n in record.sig_name) or "none"
        raise ECGError(record.uri, "missing_leads", f"missing leads {', '.join(missing)} that cannot be derived "
                                                    f"({len(record.sig_name)} channels stored: {stored})")
    signal = np.stack([rows[lead] for lead in MODEL_ORDER]).astype(np.float64, copy=False)   # (12, N)
    index = tuple(found.get(lead, -1) if lead not in derived else -1 for lead in MODEL_ORDER)
    return StandardLeads(signal, record.fs, index, tuple(lead for lead in MODEL_ORDER if lead in derived))


def _derive_limb_leads(rows: dict[str, np.ndarray]) -> set[str]:
    """Fill in missing limb leads from the ones present (in place); returns the derived names."""
    derived: set[str] = set()
    one, two, three = (lead in rows for lead in ("I", "II", "III"))
    if one + two + three == 2:
        if not three:
            rows["III"] = rows["II"] - rows["I"]
            derived.add("III")
        elif not two:
            rows["II"] = rows["I"] + rows["III"]
            derived.add("II")
        else:
            rows["I"] = rows["II"] - rows["III"]
            derived.add("I")
    if "I" in rows and "II" in rows:
        lead_i, lead_ii = rows["I"], rows["II"]
        for lead, value in (("aVR", lambda: -(lead_i + lead_ii) / 2), ("aVL", lambda: lead_i - lead_ii / 2),
                            ("aVF", lambda: lead_ii - lead_i / 2)):
            if lead not in rows:
                rows[lead] = value()
                derived.add(lead)
    return derived
