"""Configuration and storage problems fail fast on the driver with a message that names them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from clipline.operators.read import plan_input_files
from clipline.pipelines.run import prepare
from clipline.schemas.base import ConfigError
from clipline.schemas.config import ColumnsConfig, JobConfig, ModelConfig
from clipline.schemas.storage import StorageConfig
from clipline.schemas.table import output_schema
from clipline.table.store import ClipTable
from tests.conftest import FAKE_AWS

POLICY = "clipline/demo/tiny/demo_policy.yaml"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_s3_fails_fast_without_secrets():
    storage = StorageConfig(endpoint_url=f"http://127.0.0.1:{closed_port()}", region="us-east-1")
    with pytest.raises(ConfigError) as caught:
        plan_input_files(["s3://bucket/in/"], ColumnsConfig(), storage)
    message = str(caught.value)
    assert message.startswith("source.paths: cannot read s3://bucket/in/")
    assert FAKE_AWS["AWS_SECRET_ACCESS_KEY"] not in message and FAKE_AWS["AWS_ACCESS_KEY_ID"] not in message


def test_missing_bucket_is_named(s3_endpoint):
    storage = StorageConfig(endpoint_url=s3_endpoint, region="us-east-1")
    with pytest.raises(ConfigError, match="s3://no-such-bucket-here/in/"):
        plan_input_files(["s3://no-such-bucket-here/in/"], ColumnsConfig(), storage)


def test_policy_with_unknown_fields_is_refused_naming_them(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text(
        yaml.safe_dump(
            {
                "name": "p",
                "version": 1,
                "severity": "high",
                "categories": [
                    {
                        "name": "star",
                        "positive": ["star"],
                        "negative": ["circle"],
                        "review_threshold": 0.5,
                        "colour": "red",
                    }
                ],
            }
        )
    )
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"source": {"paths": ["in.parquet"]}, "policy": str(policy), "sink": {"uri": "db"}}))
    result = subprocess.run(
        [sys.executable, "-m", "clipline.jobs.cli", "run", str(job)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    assert "severity: Extra inputs are not permitted" in result.stderr
    assert "categories.0.colour: Extra inputs are not permitted" in result.stderr


def test_other_model_into_existing_table_is_refused_before_any_work(tmp_path):
    ClipTable.open_or_create(str(tmp_path / "db"), "media", output_schema(128, ModelConfig()))
    job = tmp_path / "job.yaml"
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"text": ["a red star"]}), tmp_path / "in" / "t.parquet")
    job.write_text(
        yaml.safe_dump(
            {
                "source": {"paths": ["in"]},
                "policy": os.path.abspath(POLICY),
                "model": {"arch": "ViT-B-32", "pretrained": "none"},
                "sink": {"uri": "db"},
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "clipline.jobs.cli", "run", str(job)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "table 'media' holds vectors of model 'clipline-tiny', this run writes 'ViT-B-32'" in result.stderr
    assert "Started a local Ray" not in result.stderr


def test_missing_remote_checkpoint_is_named_before_the_cluster_starts(s3_endpoint, s3_bucket, tmp_path):
    """`prepare` is the run's driver-side planning, before any Ray call: it checks the checkpoint."""
    pq.write_table(pa.table({"text": ["a star"]}), tmp_path / "in.parquet")
    config = JobConfig.model_validate(
        {
            "source": {"paths": [str(tmp_path / "in.parquet")]},
            "model": {"checkpoint": f"s3://{s3_bucket}/models/missing.safetensors"},
            "sink": {"uri": str(tmp_path / "db")},
            "storage": {"endpoint_url": s3_endpoint, "region": "us-east-1"},
        }
    )
    with pytest.raises(ConfigError, match=f"model.checkpoint: no such file s3://{s3_bucket}/models/missing"):
        prepare(config)
