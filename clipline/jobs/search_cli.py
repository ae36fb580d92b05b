"""`clipline search`: text → image, image → image (reverse image search), more like a row, near a PDQ hash."""

from __future__ import annotations

import argparse

from clipline.jobs.output import Report, emit
from clipline.jobs.table_args import add_table_arguments, storage_from_args, user_errors
from clipline.schemas.hash_lists import DEFAULT_MAX_DISTANCE


def format_results(rows: list[dict]) -> str:
    lines = [f"{'rank':>4}  {'score':<6} {'id':<24} {'decision':<8} {'labels':<20} source"]
    for rank, row in enumerate(rows, 1):
        labels = ",".join(row["labels"] or []) or "-"
        score = f"{row['distance']:>3} b" if "distance" in row else f"{row['score']:.3f}"  # PDQ: bits apart
        lines.append(f"{rank:>4}  {score:<6} {row['id']:<24} {row['decision'] or '-':<8} {labels:<20} {row['source']}")
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
        pdq=args.pdq,
        max_distance=args.max_distance,
        dihedral=args.dihedral,
    )
    return emit(Report(results.to_pylist(), format_results), args.json)


def register(verbs: argparse._SubParsersAction) -> None:
    search = verbs.add_parser("search", help="text → image, image → image or more-like-this search over a table")
    add_table_arguments(search)
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="query text (text → image)")
    query.add_argument("--image", help="query image: local path or URI (reverse image search)")
    query.add_argument("--like", metavar="ID", help="id of a row: rows whose images are like its image")
    query.add_argument("--pdq", metavar="HEX", help="a PDQ hash (64 hex digits): rows whose pdq_hash is near it")
    search.add_argument("--where", default=None, help="SQL prefilter, e.g. \"decision = 'allow'\"")
    search.add_argument("-k", type=int, default=10, help="number of results")
    search.add_argument(
        "--max-distance",
        type=int,
        default=DEFAULT_MAX_DISTANCE,
        metavar="BITS",
        help=f"with --pdq: the most bits a row's hash may differ in (default {DEFAULT_MAX_DISTANCE}, PDQ's convention)",
    )
    search.add_argument("--dihedral", action="store_true", help="with --pdq: also find rotated and mirrored copies")
    search.add_argument("--json", action="store_true", help="print results as JSON")
    search.set_defaults(handler=cmd_search)
