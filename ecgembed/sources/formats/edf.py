"""EDF and EDF+ (continuous) recordings, decoded from bytes with ``edfio``.

The fixed header is checked here first, because ``edfio`` silently repairs what it should
not: a record count that disagrees with the file size (a cut upload) only becomes a warning
there. Then ``edfio`` decodes; physical value = (digital - dmin)(pmax - pmin)/(dmax - dmin) + pmin
per signal, in the signal's physical dimension, converted to mV where it is a voltage (``uV``,
``mV``, ``V``). Other channels (respiration, markers) are kept with their stored unit, so the
lead mapping ignores them. EDF allows a different rate per signal: the channels at the rate of
the first ECG lead are kept, the others are named in a note. ``EDF Annotations`` are not signals.
Discontinuous EDF+ (``EDF+D``) is refused: concatenating its records would hide the gaps.
"""

from __future__ import annotations

import warnings

import numpy as np

from ecgembed.errors import ECGError
from ecgembed import leads as std_leads  # module import: leads -> record -> sources -> formats is a cycle
from ecgembed.sources.formats.base import Decoded, Limits, check_fs, check_size, excerpt, samples_to_keep
from ecgembed.sources.record import mv_scale

NAME = "edf"
EXTENSIONS = (".edf",)

_ANNOTATIONS = "EDF Annotations"


def sniff(head: bytes) -> bool:
    return len(head) >= 256 and head[:8] == b"0       " and head[184:192].strip().isdigit()


def companions(primary: bytes, name: str) -> list[str]:
    return []


def decode(name: str, files: dict[str, bytes], limits: Limits) -> Decoded:
    data = files[name]
    header = _check_header(data, name)
    import edfio

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")           # any repair edfio would make is an error here
            edf = edfio.read_edf(data, lazy_load_data=True, header_encoding="latin-1")
            signals = [s for s in edf.signals if s.label.strip() != _ANNOTATIONS]
            rates = [float(s.sampling_frequency) for s in signals]
    except (ValueError, UserWarning, IndexError, UnicodeDecodeError) as exc:
        raise ECGError(name, "corrupt", f"EDF header cannot be decoded ({type(exc).__name__}: "
                                        f"{excerpt(str(exc), 60)})") from None
    if not signals:
        raise ECGError(name, "empty_signal", "the EDF file holds no signal (annotations only)")
    labels = [s.label.strip() for s in signals]
    reference = next((i for i, label in enumerate(labels) if std_leads.canonical_lead(label)), 0)
    fs = check_fs(rates[reference], limits, name)
    keep = [i for i, rate in enumerate(rates) if rate == rates[reference]]
    notes = []
    if len(keep) < len(signals):
        dropped = [labels[i] for i in range(len(signals)) if i not in keep]
        notes.append(f"{len(dropped)} channels at other sampling rates not read: {', '.join(map(excerpt, dropped))}")
    n_samples = header["records"] * signals[keep[0]].samples_per_data_record
    check_size(len(keep), n_samples, limits, name)
    n_keep, cut = samples_to_keep(n_samples, fs, limits)
    signal = np.empty((len(keep), n_keep))                    # (n_channels, n_samples)
    units = []
    for row, i in enumerate(keep):
        unit = signals[i].physical_dimension.strip()
        signal[row] = signals[i].data[:n_keep]
        scale = mv_scale(unit)
        if scale not in (None, 1.0):
            signal[row] *= scale
        units.append(unit)
    leads = [std_leads.canonical_lead(labels[i]) or labels[i] for i in keep]
    return Decoded(leads=leads, signal=signal, fs=fs, units=units, notes=notes + cut, metadata=_metadata(header))


def _field(data: bytes, start: int, width: int) -> str:
    return data[start:start + width].decode("ascii", errors="replace").strip()


def _check_header(data: bytes, uri: str) -> dict:
    """The fixed header fields, with the file size checked against them before anything is read."""
    if len(data) < 256:
        raise ECGError(uri, "truncated", f"{len(data)} bytes: shorter than the 256-byte EDF header")
    try:
        header_bytes = int(_field(data, 184, 8))
        records = int(_field(data, 236, 8))
        n_signals = int(_field(data, 252, 4))
    except ValueError:
        raise ECGError(uri, "bad_header", "EDF header size, record count or signal count is not an integer") from None
    if _field(data, 192, 44).startswith("EDF+D"):
        raise ECGError(uri, "unsupported_format", "discontinuous EDF+ (EDF+D): its records are not one recording")
    if n_signals < 1 or header_bytes != 256 * (n_signals + 1):
        raise ECGError(uri, "bad_header", f"{n_signals} signals but a {header_bytes}-byte header")
    if len(data) < header_bytes:
        raise ECGError(uri, "truncated", f"{len(data)} bytes: the header alone declares {header_bytes}")
    base = 256 + n_signals * 216
    try:
        per_record = [int(_field(data, base + 8 * i, 8)) for i in range(n_signals)]
    except ValueError:
        raise ECGError(uri, "bad_header", "a signal's samples-per-record field is not an integer") from None
    record_bytes = 2 * sum(per_record)
    if record_bytes <= 0 or min(per_record) < 0:
        raise ECGError(uri, "bad_header", f"samples per data record {per_record[:4]}...")
    body = len(data) - header_bytes
    if records == -1:
        raise ECGError(uri, "bad_header", "the record count is -1 (the file was not closed after recording)")
    if records <= 0:
        raise ECGError(uri, "empty_signal", f"the EDF header declares {records} data records")
    if body != records * record_bytes:
        kind = "truncated" if body < records * record_bytes else "corrupt"
        raise ECGError(uri, kind, f"the header declares {records} data records of {record_bytes} bytes "
                                  f"({records * record_bytes} bytes), the file holds {body} after the header")
    return {"records": records, "patient": _field(data, 8, 80), "recording": _field(data, 88, 80),
            "start": f"{_field(data, 168, 8)} {_field(data, 176, 8)}"}


def _metadata(header: dict) -> dict[str, str]:
    """PHI-capable fields under the fixed keys (written only when the user opts in).

    EDF+ patient field: ``code sex birthdate name``; recording field: ``Startdate date code
    technician equipment``; 'X' means unknown. Plain EDF: free text, kept whole as the id.
    """
    out: dict[str, str] = {"acquisition_time": header["start"]}
    patient, recording = header["patient"].split(), header["recording"].split()
    if len(patient) >= 4:
        for key, value in (("patient_id", patient[0]), ("sex", patient[1]), ("birth_date", patient[2]),
                           ("patient_name", " ".join(patient[3:]).replace("_", " "))):
            if value != "X":
                out[key] = value
    elif header["patient"]:
        out["patient_id"] = header["patient"]
    if len(recording) >= 5 and recording[0] == "Startdate":
        if recording[3] != "X":
            out["operator"] = recording[3]
        if recording[4] != "X":
            out["device"] = " ".join(recording[4:])
    return out
