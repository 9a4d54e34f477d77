"""Every vendor file of the shared set decodes equal to the independent reference decode.

``::raw`` is the rhythm waveform as stored (rows in the file's lead order, mV); ``::std12`` the
standard 12 leads with the missing limb leads derived in float64. Tolerances from the
conformance README: 1e-9 mV for exact integer formats; Philips aVR, aVL, aVF one count
(public ports round those rebuilt leads differently).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from ecgembed.leads import MODEL_ORDER, canonical_lead, standard_leads
from tests.sources.formats.helpers import decode_bytes, to_record

# Parametrised at collection time, so the manifest is located like the shared_dir fixture does.
SHARED = Path(os.environ.get("ECGEMBED_SHARED", Path(__file__).resolve().parents[3].parent / "shared"))
_MANIFEST = SHARED / "conformance" / "formats" / "manifest.json"
FILES = json.loads(_MANIFEST.read_text())["files"] if _MANIFEST.is_file() else []
FORMAT_OF = {"GE MUSE": "muse", "Philips": "philips", "HL7": "aecg", "DICOM": "dicom", "SCP-ECG": "scp", "EDF": "edf"}
ATOL = 1e-9


def _expected_format(entry: dict) -> str:
    return next(name for prefix, name in FORMAT_OF.items() if entry["format"].startswith(prefix))


@pytest.fixture(scope="module")
def expected(shared_dir):
    return np.load(shared_dir / "conformance" / "formats" / "expected.npz")


@pytest.mark.parametrize("entry", FILES, ids=[f["path"] for f in FILES])
def test_vendor_file_equals_reference(entry, ecg_dir, expected):
    path = ecg_dir / entry["path"]
    fmt, decoded = decode_bytes(path.name, path.read_bytes())
    assert fmt == _expected_format(entry)
    assert decoded.fs == entry["fs"]
    assert [canonical_lead(n) or n for n in decoded.leads] == [canonical_lead(n) or n for n in entry["raw_leads"]]
    raw = expected[entry["path"] + "::raw"]
    assert decoded.signal.dtype == np.float64 and decoded.signal.shape == raw.shape
    np.testing.assert_allclose(decoded.signal, raw, rtol=0, atol=ATOL)

    leads = standard_leads(to_record(decoded))
    std12 = expected[entry["path"] + "::std12"]
    order = [entry["std12_leads"].index(lead) for lead in MODEL_ORDER]
    want = std12[order]
    # 1e-9 mV, plus the rounding of the dtype standard_leads returns (float32 for the models)
    atol = ATOL + np.finfo(leads.signal.dtype).eps * np.abs(want)
    if fmt == "philips":                   # aVR, aVL, aVF: one count of 5 uV
        atol[[MODEL_ORDER.index(lead) for lead in ("aVR", "aVL", "aVF")]] += 0.005
    error = np.abs(np.asarray(leads.signal, np.float64) - want)
    assert (error <= atol).all(), f"max error {error.max():.3g} mV"
    assert set(leads.derived) == set(entry["derived_leads"])


def test_every_vendor_file_is_covered(ecg_dir):
    """A vendor file added to the shared set without a reference decode would go untested."""
    covered = {f["path"] for f in FILES}
    vendor = {str(p.relative_to(ecg_dir)) for p in ecg_dir.rglob("*")
              if p.suffix.lower() in (".xml", ".dcm", ".scp", ".edf")}
    assert vendor == covered
