"""ECGFM-KED as the job runs it: the :class:`~ecgembed.models.spec.ModelSpec` the pipeline loops over.

Vector: ``embedding`` (mean of the 32 ECG tokens, raw). Zero-shot scores for every label set
of the run: one trunk pass per batch, then the query network once per label set over class
features computed on the driver (cached per checkpoint, text model and label set).
"""

from __future__ import annotations

import numpy as np
import torch

from ecgembed.models import standin
from ecgembed.models.spec import STAND_IN, ModelSpec, Option, Vector
from ecgembed.preprocess import KED_PREPROC_VERSION, KED_SAMPLES, ked_input

from .config import DEFAULT_TEXT_MODEL, DEFAULT_WEIGHTS_URI

_TAGS = {"fp32": "", "bf16": "+bf16"}


class KedJobModel:
    """A loaded ECGFM-KED for an actor: numpy (B, 12, 1000) in, embedding and scores out."""

    def __init__(self, model, device: str, precision: str):
        self.model, self.device, self.bf16 = model, torch.device(device), precision == "bf16"

    def to_device(self, class_features: list[np.ndarray]) -> list[torch.Tensor]:
        return [torch.as_tensor(np.array(f, np.float32), device=self.device) for f in class_features]

    def embed(self, x: np.ndarray, class_features: list) -> dict:
        return self.model.embed_label_sets(x, class_features, autocast_bf16=self.bf16)


class KedSpec(ModelSpec):
    name = "ecgfm-ked"
    title = "ECGFM-KED"
    vectors = (Vector("embedding", 768, "mean of the 32 ECG tokens of the xresnet1d101 trunk, raw"),)
    input_shape = (12, KED_SAMPLES)
    preproc_version = KED_PREPROC_VERSION
    default_weights = DEFAULT_WEIGHTS_URI
    batch_size = {"cpu": 32, "cuda": 256}
    gflop_per_record = 2.0
    options = (Option("text-model", "tokenizer + BERT config folder or model id of the text side",
                      default=DEFAULT_TEXT_MODEL),)

    def preprocess(self, signal: np.ndarray, fs: float) -> np.ndarray:
        return ked_input(signal, fs)

    def version(self, weights: str, precision: str = "fp32") -> str:
        if weights == STAND_IN:
            return standin.version(self.name) + _TAGS[precision]
        from ecgembed import weights as W

        from .checkpoint import fetch_checkpoint

        sha = W.expected_sha256(weights) or fetch_checkpoint(weights).sha256   # a pulled folder's lock: no download
        return sha + _TAGS[precision]

    def scores(self, options: dict) -> bool:
        return True

    def scores_version(self, weights: str, options: dict) -> str:
        """The text side: BERT weights live in the checkpoint (model_version); tokenizer + config here."""
        if weights == STAND_IN:
            return "stand-in:text"
        from .text import text_model_files

        return "ked-text:" + text_model_files(options.get("text_model")).fingerprint[:16]

    def class_features(self, label_sets: list, weights: str, options: dict) -> list[np.ndarray]:
        if weights == STAND_IN:
            return [standin.class_features(ls.texts, 768, normalise=False) for ls in label_sets]
        from .text import class_features

        return [np.array(class_features(ls, weights, options.get("text_model"))) for ls in label_sets]

    def load(self, weights: str, device: str, precision: str = "fp32") -> KedJobModel:
        from .model import ECGFMKED, load_ked

        if weights == STAND_IN:
            model = standin.init_(ECGFMKED(model_version=self.version(weights, precision))).eval().to(device)
        else:
            model = load_ked(weights, device=device)
            model.model_version += _TAGS[precision]
        return KedJobModel(model, device, precision)


SPEC = KedSpec()
