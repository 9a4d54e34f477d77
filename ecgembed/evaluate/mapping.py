"""SNOMED-CT diagnosis codes -> classes of a label set, from the tables in ``labels/mappings/``.

A record is positive for a class when any of its codes maps to that class; a class no code
maps to has no truth from headers (it is reported, not scored as all-negative). Built-in sets
use ``snomed_classes.csv``; any other set is matched by class name: a name that is a SNOMED-CT
code, or a Challenge abbreviation (``AF``, ``IAVB``, ...), maps to that code and to the codes
the Challenge scores as the same diagnosis. ``docs/evaluation.md`` lists every mapping.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from ecgembed.labels import BUILTIN_NAMES

FILES = ("dx_mapping_scored.csv", "dx_mapping_unscored.csv", "snomed_classes.csv", "dx_text_codes.csv")
# The Challenge scores these codes as one diagnosis (dx_mapping_scored.csv, Notes column).
SCORED_AS_SAME = (("733534002", "164909002"), ("713427006", "59118001"), ("284470004", "63593006"),
                  ("427172004", "17338001"))


@dataclass(frozen=True)
class Diagnosis:
    code: str
    name: str
    abbreviation: str


def _read(name: str) -> str:
    return resources.files("ecgembed.labels").joinpath("mappings", name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def diagnoses() -> dict[str, Diagnosis]:
    """Every SNOMED-CT code of the Challenge tables, by code."""
    out = {}
    for name in FILES[:2]:
        for row in csv.DictReader(io.StringIO(_read(name))):
            out[row["SNOMEDCTCode"]] = Diagnosis(row["SNOMEDCTCode"], row["Dx"], row["Abbreviation"])
    return out


@lru_cache(maxsize=1)
def text_codes() -> dict[str, str]:
    """Text labels of early Challenge headers (``#Dx: I-AVB``) -> SNOMED-CT code."""
    return {row["token"]: row["snomed_code"] for row in csv.DictReader(io.StringIO(_read("dx_text_codes.csv")))}


@lru_cache(maxsize=1)
def _builtin_rows() -> tuple[dict, ...]:
    return tuple(csv.DictReader(io.StringIO(_read("snomed_classes.csv"))))


@lru_cache(maxsize=1)
def tables_sha256() -> str:
    """One digest over the four tables: recorded with every evaluation that used them."""
    digest = hashlib.sha256()
    for name in FILES:
        digest.update(_read(name).encode("utf-8"))
    return digest.hexdigest()


def class_codes(label_set: str, class_names: list[str]) -> dict[str, frozenset[str]]:
    """class name -> the SNOMED-CT codes that make a record positive (empty: unmapped)."""
    if label_set in BUILTIN_NAMES:
        out: dict[str, set[str]] = {c: set() for c in class_names}
        for row in _builtin_rows():
            if row["label_set"] == label_set and row["class_name"] in out:
                out[row["class_name"]].add(row["snomed_code"])
        return {c: frozenset(codes) for c, codes in out.items()}
    by_abbreviation: dict[str, str] = {}
    for dx in diagnoses().values():
        by_abbreviation.setdefault(dx.abbreviation, dx.code)
    out = {}
    for name in class_names:
        code = name if name in diagnoses() else by_abbreviation.get(name)
        out[name] = frozenset(_with_equivalents(code)) if code else frozenset()
    return out


def _with_equivalents(code: str) -> set[str]:
    codes = {code}
    for a, b in SCORED_AS_SAME:
        if code in (a, b):
            codes |= {a, b}
    return codes


def parse_dx(value: str) -> tuple[set[str], list[str]]:
    """The codes of a ``Dx`` header value, and the tokens that are neither a code nor a known label.

    ``"164889003,59118001"`` -> codes; ``"I-AVB,RBBB"`` (early CPSC release) -> their codes.
    """
    codes, unknown = set(), []
    for token in (t.strip() for t in value.split(",")):
        if not token:
            continue
        if token.isdigit() and len(token) <= 18:       # SNOMED-CT ids are at most 18 digits
            codes.add(token)
        elif token in text_codes():
            codes.add(text_codes()[token])
        else:
            unknown.append(token[:40])
    return codes, unknown
