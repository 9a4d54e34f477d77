"""What the job needs to know about an encoder: one :class:`ModelSpec` per model package.

Each model package defines ``SPEC`` in its ``job.py``, and :mod:`ecgembed.models.registry`
lists them. The pipeline, the stages, the table rows and schemas, the views and the command
line loop over the registered specs and never name a model: adding a third encoder is one new
package and one registration line.

A spec gives

- **one name** (``melp``, ``ecgfm-ked``) used in tables, the ledger, progress lines, columns
  (``ident``: ``ecgfm_ked``) and flags (``--ecgfm-ked-weights``);
- its **input**: the preprocess function the weights expect, its version and shape;
- its **outputs**: the vector columns of its embeddings table and their dimensions, and
  whether it scores label sets;
- its **defaults**: weights URI, batch sizes per device kind, extra options (text model...);
- cheap **versions**: ``version(weights, precision)`` is the weights file's sha256 plus the
  precision tag, without loading the model (the driver only hashes, actors load);
  ``scores_version(...)`` names what zero-shot scores depend on beyond the model version and
  the label set (the text model), so changing it re-scores;
- ``class_features(label_sets, ...)`` (driver, once per run, cached on disk by the packages),
  ``load(weights, device, precision)`` (actor, once) returning a :class:`JobModel` whose
  ``embed(x, class_features)`` returns ``{vector name: (B, D), "scores": [(B, C_i), ...]}``
  with zero-shot scoring inside the model package.

Weights ``"stand-in"`` (``--stand-in``) build seeded random weights; every version then starts
with ``stand-in:`` so those rows can never pass for real embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

STAND_IN = "stand-in"
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Vector:
    """One vector column of a model's embeddings table."""

    name: str      # column name, e.g. "embedding", "probe_embedding"
    dim: int
    doc: str       # what the vector is (docs/tables.md says the same)


@dataclass(frozen=True)
class Option:
    """A model-specific option besides weights and batch size; becomes ``--<model>-<name>``."""

    name: str                  # e.g. "text-model"
    help: str
    default: str | None = None


class JobModel(Protocol):
    """What an actor holds: a loaded model that embeds a batch (numpy in, numpy out). The model
    packages' torch modules (``MELP``, ``ECGFMKED``) are such objects."""

    def to_device(self, class_features: list[np.ndarray]) -> list: ...

    def embed(self, x: np.ndarray, class_features: list) -> dict[str, Any]: ...


class ModelSpec:
    """Base of the per-package specs; a package subclasses it in ``job.py`` and sets ``SPEC``."""

    name: str                                  # the one name: tables, ledger, progress, flags
    title: str                                 # for people: "MELP", "ECGFM-KED"
    vectors: tuple[Vector, ...]                # columns of the embeddings table, in order
    input_shape: tuple[int, int]               # one record's model input, (leads, samples)
    preproc_version: str
    default_weights: str
    batch_size: dict[str, int]                 # device kind ("cpu", "cuda") -> records per batch
    gflop_per_record: float                    # forward pass cost, for FLOP-bound figures
    options: tuple[Option, ...] = ()

    @property
    def ident(self) -> str:
        """The name as an identifier: column prefixes and table names (``ecgfm_ked``)."""
        return self.name.replace("-", "_")

    @property
    def table(self) -> str:
        """The embeddings table."""
        return f"{self.ident}_embeddings"

    def preprocess(self, signal: np.ndarray, fs: float) -> np.ndarray:
        """(12, N) standard leads in mV at ``fs`` -> one record's model input (``input_shape``)."""
        raise NotImplementedError

    def version(self, weights: str, precision: str = "fp32") -> str:
        """``model_version``: the weights file's sha256 plus the precision tag, without a model load."""
        raise NotImplementedError

    def scores(self, options: dict) -> bool:
        """Whether this model produces zero-shot scores with these options."""
        raise NotImplementedError

    def scores_version(self, weights: str, options: dict) -> str:
        """What the scores depend on besides model_version and the label set (e.g. the text model)."""
        raise NotImplementedError

    def class_features(self, label_sets: list, weights: str, options: dict) -> list[np.ndarray]:
        """One (C_i, D) array per label set, for ``JobModel.embed`` (driver side, cached)."""
        raise NotImplementedError

    def load(self, weights: str, device: str, precision: str = "fp32") -> JobModel:
        """The model an actor holds (loaded once per actor)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<ModelSpec {self.name}>"


@dataclass(frozen=True)
class LabelSetRun:
    """A label set as a run scores it (scores depend on the whole class list)."""

    name: str
    sha256: str
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class ModelRun:
    """A spec resolved for one run: everything the stages and the tables record about it."""

    spec: ModelSpec
    weights: str                               # URI, or "stand-in"
    precision: str
    model_version: str
    label_sets: tuple[LabelSetRun, ...] = ()   # empty when the model does not score
    scores_version: str = ""                   # "" when the model does not score

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def preproc_version(self) -> str:
        return self.spec.preproc_version
