"""`clipline maintain` (indexes, compaction, cleanup) and `clipline curate` (curated exports)."""

from __future__ import annotations

import argparse
from datetime import timedelta

from clipline.jobs.output import Report, emit
from clipline.jobs.table_args import add_table_arguments, open_table_from_args, user_errors


@user_errors()
def cmd_maintain(args: argparse.Namespace) -> int:
    from clipline.table.maintain import maintain_table

    table = open_table_from_args(args)
    report = maintain_table(
        table, retention=timedelta(days=args.retention_days), stale_staging=timedelta(hours=args.stale_staging_hours)
    )
    return emit(report, args.json)


def format_manifest(manifest: dict) -> str:
    counts = manifest["counts"]
    dropped = ", ".join(f"{reason}: {n}" for reason, n in counts["dropped"].items())
    table = manifest["table"]
    return "\n".join(
        [
            f"curated {manifest['output']} ({manifest['format']})",
            f"  table        {table['uri']} :: {table['name']} (version {table['version']}, {table['rows']} rows)",
            f"  kept         {counts['kept']}",
            f"  dropped      {dropped}",
        ]
    )


@user_errors(Exception)
def cmd_curate(args: argparse.Namespace) -> int:
    from clipline.table.curate import DEFAULT_COLUMNS, CurateQuery, curate

    extra = [column.strip() for column in (args.columns or "").split(",") if column.strip()]
    query = CurateQuery(
        where=args.where,
        dedup=args.dedup,
        min_clip_score=args.min_clip_score,
        max_per_cluster=args.max_per_cluster,
        columns=[*DEFAULT_COLUMNS, *extra],
    )
    table = open_table_from_args(args)
    manifest = curate(table.lance, args.out, query, table.storage, table_uri=args.db)
    return emit(Report(manifest, format_manifest), args.json)


def register(verbs: argparse._SubParsersAction) -> None:
    maintain = verbs.add_parser("maintain", help="create/refresh indexes, compact fragments, remove old versions")
    add_table_arguments(maintain)
    maintain.add_argument(
        "--retention-days", type=float, default=7.0, help="keep versions younger than this (default 7)"
    )
    maintain.add_argument(
        "--stale-staging-hours",
        type=float,
        default=6.0,
        help="remove staging left by runs that stopped this long ago (default 6, the claim TTL)",
    )
    maintain.add_argument("--json", action="store_true", help="print the report as JSON")
    maintain.set_defaults(handler=cmd_maintain)

    curate = verbs.add_parser("curate", help="export a filtered, deduplicated subset with a manifest")
    add_table_arguments(curate)
    curate.add_argument("--out", required=True, help="output *.parquet file or *.lance dataset (local or s3://)")
    curate.add_argument("--where", default=None, help="SQL filter, e.g. \"decision = 'allow'\"")
    curate.add_argument("--dedup", action="store_true", help="one row per duplicate cluster")
    curate.add_argument("--min-clip-score", type=float, default=None, help="keep pairs with image–text cosine ≥ X")
    curate.add_argument("--max-per-cluster", type=int, default=None, help="at most N rows per duplicate cluster")
    curate.add_argument("--columns", default=None, help="extra columns, comma-separated (e.g. image_embedding)")
    curate.add_argument("--json", action="store_true", help="print the manifest as JSON")
    curate.set_defaults(handler=cmd_curate)
