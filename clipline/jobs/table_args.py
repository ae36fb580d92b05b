"""Arguments shared by every verb that works on an existing table (search, rescore, curate, ...)."""

from __future__ import annotations

import argparse

from clipline.schemas.storage import StorageConfig


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
    return StorageConfig(
        endpoint_url=args.endpoint_url, region=args.region, profile=args.profile, anonymous=args.anonymous
    )
