"""How the job loads each model: published weights by URI, or the labelled stand-in.

The driver resolves each model's version (the checkpoint's sha256) and validates the weights
by loading them once before any work starts; actors load the same URI (cached per node).

**Stand-in mode** (``--stand-in``) is for trying the job where the published weights cannot be
fetched (offline machines, CI): both encoders are built from a fixed random seed and the
class-text features are pseudo-random vectors derived from each text's sha256. Every output row
then carries a ``model_version`` starting with ``stand-in:``, so stand-in numbers can never pass
for real embeddings.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ecgembed.config import STAND_IN

STANDIN_SEED = 20251121


def _standin_version(name: str) -> str:
    return f"{STAND_IN}:{name}:seed{STANDIN_SEED}:torch{torch.__version__.split('+')[0]}"


def _init_stand_in(module: torch.nn.Module) -> None:
    """Seeded values for every parameter: the model modules leave checkpoint-only tensors at zero."""
    generator = torch.Generator().manual_seed(STANDIN_SEED)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2:
                fan_in = param[0].numel() if "query" not in name else 1
                param.copy_(torch.randn(param.shape, generator=generator) / fan_in**0.5)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.fill_(1.0)


def standin_melp(device: str = "cpu", autocast_bf16: bool = False):
    from ecgembed.models.melp import MELP, MELPConfig, MELPEncoder

    encoder = MELPEncoder(MELPConfig())
    _init_stand_in(encoder)
    return MELP(encoder, _standin_version("melp"), autocast_bf16=autocast_bf16).eval().to(device)


def standin_ked(device: str = "cpu"):
    from ecgembed.models.ecgfm_ked import ECGFMKED

    model = ECGFMKED(model_version=_standin_version("ecgfm-ked"))
    _init_stand_in(model)
    return model.eval().to(device)


def standin_class_features(texts: list[str], dim: int) -> np.ndarray:
    """Deterministic pseudo-random (C, dim) vectors, one per text (stand-in mode only)."""
    rows = []
    for text in texts:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        rows.append(np.random.default_rng(seed).standard_normal(dim).astype(np.float32))
    out = np.stack(rows)
    return out / np.linalg.norm(out, axis=1, keepdims=True) if dim == 256 else out


def load_melp_for_job(stage_config, device: str):
    """A MELP for an actor (no text tower: class features come precomputed)."""
    if stage_config.weights == STAND_IN:
        return standin_melp(device, autocast_bf16=stage_config.bf16)
    from ecgembed.models.melp import load_melp

    return load_melp(stage_config.weights, device=device, autocast_bf16=stage_config.bf16)


def load_ked_for_job(stage_config, device: str):
    if stage_config.weights == STAND_IN:
        return standin_ked(device)
    from ecgembed.models.ecgfm_ked import load_ked

    return load_ked(stage_config.weights, device=device)


def with_precision(version: str, bf16: bool) -> str:
    """bf16 autocast changes the numbers (MELP cosine 0.991-0.9997 to fp32), so it is part of the
    version: rows say how they were computed, and switching precision re-embeds (a new version)."""
    return f"{version}+bf16" if bf16 else version


def melp_version(weights: str) -> str:
    """Validate the MELP weights by loading them once; returns the model_version."""
    if weights == STAND_IN:
        return _standin_version("melp")
    from ecgembed.models.melp import load_melp

    return load_melp(weights).model_version


def ked_version(weights: str) -> str:
    if weights == STAND_IN:
        return _standin_version("ecgfm-ked")
    from ecgembed.models.ecgfm_ked import load_ked

    return load_ked(weights).model_version


def melp_class_features(label_sets, text_weights: str, text_model: str) -> list[np.ndarray]:
    """(C, 256) normalised class embeddings of each label set with the optional MELP text tower."""
    from ecgembed.models.melp import load_text_tower

    tower, _ = load_text_tower(text_weights, text_model, device="cpu")
    with torch.inference_mode():
        return [tower.encode(ls.texts).float().cpu().numpy() for ls in label_sets]


def ked_class_features(label_sets, weights: str, text_model: str | None) -> list[np.ndarray]:
    """(C, 768) class features of each label set, cached per (text weights, label set)."""
    if weights == STAND_IN:
        return [standin_class_features(ls.texts, 768) for ls in label_sets]
    from ecgembed.models.ecgfm_ked import class_features

    return [np.array(class_features(ls, weights, text_model)) for ls in label_sets]
