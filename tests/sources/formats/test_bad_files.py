"""Hostile and damaged vendor files: each is ONE ECGError with its own error_type and message.

The damaged files are made here from the real ones (cut, re-encoded, fields changed), so every
case is the real decoder on a real layout. Sizes are checked before allocation: a declared
10^12 samples is refused as ``too_large`` instantly, never attempted.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
import zlib

import numpy as np
import pytest
import scipy.io

from ecgembed.errors import ERROR_TYPES, ECGError
from ecgembed.leads import standard_leads
from ecgembed.sources import formats
from tests.sources.formats.helpers import decode_bytes, to_record

MUSE = "ge-muse_EGM/muse-sinus.xml"
PHILIPS = "philips-sierra/129DYPRG.XML"
PHILIPS_UTF16 = "philips-sierra/3191723_ZZDEMOPTONLY_1-04_orig.xml"
AECG = "hl7-aecg/Example aECG.xml"
DICOM = "dicom_pydicom/waveform_ecg.dcm"
SCP_HUFFMAN = "ecgtoolkit/Example.scp"
SCP_RAW = "contec_edf-scp/0000050.ECG.scp"
EDF = "contec_edf-scp/0000050.ECG.edf"


def _error(name: str, data: bytes, extra: dict | None = None) -> ECGError:
    with pytest.raises(ECGError) as info:
        decode_bytes(name, data, extra)
    err = info.value
    assert err.error_type in ERROR_TYPES and err.uri in (name, *(extra or {}))
    return err


def _read(ecg_dir, path: str) -> bytes:
    return (ecg_dir / path).read_bytes()


# --------------------------------------------------------------------------- XML (all XML formats)
def _billion_laughs(root: str) -> bytes:
    entities = ['<!ENTITY l0 "lol">'] + [f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10)]
    return f'<?xml version="1.0"?>\n<!DOCTYPE {root} [{"".join(entities)}]>\n<{root}>&l9;</{root}>'.encode()


def _external_entity(root: str) -> bytes:
    return (f'<?xml version="1.0"?>\n<!DOCTYPE {root} [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
            f'<{root}>&x;</{root}>').encode()


@pytest.mark.parametrize("root,fmt", [("RestingECG", "muse"), ("restingecgdata", "philips"),
                                      ("AnnotatedECG", "aecg"), ("BTL_ECG", "btl")])
@pytest.mark.parametrize("make", [_billion_laughs, _external_entity], ids=["entity_bomb", "external_entity"])
def test_xml_entities_are_refused(root, fmt, make):
    data = make(root)
    assert formats.sniff(data).NAME == fmt
    err = _error("x.xml", data)
    assert err.error_type == "corrupt" and "entity" in err.problem.lower()


def test_utf16_entity_bomb_is_refused():
    data = b"\xff\xfe" + _billion_laughs("restingecgdata").decode().replace('<?xml version="1.0"?>',
                                                                           '<?xml version="1.0" encoding="utf-16"?>'
                                                                           ).encode("utf-16-le")
    assert formats.sniff(data).NAME == "philips"
    assert _error("x.xml", data).error_type == "corrupt"


# --------------------------------------------------------------------------- GE MUSE
def _muse_rhythm_lead(data: bytes, lead: str) -> tuple[int, int]:
    """Byte span of one LeadData inside the Rhythm waveform."""
    start = data.index(b"<WaveformType>Rhythm")
    begin = data.index(f"<LeadID>{lead}</LeadID>".encode(), start)
    return data.rindex(b"<LeadData>", start, begin), data.index(b"</LeadData>", begin) + len(b"</LeadData>")


def test_muse_truncated_file(ecg_dir):
    data = _read(ecg_dir, MUSE)
    err = _error("m.xml", data[: len(data) * 2 // 3])
    assert err.error_type == "corrupt" and "malformed XML" in err.problem


def test_muse_wrong_base64(ecg_dir):
    data = _read(ecg_dir, MUSE)
    begin, _ = _muse_rhythm_lead(data, "V2")
    at = data.index(b"<WaveFormData>", begin) + len(b"<WaveFormData>")
    err = _error("m.xml", data[:at] + b"*@" + data[at + 2:])
    assert err.error_type == "corrupt" and err.problem == "lead V2: WaveFormData is not valid base64"


@pytest.mark.parametrize("count,error_type,text", [(5001, "truncated", "holds 5000 samples, LeadSampleCountTotal "
                                                                          "declares 5001"),
                                                   (4999, "corrupt", "holds 10000 bytes, 4999 samples need 9998")])
def test_muse_wrong_sample_count(ecg_dir, count, error_type, text):
    data = _read(ecg_dir, MUSE)
    begin, end = _muse_rhythm_lead(data, "V3")
    lead = data[begin:end].replace(b"<LeadSampleCountTotal>5000<", f"<LeadSampleCountTotal>{count}<".encode())
    err = _error("m.xml", data[:begin] + lead + data[end:])
    assert err.error_type == error_type and err.problem == f"lead V3: WaveFormData {text}"


def test_muse_crc_mismatch(ecg_dir):
    data = _read(ecg_dir, MUSE)
    begin, end = _muse_rhythm_lead(data, "I")
    lead = re.sub(rb"<LeadDataCRC32>(\d+)<", lambda m: b"<LeadDataCRC32>%d<" % (int(m.group(1)) ^ 1), data[begin:end])
    err = _error("m.xml", data[:begin] + lead + data[end:])
    assert err.error_type == "corrupt" and err.problem.startswith("lead I: CRC-32 of the samples is ")


def test_muse_missing_leads(ecg_dir):
    data = _read(ecg_dir, MUSE)
    for lead in ("V1", "V2", "V3", "V4", "V5", "V6"):
        begin, end = _muse_rhythm_lead(data, lead)
        data = data[:begin] + data[end:]
    _, decoded = decode_bytes("m.xml", data)
    assert decoded.leads == ["I", "II"]
    with pytest.raises(ECGError) as info:
        standard_leads(to_record(decoded))
    assert info.value.error_type == "missing_leads" and "V1, V2, V3, V4, V5, V6" in info.value.problem


def test_muse_median_beat_only(ecg_dir):
    data = _read(ecg_dir, MUSE).replace(b"<WaveformType>Rhythm<", b"<WaveformType>Other<")
    err = _error("m.xml", data)
    assert err.error_type == "empty_signal" and "'Median', 'Other'" in err.problem


def test_muse_absurd_sample_count_is_refused_before_allocation(ecg_dir):
    data = _read(ecg_dir, MUSE)
    start = data.index(b"<WaveformType>Rhythm")
    at = data.index(b"<LeadSampleCountTotal>5000<", start)
    data = data[:at] + b"<LeadSampleCountTotal>1000000000000<" + data[at + len(b"<LeadSampleCountTotal>5000<"):]
    assert _error("m.xml", data).error_type == "too_large"


def test_muse_errors_carry_no_patient_data(ecg_dir):
    data = _read(ecg_dir, MUSE)
    _, decoded = decode_bytes("m.xml", data)
    assert decoded.metadata["patient_id"] == "081486213" and decoded.metadata["sex"] == "MALE"
    for bad in (data[: len(data) // 2], data.replace(b"<WaveformType>Rhythm<", b"<WaveformType>X<")):
        message = str(_error("m.xml", bad))
        assert not any(v in message for v in ("081486213", "DOE", "JOHN", "07-08-1979"))


# --------------------------------------------------------------------------- Philips
def _philips_payload(data: bytes) -> tuple[int, int]:
    start = data.index(b">", data.index(b"<parsedwaveforms")) + 1
    return start, data.index(b"</parsedwaveforms>", start)


def test_philips_truncated_payload(ecg_dir):
    data = _read(ecg_dir, PHILIPS)
    start, end = _philips_payload(data)
    payload = base64.b64decode(b"".join(data[start:end].split()))
    err = _error("p.xml", data[:start] + base64.b64encode(payload[: len(payload) // 3]) + data[end:])
    assert err.error_type == "truncated" and err.problem.startswith("XLI ")


def test_philips_wrong_base64(ecg_dir):
    data = _read(ecg_dir, PHILIPS)
    start, _ = _philips_payload(data)
    err = _error("p.xml", data[:start] + b"%%" + data[start + 2:])
    assert err.error_type == "corrupt" and err.problem == "parsedwaveforms is not valid base64"


def test_philips_wrong_sample_count(ecg_dir):
    data = _read(ecg_dir, PHILIPS).replace(b'durationperchannel="11000"', b'durationperchannel="12000"')
    err = _error("p.xml", data)
    assert err.error_type == "truncated" and err.problem == ("XLI chunk 1 holds 5500 samples, durationperchannel "
                                                             "implies 6000")


def test_philips_undefined_lzw_code(ecg_dir):
    data = _read(ecg_dir, PHILIPS)
    start, end = _philips_payload(data)
    payload = bytearray(base64.b64decode(b"".join(data[start:end].split())))
    payload[8:10] = bytes([0b11111111, 0b00000000])     # first code 1020: not yet in the dictionary
    err = _error("p.xml", data[:start] + base64.b64encode(bytes(payload)) + data[end:])
    assert err.error_type == "corrupt" and "LZW code 1020 before it is defined" in err.problem


def test_philips_unsupported_version(ecg_dir):
    data = _read(ecg_dir, PHILIPS).replace(b"<documentversion>1.03<", b"<documentversion>2.00<")
    err = _error("p.xml", data)
    assert err.error_type == "unsupported_format" and "'2.00'" in err.problem


def test_philips_utf16_truncated(ecg_dir):
    data = _read(ecg_dir, PHILIPS_UTF16)
    assert data[:2] == b"\xff\xfe"
    assert _error("p.xml", data[: len(data) // 2]).error_type == "corrupt"


# --------------------------------------------------------------------------- HL7 aECG
def _aecg_digits(data: bytes, nth: int) -> tuple[int, int]:
    start = 0
    for _ in range(nth + 1):
        start = data.index(b"<digits>", start) + len(b"<digits>")
    return start, data.index(b"</digits>", start)


def test_aecg_wrong_sample_count(ecg_dir):
    data = _read(ecg_dir, AECG)
    start, end = _aecg_digits(data, 3)
    err = _error("a.xml", data[:start] + b" ".join(data[start:end].split()[:-7]) + data[end:])
    assert err.error_type == "corrupt" and err.problem == "MDC_ECG_LEAD_V2 holds 4993 samples, I holds 5000"


def test_aecg_digit_that_is_not_an_integer(ecg_dir):
    data = _read(ecg_dir, AECG)
    start, _ = _aecg_digits(data, 0)
    err = _error("a.xml", data[:start] + b"1.5 " + data[start:])
    assert err.error_type == "corrupt" and "not an integer" in err.problem


def test_aecg_without_rhythm_series(ecg_dir):
    data = _read(ecg_dir, AECG).replace(b'<code code="RHYTHM"', b'<code code="OTHER"')
    err = _error("a.xml", data)
    assert err.error_type == "empty_signal" and "no series coded RHYTHM" in err.problem


def test_aecg_missing_leads(ecg_dir):
    data = _read(ecg_dir, AECG)
    for lead in (b"V1", b"V2", b"V3"):
        data = data.replace(b'code="MDC_ECG_LEAD_%s"' % lead, b'code="MDC_ECG_LEAD_VX%s"' % lead[1:], 1)
    _, decoded = decode_bytes("a.xml", data)
    with pytest.raises(ECGError) as info:
        standard_leads(to_record(decoded))
    assert info.value.error_type == "missing_leads" and "V1, V2, V3" in info.value.problem


# --------------------------------------------------------------------------- DICOM
def _dicom_edit(data: bytes, edit) -> bytes:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    edit(ds)
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def test_dicom_without_waveform(ecg_dir):
    data = _dicom_edit(_read(ecg_dir, DICOM), lambda ds: delattr(ds, "WaveformSequence"))
    err = _error("d.dcm", data)
    assert err.error_type == "not_ecg" and err.problem.startswith("DICOM without waveform data (SOP class 1.2.840")


def test_dicom_wrong_sample_count(ecg_dir):
    def edit(ds):
        ds.WaveformSequence[0].NumberOfWaveformSamples = 10001
    err = _error("d.dcm", _dicom_edit(_read(ecg_dir, DICOM), edit))
    assert err.error_type == "truncated" and err.problem == ("WaveformData holds 240000 bytes, 12 channels x 10001 "
                                                             "samples need 240024")


def test_dicom_absurd_sample_count_is_refused_before_allocation(ecg_dir):
    def edit(ds):
        ds.WaveformSequence[0].NumberOfWaveformSamples = 2**31 - 1
    assert _error("d.dcm", _dicom_edit(_read(ecg_dir, DICOM), edit)).error_type == "too_large"


def test_dicom_mu_law_is_refused(ecg_dir):
    def edit(ds):
        ds.WaveformSequence[0].WaveformSampleInterpretation = "MB"
    err = _error("d.dcm", _dicom_edit(_read(ecg_dir, DICOM), edit))
    assert err.error_type == "unsupported_format" and "'MB'" in err.problem


def test_dicom_truncated_file(ecg_dir):
    data = _read(ecg_dir, DICOM)
    err = _error("d.dcm", data[: len(data) // 2])
    assert err.error_type == "corrupt" and err.problem.startswith("malformed DICOM")


# --------------------------------------------------------------------------- SCP-ECG
def _scp_patch(data: bytes, section_id: int, offset: int, value: bytes) -> bytes:
    """Change bytes inside one section's body and recompute that section's and the file's CRCs."""
    out = bytearray(data)
    zero = 6 + 16
    for pos in range(zero, zero + 12 * 10, 10):
        sid, length, index = struct.unpack_from("<HII", out, pos)
        if sid == section_id:
            start = index - 1
            out[start + 16 + offset:start + 16 + offset + len(value)] = value
            struct.pack_into("<H", out, start, binascii.crc_hqx(bytes(out[start + 2:start + length]), 0xFFFF))
            struct.pack_into("<H", out, 0, binascii.crc_hqx(bytes(out[2:]), 0xFFFF))
            return bytes(out)
    raise AssertionError(f"no section {section_id}")


def test_scp_bad_crc(ecg_dir):
    data = bytearray(_read(ecg_dir, SCP_HUFFMAN))
    data[-5] ^= 0xFF
    err = _error("s.scp", bytes(data))
    assert err.error_type == "corrupt" and err.problem.startswith("file CRC mismatch")


def test_scp_bad_section_crc(ecg_dir):
    data = bytearray(_read(ecg_dir, SCP_HUFFMAN))
    data[-5] ^= 0xFF
    struct.pack_into("<H", data, 0, binascii.crc_hqx(bytes(data[2:]), 0xFFFF))   # file CRC made right again
    err = _error("s.scp", bytes(data))
    assert err.error_type == "corrupt" and err.problem.endswith("CRC mismatch") and "section" in err.problem


def test_scp_bimodal_is_refused(ecg_dir):
    err = _error("s.scp", _scp_patch(_read(ecg_dir, SCP_HUFFMAN), 6, 5, b"\x01"))
    assert err.error_type == "unsupported_format" and "bimodal" in err.problem


def test_scp_custom_huffman_is_refused(ecg_dir):
    err = _error("s.scp", _scp_patch(_read(ecg_dir, SCP_HUFFMAN), 2, 0, struct.pack("<H", 1)))
    assert err.error_type == "unsupported_format" and "custom Huffman tables (1 in section 2)" in err.problem


def test_scp_reference_beat_subtraction_is_refused(ecg_dir):
    data = _read(ecg_dir, SCP_HUFFMAN)
    err = _error("s.scp", _scp_patch(data, 3, 1, bytes([0x01 | 0x04 | (12 << 3)])))
    assert err.error_type == "unsupported_format" and "reference-beat subtraction" in err.problem


def test_scp_truncated_file(ecg_dir):
    data = _read(ecg_dir, SCP_HUFFMAN)
    err = _error("s.scp", data[:20_000])
    assert err.error_type == "truncated" and err.problem == "the file holds 20000 bytes, its header declares 34144"


def test_scp_wrong_sample_count(ecg_dir):
    data = _read(ecg_dir, SCP_HUFFMAN)                 # section 3 declares samples 1..5000: make it 1..5200
    section3 = 2 + 4                                    # lead 1's end sample
    for lead in range(12):
        data = _scp_patch(data, 3, section3 + 9 * lead, struct.pack("<I", 5200))
    err = _error("s.scp", data)
    assert err.error_type == "truncated" and "section 3 declares 5200" in err.problem


def test_scp_raw_lead_short_of_its_declared_samples(ecg_dir):
    data = _read(ecg_dir, SCP_RAW)                      # byte counts 65534 -> 60000: no 16-bit cap excuse
    data = _scp_patch(data, 6, 6, struct.pack("<H", 60000))
    err = _error("s.scp", data)
    assert err.error_type == "truncated" and err.problem == "lead I holds 30000 samples, section 3 declares 37855"


# --------------------------------------------------------------------------- EDF
def test_edf_wrong_record_count(ecg_dir):
    data = bytearray(_read(ecg_dir, EDF))
    data[236:244] = b"37854   "
    err = _error("e.edf", bytes(data))
    assert err.error_type == "corrupt" and err.problem == ("the header declares 37854 data records of 24 bytes "
                                                           "(908496 bytes), the file holds 908520 after the header")


def test_edf_truncated(ecg_dir):
    data = _read(ecg_dir, EDF)
    err = _error("e.edf", data[:-100])
    assert err.error_type == "truncated" and "37855 data records" in err.problem


def test_edf_discontinuous_is_refused(ecg_dir):
    data = bytearray(_read(ecg_dir, EDF))
    data[192:197] = b"EDF+D"
    assert _error("e.edf", bytes(data)).error_type == "unsupported_format"


def test_edf_record_count_of_a_file_still_recording(ecg_dir):
    data = bytearray(_read(ecg_dir, EDF))
    data[236:244] = b"-1      "
    err = _error("e.edf", bytes(data))
    assert err.error_type == "bad_header" and "-1" in err.problem


def test_edf_header_that_is_not_a_number(ecg_dir):
    data = bytearray(_read(ecg_dir, EDF))
    data[236:244] = b"lots    "
    assert _error("e.edf", bytes(data)).error_type == "bad_header"


# --------------------------------------------------------------------------- MATLAB
def _mat(variables: dict, compress: bool = False) -> bytes:
    out = io.BytesIO()
    scipy.io.savemat(out, variables, do_compression=compress)
    return out.getvalue()


def test_matlab_without_cpsc_layout():
    err = _error("r.mat", _mat({"val": np.zeros((12, 10))}))
    assert err.error_type == "not_ecg" and err.problem.endswith("variables: val")


def test_matlab_truncated():
    data = _mat({"ECG": {"sex": "Male", "age": 40, "data": np.zeros((12, 5000))}})
    err = _error("r.mat", data[: len(data) // 2])
    assert err.error_type == "corrupt" and err.problem.startswith("MATLAB file cannot be read")


def test_matlab_73_is_refused():
    data = b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(512, b" ")
    assert _error("r.mat", data).error_type == "unsupported_format"


def test_matlab_rows_that_are_not_the_leads():
    err = _error("r.mat", _mat({"ECG": {"sex": "Male", "age": 40, "data": np.zeros((8, 5000))}}))
    assert err.error_type == "missing_leads" and "8 rows" in err.problem


def test_matlab_bad_sidecar():
    data = _mat({"ECG": {"sex": "Male", "age": 40, "data": np.zeros((12, 5000))}})
    err = _error("r.mat", data, {"r.json": b"{fs: 500"})
    assert err.error_type == "bad_header" and err.uri == "r.json"
    err = _error("r.mat", data, {"r.json": b'{"fs": 500, "leads": ["I", "II"]}'})
    assert err.error_type == "bad_header" and err.problem.startswith("the sidecar names 2 leads, ECG.data has 12 rows")


def test_matlab_compression_bomb_is_refused_before_inflating():
    header = b"MATLAB 5.0 MAT-file".ljust(116, b" ") + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    inner = zlib.compress(struct.pack("<II", 14, 3 * 2**30) + b"\0" * 64)
    data = header + struct.pack("<II", 15, len(inner)) + inner
    assert _error("r.mat", data).error_type == "too_large"


# --------------------------------------------------------------------------- BTL
def test_btl_bad_samples():
    good = b'<BTL_ECG><Signals SamplingFrequency="500"><Channel Name="I">1 2 3</Channel>'
    err = _error("b.xml", good + b'<Channel Name="II">1 x 3</Channel></Signals></BTL_ECG>')
    assert err.error_type == "corrupt" and err.problem == "channel II holds a sample that is not an integer"
    err = _error("b.xml", good + b'<Channel Name="II">1 2</Channel></Signals></BTL_ECG>')
    assert err.error_type == "corrupt" and err.problem == "channel II holds 2 samples, I holds 3"


# --------------------------------------------------------------------------- any damage
@pytest.mark.parametrize("path", [MUSE, PHILIPS, PHILIPS_UTF16, AECG, DICOM, SCP_HUFFMAN, SCP_RAW, EDF])
def test_random_damage_is_an_ecg_error_or_a_clean_decode(ecg_dir, path):
    """Cut, overwritten, inserted or deleted bytes: never any exception but ECGError."""
    data = _read(ecg_dir, path)
    fmt = formats.sniff(data[: formats.SNIFF_BYTES])
    rng = np.random.default_rng(sum(data[:64]))
    for trial in range(12):
        damaged = bytearray(data)
        at = int(rng.integers(len(data)))
        if trial % 4 == 0:
            damaged = damaged[:at]
        elif trial % 4 == 1:
            damaged[at:at + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
        elif trial % 4 == 2:
            damaged[at:at] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
        else:
            del damaged[at:at + 200]
        try:
            decoded = fmt.decode("f", {"f": bytes(damaged)}, formats.Limits())
        except ECGError as err:
            assert err.error_type in ERROR_TYPES and err.uri == "f"
        else:
            assert decoded.signal.ndim == 2 and decoded.signal.dtype == np.float64
