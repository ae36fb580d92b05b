"""`clipline search`: text → image, image → image (reverse image search), more like a row."""

from __future__ import annotations

import argparse

from clipline.jobs.output import Report, emit
from clipline.jobs.table_args import add_table_arguments, storage_from_args, user_errors


def format_results(rows: list[dict]) -> str:
    lines = [f"{'rank':>4}  {'score':<6} {'id':<24} {'decision':<8} {'labels':<20} source"]
    for rank, row in enumerate(rows, 1):
        labels = ",".join(row["labels"] or []) or "-"
        lines.append(
            f"{rank:>4}  {row['score']:.3f}  {row['id']:<24} {row['decision'] or '-':<8} {labels:<20} {row['source']}"
        )
    return "\n".join(lines)


@user_errors(Exception)
def cmd_search(args: argparse.Namespace) -> int:
    from clipline.table.search import search_table

    results = search_table(
        args.db,
        args.table,
        args.text,
        k=args.k,
        where=args.where,
        storage=storage_from_args(args),
        image=args.image,
        like=args.like,
    )
    return emit(Report(results.to_pylist(), format_results), args.json)


def register(verbs: argparse._SubParsersAction) -> None:
    search = verbs.add_parser("search", help="text → image, image → image or more-like-this search over a table")
    add_table_arguments(search)
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="query text (text → image)")
    query.add_argument("--image", help="query image: local path or URI (reverse image search)")
    query.add_argument("--like", metavar="ID", help="id of a row: rows whose images are like its image")
    search.add_argument("--where", default=None, help="SQL prefilter, e.g. \"decision = 'allow'\"")
    search.add_argument("-k", type=int, default=10, help="number of results")
    search.add_argument("--json", action="store_true", help="print results as JSON")
    search.set_defaults(handler=cmd_search)
