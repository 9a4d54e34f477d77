"""MELP's ECG tower in plain torch: wav2vec2-style backbone + attentional-pooler heads.

Follows ``specs/melp.md`` §b, which was read from HKU-MedAI/MELP (``ECGFMModel``,
``AttentionalPooler``) and fuying-wang/fairseq-signals (``Wav2Vec2Model``, the conv feature
extractor, the convolutional positional encoding and the post-LN transformer). Each class is
one row (or a few rows) of the spec's tables; the row numbers are in the docstrings.

Module names follow the checkpoint keys where the checkpoint's names are meaningful
(``post_extract_proj``, ``self_attn.q_proj``, ``fc1``, ``attn_pool_contrast``...). The few
places where the published names are positional (``conv_layers.0.2``) or carry a
parametrisation (``pos_conv.0.parametrizations.weight.original0``) are renamed by the explicit
table in ``load.py``. Inference only: no dropout, no masking, no LayerDrop, no padding mask
(every record is exactly 5000 samples, so every batch has the same static shape).

Shapes in comments: B batch, T = 312 backbone tokens, C = 768, Q = pooler queries.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import MELPConfig


def gelu_fp32(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU evaluated in fp32, as fairseq's ``gelu`` does inside the transformer."""
    return F.gelu(x.float()).type_as(x)


# ---------------------------------------------------------------------------------------------
# backbone (checkpoint prefix ``ecg_encoder.ecg_encoder.``)


class ConvBlock(nn.Module):
    """Spec rows 1-4: Conv1d(k=2, s=2, no bias) [-> GroupNorm per channel, fp32] -> GELU."""

    def __init__(self, c_in: int, c_out: int, cfg: MELPConfig, group_norm: bool):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, cfg.conv_kernel, stride=cfg.conv_stride, bias=False)
        # GroupNorm with one group per channel: each channel normalised over time (first block only)
        self.norm = nn.GroupNorm(c_out, c_out, eps=cfg.layer_norm_eps, affine=True) if group_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)  # (B, c_out, L // 2)
        if self.norm is not None:  # fairseq's Fp32GroupNorm: computed in fp32 whatever the weights' dtype
            n = self.norm
            x = F.group_norm(x.float(), n.num_groups, n.weight.float(), n.bias.float(), n.eps).type_as(x)
        return F.gelu(x)


class ConvFeatureExtractor(nn.Module):
    """Spec rows 1-4: (B, 12, 5000) -> (B, 256, 312), 16 input samples per frame."""

    def __init__(self, cfg: MELPConfig):
        super().__init__()
        c_in = [cfg.n_leads] + [cfg.conv_dim] * (cfg.n_conv_layers - 1)
        self.conv_layers = nn.ModuleList(
            ConvBlock(c, cfg.conv_dim, cfg, group_norm=(i == 0)) for i, c in enumerate(c_in)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.conv_layers:
            x = block(x)  # 5000 -> 2500 -> 1250 -> 625 -> 312
        return x


class ConvPositionalEncoding(nn.Module):
    """Spec rows 7-8: grouped Conv1d(768, 768, k=128, pad=64, groups=16) -> drop last frame -> GELU.

    The checkpoint stores the weight as a weight-norm pair (g, v); ``load.py`` folds it once
    into ``conv.weight`` (= g * v / ||v||, the norm over dims (0, 1) for each of the 128 taps),
    so nothing is recomputed per call.
    """

    def __init__(self, cfg: MELPConfig):
        super().__init__()
        k = cfg.pos_conv_kernel
        self.conv = nn.Conv1d(cfg.embed_dim, cfg.embed_dim, k, padding=k // 2, groups=cfg.pos_conv_groups)
        self.trim = 1 if k % 2 == 0 else 0  # fairseq SamePad: an even kernel yields one extra frame

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, T)
        x = self.conv(x)  # (B, C, T + 1)
        if self.trim:
            x = x[:, :, : -self.trim]  # (B, C, T)
        return F.gelu(x)


class SelfAttention(nn.Module):
    """Spec row 10, MHA: separate q/k/v/out projections (768x768 + bias), 12 heads x 64, q scaled by 1/8."""

    def __init__(self, cfg: MELPConfig):
        super().__init__()
        c = cfg.embed_dim
        self.n_heads = cfg.n_heads
        self.q_proj = nn.Linear(c, c)
        self.k_proj = nn.Linear(c, c)
        self.v_proj = nn.Linear(c, c)
        self.out_proj = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        nh, hs = self.n_heads, C // self.n_heads
        q = self.q_proj(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = self.v_proj(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        # softmax(q k^T / sqrt(hs)) v; no mask: all records are full length. Flash/fused kernel on GPU.
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.out_proj(y)


class EncoderLayer(nn.Module):
    """Spec row 10: post-LN block, x = LN1(x + MHA(x)); x = LN2(x + fc2(GELU(fc1(x))))."""

    def __init__(self, cfg: MELPConfig):
        super().__init__()
        self.self_attn = SelfAttention(cfg)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.embed_dim)
        self.final_layer_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        x = self.self_attn_layer_norm(x + self.self_attn(x))
        x = self.final_layer_norm(x + self.fc2(gelu_fp32(self.fc1(x))))  # fc1: (B, T, 3072)
        return x


class TransformerEncoder(nn.Module):
    """Spec rows 9-11: LayerNorm *before* layer 0, 8 post-LN layers, no final LayerNorm."""

    def __init__(self, cfg: MELPConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        x = self.layer_norm(x)
        for layer in self.layers:
            x = layer(x)
        return x


class ECGBackbone(nn.Module):
    """Spec rows 0-11 (fairseq-signals ``Wav2Vec2Model.forward(mask=False, features_only=True)``)."""

    def __init__(self, cfg: MELPConfig):
        super().__init__()
        self.feature_extractor = ConvFeatureExtractor(cfg)
        self.layer_norm = nn.LayerNorm(cfg.conv_dim, eps=cfg.layer_norm_eps)
        self.post_extract_proj = nn.Linear(cfg.conv_dim, cfg.embed_dim)
        self.conv_pos = ConvPositionalEncoding(cfg)
        self.encoder = TransformerEncoder(cfg)

    def conv_features(self, x: torch.Tensor) -> torch.Tensor:
        """Rows 1-5: (B, 12, 5000) -> (B, 312, 256), the ``"features"`` output of fairseq-signals."""
        x = self.feature_extractor(x)  # (B, 256, T)
        return self.layer_norm(x.transpose(1, 2))  # (B, T, 256)

    def front(self, x: torch.Tensor) -> torch.Tensor:
        """Rows 1-6: (B, 12, 5000) -> projected features (B, 312, 768).

        The part the bf16 policy keeps in fp32 (``embedder.py``): bf16 rounding of the min-max
        scaled signal in the first convolutions is where bf16 loses MELP's answers.
        """
        return self.post_extract_proj(self.conv_features(x))  # (B, T, C)

    def position(self, x: torch.Tensor) -> torch.Tensor:
        """Rows 7-8: projected features plus their convolutional positional encoding (B, 312, 768)."""
        return x + self.conv_pos(x.transpose(1, 2)).transpose(1, 2)  # (B, T, C)

    def transformer(self, x: torch.Tensor) -> torch.Tensor:
        """Rows 7-11: projected features (B, 312, 768) -> backbone tokens (B, 312, 768)."""
        return self.encoder(self.position(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rows 1-11: (B, 12, 5000) -> backbone tokens (B, 312, 768)."""
        return self.transformer(self.front(x))


# ---------------------------------------------------------------------------------------------
# heads (checkpoint prefix ``ecg_encoder.``)


class AttentionalPooler(nn.Module):
    """Spec "Heads" table: Q learned queries cross-attend to the backbone tokens.

    ``ln_q`` normalises the learned queries on every call, ``ln_k`` the tokens; no residual,
    no MLP. ``nn.MultiheadAttention`` stores separate ``q/k/v_proj_weight`` when the key width
    differs from the query width (contrast pooler, 256 vs 768) and a packed ``in_proj_weight``
    when they agree (caption pooler, 768): exactly the two published layouts.
    """

    def __init__(self, d_model: int, context_dim: int, n_heads: int, n_queries: int, eps: float):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(n_queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_heads, kdim=context_dim, vdim=context_dim, batch_first=True)
        self.ln_q = nn.LayerNorm(d_model, eps=eps)
        self.ln_k = nn.LayerNorm(context_dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, context_dim)
        x = self.ln_k(x)
        q = self.ln_q(self.query).unsqueeze(0).expand(x.shape[0], -1, -1)  # (B, Q, d_model)
        return self.attn(q, x, x, need_weights=False)[0]  # (B, Q, d_model)


class MELPEncoder(nn.Module):
    """MELP's ``ECGFMModel`` at inference: backbone + contrast heads (+ caption head if built).

    ``token_level=False`` does not build the caption pooler at all (1.16 GFLOP and 2.5 M
    weights per record saved); its checkpoint tensors are then skipped by the loader.
    """

    def __init__(self, cfg: MELPConfig, token_level: bool = False):
        super().__init__()
        self.config = cfg
        self.token_level = token_level
        eps, d, c = cfg.layer_norm_eps, cfg.shared_emb_dim, cfg.embed_dim
        self.backbone = ECGBackbone(cfg)
        self.attn_pool_contrast = AttentionalPooler(d, c, cfg.attn_pooler_heads, cfg.n_queries_contrast, eps)
        self.ln_contrast = nn.LayerNorm(d, eps=eps)
        self.proj_contrast = nn.Parameter(torch.zeros(d, d))  # right-multiplied: y = x @ P
        if token_level:
            self.attn_pool_caption = AttentionalPooler(c, c, cfg.attn_pooler_heads, cfg.n_queries_caption, eps)
            self.ln_caption = nn.LayerNorm(c, eps=eps)

    def heads(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone tokens (B, T, C) -> every published vector (``ECGFMModel._encode_ecg`` / ``ext_ecg_emb``).

        probe     (B, 256)      mean over queries of ln_contrast(pool(x)): the linear-probe feature
        beat      (B, Q, 256)   ln_contrast(pool(x)) @ proj_contrast ("beats" are learned slots)
        rhythm    (B, 256)      mean of beat over queries, not normalised (hub ``proj_ecg_emb``)
        embedding (B, 256)      rhythm L2-normalised (eps 1e-12): the zero-shot / shared-space vector
        token     (B, 128, 768) ln_caption(caption pool(x)); only when built with token_level=True
        """
        pooled = self.ln_contrast(self.attn_pool_contrast(tokens))  # (B, Q, 256)
        beat = pooled @ self.proj_contrast  # (B, Q, 256)
        rhythm = beat.mean(dim=1)  # (B, 256)
        out = {
            "embedding": F.normalize(rhythm.float(), dim=-1, eps=1e-12),
            "probe_embedding": pooled.mean(dim=1),
            "beat": beat,
            "rhythm": rhythm,
        }
        if self.token_level:
            out["token"] = self.ln_caption(self.attn_pool_caption(tokens))  # (B, 128, C)
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # x: (B, 12, 5000) min-max scaled
        return self.heads(self.backbone(x))

    def estimate_flops_per_record(self) -> float:
        """Analytic FLOPs (2 per MAC) for one record, as in the spec's throughput section."""
        cfg = self.config
        t, c, f = cfg.n_tokens, cfg.embed_dim, cfg.ffn_dim
        n = 0
        length = cfg.n_samples
        for i in range(cfg.n_conv_layers):  # conv stack
            length = (length - cfg.conv_kernel) // cfg.conv_stride + 1
            c_in = cfg.n_leads if i == 0 else cfg.conv_dim
            n += length * cfg.conv_dim * c_in * cfg.conv_kernel
        n += t * cfg.conv_dim * c  # post_extract_proj
        n += (t + 1) * c * (c // cfg.pos_conv_groups) * cfg.pos_conv_kernel  # positional conv
        n += cfg.n_layers * (4 * t * c * c + 2 * t * t * c + 2 * t * c * f)  # projections, attention, FFN

        def pooler(q: int, d: int, ctx: int) -> int:  # q/k/v/out projections + attention
            return q * d * d + 2 * t * ctx * d + q * d * d + 2 * q * t * d

        d = cfg.shared_emb_dim
        n += pooler(cfg.n_queries_contrast, d, c) + cfg.n_queries_contrast * d * d  # + proj_contrast
        if self.token_level:
            n += pooler(cfg.n_queries_caption, c, c)
        return 2.0 * n
