"""DICOM waveform objects (12-lead ECG, General ECG, Ambulatory ECG storage), decoded from bytes.

``pydicom`` parses the dataset; the samples are decoded here with ``numpy.frombuffer`` after
checking the declared sizes. A waveform object holds multiplex groups (``WaveformSequence``),
typically ``RHYTHM`` (10 s) and ``MEDIAN BEAT``: the group labelled RHYTHM is read, else the
longest one. Physical value = raw x ``ChannelSensitivity`` x ``ChannelSensitivityCorrectionFactor``
+ ``ChannelBaseline`` in the channel's sensitivity unit (UCUM ``uV``, ``mV``...), as
``pydicom``'s ``waveform_array`` computes it. Leads are named by their channel source code
(SCPECG ``5.6.3-9-<n>`` or MDC ``2:<n>``, both numbered like SCP-ECG lead ids), else by the
code meaning. A DICOM with no waveform (an encapsulated PDF or an image of an ECG) is refused:
there is no signal to read. Mu-law / A-law samples (``MB``/``AB``) are refused.
"""

from __future__ import annotations

import io
import struct

import numpy as np

from ecgembed.errors import ECGError
from ecgembed import leads as std_leads  # module import: leads -> record -> sources -> formats is a cycle
from ecgembed.sources.formats.base import Decoded, Limits, check_fs, check_size, excerpt, samples_to_keep
from ecgembed.sources.formats.scp import LEAD_NAMES
from ecgembed.sources.record import mv_scale

NAME = "dicom"
EXTENSIONS = (".dcm", ".dicom")

_DTYPES = {(8, "SB"): "i1", (8, "UB"): "u1", (16, "SS"): "<i2", (16, "US"): "<u2", (32, "SL"): "<i4",
           (32, "UL"): "<u4", (64, "SV"): "<i8", (64, "UV"): "<u8"}
# What pydicom raises on a malformed file (it has no single base class for parse errors).
_PARSE_ERRORS = (EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError, OverflowError,
                 NotImplementedError, struct.error, UnicodeDecodeError, LookupError)


def sniff(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def companions(primary: bytes, name: str) -> list[str]:
    return []


def decode(name: str, files: dict[str, bytes], limits: Limits) -> Decoded:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(files[name]))
        groups = list(ds.get("WaveformSequence") or [])
    except InvalidDicomError as exc:
        raise ECGError(name, "corrupt", f"not a readable DICOM file ({excerpt(str(exc), 60)})") from None
    except _PARSE_ERRORS as exc:
        raise ECGError(name, "corrupt", f"malformed DICOM ({type(exc).__name__})") from None
    if not groups:
        sop = str(ds.get("SOPClassUID", "unknown"))
        raise ECGError(name, "not_ecg", f"DICOM without waveform data (SOP class {excerpt(sop, 64)}): "
                                        "a PDF or image of an ECG holds no signal to read")
    try:
        index, notes = _choose(groups)
        return _decode_group(name, groups[index], limits, notes, _metadata(ds))
    except ECGError:                       # a ValueError too: ours, already clear
        raise
    except _PARSE_ERRORS as exc:
        raise ECGError(name, "corrupt", f"malformed waveform attributes ({type(exc).__name__})") from None


def _choose(groups) -> tuple[int, list[str]]:
    labels = [str(g.get("MultiplexGroupLabel", "")).strip() for g in groups]
    for i, label in enumerate(labels):
        if label.upper() == "RHYTHM":
            return i, []
    lengths = [int(g.get("NumberOfWaveformSamples", 0) or 0) for g in groups]
    best = int(np.argmax(lengths))
    return best, [f"no multiplex group labelled RHYTHM; read the longest (group {best + 1} of {len(groups)}, "
                  f"{lengths[best]} samples)"]


def _decode_group(name: str, group, limits: Limits, notes: list[str], metadata: dict) -> Decoded:
    n_channels = int(group.get("NumberOfWaveformChannels", 0) or 0)
    n_samples = int(group.get("NumberOfWaveformSamples", 0) or 0)
    fs = check_fs(group.get("SamplingFrequency", ""), limits, name)
    check_size(n_channels, n_samples, limits, name)
    key = (int(group.get("WaveformBitsAllocated", 0) or 0), str(group.get("WaveformSampleInterpretation", "")))
    if key not in _DTYPES:
        raise ECGError(name, "unsupported_format", f"waveform samples of {key[0]} bits, interpretation "
                                                   f"{excerpt(key[1])!r} (mu-law/A-law are not decoded)")
    channels = list(group.get("ChannelDefinitionSequence") or [])
    if len(channels) != n_channels:
        raise ECGError(name, "corrupt", f"{len(channels)} channel definitions for {n_channels} channels")
    data = group.get("WaveformData")
    data = b"" if data is None else bytes(data)
    need = n_channels * n_samples * (key[0] // 8)
    if len(data) < need:
        raise ECGError(name, "truncated", f"WaveformData holds {len(data)} bytes, {n_channels} channels x "
                                          f"{n_samples} samples need {need}")
    if len(data) > need + 1:                                   # one pad byte keeps the length even
        raise ECGError(name, "corrupt", f"WaveformData holds {len(data)} bytes, {n_channels} channels x "
                                        f"{n_samples} samples need {need}")
    n_keep, cut = samples_to_keep(n_samples, fs, limits)
    raw = np.frombuffer(data, _DTYPES[key], count=n_channels * n_samples).reshape(n_samples, n_channels)
    signal = raw[:n_keep].T.astype(np.float64)                 # (n_channels, n_samples)
    leads, units = [], []
    for i, channel in enumerate(channels):
        unit = _unit(channel)
        factor = mv_scale(unit) if unit else None
        gain = float(channel.get("ChannelSensitivity", 1.0) or 1.0) * \
            float(channel.get("ChannelSensitivityCorrectionFactor", 1.0) or 1.0)
        baseline = float(channel.get("ChannelBaseline", 0.0) or 0.0)
        signal[i] = signal[i] * gain + baseline
        if factor is not None:
            signal[i] *= factor
        leads.append(_lead_name(channel, i))
        units.append(unit)
    return Decoded(leads=leads, signal=signal, fs=fs, units=units, notes=notes + cut, metadata=metadata)


def _unit(channel) -> str:
    sequence = channel.get("ChannelSensitivityUnitsSequence") or []
    return str(sequence[0].get("CodeValue", "")).strip() if len(sequence) else ""


def _lead_name(channel, index: int) -> str:
    sources = channel.get("ChannelSourceSequence") or []
    if not len(sources):
        return str(channel.get("ChannelLabel", f"channel {index + 1}"))
    source = sources[0]
    code, meaning = str(source.get("CodeValue", "")).strip(), str(source.get("CodeMeaning", "")).strip()
    tail = code.replace(":", "-").rsplit("-", 1)[-1]
    scheme = str(source.get("CodingSchemeDesignator", "")).upper()
    if tail.isdigit() and (code.startswith("5.6.3-9-") or scheme in ("SCPECG", "MDC")):
        standard = LEAD_NAMES.get(int(tail))
        if standard is not None:
            return standard
    return std_leads.canonical_lead(meaning) or meaning or code or f"channel {index + 1}"


def _metadata(ds) -> dict[str, str]:
    """PHI-capable fields under the fixed keys (written only when the user opts in)."""
    out: dict[str, str] = {}
    for key, tag in (("sex", "PatientSex"), ("age", "PatientAge"), ("birth_date", "PatientBirthDate"),
                     ("patient_id", "PatientID"), ("patient_name", "PatientName"), ("height", "PatientSize"),
                     ("weight", "PatientWeight"), ("operator", "OperatorsName"),
                     ("physician", "ReferringPhysicianName")):
        value = str(ds.get(tag, "") or "").strip()
        if value:
            out[key] = value
    when = str(ds.get("AcquisitionDateTime", "") or "").strip() or " ".join(
        v for v in (str(ds.get("ContentDate", "") or ""), str(ds.get("ContentTime", "") or "")) if v).strip()
    if when:
        out["acquisition_time"] = when
    device = " ".join(v for v in (str(ds.get("Manufacturer", "") or ""), str(ds.get("ManufacturerModelName", "") or ""),
                                  str(ds.get("DeviceSerialNumber", "") or "")) if v.strip())
    if device:
        out["device"] = device
    site = ", ".join(v for v in (str(ds.get("InstitutionName", "") or ""),
                                 str(ds.get("InstitutionalDepartmentName", "") or "")) if v.strip())
    if site:
        out["site"] = site
    return out
