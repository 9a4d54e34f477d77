"""The ``ecgembed`` command: thin over the library; library errors become one clear message."""

from __future__ import annotations

import argparse
import json
import sys

from ecgembed.errors import EcgembedError


def _inspect(args: argparse.Namespace) -> int:
    """Read records and print what the job would see: leads, rate, flags, or the error."""
    from ecgembed import ECGError, discover, read_record, standard_leads
    from ecgembed.preprocess import quality_flags

    from ecgembed import storage

    failures = 0
    for uri in args.uris:
        many = uri.lower().endswith(".csv") or storage.isdir(uri)
        for ref_uri, record_id in [(r.uri, r.record_id) for r in discover(uri)] if many else [(uri, None)]:
            try:
                record = read_record(ref_uri, record_id)
                leads = standard_leads(record)
                flags = quality_flags(leads.signal, leads.fs, leads.derived)
                row = {"record_id": record.record_id, "uri": record.uri, "status": "ok",
                       "stored_leads": record.sig_name, **flags.as_dict(), "metadata": record.metadata}
            except ECGError as err:
                failures += 1
                row = {"record_id": record_id or ref_uri, "uri": err.uri, "status": "error",
                       "error_type": err.error_type, "message": err.problem}
            print(json.dumps(row, default=str))
    return 1 if failures and args.strict else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecgembed", description="Embed 12-lead ECG archives with MELP and ECGFM-KED.")
    sub = parser.add_subparsers(dest="command", required=True)
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
    except EcgembedError as err:
        print(f"ecgembed: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
