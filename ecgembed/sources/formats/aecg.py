"""HL7 v3 annotated ECG (FDA aECG) XML, decoded from bytes.

The waveforms sit in ``AnnotatedECG/component/series``; each series holds one or more
``sequenceSet``s of simultaneously recorded ``sequence``s: one time sequence (``TIME_ABSOLUTE``
or ``TIME_RELATIVE``, whose ``increment`` gives the sampling interval) and one sequence per lead
(code ``MDC_ECG_LEAD_*``) holding an ``SLIST_PQ``: value = ``origin + scale * digit``, in the
unit that origin and scale state (usually uV). The series coded ``RHYTHM`` is read; the
representative beat lives in ``series/derivation/derivedSeries`` and is never read. When a
series holds several sequence sets (leads recorded in groups at different times), the first
one with lead sequences is read and the others are named in a note.
"""

from __future__ import annotations

import numpy as np

from ecgembed.errors import ECGError
from ecgembed import leads as std_leads  # module import: leads -> record -> sources -> formats is a cycle
from ecgembed.sources.formats.base import (Decoded, Limits, check_fs, check_size, excerpt, parse_xml,
                                           samples_to_keep, xml_root)
from ecgembed.sources.record import mv_scale

NAME = "aecg"
EXTENSIONS = (".xml",)

_NS = "{urn:hl7-org:v3}"
_TIME_UNITS_S = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"


def sniff(head: bytes) -> bool:
    return xml_root(head) == "AnnotatedECG"


def companions(primary: bytes, name: str) -> list[str]:
    return []


def decode(name: str, files: dict[str, bytes], limits: Limits) -> Decoded:
    root = parse_xml(files[name], name)
    series = root.findall(f"{_NS}component/{_NS}series")
    codes = [(s.find(f"{_NS}code").get("code", "") if s.find(f"{_NS}code") is not None else "") for s in series]
    rhythm = [s for s, code in zip(series, codes) if code == "RHYTHM"]
    if not rhythm:
        found = ", ".join(repr(excerpt(c)) for c in codes) or "none"
        raise ECGError(name, "empty_signal", f"no series coded RHYTHM (found: {found}); representative beats "
                                             "are never used")
    notes = [f"{len(rhythm)} RHYTHM series; the first is read"] if len(rhythm) > 1 else []
    sets = [s for s in rhythm[0].findall(f"{_NS}component/{_NS}sequenceSet") if _lead_sequences(s)]
    if not sets:
        raise ECGError(name, "missing_leads", "the RHYTHM series holds no lead sequence")
    if len(sets) > 1:
        notes.append(f"{len(sets)} sequence sets (leads recorded in groups); the first is read")
    chosen = sets[0]
    fs = check_fs(_sampling_rate(chosen, name), limits, name)

    leads, units, rows = [], [], []
    for sequence in _lead_sequences(chosen):
        code = sequence.find(f"{_NS}code").get("code", "")
        value = sequence.find(f"{_NS}value")
        digits = _digits(value, code, name)
        if rows and len(digits) != len(rows[0]):
            raise ECGError(name, "corrupt", f"{excerpt(code)} holds {len(digits)} samples, "
                                            f"{excerpt(leads[0])} holds {len(rows[0])}")
        if not rows:
            check_size(len(_lead_sequences(chosen)), len(digits), limits, name)
        origin, origin_unit = _quantity(value.find(f"{_NS}origin"), code, "origin", name, default=0.0)
        scale, scale_unit = _quantity(value.find(f"{_NS}scale"), code, "scale", name, default=None)
        rows.append(origin * _mv(origin_unit, code, name) + digits * (scale * _mv(scale_unit, code, name)))
        leads.append(std_leads.canonical_lead(code) or code)
        units.append(scale_unit)
    n_keep, cut = samples_to_keep(len(rows[0]), fs, limits)
    signal = np.stack([r[:n_keep] for r in rows])              # (n_leads, n_samples) mV
    return Decoded(leads=leads, signal=signal, fs=fs, units=units, notes=notes + cut, metadata=_metadata(root))


def _lead_sequences(sequence_set) -> list:
    out = []
    for sequence in sequence_set.findall(f"{_NS}component/{_NS}sequence"):
        code = sequence.find(f"{_NS}code")
        if code is not None and not code.get("code", "").startswith("TIME_"):
            out.append(sequence)
    return out


def _sampling_rate(sequence_set, uri: str) -> float:
    for sequence in sequence_set.findall(f"{_NS}component/{_NS}sequence"):
        code = sequence.find(f"{_NS}code")
        if code is None or not code.get("code", "").startswith("TIME_"):
            continue
        increment = sequence.find(f"{_NS}value/{_NS}increment")
        if increment is None:
            break
        value, unit = increment.get("value", ""), increment.get("unit", "s")
        try:
            step = float(value) * _TIME_UNITS_S[unit]
        except (ValueError, KeyError):
            raise ECGError(uri, "bad_sampling_rate", f"time increment {excerpt(value)!r} {excerpt(unit)!r} "
                                                     "is not a sampling interval") from None
        if not step > 0:
            raise ECGError(uri, "bad_sampling_rate", f"time increment {step:g} s")
        return 1.0 / step
    raise ECGError(uri, "bad_sampling_rate", "the sequence set has no time sequence with an increment")


def _digits(value, code: str, uri: str) -> np.ndarray:
    if value is None or value.get(_XSI_TYPE, "SLIST_PQ").split(":")[-1] != "SLIST_PQ":
        kind = value.get(_XSI_TYPE) if value is not None else "none"
        raise ECGError(uri, "unsupported_format", f"{excerpt(code)}: value type {excerpt(str(kind))!r} "
                                                  "(supported: SLIST_PQ)")
    text = value.findtext(f"{_NS}digits")
    if text is None or not text.strip():
        raise ECGError(uri, "empty_signal", f"{excerpt(code)}: no digits")
    try:
        return np.array(text.split(), dtype=np.int64)
    except (ValueError, OverflowError):
        raise ECGError(uri, "corrupt", f"{excerpt(code)}: digits hold a value that is not an integer") from None


def _quantity(element, code: str, what: str, uri: str, default: float | None) -> tuple[float, str]:
    if element is None:
        if default is None:
            raise ECGError(uri, "bad_header", f"{excerpt(code)}: no {what}")
        return default, "uV"
    text, unit = element.get("value", ""), element.get("unit", "")
    try:
        value = float(text)
    except ValueError:
        raise ECGError(uri, "bad_header", f"{excerpt(code)}: {what} {excerpt(text)!r} is not a number") from None
    if not np.isfinite(value):
        raise ECGError(uri, "bad_header", f"{excerpt(code)}: {what} {excerpt(text)!r}")
    return value, unit


def _mv(unit: str, code: str, uri: str) -> float:
    scale = mv_scale(unit)
    if scale is None:
        raise ECGError(uri, "unsupported_format", f"{excerpt(code)}: unit {excerpt(unit)!r} is not a voltage")
    return scale


def _metadata(root) -> dict[str, str]:
    """PHI-capable fields under the fixed keys (written only when the user opts in)."""
    out: dict[str, str] = {}
    subject = root.find(f".//{_NS}trialSubject")
    if subject is not None:
        ident = subject.find(f"{_NS}id")
        if ident is not None and ident.get("extension"):
            out["patient_id"] = ident.get("extension")
        person = subject.find(f"{_NS}subjectDemographicPerson")
        if person is not None:
            name = " ".join(t.strip() for t in person.find(f"{_NS}name").itertext()) if person.find(
                f"{_NS}name") is not None else ""
            if name.strip():
                out["patient_name"] = " ".join(name.split())
            for key, tag, attr in (("sex", "administrativeGenderCode", "code"), ("birth_date", "birthTime", "value"),
                                   ("race", "raceCode", "code")):
                element = person.find(f"{_NS}{tag}")
                if element is not None and element.get(attr):
                    out[key] = element.get(attr)
    for when in ("low", "center"):                 # the ECG's time: an interval start or its centre
        element = root.find(f"{_NS}effectiveTime/{_NS}{when}")
        if element is not None and element.get("value"):
            out["acquisition_time"] = element.get("value")
            break
    model = root.find(f".//{_NS}manufacturedSeriesDevice/{_NS}manufacturerModelName")
    if model is not None and (model.text or "").strip():
        out["device"] = model.text.strip()
    site = root.find(f".//{_NS}trialSite/{_NS}location/{_NS}name")
    if site is not None and (site.text or "").strip():
        out["site"] = site.text.strip()
    for observation in root.iter(f"{_NS}relatedObservation"):
        code = observation.find(f"{_NS}code")
        value = observation.find(f"{_NS}value")
        if code is not None and code.get("code") == "21612-7" and value is not None and value.get("value"):
            out["age"] = f"{value.get('value')} {value.get('unit', '')}".strip()
            break
    return out
