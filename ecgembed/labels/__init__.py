"""Label sets (class names + texts) for zero-shot scoring; see ``labelset.py`` and ``docs/labels.md``."""

from .labelset import (
    BUILTIN_NAMES,
    LabelClass,
    LabelSet,
    builtin_label_set,
    label_set_from_obj,
    load_label_set,
    read_label_file,
)

__all__ = [
    "BUILTIN_NAMES",
    "LabelClass",
    "LabelSet",
    "builtin_label_set",
    "label_set_from_obj",
    "load_label_set",
    "read_label_file",
]
