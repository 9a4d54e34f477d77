"""The batch-inference object a notebook or a Ray actor holds: ``load_melp(...) -> MELP``.

    model = load_melp("hf://fuyingw/MELP_Encoder", device="cuda", precision="bf16")
    model.model_version                      # sha256 of model.safetensors
    model.output_version                     # + precision_tag(precision): what output rows carry
    out = model(x)                           # x: float32 (B, 12, 5000), any device -> dict of tensors
    feats = model.to_device([f1, f2])        # class features, uploaded once (one (C_i, 256) per label set)
    arrays = model.embed(np_batch, feats)    # numpy in, numpy out (one transfer each way)

Outputs (always float32; on the model's device for ``__call__``, numpy for ``embed``):

- ``embedding``        (B, 256): rhythm vector after ``proj_contrast``, L2-normalised: MELP's
  shared-space / zero-shot vector; cosine = dot product.
- ``probe_embedding``  (B, 256): linear-probe vector (before ``proj_contrast``, not normalised).
- ``beat``             (B, 14, 256): per-query vectors after ``proj_contrast`` (``beat_level=True``).
- ``token``            (B, 128, 768): caption-pooler output (``token_level=True``; the caption
  pooler is not even built otherwise).
- ``scores``           ``embed`` with class features only: one (B, C_i) array of cosines per
  label set (class features are L2-normalised text embeddings, e.g. from a MELP text tower).

Precision, chosen once at load (weights are fp32 either way, the exact upcast of the BF16 file):

- ``"fp32"``: IEEE fp32 throughout (TF32 off on CUDA); reproduces the original code.
- ``"bf16"``: the front (conv feature extractor, its LayerNorm and ``post_extract_proj``, 0.7 of
  41.6 GFLOP per record) in IEEE fp32, the positional conv (2.9 GFLOP) in fp32 with TF32 on
  CUDA, the transformer and heads under bf16 autocast. Whole-model autocast rounds the min-max
  scaled signal to bf16 before the first convolutions and moves the embedding to cosine 0.991
  to fp32 on real ECGs (the e2e conformance records); with the front in fp32 the cosine is
  0.99999 (embedding and probe).
  Measured on CPU autocast, e2e records, conformance weights (min cosine to fp32, embedding /
  probe): whole autocast 0.99109 / 0.99182; first conv fp32 0.999977 / 0.999979;
  ``conv_features`` fp32 0.999983 / 0.999986; front (+ ``post_extract_proj``) fp32
  0.999992 / 0.999994; + positional conv 0.999992 / 0.999993 and + heads 0.999985 /
  0.999988 (no further gain); the front under TF32 instead of IEEE fp32 (emulated) 0.999926.
  The positional conv leaves bf16 for speed, not fidelity: on an H200 cuDNN runs this grouped
  convolution (k=128, 16 groups) in bf16 through a generic implicit-GEMM kernel at 59 ms per
  256 records, 56 % of the whole bf16 forward, against 9 ms in TF32 (``bench/gpu_profile.py``);
  TF32 keeps 3 more mantissa bits than bf16. The tag is ``+bf16-fp32front-tf32pos``: rows of
  the older policies (whole autocast ``+bf16``, positional conv in bf16 ``+bf16-fp32front``)
  are never mistaken for these.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ecgembed.models.execution import (
    bf16_autocast,
    check_precision,
    features_to_device,
    ieee_fp32,
    tf32,
    to_device,
    to_host,
)

from .load import DEFAULT_WEIGHTS_URI, fetch_encoder
from .model import MELPEncoder
from .text import MELPTextTower, load_text_tower, zero_shot_scores

# precision -> suffix of model_version; "" for fp32 so fp32 rows keep the bare checkpoint sha256
PRECISION_TAGS = {"fp32": "", "bf16": "+bf16-fp32front-tf32pos"}


def precision_tag(precision: str) -> str:
    """The ``model_version`` suffix of rows computed at ``precision`` (see the module docstring)."""
    return PRECISION_TAGS[check_precision(precision)]


class MELP(nn.Module):
    """A loaded MELP encoder (+ optional text tower) with its provenance, precision and output options."""

    def __init__(
        self,
        encoder: MELPEncoder,
        model_version: str,
        *,
        precision: str = "fp32",
        beat_level: bool = False,
        text: MELPTextTower | None = None,
        text_version: str | None = None,
    ):
        super().__init__()
        self.precision = check_precision(precision)
        if encoder.proj_contrast.dtype != torch.float32:
            raise ValueError(f"MELP runs fp32 weights (precision={precision!r} picks the compute), "
                             f"got {encoder.proj_contrast.dtype}")
        self.encoder = encoder
        self.model_version = model_version
        self.beat_level = beat_level
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
    def output_version(self) -> str:
        """``model_version`` + the precision tag: the version the rows this object computes carry."""
        return self.model_version + precision_tag(self.precision)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, 12, 5000) min-max scaled (``ecgembed.preprocess.melp_input``) -> dict of float32 tensors."""
        cfg = self.config
        if x.ndim != 3 or tuple(x.shape[1:]) != (cfg.n_leads, cfg.n_samples):
            raise ValueError(f"MELP expects (B, {cfg.n_leads}, {cfg.n_samples}) input, got {tuple(x.shape)}")
        x = x.to(device=self.device, dtype=torch.float32, non_blocking=True)
        backbone = self.encoder.backbone
        if self.precision == "fp32":
            with ieee_fp32(self.device):
                out = self.encoder(x)
        else:  # bf16 policy (module docstring)
            with ieee_fp32(self.device):
                h = backbone.front(x)  # (B, 312, 768) fp32
            with tf32(self.device):
                h = backbone.position(h)  # fp32; bf16 would take cuDNN's slow grouped-conv kernel
            with bf16_autocast(self.device):
                out = self.encoder.heads(backbone.encoder(h))
        keep = ["embedding", "probe_embedding"]
        if self.beat_level:
            keep.append("beat")
        if self.token_level:
            keep.append("token")
        return {k: out[k].float() for k in keep}

    def to_device(self, features) -> list[torch.Tensor]:
        """Class features (one L2-normalised (C_i, 256) array or tensor per label set) on the model's
        device as float32; an actor calls this once and passes the result to every :meth:`embed`."""
        return features_to_device(features, self.device, self.config.shared_emb_dim, "MELP")

    def scores(self, embedding: torch.Tensor, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """(B, 256) normalised embeddings -> one (B, C_i) tensor of cosines per label set, in fp32."""
        with ieee_fp32(self.device):
            return [zero_shot_scores(embedding, f) for f in features]

    def embed(self, batch: np.ndarray, class_features=None) -> dict[str, np.ndarray | list[np.ndarray]]:
        """numpy float32 (B, 12, 5000) -> numpy outputs (module docstring), zero-shot included.

        ``class_features``: None (no ``scores`` key) or a list with one (C_i, 256) array or
        device tensor per label set (:meth:`to_device`) -> ``scores``: a list of (B, C_i) arrays.
        The batch goes to the device pinned and non-blocking; every output comes back in one copy.
        """
        feats = None if class_features is None else self.to_device(class_features)
        with torch.inference_mode():
            out: dict = self(to_device(batch, self.device))
            if feats is not None:
                out["scores"] = self.scores(out["embedding"], feats)
            return to_host(out)

    # ---- text tower (optional): class embeddings for zero-shot ----------------------------------

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
    weights: str = DEFAULT_WEIGHTS_URI,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    token_level: bool = False,
    beat_level: bool = False,
    text_weights: str | None = None,
    text_model: str | None = None,
) -> MELP:
    """Load MELP from a folder or file URI (local, ``file://``, ``s3://``, ``http(s)://``, ``hf://``).

    ``weights`` is a folder holding ``model.safetensors`` (+ ``config.json``), or the
    ``.safetensors`` file itself; default: the published ``hf://fuyingw/MELP_Encoder``.
    ``precision`` is ``"fp32"`` or ``"bf16"`` (module docstring). ``text_weights`` (a
    safetensors file with ``lm_model.bert.*`` + ``proj_t.*``) and ``text_model`` (a folder with
    the BERT ``config.json`` and tokenizer files) together enable :meth:`MELP.encode_text`.
    Raises :class:`ecgembed.errors.WeightsError` for a missing, wrong or damaged file.
    """
    check_precision(precision)
    if (text_weights is None) != (text_model is None):
        raise ValueError("text_weights and text_model go together (weights + tokenizer/config folder)")
    encoder, version = fetch_encoder(weights, token_level=token_level)
    text, text_version = None, None
    if text_weights is not None:
        text, text_version = load_text_tower(text_weights, text_model, device=device)
    model = MELP(encoder.to(device), version, precision=precision, beat_level=beat_level,
                 text=text, text_version=text_version)
    return model.eval()
