"""Entrypoint for `ray job submit -- python -m clipline.jobs.run --config JOB.yaml`.

Inside a Ray job, RAY_ADDRESS is set and `ray.init()` joins that cluster. The config is
validated before Ray is touched, so a bad YAML fails in seconds with the field named.
"""

from __future__ import annotations

import argparse
import json
import sys

from clipline.operators.sink import TableMismatch
from clipline.pipelines.embed import RunOptions, RunSummary, run_job
from clipline.schemas.base import ConfigError
from clipline.schemas.config import load_job_config


def format_summary(summary: RunSummary) -> str:
    """A plain-text table for the end of a run."""
    lines = [
        f"run {summary.run_id}",
        f"  input files    {summary.files_total} ({len(summary.files_processed)} processed, "
        f"{len(summary.files_skipped)} already in the table, {len(summary.files_claimed_elsewhere)} "
        "claimed by a concurrent run)",
        f"  rows in        {summary.rows_in}",
        f"  ok             {summary.ok}",
        f"  failed         {summary.failed}"
        + (
            f"  ({', '.join(f'{k}: {v}' for k, v in sorted(summary.failed_by_code.items()))})" if summary.failed else ""
        ),
        "  decisions      " + ", ".join(f"{k}: {v}" for k, v in sorted(summary.decisions.items())),
    ]
    for category, actions in summary.flagged.items():
        counts = ", ".join(f"{action}: {count}" for action, count in sorted(actions.items()))
        lines.append(f"    {category:<12} {counts}")
    if summary.dedup.get("duplicates"):
        dedup = summary.dedup
        lines.append(
            f"  duplicates     {dedup['duplicates']} (exact {dedup['exact']}, near {dedup['near']}; "
            f"of earlier rows {dedup['of_table']}, within the run {dedup['of_run']})"
        )
    if summary.labels:
        lines.append("  labels         " + ", ".join(f"{k}: {v}" for k, v in sorted(summary.labels.items())))
    lines += [
        f"  wall time      {summary.wall_s:.1f} s ({summary.rows_per_s:.1f} rows/s)",
        f"  table          {summary.table_uri} :: {summary.table} "
        f"({summary.table_rows} rows, version {summary.table_version_before} → {summary.table_version_after})",
    ]
    if summary.report_uri:
        lines.append(f"  report         {summary.report_uri}")
    return "\n".join(lines)


def run_from_file(config_path: str, options: RunOptions, as_json: bool = False) -> int:
    """Shared by `clipline run` and this module's entrypoint; returns a process exit code."""
    try:
        config = load_job_config(config_path)
        summary = run_job(config, options)
    except (ConfigError, TableMismatch) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary.to_dict(), indent=2) if as_json else format_summary(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clipline.jobs.run", description=__doc__)
    parser.add_argument("--config", required=True, help="job YAML")
    add_run_arguments(parser)
    return parser


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by `clipline run` and this entrypoint."""
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--json", action="store_true", help="print the run summary as JSON")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--full", action="store_true", help="reprocess input files already recorded in the ledger")
    modes.add_argument("--retry-failed", action="store_true", help="reprocess only rows whose status is failed")


def options_from_args(args: argparse.Namespace) -> RunOptions:
    return RunOptions(address=args.address, full=args.full, retry_failed=args.retry_failed)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_from_file(args.config, options_from_args(args), args.json)


if __name__ == "__main__":
    sys.exit(main())
