"""ECGFM-KED for inference: ECG -> pooled embedding and zero-shot class scores.

    x (B, 12, 1000) float32, mV, 100 Hz ──► encoder (xresnet1d101) ──► tokens (B, 768, 32)
        embedding = tokens.mean(-1)                                        (B, 768), raw
        scores[i] = softmax(TQN(tokens, class_features[i]), -1)[..., 1]   (B, C_i), one per label set

``class_features`` is a list with one (C_i, 768) output of the text side per label set,
computed once and cached (``text.class_features``), so an ECG actor never loads BERT; the
actor uploads them once (:meth:`ECGFMKED.to_device`). Scores depend on the whole class list
(the queries attend to each other): store them with their label set.

Precision: ``"fp32"`` is IEEE fp32 throughout (TF32 off on CUDA). ``"bf16"``, the fast policy
``--precision bf16`` selects for every model, runs KED in fp32 with TF32 matmuls and cuDNN
convolutions on CUDA (tag ``+tf32``), never in bf16. Without CUDA there is no TF32: the rows
are fp32's numbers under the ``+tf32`` tag. Why not bf16: the zero-shot score is a softmax
over TQN logits and moves far more than the embedding. Measured on the 8 e2e conformance
records with the conformance weights and their 5 class texts (CPU autocast and TF32
emulation; min cosine of the embedding to fp32, largest score change):

    trunk in bf16                       0.999995   0.0139
    query network (TQN) in bf16         1.0        0.0075
    both in bf16                        0.999995   0.0207
    trunk in bf16 but its stem          0.999995   0.0144
    trunk in bf16 but stem + stage 1    0.999995   0.0192
    trunk stage 4 only in bf16          0.999998   0.0072
    TQN layers in bf16, mlp_head fp32   1.0        0.0064
    TQN first 3 of 7 layers in bf16     1.0        0.0053
    convolutions in TF32 (emulated)     1.0        0.0013   (torch's CUDA default for cuDNN)
    convolutions + linears in TF32      1.0        0.0015   (emulated)

Every bf16 split spends half or more of the 0.01 score budget on 8 records; TF32 everywhere
spends 0.0015 (0.0017 measured on an H200, embedding cosine 0.9999999). And on an H200 KED in
IEEE fp32 is the slower of the two models (1,770 records/s at batch 256 against MELP's 2,440
in bf16): cuDNN picks FFT convolutions for the trunk (105 ms per 256 records) and the TQN runs
fp32 GEMMs without tensor cores (40 ms); under TF32 they take 12 + 10 ms
(``bench/gpu_profile.py``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ecgembed.models.execution import check_precision, features_to_device, ieee_fp32, tf32, to_device, to_host

from .checkpoint import fetch_checkpoint, load_section, read_checkpoint
from .config import DEFAULT_WEIGHTS_URI, KEDConfig
from .tqn import QueryNetwork
from .xresnet import XResNet1d

# section of the released .pt -> our attribute that owns its tensors
SECTIONS = {"ecg_model": "encoder", "model": "tqn"}

# precision -> model_version suffix; "" for fp32 so fp32 rows keep the bare checkpoint sha256
PRECISION_TAGS = {"fp32": "", "bf16": "+tf32"}


def precision_tag(precision: str) -> str:
    """The ``model_version`` suffix of rows computed at ``precision`` (see the module docstring)."""
    return PRECISION_TAGS[check_precision(precision)]


class ECGFMKED(nn.Module):
    def __init__(self, cfg: KEDConfig = KEDConfig(), model_version: str = "", precision: str = "fp32"):
        super().__init__()
        self.cfg = cfg
        self.model_version = model_version  # sha256 of the checkpoint file
        self.precision = check_precision(precision)  # fp32: IEEE; bf16: TF32 on CUDA (module docstring)
        self.encoder = XResNet1d(cfg)
        self.tqn = QueryNetwork(cfg)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def output_version(self) -> str:
        """``model_version`` + the precision tag: the version the rows this object computes carry."""
        return self.model_version + precision_tag(self.precision)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 12, 1000) -> (B, 768, 32) ECG tokens."""
        if x.ndim != 3 or x.shape[1] != self.cfg.n_leads or x.shape[2] != self.cfg.n_samples:
            raise ValueError(
                f"ECGFM-KED takes (B, {self.cfg.n_leads}, {self.cfg.n_samples}) float32 "
                f"(10 s at {self.cfg.sample_rate} Hz, mV), got {tuple(x.shape)}; "
                "prepare records with ecgembed.preprocess.ked_input"
            )
        return self.encoder(x)

    def logits(self, tokens: torch.Tensor, class_features: torch.Tensor) -> torch.Tensor:
        """ECG tokens (B, 768, 32) + class features (C, 768) -> TQN logits (B, C, 2)."""
        return self.tqn(tokens.transpose(1, 2), class_features)

    def to_device(self, features) -> list[torch.Tensor]:
        """Class features (one (C_i, 768) array or tensor per label set) on the model's device as
        float32; an actor calls this once and passes the result to every :meth:`embed`."""
        return features_to_device(features, self.device, self.cfg.embed_dim, "ECGFM-KED")

    def forward(self, x: torch.Tensor, class_features=None) -> dict:
        """Tensors in: ``{"embedding": (B, 768)}`` plus ``"scores"``, one (B, C_i) per label set,
        when ``class_features`` (a list, see :meth:`to_device`) is given. One trunk pass for all sets."""
        feats = None if class_features is None else self.to_device(class_features)
        x = x.to(device=self.device, dtype=torch.float32, non_blocking=True)
        with (ieee_fp32 if self.precision == "fp32" else tf32)(self.device):
            tokens = self.tokens(x)                                        # (B, 768, 32)
            out: dict = {"embedding": tokens.mean(-1)}                     # (B, 768)
            if feats is not None:
                out["scores"] = [self.logits(tokens, f).softmax(-1)[..., 1] for f in feats]  # (B, C_i) each
        return out

    def embed(self, x: np.ndarray, class_features=None) -> dict[str, np.ndarray | list[np.ndarray]]:
        """numpy in, numpy out (float32), for notebooks and Ray actors.

        ``class_features``: None (no ``scores`` key) or a list with one (C_i, 768) array or device
        tensor per label set -> ``scores``: a list of (B, C_i) arrays, each scored as if alone.
        The batch goes to the device pinned and non-blocking; every output comes back in one copy.
        """
        if self.training:
            raise RuntimeError("ECGFM-KED is in train mode (BatchNorm would use batch statistics); call .eval()")
        with torch.inference_mode():
            return to_host(self(to_device(x, self.device), class_features))


def load_ked(weights: str | None = None, device: str | torch.device = "cpu", precision: str = "fp32",
             cfg: KEDConfig = KEDConfig()) -> ECGFMKED:
    """The ECG side of ECGFM-KED from a checkpoint URI (default: the Zenodo release), in eval mode.

    ``model_version`` is the sha256 of the file. Only ``ecg_model`` and ``model`` are read;
    the text side is :func:`ecgembed.models.ecgfm_ked.load_ked_text`. ``precision`` is
    ``"fp32"`` or ``"bf16"``; both compute in fp32 (module docstring).
    """
    check_precision(precision)
    fetched = fetch_checkpoint(weights or DEFAULT_WEIGHTS_URI)
    ckpt = read_checkpoint(fetched.path, fetched.uri)
    model = ECGFMKED(cfg, model_version=fetched.sha256, precision=precision)
    for section, attribute in SECTIONS.items():
        load_section(ckpt, section, getattr(model, attribute), fetched.uri)
    return model.eval().to(device)
