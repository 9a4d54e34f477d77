"""MELP ECG-encoder hyper-parameters, one field per number in ``specs/melp.md`` §b.

The defaults are the released ``fuyingw/MELP_Encoder`` ("small" wav2vec2-style backbone,
14 contrast queries). The loader overrides ``n_queries_contrast`` / ``n_queries_caption``
from the tensor shapes in the checkpoint, because the code defaults (13 in ``MELPModel``,
12 in the pre-training script) disagree with the released weights.
"""
from __future__ import annotations

from dataclasses import dataclass

# The published release (ECG tower only), pinned to a Hub commit so that a default run cannot
# follow the repository's moving ``main`` branch. 2518c74 ("Remove unnecessary code") is the
# commit that added model.safetensors and config.json; only this short form of its hash is
# public in the sources we could read. The Hub resolves short hashes, and ``ecgembed weights
# pull`` records the full commit it resolved in ``weights.lock.json``.
DEFAULT_WEIGHTS_REVISION = "2518c74"
DEFAULT_WEIGHTS_URI = f"hf://fuyingw/MELP_Encoder@{DEFAULT_WEIGHTS_REVISION}"
WEIGHTS_LICENSE = "Apache-2.0"  # the licence on the hub model card


@dataclass(frozen=True)
class MELPConfig:
    # input: float32 (B, n_leads, n_samples), 500 Hz, 10 s, lead order I II III aVR aVF aVL V1-V6
    n_leads: int = 12
    n_samples: int = 5000
    # conv feature extractor (spec rows 1-4): 4 x Conv1d(k=2, s=2, no bias) -> 5000 / 16 = 312 frames
    conv_dim: int = 256
    conv_kernel: int = 2
    conv_stride: int = 2
    n_conv_layers: int = 4
    # transformer backbone (rows 6-10)
    embed_dim: int = 768
    n_layers: int = 8
    n_heads: int = 12  # 12 x 64
    ffn_dim: int = 3072
    pos_conv_kernel: int = 128  # even kernel: the output is trimmed by one frame (SamePad)
    pos_conv_groups: int = 16  # 48 input channels per group
    layer_norm_eps: float = 1e-5  # every ECG-side LayerNorm / GroupNorm
    # heads (spec "Heads" table)
    shared_emb_dim: int = 256  # contrast pooler width = proj_contrast = shared image/text space
    n_queries_contrast: int = 14  # "beat" slots; read from attn_pool_contrast.query at load
    n_queries_caption: int = 128  # token-level slots; read from attn_pool_caption.query at load
    attn_pooler_heads: int = 8  # 8 x 32 (contrast), 8 x 96 (caption)

    @property
    def n_tokens(self) -> int:
        """Backbone tokens per record: 5000 -> 2500 -> 1250 -> 625 -> 312."""
        n = self.n_samples
        for _ in range(self.n_conv_layers):
            n = (n - self.conv_kernel) // self.conv_stride + 1
        return n

    def __post_init__(self) -> None:
        if self.embed_dim % self.n_heads:
            raise ValueError(f"embed_dim {self.embed_dim} not divisible by n_heads {self.n_heads}")
        if self.embed_dim % self.pos_conv_groups:
            raise ValueError(f"embed_dim {self.embed_dim} not divisible by pos_conv_groups {self.pos_conv_groups}")
        for width in (self.shared_emb_dim, self.embed_dim):
            if width % self.attn_pooler_heads:
                raise ValueError(f"pooler width {width} not divisible by attn_pooler_heads {self.attn_pooler_heads}")
        if self.n_queries_contrast < 1 or self.n_queries_caption < 1:
            raise ValueError("pooler query counts must be positive")
