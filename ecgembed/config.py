"""One dataclass holds a run's configuration; it is checked before any work starts."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from ecgembed.errors import ConfigError

MODELS = ("melp", "ecgfm-ked")
STAND_IN = "stand-in"


@dataclass
class RunConfig:
    inputs: list[str]
    output: str
    models: tuple[str, ...] = MODELS
    melp_weights: str | None = None        # default: the published release (hf://fuyingw/MELP_Encoder)
    melp_text_weights: str | None = None   # optional MELP text tower -> MELP zero-shot scores
    melp_text_model: str | None = None     # tokenizer + BERT config folder of that tower
    ked_weights: str | None = None         # default: the published Zenodo file
    ked_text_model: str | None = None      # default: emilyalsentzer/Bio_ClinicalBERT
    labels: list[str] = field(default_factory=lambda: ["ptbxl"])
    manifest_column: str | None = None     # record-path column of a manifest CSV (auto-detected)
    full: bool = False                     # ignore the ledger and recompute everything
    stand_in: bool = False                 # random stand-in weights, labelled "stand-in" in every row
    device: str = "auto"                   # auto | cpu | cuda
    bf16: bool = False                     # bf16 autocast in the model actors (GPU)
    gpus_per_actor: float | None = None    # default: 0.5 on GPU clusters (both encoders share a GPU), 0 on CPU
    max_actors: int | None = None          # per model; default: one per GPU, 1 without GPUs
    cpu_tasks: int | None = None           # concurrent CPU preprocessing tasks; default: CPUs left free
    melp_batch_size: int | None = None     # default 128 on GPU, 16 on CPU
    ked_batch_size: int | None = None      # default 256 on GPU, 32 on CPU
    records_per_task: int = 32             # records per CPU task (one fetch round trip)
    rows_per_file: int = 100_000           # target rows per Parquet file (embeddings barely compress: ~1-3 KB/row)
    progress_interval_s: float = 10.0
    run_id: str | None = None              # default: derived from the start time

    def validate(self) -> "RunConfig":
        if not self.inputs:
            raise ConfigError("at least one --input is required")
        if not self.output:
            raise ConfigError("--output is required")
        self.models = tuple(m.strip() for m in self.models if m.strip())
        unknown = [m for m in self.models if m not in MODELS]
        if unknown or not self.models:
            raise ConfigError(f"--models: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(MODELS)}")
        if (self.melp_text_weights is None) != (self.melp_text_model is None):
            raise ConfigError("--melp-text-weights and --melp-text-model go together")
        if self.stand_in and any((self.melp_weights, self.ked_weights, self.melp_text_weights)):
            raise ConfigError("--stand-in replaces the model weights: do not combine it with --*-weights")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device must be auto, cpu or cuda, not {self.device!r}")
        for name in ("melp_batch_size", "ked_batch_size", "max_actors", "cpu_tasks"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        if self.records_per_task < 1 or self.rows_per_file < 1:
            raise ConfigError("--records-per-task and --rows-per-file must be >= 1")
        if self.gpus_per_actor is not None and not 0 <= self.gpus_per_actor <= 8:
            raise ConfigError("--gpus-per-actor must be between 0 and 8")
        self.output = self.output.rstrip("/") if "://" in self.output else os.path.abspath(self.output)
        return self

    def as_dict(self) -> dict:
        return asdict(self)
