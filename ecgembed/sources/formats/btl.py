"""BTL ECG XML exports (8 independent leads + a STATUS channel as ASCII integers), from bytes.

No public specification or sample file of BTL's waveform XML could be found; catalogues of
vendor formats describe it only as "8 leads + STATUS as ASCII integers". This decoder reads the
layout below, and was validated on a constructed file only (see docs/formats.md)::

    <BTL_ECG>                                    root: any element whose name starts with BTL
      <Patient Sex="..." Age="..." .../>         optional, PHI
      <Acquisition Device="..." DateTime="..."/> optional
      <Signals SamplingFrequency="500" Resolution="1" Units="uV">
        <Channel Name="I">12 15 -3 ...</Channel>     I, II, V1..V6 (III, aVR, aVL, aVF are derived)
        ...
        <Channel Name="STATUS">0 0 1 ...</Channel>   device status flags, not a voltage
      </Signals>
    </BTL_ECG>

Samples are whitespace-, comma- or semicolon-separated integers; value in mV = count x
``Resolution`` (in ``Units``, default uV per count) / 1000. Every channel must hold the same
number of samples. The STATUS channel is kept with unit ``status`` (not a voltage), so the lead
mapping ignores it; any other channel whose name is not a lead is kept in the stored unit.
"""

from __future__ import annotations

import numpy as np

from ecgembed.errors import ECGError
from ecgembed import leads as std_leads  # module import: leads -> record -> sources -> formats is a cycle
from ecgembed.sources.formats.base import (Decoded, Limits, check_fs, check_size, excerpt, local_name, parse_xml,
                                           samples_to_keep, xml_root)
from ecgembed.sources.record import mv_scale

NAME = "btl"
EXTENSIONS = (".xml",)

STATUS_UNIT = "status"
_SEPARATORS = str.maketrans(",;", "  ")          # commas and semicolons separate like spaces


def sniff(head: bytes) -> bool:
    root = xml_root(head)
    return root is not None and root.upper().startswith("BTL")


def companions(primary: bytes, name: str) -> list[str]:
    return []


def decode(name: str, files: dict[str, bytes], limits: Limits) -> Decoded:
    root = parse_xml(files[name], name)
    signals = next((e for e in root.iter() if local_name(e.tag) == "Signals"), None)
    if signals is None:
        raise ECGError(name, "empty_signal", "no <Signals> element")
    channels = [e for e in signals if local_name(e.tag) == "Channel"]
    if not channels:
        raise ECGError(name, "missing_leads", "<Signals> holds no <Channel>")
    fs = check_fs(signals.get("SamplingFrequency", ""), limits, name)
    units = signals.get("Units", "uV").strip()
    scale = mv_scale(units)
    if scale is None:
        raise ECGError(name, "unsupported_format", f"Units {excerpt(units)!r} is not a voltage unit")
    try:
        resolution = float(signals.get("Resolution", "1"))
    except ValueError:
        raise ECGError(name, "bad_header", f"Resolution {excerpt(signals.get('Resolution', ''))!r} "
                                           "is not a number") from None
    if not (np.isfinite(resolution) and resolution > 0):
        raise ECGError(name, "bad_header", f"Resolution {resolution:g}")

    leads, stored_units, rows = [], [], []
    for channel in channels:
        label = (channel.get("Name") or "").strip()
        if not label:
            raise ECGError(name, "bad_header", "a <Channel> has no Name")
        tokens = (channel.text or "").translate(_SEPARATORS).split()
        if rows and len(tokens) != len(rows[0]):
            raise ECGError(name, "corrupt", f"channel {excerpt(label)} holds {len(tokens)} samples, "
                                            f"{excerpt(leads[0])} holds {len(rows[0])}")
        if not rows:
            check_size(len(channels), len(tokens), limits, name)
        try:
            counts = np.array(tokens, dtype=np.int64)
        except (ValueError, OverflowError):
            raise ECGError(name, "corrupt", f"channel {excerpt(label)} holds a sample that is not an integer") from None
        is_status = label.upper() == "STATUS"
        lead = std_leads.canonical_lead(label)
        rows.append(counts.astype(np.float64) if is_status or lead is None else counts * (resolution * scale))
        leads.append(lead or label)
        stored_units.append(STATUS_UNIT if is_status else units if lead else "")
    n_keep, notes = samples_to_keep(len(rows[0]), fs, limits)
    signal = np.stack([r[:n_keep] for r in rows])              # (n_channels, n_samples)
    return Decoded(leads=leads, signal=signal, fs=fs, units=stored_units, notes=notes, metadata=_metadata(root))


def _metadata(root) -> dict[str, str]:
    """PHI-capable fields under the fixed keys (written only when the user opts in)."""
    out: dict[str, str] = {}
    for element in root:
        tag = local_name(element.tag)
        if tag == "Patient":
            for key, attr in (("sex", "Sex"), ("age", "Age"), ("birth_date", "BirthDate"), ("patient_id", "ID"),
                              ("patient_name", "Name")):
                if (element.get(attr) or "").strip():
                    out[key] = element.get(attr).strip()
        elif tag == "Acquisition":
            for key, attr in (("device", "Device"), ("acquisition_time", "DateTime"), ("site", "Site")):
                if (element.get(attr) or "").strip():
                    out[key] = element.get(attr).strip()
    return out
