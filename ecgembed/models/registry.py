"""The encoders the job knows: one line per model package.

Everything model-specific the job needs is in each package's ``job.SPEC``
(:class:`ecgembed.models.spec.ModelSpec`); the pipeline, stages, tables and command line loop
over :data:`SPECS`. Adding an encoder: a new package with a ``job.py``, and one line here.
"""

from __future__ import annotations

from ecgembed.models.ecgfm_ked.job import SPEC as ECGFM_KED
from ecgembed.models.melp.job import SPEC as MELP
from ecgembed.models.spec import ModelSpec

SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (MELP, ECGFM_KED)}


def get(name: str) -> ModelSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(SPECS)}") from None
