"""`clipline report`: render a recorded run's report (manifest + flagged thumbnails) to one HTML file."""

from __future__ import annotations

import argparse

from clipline.jobs.table_args import add_table_arguments, storage_from_args, user_errors


@user_errors()
def cmd_report(args: argparse.Namespace) -> int:
    import fsspec

    from clipline.reports import report_for_run

    storage = storage_from_args(args)
    manifest, page = report_for_run(args.db, args.table, args.run, storage, args.max_thumbnails)
    with fsspec.open(args.out, "w", encoding="utf-8", **storage.fsspec_options(args.out)) as handle:
        handle.write(page)
    print(f"run {manifest['run_id']}: report written to {args.out}")
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    report = verbs.add_parser("report", help="write a run's report (plots, flagged thumbnails, drift) as HTML")
    add_table_arguments(report)
    report.add_argument("--run", default=None, help="run id (default: the latest run with a manifest)")
    report.add_argument("--out", required=True, help="HTML file to write (local path or s3://)")
    report.add_argument("--max-thumbnails", type=int, default=48, help="thumbnails per decision (block, review)")
    report.set_defaults(handler=cmd_report)
