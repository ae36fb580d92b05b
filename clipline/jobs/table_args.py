"""Arguments shared by every verb that works on an existing table (search, rescore, curate, ...)."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # LanceDB (and pydantic) are imported by the verbs that run, not by `clipline --help`
    from clipline.schemas.storage import StorageConfig
    from clipline.table.store import ClipTable

USER_ERROR = 2
Handler = Callable[[argparse.Namespace], int]


def user_errors(*reported_with_type: type[Exception]) -> Callable[[Handler], Handler]:
    """A verb's user errors become one `error:` line and exit 2, never a traceback.

    ValueError (bad config, labels, ids, arguments) and OSError (missing files, unreachable
    storage) are printed as they are. `reported_with_type` adds errors whose message alone does
    not say what failed, printed with their type: LanceDB reports a bad `--where` as a generic
    error, so the verbs that take one pass `Exception`.
    """

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def wrapped(args: argparse.Namespace) -> int:
            try:
                return handler(args)
            except (ValueError, OSError) as exc:
                print(f"error: {exc}", file=sys.stderr)
            except reported_with_type as exc:
                print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return USER_ERROR

        return wrapped

    return decorate


def add_table_arguments(parser: argparse.ArgumentParser) -> None:
    """`--db`, `--table` and the storage settings a table on s3:// needs."""
    parser.add_argument("--db", required=True, help="LanceDB URI (directory or s3://bucket/prefix)")
    parser.add_argument("--table", required=True, help="table name")
    storage = parser.add_argument_group("object storage (credentials come from the environment/AWS chain)")
    storage.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint")
    storage.add_argument("--region", default=None)
    storage.add_argument("--profile", default=None, help="AWS profile")
    storage.add_argument("--anonymous", action="store_true", help="unsigned requests")


def storage_from_args(args: argparse.Namespace) -> StorageConfig:
    from clipline.schemas.storage import StorageConfig

    return StorageConfig(
        endpoint_url=args.endpoint_url, region=args.region, profile=args.profile, anonymous=args.anonymous
    )


def open_table_from_args(args: argparse.Namespace) -> ClipTable:
    from clipline.table.store import ClipTable

    return ClipTable.open(args.db, args.table, storage_from_args(args))
