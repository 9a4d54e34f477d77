"""The batch-inference object a notebook or a Ray actor holds: ``load_melp(...) -> MELP``.

    model = load_melp("hf://fuyingw/MELP_Encoder", device="cuda")
    model.model_version                      # sha256 of model.safetensors
    out = model(x)                           # x: float32 (B, 12, 5000), any device -> dict of tensors
    arrays = model.embed(np_batch)           # numpy in, numpy out, under inference_mode

Outputs (always float32, on the model's device for ``__call__``):

- ``embedding``        (B, 256): rhythm vector after ``proj_contrast``, L2-normalised: MELP's
  shared-space / zero-shot vector; cosine = dot product.
- ``probe_embedding``  (B, 256): linear-probe vector (before ``proj_contrast``, not normalised).
- ``beat``             (B, 14, 256): per-query vectors after ``proj_contrast`` (``beat_level=True``).
- ``token``            (B, 128, 768): caption-pooler output (``token_level=True``; the caption
  pooler is not even built otherwise).

Precision: weights fp32 (exact upcast of the BF16 file) by default, which reproduces the
original code; ``autocast_bf16=True`` keeps fp32 weights and runs matmuls in bf16;
``dtype=torch.bfloat16`` stores the weights in bf16 too (half the memory). Both bf16 modes
drift from the reference (cosine to fp32 >= ~0.998 on the conformance inputs).
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from .load import DEFAULT_WEIGHTS_URI, fetch_encoder
from .model import MELPEncoder
from .text import MELPTextTower, load_text_tower, zero_shot_scores


class MELP(nn.Module):
    """A loaded MELP encoder (+ optional text tower) with its provenance and output options."""

    def __init__(
        self,
        encoder: MELPEncoder,
        model_version: str,
        *,
        beat_level: bool = False,
        autocast_bf16: bool = False,
        text: MELPTextTower | None = None,
        text_version: str | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.model_version = model_version
        self.beat_level = beat_level
        self.autocast_bf16 = autocast_bf16
        self.text = text
        self.text_version = text_version

    @property
    def config(self):
        return self.encoder.config

    @property
    def token_level(self) -> bool:
        return self.encoder.token_level

    @property
    def device(self) -> torch.device:
        return self.encoder.proj_contrast.device

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.proj_contrast.dtype

    def _autocast(self):
        if not self.autocast_bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, 12, 5000) min-max scaled (``ecgembed.preprocess.melp_input``) -> dict of float32 tensors."""
        cfg = self.config
        if x.ndim != 3 or tuple(x.shape[1:]) != (cfg.n_leads, cfg.n_samples):
            raise ValueError(f"MELP expects (B, {cfg.n_leads}, {cfg.n_samples}) input, got {tuple(x.shape)}")
        x = x.to(device=self.device, dtype=self.dtype, non_blocking=True)
        with self._autocast():
            out = self.encoder(x)
        keep = ["embedding", "probe_embedding"]
        if self.beat_level:
            keep.append("beat")
        if self.token_level:
            keep.append("token")
        return {k: out[k].float() for k in keep}

    def embed(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """numpy float32 (B, 12, 5000) -> dict of numpy float32 arrays (see module docstring)."""
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self.device.type == "cuda":
            x = x.pin_memory()
        with torch.inference_mode():
            return {k: v.cpu().numpy() for k, v in self(x).items()}

    # ---- zero-shot (only with a text tower) -----------------------------------------------------

    def _require_text(self) -> MELPTextTower:
        if self.text is None:
            raise RuntimeError(
                "this MELP has no text tower: the published release is ECG-only; pass text_weights= "
                "and text_model= to load_melp for zero-shot scores"
            )
        return self.text

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(C, 256) L2-normalised class embeddings (one prompt per class)."""
        return self._require_text().encode(texts)

    def zero_shot(self, embedding: torch.Tensor, class_embedding: torch.Tensor) -> torch.Tensor:
        """(B, 256) normalised ECG embeddings x (C, 256) class embeddings -> (B, C) cosines."""
        self._require_text()
        return zero_shot_scores(embedding, class_embedding)


def load_melp(
    uri: str = DEFAULT_WEIGHTS_URI,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    token_level: bool = False,
    beat_level: bool = False,
    autocast_bf16: bool = False,
    text_weights: str | None = None,
    text_model: str | None = None,
) -> MELP:
    """Load MELP from a folder or file URI (local, ``file://``, ``s3://``, ``http(s)://``, ``hf://``).

    ``uri`` is a folder holding ``model.safetensors`` (+ ``config.json``), or the ``.safetensors``
    file itself; default: the published ``hf://fuyingw/MELP_Encoder``. ``text_weights`` (a
    safetensors file with ``lm_model.bert.*`` + ``proj_t.*``) and ``text_model`` (a folder with
    the BERT ``config.json`` and tokenizer files) together enable zero-shot scoring.
    Raises :class:`ecgembed.errors.WeightsError` for a missing, wrong or damaged file.
    """
    if (text_weights is None) != (text_model is None):
        raise ValueError("text_weights and text_model go together (weights + tokenizer/config folder)")
    if autocast_bf16 and dtype != torch.float32:
        raise ValueError("autocast_bf16 needs fp32 weights (dtype=torch.float32)")
    encoder, version = fetch_encoder(uri, token_level=token_level, dtype=dtype)
    text, text_version = None, None
    if text_weights is not None:
        text, text_version = load_text_tower(text_weights, text_model, device=device)
    model = MELP(encoder.to(device), version, beat_level=beat_level, autocast_bf16=autocast_bf16,
                 text=text, text_version=text_version)
    return model.eval()
