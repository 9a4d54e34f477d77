"""Label sets for zero-shot scoring: a named, ordered list of classes, each a name and a text.

The text is what a text encoder reads (a short diagnosis or a longer description); the name is
what the ``zero_shot_scores`` table stores in ``class_name``. ECGFM-KED's scores depend on the
whole class list, so a score is always stored with its label set's ``name`` and ``sha256``.

Sources: a built-in set (``ptbxl``, ``georgia``, ``cpsc2018``, ``chapman``, ``mimic``; JSON
files in ``builtin/``, see ``docs/labels.md``) or a user file, JSON or YAML, local or any URI
``ecgembed.storage`` reads::

    {"name": "my-set", "classes": [{"name": "AF", "text": "atrial fibrillation"}, ...]}

``classes`` items may also be plain strings (name = text), and a file may be just a list of
such items (the set is then named after the file).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources

import yaml

from ecgembed import storage
from ecgembed.errors import LabelSetError

BUILTIN_NAMES = ("ptbxl", "georgia", "cpsc2018", "chapman", "mimic")
FILE_SUFFIXES = (".json", ".yaml", ".yml")
_SET_KEYS = {"name", "classes", "description"}
_CLASS_KEYS = {"name", "text"}


@dataclass(frozen=True)
class LabelClass:
    name: str
    text: str


@dataclass(frozen=True)
class LabelSet:
    name: str
    classes: tuple[LabelClass, ...]
    description: str = ""
    sha256: str = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "classes", tuple(self.classes))
        _validate(self.name, self.classes)
        object.__setattr__(self, "sha256", hashlib.sha256(self.canonical().encode("utf-8")).hexdigest())

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.classes]

    def __len__(self) -> int:
        return len(self.classes)

    def canonical(self) -> str:
        """What ``sha256`` hashes: ``[[name, text], ...]`` as compact UTF-8 JSON, in order.

        The set's own name and description are not part of it: two files with the same classes
        score identically, whatever they are called.
        """
        return json.dumps([[c.name, c.text] for c in self.classes], ensure_ascii=False, separators=(",", ":"))

    def to_dict(self) -> dict:
        out = {"name": self.name, "classes": [{"name": c.name, "text": c.text} for c in self.classes]}
        if self.description:
            out["description"] = self.description
        return out


def load_label_set(name_or_uri: str) -> LabelSet:
    """A built-in set by name, or a JSON/YAML label file (local path or URI)."""
    spec = os.fspath(name_or_uri)
    if "://" in spec or spec.lower().endswith(FILE_SUFFIXES) or os.sep in spec or "/" in spec:
        return read_label_file(spec)
    if spec.lower() in BUILTIN_NAMES:
        return builtin_label_set(spec.lower())
    raise LabelSetError(
        f"unknown label set {spec!r}: built-in sets are {', '.join(BUILTIN_NAMES)}; "
        f"a label file must end in {', '.join(FILE_SUFFIXES)}"
    )


def builtin_label_set(name: str) -> LabelSet:
    if name not in BUILTIN_NAMES:
        raise LabelSetError(f"unknown built-in label set {name!r}; built-in sets are {', '.join(BUILTIN_NAMES)}")
    text = resources.files(__package__).joinpath("builtin", f"{name}.json").read_text(encoding="utf-8")
    return label_set_from_obj(json.loads(text), default_name=name, source=f"built-in {name}", builtin=True)


def read_label_file(uri: str) -> LabelSet:
    if not uri.lower().endswith(FILE_SUFFIXES):
        raise LabelSetError(f"{uri}: a label file must end in {', '.join(FILE_SUFFIXES)}")
    try:
        raw = storage.read_bytes(uri)
    except (OSError, ValueError) as exc:  # missing file, bad URI, storage errors
        raise LabelSetError(f"{uri}: cannot read the label file ({type(exc).__name__}: {exc})") from None
    try:
        text = raw.decode("utf-8")
        obj = json.loads(text) if uri.lower().endswith(".json") else yaml.safe_load(text)
    except (UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise LabelSetError(f"{uri}: not valid {'JSON' if uri.lower().endswith('.json') else 'YAML'}: {exc}") from None
    stem = os.path.splitext(storage.basename(uri))[0]
    return label_set_from_obj(obj, default_name=stem, source=uri)


def label_set_from_obj(obj, default_name: str, source: str, builtin: bool = False) -> LabelSet:
    """Build a set from parsed JSON/YAML (a mapping or a bare list of classes)."""
    if obj is None or obj == {} or obj == []:
        raise LabelSetError(f"{source}: the label file is empty; expected "
                            '{"name": ..., "classes": [{"name": ..., "text": ...}, ...]}')
    if isinstance(obj, list):
        obj = {"classes": obj}
    if not isinstance(obj, dict):
        raise LabelSetError(
            f"{source}: expected a mapping with 'classes' or a list of classes, got {type(obj).__name__}")
    unknown = set(obj) - _SET_KEYS
    if unknown:
        raise LabelSetError(f"{source}: unknown keys {sorted(map(str, unknown))}; allowed: {sorted(_SET_KEYS)}")
    name = obj.get("name", default_name)
    if not builtin and isinstance(name, str) and name.lower() in BUILTIN_NAMES:
        raise LabelSetError(f"{source}: the name {name!r} is reserved for the built-in set; rename the file's set")
    items = obj.get("classes")
    if not isinstance(items, list) or not items:
        raise LabelSetError(f"{source}: 'classes' must be a non-empty list, got {items!r:.80}")
    classes = [_parse_class(item, i, source) for i, item in enumerate(items)]
    description = obj.get("description", "")
    if not isinstance(description, str):
        raise LabelSetError(f"{source}: 'description' must be a string")
    try:
        return LabelSet(name=name, classes=tuple(classes), description=description)
    except LabelSetError as exc:
        raise LabelSetError(f"{source}: {exc}") from None


def _parse_class(item, index: int, source: str) -> LabelClass:
    if isinstance(item, str):
        return LabelClass(name=item, text=item)
    if not isinstance(item, dict):
        raise LabelSetError(f"{source}: class {index} must be a string or a mapping with 'name' and 'text', "
                            f"got {type(item).__name__}")
    unknown = set(item) - _CLASS_KEYS
    if unknown or "text" not in item:
        raise LabelSetError(f"{source}: class {index} must have 'text' (and optionally 'name'), "
                            f"got keys {sorted(map(str, item))}")
    text = item["text"]
    return LabelClass(name=item.get("name", text), text=text)


def _validate(name, classes: tuple) -> None:
    if not isinstance(name, str) or not name.strip():
        raise LabelSetError(f"a label set needs a non-empty string name, got {name!r}")
    if not classes:
        raise LabelSetError(f"label set {name!r} has no classes")
    for i, c in enumerate(classes):
        if not isinstance(c, LabelClass):
            raise LabelSetError(f"label set {name!r}: class {i} is a {type(c).__name__}, expected LabelClass")
        for what in ("name", "text"):
            value = getattr(c, what)
            if not isinstance(value, str) or not value.strip():
                raise LabelSetError(f"label set {name!r}: class {i} has an empty or non-string {what}: {value!r}")
    seen: set[str] = set()
    duplicates = [c.name for c in classes if c.name in seen or seen.add(c.name)]
    if duplicates:
        raise LabelSetError(f"label set {name!r}: duplicate class names {sorted(set(duplicates))}")
