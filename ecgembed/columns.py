"""The columns that flow between the stages of the Ray graph, named in one place.

    manifest ──► prepare (CPU tasks) ──► one actor pool per model ──► the tables sink

Every row is one record. The manifest (:func:`manifest`) carries what the ledger decided:

- ``record_id``, ``uri`` (where to fetch; may hold credentials, never written), ``format``,
  ``fingerprint``
- per model ``needs_<ident>`` (the model runs on this record), ``embed_<ident>`` (its embedding
  row is wanted; false when only a newly added label set needs scores) and
  ``score_<ident>_<i>`` (label set ``i`` of the run needs scores for this record).

``prepare`` adds the record's outcome and inputs:

- ``source_uri`` (redacted: no userinfo, no signed query), ``content_sha256``, ``status``
  (``ok`` | ``error``), ``error_stage``, ``error_type``, ``error_message`` (empty when ok),
  the quality flags of :data:`ecgembed.tables.schemas.QUALITY` (list flags as comma-joined
  strings), ``notes`` (the decoder's quality notes, comma-joined), ``meta_<field>`` for each
  ``--metadata`` field the user opted in to (PHI; "" when the file lacks it), and passes
  ``attr_<name>`` (``--manifest-columns``) through;
- ``<ident>_input``: the model input, computed only where ``needs_<ident>`` (zeros elsewhere).

A model pool reads only its own ``<ident>_input`` (it drops it), and adds ``<ident>_<vector>``
for each of its vectors, ``<ident>_scores_<i>`` per label set, and ``<ident>_error_type`` /
``<ident>_error`` (empty when the model succeeded on the record).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from ecgembed.models.spec import ModelRun, ModelSpec, Vector

RECORD_ID, URI, FORMAT, FINGERPRINT = "record_id", "uri", "format", "fingerprint"
SOURCE_URI, CONTENT_SHA256 = "source_uri", "content_sha256"
STATUS, ERROR_STAGE, ERROR_TYPE, ERROR_MESSAGE, NOTES = "status", "error_stage", "error_type", "error_message", "notes"
OK, ERROR = "ok", "error"


def metadata(field: str) -> str:
    """A field of the files' own metadata the user opted in to (``--metadata``; PHI)."""
    return f"meta_{field}"


def attribute(name: str) -> str:
    """A manifest CSV column passed through (``--manifest-columns``)."""
    return f"attr_{name}"


def needs(spec: ModelSpec) -> str:
    return f"needs_{spec.ident}"


def embed(spec: ModelSpec) -> str:
    return f"embed_{spec.ident}"


def score(spec: ModelSpec, i: int) -> str:
    return f"score_{spec.ident}_{i}"


def model_input(spec: ModelSpec) -> str:
    return f"{spec.ident}_input"


def vector(spec: ModelSpec, v: Vector) -> str:
    return f"{spec.ident}_{v.name}"


def scores(spec: ModelSpec, i: int) -> str:
    return f"{spec.ident}_scores_{i}"


def model_error_type(spec: ModelSpec) -> str:
    return f"{spec.ident}_error_type"


def model_error(spec: ModelSpec) -> str:
    return f"{spec.ident}_error"


@dataclass(frozen=True)
class Work:
    """One record to process and what each model still owes it (decided by the ledger)."""

    record_id: str
    uri: str
    format: str
    fingerprint: str
    embed: frozenset[str] = frozenset()                              # models whose embedding row is needed
    scores: dict[str, tuple[int, ...]] = field(default_factory=dict)  # model -> label set indices to score

    def needs(self, model: str) -> bool:
        return model in self.embed or bool(self.scores.get(model))


def manifest(work: list[Work], runs: list[ModelRun], attributes: dict[str, dict[str, str]] | None = None,
             attribute_names: tuple[str, ...] = ()) -> pa.Table:
    """The first table of the graph: one row per record with what each model must do (and the
    manifest columns passed through, ``attributes[record_id][name]``)."""
    cols: dict[str, list] = {RECORD_ID: [w.record_id for w in work], URI: [w.uri for w in work],
                             FORMAT: [w.format for w in work], FINGERPRINT: [w.fingerprint for w in work]}
    for name in attribute_names:
        cols[attribute(name)] = [(attributes or {}).get(w.record_id, {}).get(name, "") for w in work]
    for run in runs:
        spec = run.spec
        cols[needs(spec)] = [w.needs(spec.name) for w in work]
        cols[embed(spec)] = [spec.name in w.embed for w in work]
        for i in range(len(run.label_sets)):
            cols[score(spec, i)] = [i in w.scores.get(spec.name, ()) for w in work]
    return pa.table(cols)
