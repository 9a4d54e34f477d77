"""The TQN query network of ECGFM-KED: class texts ask, ECG tokens answer (``specs/ecgfm-ked.md`` §d).

Re-implemented in plain torch from the spec; the original is ``TQNModel`` of
``models/clip_model.py`` with the DETR-style decoder of ``models/transformer_decoder.py``
(``normalize_before=True``), built on ``nn.MultiheadAttention`` in sequence-first layout.
Here everything is batch-first and attention is written out, but the parameter names and
the packed q/k/v projection (``in_proj_weight`` (3*768, 768)) follow the published keys:

    decoder_norm.{weight,bias}                                 LayerNorm, used 3 times (see below)
    decoder.layers.<i>.self_attn.{in_proj_weight,in_proj_bias,out_proj.*}
    decoder.layers.<i>.multihead_attn.{...same...}
    decoder.layers.<i>.{linear1,linear2,norm1,norm2,norm3}.*
    mlp_head.{0,2}.*                                           768 -> 2048 -> GELU -> 2

In the file ``decoder.norm.*`` repeats ``decoder_norm.*`` (same module registered twice) and
``logit_scale`` is unused at inference; ``load.py`` drops both.

Eval-only simplifications: no dropout modules (all are p=0.1 and off at inference), no
positional encodings and no masks (the original passes none).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import KEDConfig


class PackedAttention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameters, batch-first."""

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))  # rows: q, k, v
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        # query (B, Lq, D), memory (B, Lk, D) -> (B, Lq, D)
        w_q, w_kv = self.in_proj_weight.split([query.shape[-1], 2 * query.shape[-1]])
        b_q, b_kv = self.in_proj_bias.split([query.shape[-1], 2 * query.shape[-1]])
        q = F.linear(query, w_q, b_q)                      # (B, Lq, D)
        k, v = F.linear(memory, w_kv, b_kv).chunk(2, -1)   # (B, Lk, D) each
        q, k, v = (t.unflatten(-1, (self.n_heads, -1)).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)        # (B, H, Lq, D/H), scale 1/sqrt(D/H)
        return self.out_proj(y.transpose(1, 2).flatten(2))


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: self-attention among queries, cross-attention to ECG, ReLU FFN."""

    def __init__(self, cfg: KEDConfig):
        super().__init__()
        d = cfg.embed_dim
        self.self_attn = PackedAttention(d, cfg.tqn_heads)
        self.multihead_attn = PackedAttention(d, cfg.tqn_heads)
        self.linear1 = nn.Linear(d, cfg.tqn_ffn)
        self.linear2 = nn.Linear(cfg.tqn_ffn, d)
        self.norm1 = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.norm2 = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.norm3 = nn.LayerNorm(d, eps=cfg.ln_eps)

    def forward(self, q: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        # q (B, C, D) class queries, memory (B, T, D) normalised ECG tokens
        h = self.norm1(q)
        q = q + self.self_attn(h, h)            # classes attend to each other: scores depend on the set
        q = q + self.multihead_attn(self.norm2(q), memory)
        q = q + self.linear2(F.relu(self.linear1(self.norm3(q))))
        return q


class Decoder(nn.Module):
    """Holds ``layers`` only; the final norm is the parent's ``decoder_norm`` (shared in the original)."""

    def __init__(self, cfg: KEDConfig):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.tqn_layers))


class QueryNetwork(nn.Module):
    """ECG tokens (B, T, 768) + class features (C, 768) -> logits (B, C, 2)."""

    def __init__(self, cfg: KEDConfig = KEDConfig()):
        super().__init__()
        d = cfg.embed_dim
        self.decoder_norm = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.decoder = Decoder(cfg)
        self.mlp_head = nn.Sequential(
            nn.Linear(d, cfg.tqn_head_hidden), nn.GELU(), nn.Linear(cfg.tqn_head_hidden, cfg.n_logits)
        )

    def features(self, tokens: torch.Tensor, class_features: torch.Tensor) -> torch.Tensor:
        """Decoder output after the final LayerNorm, the input of ``mlp_head``: (B, C, 768)."""
        memory = self.decoder_norm(tokens)                          # (B, T, D)
        q = self.decoder_norm(class_features)                       # (C, D), same for every record
        q = q.unsqueeze(0).expand(tokens.shape[0], -1, -1)          # (B, C, D)
        for layer in self.decoder.layers:
            q = layer(q, memory)
        return self.decoder_norm(q)

    def forward(self, tokens: torch.Tensor, class_features: torch.Tensor) -> torch.Tensor:
        return self.mlp_head(self.features(tokens, class_features))  # (B, C, 2)
