"""`clipline search`: text → image search over a table."""

from __future__ import annotations

import argparse
import json
import sys

from clipline.jobs.table_args import add_table_arguments, storage_from_args


def cmd_search(args: argparse.Namespace) -> int:
    from clipline.pipelines.search import search_table

    try:
        results = search_table(
            args.db, args.table, args.text, k=args.k, where=args.where, storage=storage_from_args(args)
        )
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


def register(verbs: argparse._SubParsersAction) -> None:
    search = verbs.add_parser("search", help="text → image search over a table")
    add_table_arguments(search)
    search.add_argument("--text", required=True, help="query text")
    search.add_argument("--where", default=None, help="SQL prefilter, e.g. \"decision = 'allow'\"")
    search.add_argument("-k", type=int, default=10, help="number of results")
    search.add_argument("--json", action="store_true", help="print results as JSON")
    search.set_defaults(handler=cmd_search)
