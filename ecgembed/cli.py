"""The ``ecgembed`` command: thin over the library; library errors become one clear message.

``ecgembed run`` and ``jobs/embed_ecgs.py`` (the ``ray job submit`` entry point) share
:func:`add_run_arguments` and :func:`config_from_args`, so they take exactly the same flags.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources

from ecgembed.config import MODELS, RunConfig
from ecgembed.errors import EcgembedError, WeightsError

EXIT_USAGE, EXIT_WEIGHTS = 2, 3   # exit status: bad input/options, model weights unavailable


def sample_input() -> str:
    """The project's own sample ECGs (the default --input of the demo)."""
    return str(resources.files("ecgembed") / "samples")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--input", dest="inputs", action="append", metavar="URI",
        help="folder/prefix, single record or manifest CSV (repeatable); default: the bundled sample ECGs")
    add("--output", required=True, metavar="URI", help="output folder or prefix (local, s3://, gs://)")
    add("--models", default=",".join(MODELS), help=f"comma-separated, from {','.join(MODELS)} (default: both)")
    add("--melp-weights", metavar="URI", help="folder or file with model.safetensors (+config.json); default hf://fuyingw/MELP_Encoder")
    add("--melp-text-weights", metavar="URI", help="optional MELP text tower (lm_model.bert.* + proj_t.*) for MELP zero-shot")
    add("--melp-text-model", metavar="URI", help="tokenizer + BERT config folder of that text tower")
    add("--ked-weights", metavar="URI", help="ECGFM-KED .pt checkpoint; default the published Zenodo file")
    add("--ked-text-model", metavar="URI", help="tokenizer + BERT config folder or model id; default emilyalsentzer/Bio_ClinicalBERT")
    add("--labels", nargs="+", default=["ptbxl"], metavar="NAME_OR_FILE",
        help="label sets for zero-shot scores: built-in ptbxl, georgia, cpsc2018, chapman, mimic, or a YAML/JSON file")
    add("--manifest-column", metavar="NAME", help="record-path column of a manifest CSV (default: auto-detected)")
    add("--full", action="store_true", help="ignore the ledger and recompute everything")
    add("--stand-in", action="store_true",
        help="random stand-in weights for trying the job offline; every row says 'stand-in' in model_version")
    add("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the model actors run (default: auto)")
    add("--bf16", action="store_true", help="bf16 autocast in the model actors (for GPUs); model_version gets '+bf16'")
    add("--gpus-per-actor", type=float, metavar="N", help="GPUs per model actor (default 0.5: both encoders share a GPU)")
    add("--max-actors", type=int, metavar="N", help="actors per model (default: one per GPU, 1 without GPUs)")
    add("--cpu-tasks", type=int, metavar="N", help="concurrent CPU preprocessing tasks (default: Ray's choice)")
    add("--melp-batch-size", type=int, metavar="N", help="records per MELP batch (default 128 on GPU, 16 on CPU)")
    add("--ked-batch-size", type=int, metavar="N", help="records per ECGFM-KED batch (default 256 on GPU, 32 on CPU)")
    add("--records-per-task", type=int, default=32, metavar="N", help="records per CPU task (default 32)")
    add("--rows-per-file", type=int, default=100_000, metavar="N", help="target rows per Parquet file (default 100000)")
    add("--progress-interval", type=float, default=10.0, metavar="S", help="seconds between summary lines (default 10)")
    add("--run-id", metavar="ID", help="run id (default: derived from the start time)")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        inputs=args.inputs or [sample_input()], output=args.output, models=tuple(args.models.split(",")),
        melp_weights=args.melp_weights, melp_text_weights=args.melp_text_weights,
        melp_text_model=args.melp_text_model, ked_weights=args.ked_weights, ked_text_model=args.ked_text_model,
        labels=list(args.labels), manifest_column=args.manifest_column, full=args.full, stand_in=args.stand_in,
        device=args.device, bf16=args.bf16, gpus_per_actor=args.gpus_per_actor, max_actors=args.max_actors,
        cpu_tasks=args.cpu_tasks, melp_batch_size=args.melp_batch_size, ked_batch_size=args.ked_batch_size,
        records_per_task=args.records_per_task, rows_per_file=args.rows_per_file,
        progress_interval_s=args.progress_interval, run_id=args.run_id,
    ).validate()


def _run(args: argparse.Namespace) -> int:
    from ecgembed.pipeline import run

    manifest = run(config_from_args(args))
    errors = manifest.get("counts", {}).get("errors", 0)
    return 0 if not (errors and args.strict) else 1


def _inspect(args: argparse.Namespace) -> int:
    """Read records and print what the job would see: leads, rate, flags, or the error."""
    from ecgembed import ECGError, discover, read_record, standard_leads, storage
    from ecgembed.preprocess import quality_flags

    failures = 0
    for uri in args.uris:
        many = uri.lower().endswith(".csv") or storage.isdir(uri)
        for ref_uri, record_id in [(r.uri, r.record_id) for r in discover(uri)] if many else [(uri, None)]:
            try:
                record = read_record(ref_uri, record_id)
                leads = standard_leads(record)
                flags = quality_flags(leads.signal, leads.fs, leads.derived)
                row = {"record_id": record.record_id, "uri": record.uri, "status": "ok", "format": record.format,
                       "stored_leads": record.sig_name, **flags.as_dict(), "notes": record.notes,
                       "metadata": record.metadata}
            except ECGError as err:
                failures += 1
                row = {"record_id": record_id or ref_uri, "uri": err.uri, "status": "error",
                       "error_type": err.error_type, "message": err.problem}
            print(json.dumps(row, default=str))
    return 1 if failures and args.strict else 0


def _sql(args: argparse.Namespace) -> int:
    """Open the output's committed tables in DuckDB (views of ecgembed.tables.views) and query them."""
    from ecgembed.tables.views import connect

    con = connect(args.output)
    if not args.query:
        views = [name for (name,) in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal "
                                                 "ORDER BY view_name").fetchall()]
        print("views: " + ", ".join(views))
        return 0
    con.sql(args.query).show(max_rows=args.max_rows, max_width=200)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecgembed", description="Embed 12-lead ECG archives with MELP and ECGFM-KED.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="embed every new record under the inputs and commit the tables under --output",
        description="Example: ecgembed run --input s3://hospital/ecg/ --output s3://hospital/ecgembed/ --labels ptbxl georgia")
    add_run_arguments(run)
    run.add_argument("--strict", action="store_true", help="exit 1 if any record ended in the errors table")
    run.set_defaults(func=_run)
    sql = sub.add_parser(
        "sql", help="query the committed tables with DuckDB (views: melp_current, scores_current, ...)",
        description='Example: ecgembed sql s3://hospital-ml/ecgembed/ "SELECT count(*) FROM melp_current"')
    sql.add_argument("output", help="the --output of the runs")
    sql.add_argument("query", nargs="?", help="SQL; without it, list the views")
    sql.add_argument("--max-rows", type=int, default=40, help="rows to print (default 40)")
    sql.set_defaults(func=_sql)
    inspect = sub.add_parser(
        "inspect", help="read records and print leads, quality flags or the error, one JSON line each",
        description="Example: ecgembed inspect s3://bucket/mimic-iv-ecg/files/p1000/p10000032/s40689238/40689238")
    inspect.add_argument("uris", nargs="+", help="record (header, with or without .hea), folder, prefix or manifest CSV")
    inspect.add_argument("--strict", action="store_true", help="exit 1 if any record fails")
    inspect.set_defaults(func=_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except WeightsError as err:
        print(f"ecgembed: error: model weights unavailable: {err}", file=sys.stderr)
        return EXIT_WEIGHTS
    except EcgembedError as err:
        print(f"ecgembed: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
