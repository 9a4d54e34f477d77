"""MELP (ICML 2025) ECG encoder, re-implemented in plain torch; loads the published checkpoint.

    from ecgembed.models.melp import load_melp
    model = load_melp("hf://fuyingw/MELP_Encoder", device="cuda", precision="bf16")  # or a folder, s3://
    arrays = model.embed(batch)   # float32 (B, 12, 5000) -> {"embedding": (B, 256), "probe_embedding": (B, 256)}
    model.model_version + precision_tag("bf16")   # the version its rows carry (= model.output_version)

Modules: ``config`` (numbers of ``specs/melp.md``), ``model`` (the torch modules), ``load``
(checkpoint key table, strict loading), ``text`` (optional text tower for zero-shot),
``embedder`` (the object notebooks and Ray actors hold). ``melp_input`` / ``MELP_PREPROC_VERSION``
are re-exported from :mod:`ecgembed.preprocess`: the preprocessing travels with the weights.
User guide: ``docs/models/melp.md``.
"""
from ecgembed.preprocess import MELP_PREPROC_VERSION, melp_input  # the input these weights expect

from .config import MELPConfig
from .embedder import MELP, load_melp, precision_tag
from .load import DEFAULT_WEIGHTS_URI, fetch_encoder, load_encoder
from .model import MELPEncoder
from .text import MELPTextTower, load_text_tower, zero_shot_scores

__all__ = [
    "DEFAULT_WEIGHTS_URI",
    "MELP",
    "MELP_PREPROC_VERSION",
    "MELPConfig",
    "MELPEncoder",
    "MELPTextTower",
    "fetch_encoder",
    "load_encoder",
    "load_melp",
    "load_text_tower",
    "melp_input",
    "precision_tag",
    "zero_shot_scores",
]
