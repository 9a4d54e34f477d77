"""MELP as the job runs it: the :class:`~ecgembed.models.spec.ModelSpec` the pipeline loops over.

Vectors: ``embedding`` (rhythm vector after ``proj_contrast``, L2-normalised: the shared
ECG-text space) and ``probe_embedding`` (the linear-probe vector). Zero-shot scores only with
the optional text tower (``--melp-text-weights`` + ``--melp-text-model``): cosine of the
normalised ECG vector with each class text's vector.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ecgembed import storage
from ecgembed import weights as W
from ecgembed.errors import WeightsError
from ecgembed.models import standin
from ecgembed.models.spec import STAND_IN, ModelSpec, Option, Vector
from ecgembed.preprocess import MELP_PREPROC_VERSION, MELP_SAMPLES, melp_input

from .config import MELPConfig
from .embedder import precision_tag
from .load import DEFAULT_WEIGHTS_URI, resolve_weights_uri
from .text import TOKENIZER_FILES


class MelpSpec(ModelSpec):
    name = "melp"
    title = "MELP"
    vectors = (
        Vector("embedding", 256, "rhythm vector after proj_contrast, L2-normalised (shared ECG-text space; cosine = dot)"),
        Vector("probe_embedding", 256, "linear-probe vector (attention pool + LayerNorm, before proj_contrast), raw"),
    )
    input_shape = (12, MELP_SAMPLES)
    preproc_version = MELP_PREPROC_VERSION
    default_weights = DEFAULT_WEIGHTS_URI
    batch_size = {"cpu": 16, "cuda": 128}
    gflop_per_record = 41.7
    options = (
        Option("text-weights", "optional MELP text tower (lm_model.bert.* + proj_t.*): enables MELP zero-shot scores"),
        Option("text-model", "tokenizer + BERT config folder of that text tower"),
    )

    def preprocess(self, signal: np.ndarray, fs: float) -> np.ndarray:
        return melp_input(signal, fs)

    def version(self, weights: str, precision: str = "fp32") -> str:
        if weights == STAND_IN:
            return standin.version(self.name) + precision_tag(precision)
        file_uri, _ = resolve_weights_uri(weights)
        sha = W.expected_sha256(file_uri) or W.fetch(file_uri).sha256   # a pulled folder's lock: no download
        return sha + precision_tag(precision)

    def scores(self, options: dict) -> bool:
        return bool(options.get("text_weights"))

    def scores_version(self, weights: str, options: dict) -> str:
        if not self.scores(options):
            return ""
        file_uri, _ = resolve_weights_uri(options["text_weights"])
        digest = hashlib.sha256(W.fetch(file_uri).sha256.encode())
        for name in ("config.json", *TOKENIZER_FILES):
            try:
                digest.update(f"{name}:{W.fetch(storage.join(options['text_model'], name)).sha256}".encode())
            except WeightsError:
                if name == "config.json":
                    raise   # tokenizer files are alternatives: absent ones do not count
        return "melp-text:" + digest.hexdigest()[:16]

    def class_features(self, label_sets: list, weights: str, options: dict) -> list[np.ndarray]:
        if not self.scores(options):
            return []
        from .text import load_text_tower

        tower, _ = load_text_tower(options["text_weights"], options["text_model"], device="cpu")
        with torch.inference_mode():
            return [tower.encode(ls.texts).float().cpu().numpy() for ls in label_sets]

    def load(self, weights: str, device: str, precision: str = "fp32"):
        """The MELP module itself: ``to_device(features)`` and ``embed(x, features)`` with the scores."""
        from .embedder import MELP, load_melp
        from .model import MELPEncoder

        if weights == STAND_IN:
            encoder = standin.init_(MELPEncoder(MELPConfig()))
            return MELP(encoder, standin.version(self.name), precision=precision).eval().to(device)
        return load_melp(weights, device=device, precision=precision)


SPEC = MelpSpec()
