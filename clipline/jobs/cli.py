"""The `clipline` command: thin argument parsing over the pipelines; no logic of its own."""

from __future__ import annotations

import argparse
import json
import sys

from clipline.jobs.run import format_summary, run_from_file


def cmd_run(args: argparse.Namespace) -> int:
    return run_from_file(args.config, args.address, args.json, args.full)


def cmd_demo(args: argparse.Namespace) -> int:
    from clipline.jobs.demo import run_demo

    summary = run_demo(args.out, address=args.address)
    print(format_summary(summary))
    print(f"\nsearch it:  clipline search --db {summary.table_uri} --table {summary.table} --text 'a red star'")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from clipline.pipelines.search import search_table

    try:
        results = search_table(args.db, args.table, args.text, k=args.k, where=args.where)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = results.to_pylist()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    for rank, row in enumerate(rows, 1):
        labels = ",".join(row["labels"] or [])
        print(
            f"{rank:>3}  {row['score']:.3f}  {row['id']:<24} {row['decision'] or '-':<7} {labels:<20} {row['source']}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipline", description="CLIP embedding and moderation into LanceDB")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    run = verbs.add_parser("run", help="run a job config (validated before Ray starts)")
    run.add_argument("config", help="job YAML")
    run.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local)")
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    run.add_argument("--full", action="store_true", help="reprocess input files already in the ledger")
    run.set_defaults(handler=cmd_run)

    demo = verbs.add_parser("demo", help="generate demo data and run the pipeline on it with the tiny CLIP")
    demo.add_argument("--out", default="./clipline-demo", help="directory for data and the LanceDB table")
    demo.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    demo.set_defaults(handler=cmd_demo)

    search = verbs.add_parser("search", help="text → image search over a table")
    search.add_argument("--db", required=True, help="LanceDB URI (directory or s3://)")
    search.add_argument("--table", required=True)
    search.add_argument("--text", required=True, help="query text")
    search.add_argument("--where", default=None, help="SQL prefilter, e.g. \"decision = 'allow'\"")
    search.add_argument("-k", type=int, default=10, help="number of results")
    search.add_argument("--json", action="store_true", help="print results as JSON")
    search.set_defaults(handler=cmd_search)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
