"""The format protocol and registry: every module conforms, and every real file sniffs as what it is."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from ecgembed.errors import ECGError
from ecgembed.sources import formats
from ecgembed.sources.formats import base
from ecgembed.sources.formats.base import SNIFF_BYTES, Decoded, Limits, parse_xml, text_head, xml_root

# folder (or extension) in the sample set -> the format its files must sniff as
_EXPECTED_BY_FOLDER = {"ge-muse_EGM": "muse", "ge-muse_braveheart": "muse", "ge-muse_introecg": "muse",
                       "philips-sierra": "philips", "hl7-aecg": "aecg"}
_EXPECTED_BY_EXT = {".hea": "wfdb", ".dcm": "dicom", ".scp": "scp", ".edf": "edf"}


def _expected(path) -> str | None:
    ext = path.suffix.lower()
    if ext == ".xml":
        return _EXPECTED_BY_FOLDER[path.parent.name]
    return _EXPECTED_BY_EXT.get(ext)   # signal files (.dat, .mat v4, .xyz), .csv, .md: no format


def test_every_format_module_implements_the_protocol():
    names = [fmt.NAME for fmt in formats.FORMATS]
    assert len(set(names)) == len(names) and names[0] == "wfdb"
    for fmt in formats.FORMATS:
        assert isinstance(fmt.NAME, str) and fmt.NAME
        assert fmt.EXTENSIONS and all(e.startswith(".") and e == e.lower() for e in fmt.EXTENSIONS)
        for func, params in (("sniff", ["head"]), ("companions", ["primary", "name"]),
                             ("decode", ["name", "files", "limits"])):
            assert list(inspect.signature(getattr(fmt, func)).parameters)[: len(params)] == params, (fmt.NAME, func)
        assert fmt.sniff(b"") is False and fmt.sniff(b"\x00" * SNIFF_BYTES) is False
        assert formats.by_name(fmt.NAME) is fmt


def test_every_real_file_sniffs_as_its_format(ecg_dir):
    seen = set()
    files = sorted(p for p in ecg_dir.rglob("*") if p.is_file())
    assert len(files) > 150
    for path in files:
        head = path.read_bytes()[:SNIFF_BYTES]
        got = formats.sniff(head)
        assert (got.NAME if got else None) == _expected(path), path
        # exactly one format claims a file: no two sniffs overlap on real data
        assert sum(fmt.sniff(head) for fmt in formats.FORMATS) == (1 if _expected(path) else 0), path
        seen.add(got.NAME if got else None)
    assert {"wfdb", "muse", "philips", "aecg", "dicom", "scp", "edf"} <= seen


def test_sniff_works_from_a_short_head(ecg_dir):
    """Discovery reads SNIFF_BYTES; the signatures sit well inside them."""
    for rel, name in (("ge-muse_EGM/muse-sinus.xml", "muse"), ("ecgtoolkit/Example.dcm", "dicom"),
                      ("philips-sierra/3191723_ZZDEMOPTONLY_1-04_orig.xml", "philips")):
        assert formats.sniff((ecg_dir / rel).read_bytes()[:1024]).NAME == name


def test_claiming_and_unknown_names():
    assert [f.NAME for f in formats.claiming(".hea")] == ["wfdb"]
    assert len(formats.claiming(".xml")) >= 3
    assert formats.claiming(".pdf") == ()
    with pytest.raises(KeyError, match="no format named"):
        formats.by_name("nope")


@pytest.mark.parametrize("head, root", [
    (b'<?xml version="1.0"?>\n<!DOCTYPE RestingECG SYSTEM "restecg.dtd">\n<RestingECG><x/>', "RestingECG"),
    (b'<?xml version="1.0"?><!-- c --><?pi x?>\n<ns:AnnotatedECG xmlns:ns="urn:hl7-org:v3">', "AnnotatedECG"),
    ('<?xml version="1.0" encoding="UTF-16"?><restingecgdata>'.encode("utf-16"), "restingecgdata"),
    (b'<!DOCTYPE x [<!ENTITY a "b">]><Root a="1">', "Root"),
    (b"<Roo", None),          # cut by the end of the head
    (b"plain text", None),
    (b"", None),
])
def test_xml_root(head, root):
    assert xml_root(head) == root


def test_text_head_honours_boms():
    assert text_head("<a>é</a>".encode("utf-16-be")).startswith("<a>")
    assert text_head(b"\xef\xbb\xbf<a>") == "<a>"
    assert text_head(b"\xff\xfe<\x00a\x00") == "<a"


def test_parse_xml_refuses_entity_bombs_and_external_entities():
    bomb = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
            b"<RestingECG>&lol2;</RestingECG>")
    with pytest.raises(ECGError) as info:
        parse_xml(bomb, "x.xml")
    assert info.value.error_type == "corrupt" and "EntitiesForbidden" in info.value.problem
    external = b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY e SYSTEM "file:///etc/passwd">]><r>&e;</r>'
    with pytest.raises(ECGError, match="not allowed"):
        parse_xml(external, "x.xml")
    with pytest.raises(ECGError, match="malformed XML"):
        parse_xml(b"<RestingECG><unclosed></RestingECG>", "x.xml")
    assert parse_xml('<?xml version="1.0" encoding="UTF-16"?><r a="é"/>'.encode("utf-16"), "x").get("a") == "é"


def test_decoded_checks_its_own_shape_and_metadata_keys():
    ok = Decoded(["I"], np.zeros((1, 3)), 500.0, ["mV"], metadata={"age": "70"})
    assert ok.metadata == {"age": "70"}
    with pytest.raises(ValueError, match="not in METADATA_KEYS"):
        Decoded(["I"], np.zeros((1, 3)), 500.0, ["mV"], metadata={"PatientName": "x"})
    with pytest.raises(ValueError, match="does not match"):
        Decoded(["I", "II"], np.zeros((1, 3)), 500.0, ["mV"])


def test_limit_helpers():
    limits = Limits()
    assert base.check_fs(500, limits, "x") == 500.0
    for fs in (0, 1e-300, 0.001, 49.9, 20_001, float("nan"), float("inf")):
        with pytest.raises(ECGError) as info:
            base.check_fs(fs, limits, "x")
        assert info.value.error_type == "bad_sampling_rate"
    assert base.samples_to_keep(5000, 500, limits) == (5000, [])
    keep, notes = base.samples_to_keep(24 * 3600 * 500, 500, limits)
    assert keep == 300_000 and "first 600 s of 86400.0 s" in notes[0]
    with pytest.raises(ECGError, match="20001 channels") as info:
        base.check_size(20_001, 5000, limits, "x")
    assert info.value.error_type == "too_large"
    with pytest.raises(ECGError, match="GiB"):
        base.check_size(200, 2_000_000, limits, "x")
    assert base.excerpt("Name: Jane Doe\x07 MRN 123 " + "x" * 80).endswith("...")
    assert Limits.from_flags(max_object_mb=1, max_signal_files=3, max_record_seconds=60) == \
        Limits(max_object_bytes=2**20, max_signal_files=3, max_record_seconds=60.0)
    from ecgembed.errors import ConfigError

    with pytest.raises(ConfigError, match="--max-record-seconds"):
        Limits.from_flags(max_record_seconds=5)
