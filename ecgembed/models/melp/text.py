"""Optional MELP text tower: causal BERT + ``proj_t``, for zero-shot scoring (``specs/melp.md`` §c, §d).

The published release has **no** text tower. This module loads one when a user has it: a
safetensors file in MELP's Lightning naming (``lm_model.bert.*`` + ``proj_t.*``; other keys of a
full checkpoint are skipped) plus a tokenizer/config folder (``config.json`` of a BERT and
``vocab.txt`` and/or ``tokenizer.json``, e.g. ``fuyingw/heart_bert``).

MELP's text path, reproduced exactly:

- the tokenizer gets the special token ``[BOS]`` (id = old vocabulary size); the embedding
  matrix has that extra row;
- text is lower-cased, ``"[BOS] "`` is prefixed, it is encoded with special tokens, truncated
  and padded to 128; the leading ``[CLS]`` column is dropped and a ``[CLS]`` id is appended, so
  ``[CLS]`` always sits at index 127 with mask 1 (at most 125 WordPieces of text);
- the BERT runs as a decoder (``is_decoder=True``: causal self-attention plus the padding mask);
- the embedding is the last hidden state at index 127 -> ``proj_t`` (Linear 768->256, GELU,
  Linear 256->256) -> L2 normalisation; the zero-shot score is the plain cosine.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ecgembed import storage, weights
from ecgembed.errors import WeightsError

from .load import map_key, match_keys, open_safetensors, read_index, resolve_weights_uri

CONTEXT_LENGTH = 128  # MELP pads every prompt to 128 tokens; [CLS] is appended at index 127
BOS_TOKEN = "[BOS]"

# module key (regex, full match) -> checkpoint key
TEXT_KEY_TABLE: list[tuple[str, str]] = [
    (r"bert\.(.+)", r"lm_model.bert.\1"),  # BertLMHeadModel.bert (no pooler)
    (r"proj_t\.(.+)", r"proj_t.\1"),  # Sequential(Linear, GELU, Linear): indices 0 and 2
]
# keys of a full MELP checkpoint that the text tower does not use
TEXT_SKIPPED_PREFIXES: tuple[str, ...] = (
    "ecg_encoder.",  # the ECG tower (loaded by load.py)
    "lm_model.cls.",  # MLM head (training)
    "lm_model.bert.pooler.",  # not part of BertLMHeadModel; tolerated if a converter kept it
    "lm_model.bert.embeddings.position_ids",  # a buffer older transformers versions saved
    "sent_proj.",  # sentence/beat alignment projection (training)
    "text_decoder.",  # captioning decoder (training)
    "logit_scale",  # CLIP temperature (not used in evaluation)
)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


class MELPTextTower(nn.Module):
    """Causal BERT + ``proj_t``: prompts -> L2-normalised 256-d class embeddings."""

    def __init__(self, bert_config, tokenizer, proj_dim: int = 256, context_length: int = CONTEXT_LENGTH):
        super().__init__()
        from transformers import BertModel

        self.tokenizer = tokenizer
        self.context_length = context_length
        self.bert = BertModel(bert_config, add_pooling_layer=False)
        hidden = bert_config.hidden_size
        self.proj_t = nn.Sequential(nn.Linear(hidden, proj_dim), nn.GELU(), nn.Linear(proj_dim, proj_dim))

    @property
    def device(self) -> torch.device:
        return self.proj_t[0].weight.device

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)``, both int64 (C, 128), MELP's layout (module docstring)."""
        if isinstance(texts, str):
            raise TypeError("tokenize takes a list of prompts, not one string")
        tok = self.tokenizer
        enc = tok([f"{BOS_TOKEN} {t.lower()}" for t in texts], add_special_tokens=True, truncation=True,
                  padding="max_length", max_length=self.context_length, return_tensors="pt")
        ids, mask = enc["input_ids"][:, 1:], enc["attention_mask"][:, 1:]  # (C, 127): drop leading [CLS]
        cls = torch.full((len(texts), 1), tok.cls_token_id, dtype=ids.dtype)
        ids = torch.cat([ids, cls], dim=1)  # (C, 128), [CLS] at 127
        mask = torch.cat([mask, torch.ones_like(cls)], dim=1)  # (C, 128)
        return ids.long(), mask.long()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """cls_hidden (C, 768), proj (C, 256, raw), embedding (C, 256, L2-normalised)."""
        out = self.bert(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                        use_cache=False)
        cls_hidden = out.last_hidden_state[:, -1]  # (C, 768): the appended [CLS] at index 127
        proj = self.proj_t(cls_hidden)  # (C, 256)
        return {"cls_hidden": cls_hidden, "proj": proj, "embedding": F.normalize(proj, dim=-1, eps=1e-12)}

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """(C, 256) L2-normalised class embeddings, one prompt per class (no templates, no ensembling)."""
        return self(*self.tokenize(texts))["embedding"]


def zero_shot_scores(ecg_embedding: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
    """MELP's zero-shot score: cosine of normalised vectors, (B, 256) x (C, 256) -> (B, C).

    No temperature, no softmax: each class is scored independently.
    """
    return ecg_embedding.float() @ text_embedding.float().to(ecg_embedding.device).T


# ---------------------------------------------------------------------------------------------
# loading


def _local_model_dir(uri: str, stack: list) -> Path:
    """A local folder with the config and tokenizer files of ``uri`` (fetched if remote)."""
    local = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
    if "://" not in uri or uri.startswith("file://"):
        if not local.is_dir():
            raise WeightsError(f"{uri}: not a folder with config.json and tokenizer files")
        return local
    tmp = tempfile.TemporaryDirectory(prefix="melp-text-")
    stack.append(tmp)
    for name in ("config.json", *TOKENIZER_FILES):
        try:
            fetched = weights.fetch(storage.join(uri, name))
        except WeightsError:
            if name == "config.json":
                raise
            continue  # tokenizer files are alternatives; checked below
        os.symlink(fetched.path, Path(tmp.name) / name)
    return Path(tmp.name)


def load_text_tower(
    weights_uri: str, model_uri: str, *, device: str | torch.device = "cpu"
) -> tuple[MELPTextTower, str]:
    """``(tower, text_version)`` from a text checkpoint and a tokenizer/config folder (any URI).

    ``text_version`` is the sha256 of the checkpoint file. The checkpoint is read strictly:
    missing, unexpected or mis-shaped keys raise :class:`WeightsError`.
    """
    from transformers import BertConfig, BertTokenizerFast

    file_uri, _ = resolve_weights_uri(weights_uri)
    fetched = weights.fetch(file_uri)
    stack: list = []
    try:
        folder = _local_model_dir(str(model_uri), stack)
        if not (folder / "config.json").is_file():
            raise WeightsError(f"{model_uri}: no config.json (BERT config of the text tower)")
        if not any((folder / n).is_file() for n in ("tokenizer.json", "vocab.txt")):
            raise WeightsError(f"{model_uri}: no tokenizer.json or vocab.txt")
        tokenizer = BertTokenizerFast.from_pretrained(str(folder))
        config = BertConfig.from_pretrained(str(folder))
    finally:
        for tmp in stack:
            tmp.cleanup()
    tokenizer.add_special_tokens({"bos_token": BOS_TOKEN})  # no-op if the folder already has it
    config.vocab_size = len(tokenizer)  # MELP resizes the embeddings to the grown vocabulary
    config.is_decoder = True  # AutoModelForCausalLM(..., is_decoder=True): causal self-attention
    config.add_cross_attention = False

    with open_safetensors(fetched.path, file_uri) as f:
        entries = read_index(f)
        proj_dim = entries["proj_t.2.weight"][1][0] if "proj_t.2.weight" in entries else 256
        tower = MELPTextTower(config, tokenizer, proj_dim=proj_dim)  # on CPU: BERT's buffers are built here
        wanted = {map_key(TEXT_KEY_TABLE, k): (k, tuple(p.shape)) for k, p in tower.state_dict().items()}
        match_keys(entries, wanted, lambda k: k.startswith(TEXT_SKIPPED_PREFIXES), file_uri,
                   f"a MELP text tower (lm_model.bert.* + proj_t.*) matching the tokenizer/config at {model_uri}")
        state = {module_key: f.get_tensor(entries[key][0]).float() for key, (module_key, _) in wanted.items()}
    tower.load_state_dict(state, strict=True)
    return tower.eval().requires_grad_(False).to(device), fetched.sha256
