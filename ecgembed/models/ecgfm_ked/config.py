"""The numbers of the ECGFM-KED release, in one place (``specs/ecgfm-ked.md`` §b-§d).

Every field is a fact of the published checkpoint, not a tuning knob: change one and the
released weights no longer load. They live in a dataclass so that the modules read their
sizes from one object (as nanoGPT's ``GPTConfig``) and a test can build a smaller model.
"""

from __future__ import annotations

from dataclasses import dataclass

# Zenodo record 14881564, the one checkpoint the paper released (MIMIC-IV-ECG pre-training).
# A published Zenodo record's files cannot be changed (a new upload is a new record id), so the
# record id pins the bytes; no checksum is published in the sources we read, so
# ``ecgembed weights pull`` records the sha256 at the first pull (``weights.lock.json``).
ZENODO_RECORD = "14881564"
WEIGHTS_FILE = "best_valid_all_increase_with_augment_epoch_3.pt"
DEFAULT_WEIGHTS_URI = f"https://zenodo.org/records/{ZENODO_RECORD}/files/{WEIGHTS_FILE}"
WEIGHTS_LICENSE = "not stated in the sources read; see the Zenodo record"
# Tokenizer + BERT config of the text side (its weights come from the .pt's `text_encoder`),
# pinned to a Hub commit of emilyalsentzer/Bio_ClinicalBERT: d5892b3, the revision other
# projects pin as the model's long-standing `main`. A later commit added a model.safetensors
# that ecgembed does not use; config.json and vocab.txt are the files the text side reads.
DEFAULT_TEXT_MODEL_REVISION = "d5892b39a4adaed74b92212a44081509db72f87b"
DEFAULT_TEXT_MODEL = f"hf://emilyalsentzer/Bio_ClinicalBERT@{DEFAULT_TEXT_MODEL_REVISION}"
TEXT_MODEL_LICENSE = "MIT"  # the licence on the hub model card


@dataclass(frozen=True)
class KEDConfig:
    # --- input contract (what every original evaluation path feeds) ---
    n_leads: int = 12
    sample_rate: int = 100            # Hz
    n_samples: int = 1000             # 10 s; the CNN is fully convolutional, but was trained on 1000
    # --- xresnet1d101 trunk (fastai-v1 XResNet, 1-D, head-less) ---
    kernel_size: int = 5              # every non-1x1 conv, stem included
    stem_widths: tuple[int, ...] = (32, 32, 64)
    stage_mid_widths: tuple[int, ...] = (64, 128, 128, 192)   # block_szs[1:] of the original
    stage_depths: tuple[int, ...] = (3, 4, 23, 3)             # "101"
    expansion: int = 4                # bottleneck: out = 4 * mid -> 256, 512, 512, 768
    bn_eps: float = 1e-5
    # --- TQN query network (7 pre-norm DETR-style decoder layers) ---
    embed_dim: int = 768              # ECG token width = text feature width = TQN width
    tqn_layers: int = 7
    tqn_heads: int = 4                # 4 heads of 192
    tqn_ffn: int = 1024
    tqn_head_hidden: int = 2048       # mlp_head: 768 -> 2048 -> GELU -> 2
    n_logits: int = 2                 # per (record, class): [absent, present]
    ln_eps: float = 1e-5
    # --- text side ---
    text_max_length: int = 256        # tokenizer pads and truncates to this many word pieces
    text_lower_case: bool = True

    @property
    def n_tokens(self) -> int:
        """ECG tokens out of the trunk for ``n_samples`` input samples (32 for 1000)."""
        n = -(-self.n_samples // 2)          # stem conv, stride 2, pad k//2
        n = (n - 1) // 2 + 1                 # max-pool k3 s2 p1
        for _ in self.stage_depths[1:]:      # stages 2-4 halve (k5 s2 p2 conv)
            n = -(-n // 2)
        return n
