"""The text side of ECGFM-KED: class texts -> (C, 768) query features (``specs/ecgfm-ked.md`` §c).

    text ──► lower-cased WordPiece, [CLS] ... [SEP], padded/truncated to 256
         ──► BertModel pooler output (tanh(dense([CLS])))        (C, 768)
         ──► mlp_embed: Linear-GELU-Linear-GELU-Linear           (C, 768), not normalised

Tokenizer and BERT shapes come from a text-model source holding ``config.json`` and
``vocab.txt``: a local folder, any URI ``ecgembed.weights.fetch`` reads (``s3://``,
``https://``, ``hf://org/repo``), or a Hugging Face model id (default
``emilyalsentzer/Bio_ClinicalBERT``). The weights always come from the checkpoint's
``text_encoder`` section (``bert_model.*`` + ``mlp_embed.*``), never from the model hub.

Class features are computed once per (checkpoint sha256, text-model files, label set sha256)
and cached in memory and on disk under ``<cache>/ecgfm_ked/class_features/`` (``$ECGEMBED_CACHE``
or ``~/.cache/ecgembed``), so ECG actors receive a small float32 array and never load BERT.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ecgembed.errors import WeightsError
from ecgembed.storage import join, write_local_atomic
from ecgembed.weights import FetchedFile, cache_dir, fetch

from .checkpoint import fetch_checkpoint, load_section, read_checkpoint
from .config import DEFAULT_TEXT_MODEL, DEFAULT_WEIGHTS_URI, KEDConfig

TEXT_MODEL_FILES = ("config.json", "vocab.txt")
_ENCODE_BATCH = 16


class TextEncoder(nn.Module):
    """``CLP_clinical`` without its training-only parts; attribute names match the ``text_encoder`` keys."""

    def __init__(self, bert_config, cfg: KEDConfig = KEDConfig()):
        super().__init__()
        from transformers import BertModel  # heavy import, only where the text side is used

        d = cfg.embed_dim
        self.bert_model = BertModel(bert_config, add_pooling_layer=True)
        self.mlp_embed = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """BERT pooler output (C, 768); token_type_ids are all zero, as in the original."""
        return self.bert_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.mlp_embed(self.pooled(input_ids, attention_mask))  # (C, 768)


@dataclass(frozen=True)
class TextModelFiles:
    config: FetchedFile
    vocab: FetchedFile

    @property
    def fingerprint(self) -> str:
        """Identifies tokenizer + BERT shapes by content, whatever URI they came from."""
        return hashlib.sha256(f"{self.config.sha256}:{self.vocab.sha256}".encode()).hexdigest()


def text_model_files(text_model_uri: str | None = None) -> TextModelFiles:
    """``config.json`` and ``vocab.txt`` of a folder, URI or Hugging Face model id, fetched and hashed."""
    uri = os.fspath(text_model_uri or DEFAULT_TEXT_MODEL)
    if "://" not in uri and not os.path.isdir(uri):
        if uri.count("/") != 1 or uri.startswith((".", "/", "~")):
            raise WeightsError(
                f"{uri}: not a folder, URI or Hugging Face model id (org/name); the ECGFM-KED text "
                f"model needs {' and '.join(TEXT_MODEL_FILES)}"
            )
        uri = f"hf://{uri}"  # a model id
    config, vocab = (fetch(join(uri, name)) for name in TEXT_MODEL_FILES)
    return TextModelFiles(config, vocab)


class KEDText:
    """Tokenizer + text encoder of one checkpoint; ``encode(texts) -> (C, 768)`` float32."""

    def __init__(self, tokenizer, encoder: TextEncoder, weights_sha256: str, files: TextModelFiles,
                 cfg: KEDConfig = KEDConfig()):
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.weights_sha256 = weights_sha256
        self.files = files
        self.cfg = cfg

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @property
    def version(self) -> str:
        """What the features depend on besides the texts: checkpoint, tokenizer files, settings."""
        return feature_version(self.weights_sha256, self.files, self.cfg)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """input_ids and attention_mask, (C, 256) int64, exactly as the original tokenizer call."""
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True,
                             max_length=self.cfg.text_max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            raise ValueError("no class texts to encode")
        enc = self.tokenize(texts)
        out = []
        for start in range(0, len(texts), _ENCODE_BATCH):
            ids = enc["input_ids"][start:start + _ENCODE_BATCH]
            mask = enc["attention_mask"][start:start + _ENCODE_BATCH]
            # Padding positions are masked out of attention and the pooler reads [CLS] only, so
            # cutting the batch to its longest text gives the same features, far cheaper than 256.
            width = int(mask.sum(1).max())
            out.append(self.encoder(ids[:, :width].to(self.device), mask[:, :width].to(self.device)))
        return torch.cat(out).float().cpu().numpy()


def load_ked_text(weights_uri: str | None = None, text_model_uri: str | None = None,
                  device: str | torch.device = "cpu", cfg: KEDConfig = KEDConfig()) -> KEDText:
    """The text side: tokenizer + BERT shapes from ``text_model_uri``, weights from the checkpoint."""
    from transformers import BertConfig, BertTokenizer

    weights = fetch_checkpoint(weights_uri or DEFAULT_WEIGHTS_URI)
    ckpt = read_checkpoint(weights.path, weights.uri)
    files = text_model_files(text_model_uri)
    try:
        bert_config = BertConfig.from_json_file(str(files.config.path))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{files.config.uri}: not a readable BERT config.json ({exc})") from None
    if bert_config.hidden_size != cfg.embed_dim:
        raise WeightsError(
            f"{files.config.uri}: hidden_size {bert_config.hidden_size}, ECGFM-KED needs {cfg.embed_dim}")
    vocab = _read_vocab(files.vocab)
    if len(vocab) > bert_config.vocab_size:
        raise WeightsError(f"{files.vocab.uri}: {len(vocab)} word pieces, more than the config's vocab_size "
                           f"{bert_config.vocab_size}: tokenizer and config do not belong together")
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=cfg.text_lower_case)

    encoder = TextEncoder(bert_config, cfg)
    load_section(ckpt, "text_encoder", encoder, weights.uri)
    return KEDText(tokenizer, encoder.eval().to(device), weights.sha256, files, cfg)


def _read_vocab(vocab_file: FetchedFile) -> dict[str, int]:
    """vocab.txt: one word piece per line, id = line number (as BERT's own loader)."""
    vocab: dict[str, int] = {}
    with open(vocab_file.path, encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            vocab[line.rstrip("\n")] = index
    if "[CLS]" not in vocab or "[SEP]" not in vocab or "[PAD]" not in vocab:
        raise WeightsError(f"{vocab_file.uri}: not a BERT vocab.txt (no [CLS]/[SEP]/[PAD] entries)")
    return vocab


# --------------------------------------------------------------------------- class-feature cache
def feature_version(weights_sha256: str, files: TextModelFiles, cfg: KEDConfig = KEDConfig()) -> str:
    key = {"weights": weights_sha256, "text_model": files.fingerprint,
           "max_length": cfg.text_max_length, "lower_case": cfg.text_lower_case}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


_MEMORY: dict[str, np.ndarray] = {}


def class_features(label_set, weights_uri: str | None = None, text_model_uri: str | None = None,
                   device: str | torch.device = "cpu", cfg: KEDConfig = KEDConfig()) -> np.ndarray:
    """(C, 768) float32 features of a :class:`ecgembed.labels.LabelSet`, computed once, then cached.

    The cache key is the checkpoint's sha256, the tokenizer/config files' sha256 and the label
    set's sha256 (names and texts, in order). The returned array is read-only.
    """
    weights = fetch_checkpoint(weights_uri or DEFAULT_WEIGHTS_URI)
    files = text_model_files(text_model_uri)
    key = hashlib.sha256(f"{feature_version(weights.sha256, files, cfg)}:{label_set.sha256}".encode()).hexdigest()
    if key in _MEMORY:
        return _MEMORY[key]
    path = cache_dir() / "ecgfm_ked" / "class_features" / f"{key}.npz"
    feats = _read_cached(path, label_set, cfg)
    if feats is None:
        text = load_ked_text(weights.uri, text_model_uri, device=device, cfg=cfg)
        feats = text.encode(label_set.texts)
        _write_cached(path, feats, label_set)
    feats.flags.writeable = False
    _MEMORY[key] = feats
    return feats


def _read_cached(path: Path, label_set, cfg: KEDConfig) -> np.ndarray | None:
    try:
        with np.load(path) as data:
            feats, sha = data["features"], str(data["label_set_sha256"])
    except (OSError, KeyError, ValueError):
        return None  # absent or unreadable (e.g. half-written by a killed process): recompute
    if sha != label_set.sha256 or feats.shape != (len(label_set.classes), cfg.embed_dim):
        return None
    return feats.astype(np.float32, copy=False)


def _write_cached(path: Path, feats: np.ndarray, label_set) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, features=feats, label_set_sha256=np.str_(label_set.sha256),
             class_names=np.array(label_set.names, dtype=np.str_))
    write_local_atomic(path, buffer.getvalue())   # readers see the whole file or none
