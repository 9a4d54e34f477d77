"""GE MUSE ``RestingECG`` XML exports, decoded from bytes.

A MUSE file holds up to two ``Waveform`` blocks: ``Median`` (the representative beat, 1.2 s)
and ``Rhythm`` (the full 10 s recording). Only the Rhythm block is read. Each ``LeadData``
carries ``WaveFormData`` (base64 of little-endian int16), ``LeadAmplitudeUnitsPerBit`` and
``LeadAmplitudeUnits``, the declared sample and byte counts, and a zlib CRC-32 of the samples
(``LeadDataCRC32``), which is checked when present. MUSE stores 8 leads (I, II, V1-V6); III,
aVR, aVL and aVF are derived downstream by :func:`ecgembed.leads.standard_leads` (Einthoven and
Goldberger), never stored here. The sampling rate is ``SampleBase * 10**SampleExponent``.

The DOCTYPE names ``restecg.dtd``; it is never fetched (:func:`base.parse_xml`).
"""

from __future__ import annotations

import base64
import binascii
import zlib

import numpy as np

from ecgembed.errors import ECGError
from ecgembed import leads as std_leads  # module import: leads -> record -> sources -> formats is a cycle
from ecgembed.sources.formats.base import (Decoded, Limits, check_fs, check_size, excerpt, parse_xml,
                                           samples_to_keep, xml_root)

NAME = "muse"
EXTENSIONS = (".xml",)

# LeadAmplitudeUnits -> mV per unit
_UNITS_MV = {"MICROVOLTS": 1e-3, "MILLIVOLTS": 1.0, "VOLTS": 1e3, "NANOVOLTS": 1e-6}

# Fixed metadata keys -> the PatientDemographics / TestDemographics fields they come from.
_META = {
    "sex": ("PatientDemographics/Gender",),
    "birth_date": ("PatientDemographics/DateofBirth",),
    "patient_id": ("PatientDemographics/PatientID",),
    "race": ("PatientDemographics/Race",),
    "height": ("PatientDemographics/HeightCM", "PatientDemographics/HeightIN"),
    "weight": ("PatientDemographics/WeightKG", "PatientDemographics/WeightLBS"),
    "site": ("TestDemographics/SiteName", "TestDemographics/LocationName", "TestDemographics/Site"),
    "operator": ("TestDemographics/AcquisitionTechLastName",),
    "physician": ("TestDemographics/ReferringMDLastName",),
}


def sniff(head: bytes) -> bool:
    return xml_root(head) == "RestingECG"


def companions(primary: bytes, name: str) -> list[str]:
    return []


def decode(name: str, files: dict[str, bytes], limits: Limits) -> Decoded:
    root = parse_xml(files[name], name)
    waveforms = root.findall("Waveform")
    kinds = [(w.findtext("WaveformType") or "").strip() for w in waveforms]
    rhythm = [w for w, kind in zip(waveforms, kinds) if kind.lower() == "rhythm"]
    if not rhythm:
        found = ", ".join(repr(excerpt(k)) for k in kinds) or "none"
        raise ECGError(name, "empty_signal", f"no Waveform of type Rhythm (found: {found}); the median beat "
                                             "is not a recording and is never used")
    wave = rhythm[0]
    fs = check_fs(_sampling_rate(wave, name), limits, name)
    leads = wave.findall("LeadData")
    if not leads:
        raise ECGError(name, "missing_leads", "the Rhythm waveform has no LeadData")
    check_size(len(leads), _int(leads[0], "LeadSampleCountTotal", name), limits, name)

    names, counts, factors = [], [], []
    for lead in leads:
        lead_id = (lead.findtext("LeadID") or "").strip()
        if not lead_id:
            raise ECGError(name, "bad_header", "a LeadData has no LeadID")
        names.append(std_leads.canonical_lead(lead_id) or lead_id)
        counts.append(_lead_counts(lead, lead_id, name))
        factors.append(_mv_per_count(lead, lead_id, name))
    lengths = {len(c) for c in counts}
    if len(lengths) != 1:
        raise ECGError(name, "corrupt", f"leads hold different sample counts: {sorted(lengths)}")
    n_keep, notes = samples_to_keep(len(counts[0]), fs, limits)
    signal = np.stack([c[:n_keep] for c in counts]).astype(np.float64)   # (n_leads, n_samples)
    signal *= np.asarray(factors)[:, None]
    units = [(lead.findtext("LeadAmplitudeUnits") or "").strip() for lead in leads]
    return Decoded(leads=names, signal=signal, fs=fs, units=units, notes=notes,
                   metadata=_metadata(root), comments=_statements(root))


def _sampling_rate(wave, uri: str) -> float:
    base, exponent = wave.findtext("SampleBase"), wave.findtext("SampleExponent") or "0"
    try:
        return float(base) * 10.0 ** int(exponent)
    except (TypeError, ValueError, OverflowError):
        raise ECGError(uri, "bad_sampling_rate", f"SampleBase {excerpt(str(base))!r} / SampleExponent "
                                                 f"{excerpt(exponent)!r} is not a sampling rate") from None


def _int(element, tag: str, uri: str) -> int:
    text = element.findtext(tag)
    try:
        return int(text)
    except (TypeError, ValueError):
        raise ECGError(uri, "bad_header", f"{tag} {excerpt(str(text))!r} is not an integer") from None


def _lead_counts(lead, lead_id: str, uri: str) -> np.ndarray:
    """The int16 samples of one lead, checked against the declared counts and CRC."""
    text = lead.findtext("WaveFormData")
    if text is None:
        raise ECGError(uri, "missing_leads", f"lead {excerpt(lead_id)}: no WaveFormData")
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ECGError(uri, "corrupt", f"lead {excerpt(lead_id)}: WaveFormData is not valid base64") from None
    declared = _int(lead, "LeadSampleCountTotal", uri)
    size = lead.findtext("LeadSampleSize")
    if size is not None and size.strip() != "2":
        raise ECGError(uri, "unsupported_format", f"lead {excerpt(lead_id)}: LeadSampleSize {excerpt(size)!r} "
                                                  "(only 2-byte samples are defined)")
    if len(raw) < 2 * declared:
        raise ECGError(uri, "truncated", f"lead {excerpt(lead_id)}: WaveFormData holds {len(raw) // 2} samples, "
                                         f"LeadSampleCountTotal declares {declared}")
    if len(raw) != 2 * declared:
        raise ECGError(uri, "corrupt", f"lead {excerpt(lead_id)}: WaveFormData holds {len(raw)} bytes, "
                                       f"{declared} samples need {2 * declared}")
    crc = lead.findtext("LeadDataCRC32")
    if crc is not None and crc.strip():
        try:
            expected = int(crc)
        except ValueError:
            raise ECGError(uri, "bad_header", f"lead {excerpt(lead_id)}: LeadDataCRC32 {excerpt(crc)!r} "
                                              "is not an integer") from None
        if zlib.crc32(raw) != expected:
            raise ECGError(uri, "corrupt", f"lead {excerpt(lead_id)}: CRC-32 of the samples is "
                                           f"{zlib.crc32(raw)}, LeadDataCRC32 says {expected}")
    return np.frombuffer(raw, "<i2")


def _mv_per_count(lead, lead_id: str, uri: str) -> float:
    per_bit, units = lead.findtext("LeadAmplitudeUnitsPerBit"), (lead.findtext("LeadAmplitudeUnits") or "").strip()
    try:
        value = float(per_bit)
    except (TypeError, ValueError):
        raise ECGError(uri, "bad_header", f"lead {excerpt(lead_id)}: LeadAmplitudeUnitsPerBit "
                                          f"{excerpt(str(per_bit))!r} is not a number") from None
    if units.upper() not in _UNITS_MV:
        raise ECGError(uri, "unsupported_format", f"lead {excerpt(lead_id)}: LeadAmplitudeUnits "
                                                  f"{excerpt(units)!r} is not a voltage unit")
    if not np.isfinite(value) or value <= 0:
        raise ECGError(uri, "bad_header", f"lead {excerpt(lead_id)}: LeadAmplitudeUnitsPerBit {value:g}")
    return value * _UNITS_MV[units.upper()]


def _text(root, path: str) -> str:
    return (root.findtext(path) or "").strip()


def _metadata(root) -> dict[str, str]:
    """PHI-capable fields under the fixed keys (written only when the user opts in)."""
    out: dict[str, str] = {}
    for key, paths in _META.items():
        value = next((v for v in (_text(root, p) for p in paths) if v), "")
        if value:
            out[key] = value
    age, unit = _text(root, "PatientDemographics/PatientAge"), _text(root, "PatientDemographics/AgeUnits")
    if age:
        out["age"] = f"{age} {unit.lower()}".strip()
    name = " ".join(v for v in (_text(root, "PatientDemographics/PatientFirstName"),
                                _text(root, "PatientDemographics/PatientLastName")) if v)
    if name:
        out["patient_name"] = name
    when = " ".join(v for v in (_text(root, "TestDemographics/AcquisitionDate"),
                                _text(root, "TestDemographics/AcquisitionTime")) if v)
    if when:
        out["acquisition_time"] = when
    device = " ".join(v for v in (_text(root, "TestDemographics/AcquisitionDevice"),
                                  _text(root, "TestDemographics/CartNumber")) if v)
    if device:
        out["device"] = device
    statements = _statements(root)
    if statements:
        out["diagnosis"] = "; ".join(statements)
    return out


def _statements(root) -> list[str]:
    return [t for t in ((s.findtext("StmtText") or "").strip()
                        for s in root.findall("Diagnosis/DiagnosisStatement")) if t]
