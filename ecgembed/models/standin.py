"""Stand-in weights (``--stand-in``): seeded random models for trying the job where the
published weights cannot be fetched (offline machines, CI).

Every parameter gets a value from a fixed seed; class-text features are pseudo-random vectors
derived from each text's sha256. Versions start with ``stand-in:`` so stand-in numbers can
never pass for real embeddings.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ecgembed.models.spec import STAND_IN

SEED = 20251121


def version(model: str) -> str:
    return f"{STAND_IN}:{model}:seed{SEED}:torch{torch.__version__.split('+')[0]}"


def init_(module: torch.nn.Module) -> torch.nn.Module:
    """Seeded values for every parameter (the model modules leave checkpoint-only tensors at zero)."""
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2:
                fan_in = param[0].numel() if "query" not in name else 1
                param.copy_(torch.randn(param.shape, generator=generator) / fan_in**0.5)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.fill_(1.0)
    return module


def class_features(texts: list[str], dim: int, normalise: bool) -> np.ndarray:
    """Deterministic pseudo-random (C, dim) float32 vectors, one per text."""
    rows = []
    for text in texts:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        rows.append(np.random.default_rng(seed).standard_normal(dim).astype(np.float32))
    out = np.stack(rows)
    return out / np.linalg.norm(out, axis=1, keepdims=True) if normalise else out
