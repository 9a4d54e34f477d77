"""ECGFM-KED for inference: ECG -> pooled embedding and zero-shot class scores.

    x (B, 12, 1000) float32, mV, 100 Hz ──► encoder (xresnet1d101) ──► tokens (B, 768, 32)
        embedding = tokens.mean(-1)                                   (B, 768), raw
        scores    = softmax(TQN(tokens, class_features), -1)[..., 1]  (B, C)

``class_features`` is the (C, 768) output of the text side for one label set, computed once
and cached (``text.class_features``), so an ECG actor never loads BERT. Scores depend on the
whole class list (the queries attend to each other): store them with their label set.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .checkpoint import fetch_checkpoint, load_section, read_checkpoint
from .config import DEFAULT_WEIGHTS_URI, KEDConfig
from .tqn import QueryNetwork
from .xresnet import XResNet1d

# section of the released .pt -> our attribute that owns its tensors
SECTIONS = {"ecg_model": "encoder", "model": "tqn"}


class ECGFMKED(nn.Module):
    def __init__(self, cfg: KEDConfig = KEDConfig(), model_version: str = ""):
        super().__init__()
        self.cfg = cfg
        self.model_version = model_version  # sha256 of the checkpoint file
        self.encoder = XResNet1d(cfg)
        self.tqn = QueryNetwork(cfg)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

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

    def forward(self, x: torch.Tensor, class_features=None) -> dict[str, torch.Tensor]:
        tokens = self.tokens(x)                                   # (B, 768, 32)
        out = {"embedding": tokens.mean(-1)}                      # (B, 768)
        if class_features is not None:
            feats = self._as_features(class_features)             # (C, 768)
            out["scores"] = self.logits(tokens, feats).softmax(-1)[..., 1]  # (B, C)
        return out

    @torch.inference_mode()
    def embed(self, x: np.ndarray, class_features=None, autocast_bf16: bool = False) -> dict[str, np.ndarray]:
        """numpy in, numpy out (float32), for notebooks and Ray actors."""
        if self.training:
            raise RuntimeError("ECGFM-KED is in train mode (BatchNorm would use batch statistics); call .eval()")
        batch = torch.as_tensor(np.asarray(x, dtype=np.float32), device=self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
            out = self(batch, class_features)
        return {k: v.float().cpu().numpy() for k, v in out.items()}

    @torch.inference_mode()
    def embed_label_sets(self, x: np.ndarray, feature_sets: list, autocast_bf16: bool = False) -> dict:
        """One trunk pass, then the query network once per label set (scores depend on the whole set).

        Returns ``{"embedding": (B, 768), "scores": [(B, C_i) for each set]}`` as numpy float32.
        """
        if self.training:
            raise RuntimeError("ECGFM-KED is in train mode (BatchNorm would use batch statistics); call .eval()")
        batch = torch.as_tensor(np.asarray(x, dtype=np.float32), device=self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
            tokens = self.tokens(batch)                                            # (B, 768, 32)
            scores = [self.logits(tokens, self._as_features(f)).softmax(-1)[..., 1] for f in feature_sets]
        return {"embedding": tokens.mean(-1).float().cpu().numpy(),
                "scores": [s.float().cpu().numpy() for s in scores]}

    def _as_features(self, class_features) -> torch.Tensor:
        feats = torch.as_tensor(class_features, dtype=torch.float32, device=self.device)
        if feats.ndim != 2 or feats.shape[1] != self.cfg.embed_dim or feats.shape[0] == 0:
            raise ValueError(f"class_features must be (C, {self.cfg.embed_dim}) with C >= 1, got {tuple(feats.shape)}")
        return feats


def load_ked(weights_uri: str | None = None, device: str | torch.device = "cpu",
             cfg: KEDConfig = KEDConfig()) -> ECGFMKED:
    """The ECG side of ECGFM-KED from a checkpoint URI (default: the Zenodo release), in eval mode.

    ``model_version`` is the sha256 of the file. Only ``ecg_model`` and ``model`` are read;
    the text side is :func:`ecgembed.models.ecgfm_ked.load_ked_text`.
    """
    fetched = fetch_checkpoint(weights_uri or DEFAULT_WEIGHTS_URI)
    ckpt = read_checkpoint(fetched.path, fetched.uri)
    model = ECGFMKED(cfg, model_version=fetched.sha256)
    for section, attribute in SECTIONS.items():
        load_section(ckpt, section, getattr(model, attribute), fetched.uri)
    return model.eval().to(device)
