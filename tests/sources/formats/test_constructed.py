"""Formats with no real sample in the shared set, checked on files built here from real ECGs.

- MATLAB in the CPSC 2018 layout (``ECG.data`` 12 x N mV, sex, age), built with
  ``scipy.io.savemat`` from CPSC 2018 record A0001 as PhysioNet redistributes it (WFDB), so
  the expected values come from ``wfdb.rdrecord``;
- BTL XML (8 leads + STATUS, ASCII integers), built from the GE MUSE example's integers;
- Philips uncompressed variants (Base64 int16 and Plain text), built from the XLI example.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import scipy.io
import wfdb

from ecgembed.leads import MODEL_ORDER, standard_leads
from ecgembed.sources.formats import matlab
from tests.sources.formats.helpers import decode_bytes, decode_path, to_record


@pytest.fixture(scope="module")
def cpsc_a0001(ecg_dir):
    record = wfdb.rdrecord(str(ecg_dir / "cpsc2018_cinc2020" / "A0001"))
    return record, record.p_signal.T.copy()                    # (12, 7500) mV


def _cpsc_mat(signal: np.ndarray, compress: bool = False) -> bytes:
    out = io.BytesIO()
    scipy.io.savemat(out, {"ECG": {"sex": "Male", "age": 74.0, "data": signal}}, do_compression=compress)
    return out.getvalue()


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "compressed"])
def test_matlab_cpsc_layout_with_the_documented_defaults(cpsc_a0001, compress):
    record, signal = cpsc_a0001
    fmt, decoded = decode_bytes("A0001.mat", _cpsc_mat(signal, compress))
    assert fmt == "matlab" and decoded.fs == 500.0 == record.fs
    assert decoded.leads == list(matlab.DEFAULT_LEADS) == record.sig_name
    np.testing.assert_array_equal(decoded.signal, signal)
    assert decoded.notes == ["no sidecar A0001.json: assumed the CPSC 2018 defaults, 500 Hz and leads I..V6"]
    assert decoded.metadata == {"sex": "Male", "age": "74.0"}
    assert standard_leads(to_record(decoded)).derived == ()


def test_matlab_sidecar_overrides_rate_leads_and_units(cpsc_a0001):
    _, signal = cpsc_a0001
    order = ["V1", "V2", "V3", "V4", "V5", "V6", "I", "II", "III", "aVR", "aVL", "aVF"]
    sidecar = json.dumps({"fs": 250, "leads": order, "units": "uV"}).encode()
    assert matlab.companions(b"", "A0001.mat") == ["A0001.json"]
    _, decoded = decode_bytes("A0001.mat", _cpsc_mat(signal * 1000), {"A0001.json": sidecar})
    assert decoded.fs == 250.0 and decoded.leads == order and decoded.notes == []
    np.testing.assert_allclose(decoded.signal, signal, rtol=1e-12, atol=1e-12)   # uV -> mV
    leads = standard_leads(to_record(decoded))
    np.testing.assert_allclose(leads.signal[MODEL_ORDER.index("V1")], signal[0], rtol=0, atol=1e-6)


BTL_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<BTL_ECG>
  <Patient Sex="F" Age="61"/>
  <Acquisition Device="BTL-08 MD" DateTime="2024-03-01T10:00:00"/>
  <Signals SamplingFrequency="500" Resolution="4.88" Units="uV">
{channels}
  </Signals>
</BTL_ECG>
"""


def test_btl_constructed_file(ecg_dir):
    _, muse = decode_path(ecg_dir / "ge-muse_EGM" / "muse-sinus.xml")
    counts = np.rint(muse.signal / 0.00488).astype(np.int64)    # the MUSE integers, 4.88 uV each
    status = np.zeros(counts.shape[1], np.int64)
    status[2500:2600] = 1
    channels = [f'    <Channel Name="{n}">{" ".join(map(str, row))}</Channel>' for n, row in zip(muse.leads, counts)]
    channels.append(f'    <Channel Name="STATUS">{",".join(map(str, status))}</Channel>')
    fmt, decoded = decode_bytes("b.xml", BTL_TEMPLATE.format(channels="\n".join(channels)).encode())
    assert fmt == "btl" and decoded.fs == 500.0
    assert decoded.leads == ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6", "STATUS"]
    assert decoded.units == ["uV"] * 8 + ["status"]
    np.testing.assert_allclose(decoded.signal[:8], muse.signal, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(decoded.signal[8], status)
    assert decoded.metadata == {"sex": "F", "age": "61", "device": "BTL-08 MD", "acquisition_time": "2024-03-01T10:00:00"}
    leads = standard_leads(to_record(decoded))                  # STATUS ignored; III, aVR, aVL, aVF derived
    assert set(leads.derived) == {"III", "aVR", "aVL", "aVF"}
    np.testing.assert_allclose(leads.signal, standard_leads(to_record(muse)).signal, rtol=0, atol=1e-6)


@pytest.mark.parametrize("encoding", ["Base64", "Plain"])
def test_philips_uncompressed_variants(ecg_dir, encoding):
    data = (ecg_dir / "philips-sierra" / "129DYPRG.XML").read_bytes()
    _, xli = decode_bytes("p.xml", data)
    counts = np.rint(xli.signal / 0.005).astype(np.int16)       # (12, 5500) the final lead values
    payload = base64.b64encode(counts.tobytes()) if encoding == "Base64" else \
        " ".join(map(str, counts.ravel())).encode()
    start = data.index(b"<parsedwaveforms")
    body = data.index(b">", start) + 1
    end = data.index(b"</parsedwaveforms>", body)
    tag = data[start:body].replace(b'compressflag="True"', b'compressflag="False"') \
                          .replace(b'dataencoding="Base64"', f'dataencoding="{encoding}"'.encode())
    _, decoded = decode_bytes("p.xml", data[:start] + tag + payload + data[end:])
    np.testing.assert_array_equal(decoded.signal, xli.signal)
    assert decoded.leads == xli.leads


def test_metadata_is_filled_and_notes_carry_none_of_it(ecg_dir):
    """Notes and lead names are never PHI; metadata holds the PHI-capable fields per format."""
    expected_keys = {"muse-sinus.xml": {"sex", "age", "patient_id", "acquisition_time", "device", "site"},
                     "3191723_ZZDEMOPTONLY_1-04_orig.xml": {"sex", "patient_id", "acquisition_time", "device"},
                     "Example aECG.xml": {"sex", "age", "acquisition_time", "device", "site"},
                     "waveform_ecg.dcm": {"device"},
                     "0000050.ECG.scp": {"sex", "age", "acquisition_time"},
                     "0000050.ECG.edf": {"acquisition_time"}}
    for path in ("ge-muse_EGM/muse-sinus.xml", "philips-sierra/3191723_ZZDEMOPTONLY_1-04_orig.xml",
                 "hl7-aecg/Example aECG.xml", "dicom_pydicom/waveform_ecg.dcm", "contec_edf-scp/0000050.ECG.scp",
                 "contec_edf-scp/0000050.ECG.edf"):
        _, decoded = decode_path(ecg_dir / path)
        name = path.rsplit("/", 1)[1]
        assert expected_keys[name] <= set(decoded.metadata), (name, sorted(decoded.metadata))
        text = " ".join(decoded.notes + decoded.leads)
        for value in decoded.metadata.values():
            assert len(value) < 4 or value not in text, (name, "a metadata value leaked into notes")
