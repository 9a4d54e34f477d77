"""ECGFM-KED as the job runs it: the :class:`~ecgembed.models.spec.ModelSpec` the pipeline loops over.

Vector: ``embedding`` (mean of the 32 ECG tokens, raw). Zero-shot scores for every label set
of the run: one trunk pass per batch, then the query network once per label set over class
features computed on the driver (cached per checkpoint, text model and label set).
"""

from __future__ import annotations

import numpy as np

from ecgembed.models import standin
from ecgembed.models.spec import STAND_IN, ModelSpec, Option, Vector
from ecgembed.preprocess import KED_PREPROC_VERSION, KED_SAMPLES, ked_input

from .config import DEFAULT_TEXT_MODEL, DEFAULT_WEIGHTS_URI
from .model import precision_tag

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
            return standin.version(self.name) + precision_tag(precision)
        from ecgembed import weights as W

        from .checkpoint import fetch_checkpoint

        sha = W.expected_sha256(weights) or fetch_checkpoint(weights).sha256   # a pulled folder's lock: no download
        return sha + precision_tag(precision)

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

    def load(self, weights: str, device: str, precision: str = "fp32"):
        """The ECGFM-KED module itself: ``to_device(features)`` and ``embed(x, features)`` with the scores."""
        from .model import ECGFMKED, load_ked

        if weights == STAND_IN:
            model = ECGFMKED(model_version=standin.version(self.name), precision=precision)
            return standin.init_(model).eval().to(device)
        return load_ked(weights, device=device, precision=precision)


SPEC = KedSpec()
