"""Entrypoint for `ray job submit -- python -m clipline.jobs.run --config JOB.yaml`.

Inside a Ray job, RAY_ADDRESS is set and `ray.init()` joins that cluster. The config is
validated before Ray is touched, so a bad YAML fails in seconds with the field named. After the
run commits, its manifest and report are written next to the table.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from clipline.jobs.output import emit

if TYPE_CHECKING:  # `clipline --help` builds this module's parser: it must not import pyarrow or pydantic
    from clipline.pipelines.summary import RunOptions, RunSummary
    from clipline.schemas.config import JobConfig


def run_and_record(config: JobConfig, options: RunOptions | None = None) -> RunSummary:
    """Run the job, then write its manifest and report (what `clipline run` and the entrypoint do)."""
    from clipline.pipelines.run import run_job
    from clipline.reports import record_run

    return record_run(run_job(config, options), config)


def run_from_file(config_path: str, options: RunOptions, as_json: bool = False) -> int:
    """Shared by `clipline run` and this module's entrypoint; returns a process exit code."""
    from clipline.pipelines.ledger import InputChanged  # the ledger imports LanceDB: not at `--help`
    from clipline.schemas.base import ConfigError
    from clipline.schemas.config import load_job_config
    from clipline.schemas.table import TableMismatch

    try:
        summary = run_and_record(load_job_config(config_path), options)
    except (ConfigError, TableMismatch, InputChanged) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return emit(summary, as_json)


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
    from clipline.pipelines.summary import RunOptions

    return RunOptions(address=args.address, full=args.full, retry_failed=args.retry_failed)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_from_file(args.config, options_from_args(args), args.json)


if __name__ == "__main__":
    sys.exit(main())
