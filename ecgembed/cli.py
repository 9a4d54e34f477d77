"""The ``ecgembed`` command: thin over the library; every expected failure is one line.

``ecgembed run`` and ``jobs/embed_ecgs.py`` (the ``ray job submit`` entry point) are the same
code: :func:`run_main`. Exit codes (also in the README):

    0 done   1 internal error   2 bad options or input   3 weights unavailable
    4 output locked by another run   5 --strict and records failed   130 interrupted
"""

from __future__ import annotations

import argparse
import json
import sys

from ecgembed import __version__
from ecgembed.config import add_arguments, from_arguments
from ecgembed.errors import EcgembedError, WeightsError

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_WEIGHTS, EXIT_LOCKED, EXIT_FAILED_RECORDS, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 5, 130


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``ecgembed run`` (generated from :class:`ecgembed.config.RunConfig`)."""
    add_arguments(parser)


def _run(args: argparse.Namespace) -> int:
    import contextlib

    from ecgembed.console import drop_benign_ray_errors
    from ecgembed.pipeline import run

    config = from_arguments(args)
    with contextlib.nullcontext() if config.verbose else drop_benign_ray_errors():
        manifest = run(config)
    return EXIT_FAILED_RECORDS if failed_too_much(manifest, config) else EXIT_OK


def failed_too_much(manifest: dict, config) -> bool:
    """--strict: any record failed; --max-error-fraction F: more than F of the processed ones."""
    processed = manifest.get("selected", 0)
    failed = manifest.get("failed_records", manifest.get("counts", {}).get("errors", 0))
    if config.max_error_fraction is not None and processed:
        return failed / processed > config.max_error_fraction
    return bool(config.strict and failed)


def _inspect(args: argparse.Namespace) -> int:
    """Read records and print what the job would see: leads, rate, flags, or the error."""
    from ecgembed import ECGError, discover, read_record, standard_leads, storage
    from ecgembed.preprocess import quality_flags

    failures = 0
    for uri in args.uris:
        many = uri.lower().endswith((".csv", ".zip")) or storage.isdir(uri)
        refs = [(r.uri, r.record_id) for r in discover(uri).refs] if many else [(uri, None)]
        for ref_uri, record_id in refs:
            try:
                record = read_record(ref_uri, record_id)
                leads = standard_leads(record)
                flags = quality_flags(leads.signal, leads.fs, leads.derived)
                row = {"record_id": record.record_id, "uri": storage.redact(record.uri), "status": "ok",
                       "format": record.format, "stored_leads": record.sig_name, **flags.as_dict(),
                       "notes": record.notes}
                if args.show_comments:
                    row.update(metadata=record.metadata, comments=record.comments)
            except ECGError as err:
                failures += 1
                row = {"record_id": record_id or storage.redact(ref_uri), "uri": storage.redact(err.uri),
                       "status": "error", "error_type": err.error_type, "message": err.problem}
            print(json.dumps(row, default=str))
    return EXIT_FAILED_RECORDS if failures and args.strict else EXIT_OK


def _sql(args: argparse.Namespace) -> int:
    """Open the output's committed tables in DuckDB (views of ecgembed.tables.views) and query them."""
    import duckdb

    from ecgembed.tables.views import connect

    con = connect(args.output)
    if not args.query:
        views = [name for (name,) in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal "
                                                 "ORDER BY view_name").fetchall()]
        print("views: " + ", ".join(views))
        return EXIT_OK
    try:
        con.sql(args.query).show(max_rows=args.max_rows, max_width=200)
    except duckdb.Error as err:
        raise SqlError(str(err).splitlines()[0]) from None
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    """Write the self-contained HTML report of a committed run."""
    from ecgembed.report import write_report
    from ecgembed.storage import redact

    where = write_report(args.output, dest=args.out, run_id=args.run)
    print(f"ecgembed: report written to {redact(where)}", file=sys.stderr)
    return EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    """AUROC/AUPRC per class of the current zero-shot scores against a truth source."""
    from ecgembed.evaluate import evaluate, summary_lines

    rows = evaluate(args.output, args.truth, args.label_set, model=args.model, run_id=args.run_id,
                    bootstrap=args.bootstrap, seed=args.seed)
    for line in summary_lines(rows):
        print(line)
    return EXIT_OK


def _index(args: argparse.Namespace) -> int:
    """Build or bring up to date the nearest-neighbour index of a model's current embeddings."""
    from ecgembed.search import build_index, update_index

    result = (build_index(args.output, args.model, kind=args.kind) if args.rebuild
              else update_index(args.output, args.model, kind=args.kind))
    print(json.dumps(result, default=str))
    return EXIT_OK


def _neighbours(args: argparse.Namespace) -> int:
    """The k records most similar to one record (cosine of the model's embeddings)."""
    from ecgembed.search import neighbours

    for record_id, cosine in neighbours(args.output, args.record_id, k=args.k, model=args.model):
        print(f"{record_id}\t{cosine:.6f}")
    return EXIT_OK


def _compact(args: argparse.Namespace) -> int:
    """Delta optimize + vacuum of every table, keeping history younger than the retention."""
    from ecgembed.tables.compact import compact

    result = compact(args.output, args.retention_hours)
    print(json.dumps(result, default=str, indent=1))
    return EXIT_OK


def _migrate(args: argparse.Namespace) -> int:
    """Convert an output written by ecgembed 0.1 (Parquet + intent files) to Delta tables."""
    from ecgembed.tables.migrate import migrate

    print(json.dumps(migrate(args.output), default=str, indent=1))
    return EXIT_OK


def _weights_pull(args: argparse.Namespace) -> int:
    """Stage the pinned weights in a folder or bucket for clusters without internet."""
    from ecgembed.storage import redact
    from ecgembed.weights import pull
    from ecgembed.weights_pull import ProgressPrinter

    result = pull(args.dest, progress=ProgressPrinter())
    for name, info in sorted(result["files"].items()):
        print(f"{info['status']:>10}  {name}  sha256 {info['sha256'][:16]}...  {info['size']:,} bytes", file=sys.stderr)
    print(f"ecgembed: weights in {redact(args.dest)} (lock: weights.lock.json); run with --weights-dir "
          f"{redact(args.dest)}", file=sys.stderr)
    return EXIT_OK


class SqlError(EcgembedError):
    """A query ``ecgembed sql`` could not run."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecgembed", description="Embed 12-lead ECG archives with MELP and ECGFM-KED.")
    parser.add_argument("--version", action="version", version=f"ecgembed {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="embed every new record under the inputs and commit the tables under --output",
        description="Example: ecgembed run --input s3://hospital/ecg/ --output s3://hospital/ecgembed/ --labels ptbxl georgia")
    add_run_arguments(run)
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
    inspect.add_argument("uris", nargs="+", help="record, folder, prefix or manifest CSV")
    inspect.add_argument("--strict", action="store_true", help="exit 5 if any record fails")
    inspect.add_argument("--show-comments", action="store_true",
                         help="also print header comments and metadata (may hold patient data)")
    inspect.set_defaults(func=_inspect)
    evaluate = sub.add_parser(
        "evaluate", help="AUROC/AUPRC with bootstrap intervals of the zero-shot scores against diagnoses",
        description="Example: ecgembed evaluate s3://hospital-ml/ecgembed/ --truth header --label-set cpsc2018")
    evaluate.add_argument("output", help="the --output of the runs")
    evaluate.add_argument("--truth", required=True, metavar="SOURCE",
                          help="header (WFDB '# Dx:' SNOMED-CT codes), a ptbxl_database.csv, or a CSV record_id,class,label")
    evaluate.add_argument("--label-set", required=True, metavar="NAME", help="the label set whose scores to evaluate")
    evaluate.add_argument("--model", help="the model whose scores to evaluate (default: every model that scored it)")
    evaluate.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                          help="bootstrap replicates for the 95%% intervals (default 1000; 0 skips them)")
    evaluate.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    evaluate.add_argument("--run-id", metavar="ID", help="id of this evaluation (default: time + random suffix)")
    evaluate.set_defaults(func=_evaluate)
    index = sub.add_parser(
        "index", help="build or update the nearest-neighbour index of a model's current embeddings",
        description="Example: ecgembed index s3://hospital-ml/ecgembed/ --model melp")
    index.add_argument("output", help="the --output of the runs")
    index.add_argument("--model", default="melp", help="the model whose embeddings to index (default melp)")
    index.add_argument("--rebuild", action="store_true", help="build from scratch instead of updating")
    index.add_argument("--kind", default="auto", choices=("auto", "flat", "ivf"),
                       help="exact (flat) or approximate (ivf) index; auto picks by size (default)")
    index.set_defaults(func=_index)
    near = sub.add_parser(
        "neighbours", help="the records most similar to one record, by cosine of their embeddings",
        description="Example: ecgembed neighbours s3://hospital-ml/ecgembed/ georgia/E07500 -k 10")
    near.add_argument("output", help="the --output of the runs")
    near.add_argument("record_id", help="a record id of the tables")
    near.add_argument("-k", type=int, default=10, help="how many neighbours (default 10)")
    near.add_argument("--model", default="melp", help="whose embeddings (default melp)")
    near.set_defaults(func=_neighbours)
    compact = sub.add_parser(
        "compact", help="compact the tables (Delta optimize) and delete files older than the retention (vacuum)",
        description="Example: ecgembed compact s3://hospital-ml/ecgembed/ --retention-hours 168")
    compact.add_argument("output", help="the --output of the runs")
    compact.add_argument("--retention-hours", type=int, default=168, metavar="H",
                         help="keep replaced files (time travel, readers in flight) this long (default 168 = 7 days)")
    compact.set_defaults(func=_compact)
    migrate = sub.add_parser(
        "migrate", help="convert an output written by ecgembed 0.1 to Delta Lake tables (once)",
        description="Example: ecgembed migrate s3://hospital-ml/ecgembed/")
    migrate.add_argument("output", help="the --output of the 0.1 runs")
    migrate.set_defaults(func=_migrate)
    report = sub.add_parser(
        "report", help="write a self-contained HTML report of a run (plots of throughput, errors, quality, scores)",
        description="Example: ecgembed report s3://hospital-ml/ecgembed/ --out night.html")
    report.add_argument("output", help="the --output of the runs")
    report.add_argument("--run", metavar="ID", help="the run to report (default: the newest committed run)")
    report.add_argument("--out", metavar="PATH", help="file or folder to write (default: OUTPUT/_reports/<run>.html)")
    report.set_defaults(func=_report)
    weights = sub.add_parser(
        "weights", help="stage model weights for clusters without internet",
        description="Example: ecgembed weights pull s3://hospital-ml/ecgembed-weights/")
    weights_sub = weights.add_subparsers(dest="weights_command", required=True)
    pull = weights_sub.add_parser(
        "pull", help="fetch the pinned MELP, ECGFM-KED and Bio_ClinicalBERT files into DEST with a sha256 lock",
        description="Example: ecgembed weights pull ./ecgembed-weights   (then: ecgembed run --weights-dir "
                    "./ecgembed-weights ...)")
    pull.add_argument("dest", help="a local folder or s3:// prefix")
    pull.set_defaults(func=_weights_pull)
    return parser


def storage_problem(exc: BaseException) -> str | None:
    """One line (what failed + the fix) for a storage failure, or None when it is not one."""
    names = {t.__name__ for t in type(exc).__mro__}
    text = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    if names & {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}:
        return ("object storage credentials are missing: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                "AWS_PROFILE, or an instance profile / IRSA on the cluster); AWS_ENDPOINT_URL for S3-compatible stores")
    if names & {"ClientError", "NoSuchBucket"} or isinstance(exc, PermissionError):
        return (f"object storage refused the request ({text}): check the bucket name and that these credentials "
                "may list, read and write it")
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ConnectionError"}:
        return (f"object storage is unreachable ({text}): check AWS_ENDPOINT_URL / the network, then run again")
    return None


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Parse, dispatch, and turn every expected failure into one ``ecgembed: error:`` line."""
    from ecgembed.tables.lock import OutputLocked

    args = (parser or build_parser()).parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("ecgembed: interrupted (nothing of this run was committed; run again to resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except WeightsError as err:
        print(f"ecgembed: error: model weights unavailable: {err}", file=sys.stderr)
        return EXIT_WEIGHTS
    except OutputLocked as err:
        print(f"ecgembed: error: {err}", file=sys.stderr)
        return EXIT_LOCKED
    except EcgembedError as err:
        print(f"ecgembed: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - storage failures are expected; anything else is a bug
        problem = storage_problem(exc)
        if problem is None:
            import traceback

            from ecgembed.storage import redact_text

            traceback.print_exc(file=sys.stderr)
            print(f"ecgembed: internal error (a bug; please report it with the traceback above): "
                  f"{type(exc).__name__}: {redact_text(str(exc))[:300]}", file=sys.stderr)
            return EXIT_INTERNAL
        print(f"ecgembed: error: {problem}", file=sys.stderr)
        return EXIT_USAGE


def run_main(argv: list[str] | None = None, prog: str = "ecgembed run") -> int:
    """``ecgembed run`` as a program of its own (``jobs/embed_ecgs.py``): same flags, same exit codes."""
    parser = argparse.ArgumentParser(prog=prog, description="ecgembed run, for ray job submit")
    parser.add_argument("--version", action="version", version=f"ecgembed {__version__}")
    add_run_arguments(parser)
    parser.set_defaults(func=_run)
    return main(argv, parser)


if __name__ == "__main__":
    sys.exit(main())
