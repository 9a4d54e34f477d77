"""Label sets: the built-in benchmark lists, user JSON/YAML files, and clear errors for bad ones."""

from __future__ import annotations

import hashlib
import json

import pytest

from ecgembed.errors import LabelSetError
from ecgembed.labels import BUILTIN_NAMES, LabelClass, LabelSet, builtin_label_set, load_label_set


# --------------------------------------------------------------------------- built-in sets
@pytest.mark.parametrize("name, count",
                         [("ptbxl", 71), ("georgia", 20), ("cpsc2018", 9), ("chapman", 8), ("mimic", 105)])
def test_builtin_counts(name, count):
    labels = load_label_set(name)
    assert labels.name == name and len(labels) == count
    assert len(set(labels.names)) == count and all(t.strip() for t in labels.texts)
    assert labels.description  # says where the texts come from


def test_builtin_exact_texts():
    ptbxl = dict(zip(*[getattr(load_label_set("ptbxl"), a) for a in ("names", "texts")]))
    assert ptbxl["NORM"] == "normal ECG" and ptbxl["NST_"] == "ST segment changes"
    assert ptbxl["ISC_"] == "myocardial ischemic" and ptbxl["STACH"] == "sinus tachycardia"
    assert ptbxl["PRC(S)"] == "premature complex(es)"
    # SCP codes in MultiLabelBinarizer (sorted string) order: ISC_ sorts after ISCLA
    names = load_label_set("ptbxl").names
    assert names[:3] == ["1AVB", "2AVB", "3AVB"] and names.index("ISC_") == names.index("ISCLA") + 1
    assert names == sorted(names)

    georgia = load_label_set("georgia")
    assert georgia.texts[:3] == ["Atrial fibrillation", "Atrial flutter", "first degree atrioventricular block"]
    assert georgia.names[18] == "TInv" and georgia.texts[18].startswith("Inverted T-waves can be diagnosed")
    assert load_label_set("cpsc2018").texts == [
        "normal ECG", "Atrial fibrillation", "first degree atrioventricular block", "left bundle branch block",
        "Right bundle branch block", "Atrial premature complex", "Ventricular premature complex",
        "ST segment depression", "ST segment elevation"]
    assert load_label_set("chapman").texts == [
        "Atrial Flutter", "Atrial Fibrillation", "Atrial Tachycardia", "Sinus Arrhythmia", "Sinus Bradycardia",
        "Sinus Rhythm", "Sinus Tachycardia", "Supraventricular Tachycardia"]
    mimic = load_label_set("mimic")
    assert mimic.texts[0] == "QRS changes in V3/V4 leads"
    assert mimic.texts[-1] == "voltage criteria for left ventricular hypertrophy"
    assert "non-specific lateral ST segement changes" in mimic.texts  # the original's spelling
    assert mimic.texts == sorted(mimic.texts) and mimic.names == mimic.texts


def test_builtin_names_are_case_insensitive_and_unknown_names_fail():
    assert load_label_set("PTBXL") == builtin_label_set("ptbxl")
    with pytest.raises(LabelSetError, match=r"unknown label set 'ptb-xl'.*ptbxl, georgia, cpsc2018, chapman, mimic"):
        load_label_set("ptb-xl")
    with pytest.raises(LabelSetError, match="unknown built-in label set"):
        builtin_label_set("nope")


# --------------------------------------------------------------------------- identity
def test_sha256_covers_names_texts_and_order():
    a = LabelSet("a", (LabelClass("AF", "atrial fibrillation"), LabelClass("SR", "sinus rhythm")))
    want = hashlib.sha256('[["AF","atrial fibrillation"],["SR","sinus rhythm"]]'.encode()).hexdigest()
    assert a.sha256 == want
    assert LabelSet("renamed", a.classes).sha256 == a.sha256            # the set's own name is not hashed
    assert LabelSet("a", a.classes[::-1]).sha256 != a.sha256             # order matters
    assert LabelSet("a", (LabelClass("AF", "Atrial fibrillation"), a.classes[1])).sha256 != a.sha256
    assert len({builtin_label_set(n).sha256 for n in BUILTIN_NAMES}) == len(BUILTIN_NAMES)


# --------------------------------------------------------------------------- user files
def test_yaml_file(tmp_path):
    path = tmp_path / "rhythm.yaml"
    path.write_text(
        "name: rhythm-3\n"
        "description: three rhythms\n"
        "classes:\n"
        "  - {name: AF, text: atrial fibrillation}\n"
        "  - name: SB\n"
        "    text: 'Sinus bradycardia: a regular rhythm below 60 bpm'\n"
        "  - sinus rhythm\n"
    )
    labels = load_label_set(str(path))
    assert labels.name == "rhythm-3" and labels.description == "three rhythms"
    assert labels.names == ["AF", "SB", "sinus rhythm"]
    assert labels.texts[1] == "Sinus bradycardia: a regular rhythm below 60 bpm"


def test_json_file_and_plain_list(tmp_path):
    obj = {"name": "mine", "classes": [{"name": "n", "text": "normal ECG"}, {"text": "atrial fibrillation"}]}
    (tmp_path / "mine.json").write_text(json.dumps(obj))
    labels = load_label_set(str(tmp_path / "mine.json"))
    assert labels.name == "mine" and labels.names == ["n", "atrial fibrillation"]
    assert labels.to_dict() == {"name": "mine", "classes": [
        {"name": "n", "text": "normal ECG"}, {"name": "atrial fibrillation", "text": "atrial fibrillation"}]}
    (tmp_path / "plain.yml").write_text("- normal ECG\n- atrial fibrillation\n")
    plain = load_label_set(str(tmp_path / "plain.yml"))
    assert plain.name == "plain" and plain.texts == ["normal ECG", "atrial fibrillation"]
    # a builtin written back out and renamed loads to the same classes
    (tmp_path / "copy.json").write_text(json.dumps(builtin_label_set("chapman").to_dict() | {"name": "chapman-copy"}))
    assert load_label_set(str(tmp_path / "copy.json")).sha256 == builtin_label_set("chapman").sha256


def test_label_file_on_s3(s3):
    s3.fs.pipe_file(f"{s3.bucket}/labels/two.yaml", b"classes: [normal ECG, atrial fibrillation]\n")
    labels = load_label_set(s3.url("labels/two.yaml"))
    assert labels.name == "two" and len(labels) == 2


@pytest.mark.parametrize("filename, content, message", [
    ("empty.yaml", "", "the label file is empty"),
    ("empty.json", "{}", "the label file is empty"),
    ("broken.json", '{"name": "x", "classes": [', "not valid JSON"),
    ("broken.yaml", "classes: [a, b\n", "not valid YAML"),
    ("noclasses.yaml", "name: x\n", "'classes' must be a non-empty list"),
    ("emptyclasses.yaml", "name: x\nclasses: []\n", "'classes' must be a non-empty list"),
    ("scalar.yaml", "just a string\n", "expected a mapping with 'classes' or a list of classes, got str"),
    ("typo.yaml", "name: x\nclases: [a]\n", r"unknown keys \['clases'\]"),
    ("badclass.yaml", "classes: [{name: a, txt: b}]\n", "class 0 must have 'text'"),
    ("number.yaml", "classes: [42]\n", "class 0 must be a string or a mapping"),
    ("blank.yaml", "classes: [{name: a, text: '  '}]\n", "class 0 has an empty or non-string text"),
    ("dup.yaml", "classes: [{name: AF, text: a}, {name: AF, text: b}]\n", r"duplicate class names \['AF'\]"),
    ("reserved.yaml", "name: ptbxl\nclasses: [a]\n", "reserved for the built-in set"),
])
def test_bad_label_files_give_clear_errors(tmp_path, filename, content, message):
    path = tmp_path / filename
    path.write_text(content)
    with pytest.raises(LabelSetError, match=message) as info:
        load_label_set(str(path))
    assert filename in str(info.value)  # the message names the file at fault


def test_missing_file_and_wrong_suffix(tmp_path):
    with pytest.raises(LabelSetError, match="cannot read the label file"):
        load_label_set(str(tmp_path / "absent.yaml"))
    (tmp_path / "labels.txt").write_text("a\n")
    with pytest.raises(LabelSetError, match=r"must end in \.json, \.yaml, \.yml"):
        load_label_set(str(tmp_path / "labels.txt"))
