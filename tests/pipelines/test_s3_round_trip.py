"""Object storage end to end against moto's S3 server: parquet, image URIs, checkpoint and table on s3://."""

from __future__ import annotations

import json

import boto3
import lancedb
import pyarrow.fs
import pytest

from clipline.models.loader import TINY_WEIGHTS
from clipline.pipelines.run import run_job
from clipline.schemas.config import JobConfig
from clipline.schemas.storage import StorageConfig
from tests.conftest import FAKE_AWS
from tests.pipelines.inputs import image_rows, png_bytes, write_parquet

pytestmark = pytest.mark.ray

DEMO_POLICY = "clipline/demo/tiny/demo_policy.yaml"


def s3_filesystem(endpoint: str) -> pyarrow.fs.S3FileSystem:
    return pyarrow.fs.S3FileSystem(endpoint_override=endpoint, scheme="http", region="us-east-1")


def upload_inputs(endpoint: str, bucket: str) -> int:
    """Two parquet files (inline bytes; s3:// image URIs, one missing, one outside the allowed prefix)
    and a checkpoint."""
    client = boto3.client("s3", endpoint_url=endpoint)
    write_parquet(image_rows("inline", 12), f"{bucket}/in/inline.parquet", s3_filesystem(endpoint))
    uri_rows = []
    for index in range(6):
        key = f"images/{index}.png"
        client.put_object(Bucket=bucket, Key=key, Body=png_bytes("star", "red", seed=index))
        uri_rows.append({"id": f"uri-{index}", "image_uri": f"s3://{bucket}/{key}", "text": None})
    uri_rows.append({"id": "uri-missing", "image_uri": f"s3://{bucket}/images/nope.png"})
    client.put_object(Bucket=bucket, Key="private/secret.png", Body=png_bytes("star", "red", seed=99))
    uri_rows.append({"id": "uri-outside", "image_uri": f"s3://{bucket}/private/secret.png"})
    write_parquet(uri_rows, f"{bucket}/in/nested/uris.parquet", s3_filesystem(endpoint))
    client.upload_file(str(TINY_WEIGHTS), bucket, "models/tiny.safetensors")
    return 12 + len(uri_rows)


def job(endpoint: str, bucket: str, tmp_path) -> JobConfig:
    return JobConfig.model_validate(
        {
            "source": {"paths": [f"s3://{bucket}/in/"], "allowed_uri_prefixes": [f"s3://{bucket}/images/"]},
            "model": {
                "arch": "clipline-tiny",
                "checkpoint": f"s3://{bucket}/models/tiny.safetensors",
                "cache_dir": str(tmp_path / "cache"),
            },
            "policy": DEMO_POLICY,
            "sink": {"uri": f"s3://{bucket}/db", "table": "media"},
            "storage": {"endpoint_url": endpoint, "region": "us-east-1"},
        }
    )


def test_s3_in_and_out(ray_local, s3_endpoint, s3_bucket, tmp_path, capfd):
    rows_in = upload_inputs(s3_endpoint, s3_bucket)
    config = job(s3_endpoint, s3_bucket, tmp_path)
    summary = run_job(config)
    assert summary.rows_in == summary.table_rows == rows_in
    assert summary.failed_by_code == {"uri_not_found": 1, "uri_not_allowed": 1}

    storage = StorageConfig(endpoint_url=s3_endpoint, region="us-east-1")
    db = lancedb.connect(f"s3://{s3_bucket}/db", storage_options=storage.lance_options(f"s3://{s3_bucket}/db"))
    rows = db.open_table("media").to_arrow().to_pylist()
    assert len(rows) == rows_in and len({row["id"] for row in rows}) == rows_in
    by_id = {row["id"]: row for row in rows}
    assert by_id["uri-0"]["image_embedding"] is not None
    assert by_id["uri-0"]["source"].startswith(f"s3://{s3_bucket}/in/nested/uris.parquet#")
    assert by_id["uri-missing"]["error_message"] == f"s3://{s3_bucket}/images/nope.png does not exist"
    assert {row["pretrained"] for row in rows} == {f"s3://{s3_bucket}/models/tiny.safetensors"}
    stars = [row for row in rows if row["id"].startswith("uri-") and row["status"] == "ok"]
    assert sum(row["decision"] != "allow" for row in stars) >= 5

    # the policy's prompt embeddings are cached next to the table on S3, one object per category
    listing = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(
        Bucket=s3_bucket, Prefix="db/_clipline/prompt_banks/"
    )
    keys = [entry["Key"] for entry in listing.get("Contents", [])]
    assert len(keys) == 4 and all(key.endswith(".npy") for key in keys)

    again = run_job(config)
    assert again.rows_in == 0 and len(again.files_skipped) == 2
    assert db.open_table("media").count_rows() == rows_in

    secret = FAKE_AWS["AWS_SECRET_ACCESS_KEY"]
    captured = capfd.readouterr()
    assert secret not in captured.out + captured.err
    assert secret not in json.dumps(summary.to_dict()) + json.dumps(config.model_dump())
    assert secret not in json.dumps(rows, default=str)
    ledger = db.open_table("media_ledger").to_arrow().to_pylist()
    assert secret not in json.dumps(ledger, default=str)
