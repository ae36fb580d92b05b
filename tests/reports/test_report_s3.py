"""Manifest and report written next to a table on s3:// (moto), and rendered again from there."""

from __future__ import annotations

import json

import fsspec
import pyarrow.fs

from clipline.reports import report_for_run, write_run_artifacts
from clipline.schemas.storage import StorageConfig
from tests.conftest import FAKE_AWS
from tests.reports.synthetic import scored_rows, write_run


def test_artifacts_on_s3(s3_endpoint, s3_bucket):
    storage = StorageConfig(endpoint_url=s3_endpoint, region="us-east-1")
    filesystem = pyarrow.fs.S3FileSystem(endpoint_override=s3_endpoint, scheme="http", region="us-east-1")
    db, inputs = f"s3://{s3_bucket}/db", f"s3://{s3_bucket}/in"
    for run_id, seed in (("run-1", 1), ("run-2", 2)):
        summary, config = write_run(
            db, inputs, run_id, scored_rows(8, seed=seed), storage=storage, filesystem=filesystem
        )
        artifacts = write_run_artifacts(summary, config)
    assert artifacts.manifest_uri == f"{db}/_clipline/runs/media/run-2.json"
    fs = fsspec.filesystem("s3", **storage.fsspec_options(db))
    manifest = json.loads(fs.cat_file(f"{s3_bucket}/db/_clipline/runs/media/run-2.json"))
    assert manifest["drift"]["previous_run_id"] == "run-1"
    page = fs.cat_file(f"{s3_bucket}/db/_clipline/runs/media/run-2.html").decode()
    assert page.count('<img class="thumb"') == 4  # 2 stars blocked + 2 crosses to review, read back from s3 parquet
    assert FAKE_AWS["AWS_SECRET_ACCESS_KEY"] not in page + json.dumps(manifest)
    again, html = report_for_run(db, "media", storage=storage)
    assert again["run_id"] == "run-2" and html.count('<img class="thumb"') == 4
