"""A run's configuration: one dataclass, the single source of every flag and default.

The command line (``ecgembed run`` and ``jobs/embed_ecgs.py``) is generated from the fields
below (:func:`add_arguments`), so a flag, its help and its default are written once. Options of
one model (weights, batch size, text model...) are generated from the model specs
(:mod:`ecgembed.models.registry`): ``--<model>-weights``, ``--<model>-batch-size``,
``--<model>-<option>``. :meth:`RunConfig.validate` checks everything that needs no network
before any work starts.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import asdict, dataclass, field, fields

from ecgembed.errors import ConfigError
from ecgembed.models.registry import SPECS
from ecgembed.models.spec import PRECISIONS, STAND_IN

RUN_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
from ecgembed.sources.formats.base import METADATA_KEYS as METADATA_FIELDS  # noqa: E402 - what decoders fill


def _flag(help: str, **argparse_kwargs) -> dict:
    """Field metadata: the flag's help and any argparse keyword (flag=, metavar=, type=, ...)."""
    return {"help": help, **argparse_kwargs}


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@dataclass
class RunConfig:
    inputs: list[str] = field(default_factory=list, metadata=_flag(
        "folder/prefix, record, zip archive or manifest CSV to embed (repeatable; required)",
        flag="--input", metavar="URI", action="append"))
    output: str = field(default="", metadata=_flag(
        "output folder or prefix of the tables (local, s3://, gs://; required)", metavar="URI"))
    models: tuple[str, ...] = field(default=tuple(SPECS), metadata=_flag(
        f"comma-separated models to run, from {','.join(SPECS)} (default: all)", type=_csv))
    labels: list[str] = field(default_factory=lambda: ["ptbxl"], metadata=_flag(
        "label sets for zero-shot scores: built-in ptbxl, georgia, cpsc2018, chapman, mimic, or YAML/JSON files",
        nargs="+", metavar="NAME_OR_FILE"))
    weights_dir: str | None = field(default=None, metadata=_flag(
        "folder or s3:// prefix filled by `ecgembed weights pull`: every model's weights come from there",
        metavar="URI"))
    weights: dict[str, str | None] = field(default_factory=dict)        # model -> --<model>-weights
    batch_size: dict[str, int | None] = field(default_factory=dict)     # model -> --<model>-batch-size
    model_options: dict[str, dict[str, str | None]] = field(default_factory=dict)  # model -> option -> value
    stand_in: bool = field(default=False, metadata=_flag(
        "random stand-in weights for trying the job offline; every row says 'stand-in' in model_version",
        action="store_true"))
    manifest_column: str | None = field(default=None, metadata=_flag(
        "record-path column of a manifest CSV (default: auto-detected: path, filename_hr, ...)", metavar="NAME"))
    full: bool = field(default=False, metadata=_flag(
        "ignore the ledger and recompute everything (also retries settled errors)", action="store_true"))
    limit: int | None = field(default=None, metadata=_flag(
        "process at most N of the records that need work (the first N by record id)", type=int, metavar="N"))
    dry_run: bool = field(default=False, metadata=_flag(
        "say what would be processed, by which models, with what resources; process nothing",
        action="store_true"))
    device: str = field(default="auto", metadata=_flag(
        "where the model actors run: auto (GPU when the cluster has or can add GPU nodes), cpu or cuda",
        choices=("auto", "cpu", "cuda")))
    precision: str = field(default="fp32", metadata=_flag(
        "fp32 (default, IEEE) or bf16: each model's fast policy (MELP in bf16 but its conv front; "
        "ECGFM-KED in TF32); part of model_version",
        choices=PRECISIONS))
    gpus_per_actor: float | None = field(default=None, metadata=_flag(
        "GPUs per model actor (default 0.5: one actor of each model shares a GPU)", type=float, metavar="N"))
    max_actors: int | None = field(default=None, metadata=_flag(
        "actors per model (default: the cluster's GPU capacity, autoscaling included; 1 on CPU)",
        type=int, metavar="N"))
    cpu_tasks: int | None = field(default=None, metadata=_flag(
        "concurrent CPU preprocessing tasks (default: as many as the free CPUs allow)", type=int, metavar="N"))
    records_per_task: int = field(default=32, metadata=_flag(
        "records per CPU task, fetched in one round of concurrent requests (default 32)", type=int, metavar="N"))
    rows_per_file: int = field(default=100_000, metadata=_flag(
        "target rows per Parquet data file (default 100000)", type=int, metavar="N"))
    max_object_mb: float = field(default=256.0, metadata=_flag(
        "largest input file read, MB (default 256); bigger files are error rows", type=float, metavar="MB"))
    max_signal_files: int = field(default=64, metadata=_flag(
        "most files one record may name (default 64)", type=int, metavar="N"))
    max_record_seconds: float = field(default=600.0, metadata=_flag(
        "longest signal read per record, seconds (default 600); longer records are cut and flagged",
        type=float, metavar="S"))
    metadata: tuple[str, ...] = field(default=(), metadata=_flag(
        "opt in to a record_metadata table with these fields of the files (PHI!): "
        + ",".join(METADATA_FIELDS), type=_csv, metavar="FIELDS"))
    manifest_columns: tuple[str, ...] = field(default=(), metadata=_flag(
        "copy these manifest CSV columns into a record_attributes table keyed by record id (possible PHI)",
        type=_csv, metavar="A,B,C"))
    progress_interval_s: float = field(default=10.0, metadata=_flag(
        "seconds between [ecgembed] progress lines in logs (default 10)", flag="--progress-interval",
        type=float, metavar="S"))
    verbose: bool = field(default=False, metadata=_flag(
        "also show Ray Data's own per-operator progress and logs", action="store_true"))
    run_id: str | None = field(default=None, metadata=_flag(
        "run id, [A-Za-z0-9._-]+, new for this output (default: UTC start time + random suffix)", metavar="ID"))
    strict: bool = field(default=False, metadata=_flag(
        "exit 5 when any record ended in the errors table (or more than --max-error-fraction)",
        action="store_true"))
    max_error_fraction: float | None = field(default=None, metadata=_flag(
        "exit 5 when more than this fraction of the processed records failed (0-1)", type=float, metavar="F"))

    # ---- per model ------------------------------------------------------------------------------
    def weights_for(self, model: str) -> str:
        """The weights URI of a model: its flag, else --weights-dir, else the published default."""
        if self.stand_in:
            return STAND_IN
        if self.weights.get(model):
            return self.weights[model]
        if self.weights_dir:
            from ecgembed.weights import weights_dir_uris

            return weights_dir_uris(self.weights_dir)[model]
        return SPECS[model].default_weights

    def options_for(self, model: str) -> dict[str, str | None]:
        """A model's options by their underscore names (``text_model``), defaults filled in."""
        spec = SPECS[model]
        given = self.model_options.get(model, {})
        out = {}
        for option in spec.options:
            key = option.name.replace("-", "_")
            value = given.get(key)
            if value is None and self.weights_dir and not self.stand_in:
                from ecgembed.weights import weights_dir_uris

                value = weights_dir_uris(self.weights_dir).get(f"{model}-{option.name.removesuffix('-model')}")
            out[key] = value if value is not None else option.default
        return out

    # ---- checks ---------------------------------------------------------------------------------
    def validate(self) -> "RunConfig":
        if not self.inputs:
            raise ConfigError("--input is required (a folder, prefix, record, zip or manifest CSV; repeatable)")
        if not self.output:
            raise ConfigError("--output is required")
        self.models = tuple(m.strip() for m in self.models if m.strip())
        unknown = [m for m in self.models if m not in SPECS]
        if unknown or not self.models:
            raise ConfigError(f"--models: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(SPECS)}")
        for model, value in {**self.weights, **self.batch_size, **self.model_options}.items():
            if model not in SPECS:
                raise ConfigError(f"options given for unknown model {model!r}")
        if self.stand_in and (any(self.weights.values()) or self.weights_dir):
            raise ConfigError("--stand-in replaces the model weights: do not combine it with --*-weights or --weights-dir")
        for model, options in self.model_options.items():
            if self.stand_in and any(options.values()) and model == "melp":
                raise ConfigError("--stand-in has no MELP text tower: do not combine it with --melp-text-*")
        melp = self.model_options.get("melp", {})
        if bool(melp.get("text_weights")) != bool(melp.get("text_model")):
            raise ConfigError("--melp-text-weights and --melp-text-model go together")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device must be auto, cpu or cuda, not {self.device!r}")
        for name in ("max_actors", "cpu_tasks", "limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, not {value}")
        for model, value in self.batch_size.items():
            if value is not None and value < 1:
                raise ConfigError(f"--{model}-batch-size must be >= 1, not {value}")
        if self.records_per_task < 1 or self.rows_per_file < 1 or self.max_signal_files < 1:
            raise ConfigError("--records-per-task, --rows-per-file and --max-signal-files must be >= 1")
        if self.max_object_mb <= 0 or self.max_record_seconds < 10:
            raise ConfigError("--max-object-mb must be > 0 and --max-record-seconds >= 10 (the models read 10 s)")
        if self.gpus_per_actor is not None and not 0 < self.gpus_per_actor <= 8:
            raise ConfigError("--gpus-per-actor must be in (0, 8]")
        if self.max_error_fraction is not None and not 0 <= self.max_error_fraction <= 1:
            raise ConfigError("--max-error-fraction must be between 0 and 1")
        if self.progress_interval_s <= 0:
            raise ConfigError("--progress-interval must be > 0")
        if self.run_id is not None and not RUN_ID.match(self.run_id):
            raise ConfigError(f"--run-id must match [A-Za-z0-9._-]+ (1-128 characters), not {self.run_id!r}")
        from ecgembed.tables.schemas import check_column_name

        for name in self.manifest_columns:
            try:
                check_column_name(name)
            except ValueError as err:
                raise ConfigError(f"--manifest-columns: {err}") from None
        unknown_fields = [f for f in self.metadata if f not in METADATA_FIELDS]
        if unknown_fields:
            raise ConfigError(f"--metadata: unknown field(s) {', '.join(unknown_fields)}; "
                              f"choose from {', '.join(METADATA_FIELDS)}")
        self.output = self.output.rstrip("/") if "://" in self.output else os.path.abspath(self.output)
        return self

    def as_dict(self) -> dict:
        """The configuration as plain values, with credentials removed from every URI (for manifests)."""
        from ecgembed.storage import redact

        def clean(value):
            if isinstance(value, str):
                return redact(value)
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            return value

        return clean(asdict(self))


# ---- the command line, generated from the fields above ---------------------------------------------
_PER_MODEL = ("weights", "batch_size", "model_options")
_OLD_MODEL_FLAGS = {"ecgfm-ked": "ked"}   # v1 spelled ECGFM-KED's flags --ked-*: still accepted


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every RunConfig field as a flag, plus each model's ``--<model>-...`` flags."""
    for f in fields(RunConfig):
        if f.name in _PER_MODEL:
            continue
        meta = dict(f.metadata)
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        kwargs = {"dest": f.name, **meta}
        if "action" not in kwargs or kwargs["action"] == "append":
            kwargs.setdefault("default", None)
        parser.add_argument(flag, **kwargs)
    parser.add_argument("--bf16", dest="precision", action="store_const", const="bf16",
                        help="same as --precision bf16")
    for spec in SPECS.values():
        names = [spec.name] + ([_OLD_MODEL_FLAGS[spec.name]] if spec.name in _OLD_MODEL_FLAGS else [])

        def add(suffix: str, dest: str, help: str, **kwargs) -> None:
            parser.add_argument(*(f"--{n}-{suffix}" for n in names), dest=f"model:{spec.name}:{dest}",
                                help=help, **kwargs)

        add("weights", "weights", f"{spec.title} weights (file or folder URI); default {spec.default_weights}",
            metavar="URI")
        add("batch-size", "batch_size", f"records per {spec.title} batch (default {spec.batch_size['cuda']} on GPU, "
            f"{spec.batch_size['cpu']} on CPU)", type=int, metavar="N")
        for option in spec.options:
            default = f" (default {option.default})" if option.default else ""
            add(option.name, "option:" + option.name.replace("-", "_"), option.help + default, metavar="URI")


def from_arguments(args: argparse.Namespace) -> RunConfig:
    """The RunConfig of parsed arguments (not yet validated)."""
    values = {f.name: getattr(args, f.name) for f in fields(RunConfig) if f.name not in _PER_MODEL}
    values = {k: v for k, v in values.items() if v is not None}
    config = RunConfig(**values)
    for key, value in vars(args).items():
        if not key.startswith("model:") or value is None:
            continue
        _, model, what = key.split(":", 2)
        if what == "weights":
            config.weights[model] = value
        elif what == "batch_size":
            config.batch_size[model] = value
        else:
            config.model_options.setdefault(model, {})[what.removeprefix("option:")] = value
    return config
