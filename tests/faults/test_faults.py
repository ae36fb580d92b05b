"""Faults on a real local Ray: a killed encoder, a killed driver, a flaky S3, and retrying failed rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import lancedb
import pyarrow.fs
import pytest
import yaml

from clipline.pipelines.ledger import InputChanged
from clipline.pipelines.run import run_job
from clipline.pipelines.summary import RunOptions
from clipline.schemas.config import JobConfig
from clipline.schemas.storage import StorageConfig
from tests.faults.flaky_s3 import FlakyS3Proxy
from tests.pipelines.inputs import image_rows, png_bytes, write_parquet

pytestmark = [pytest.mark.ray, pytest.mark.slow]

POLICY = os.path.abspath("clipline/demo/tiny/demo_policy.yaml")


def local_job(tmp_path, **sink) -> JobConfig:
    return JobConfig.model_validate(
        {"source": {"paths": [str(tmp_path / "in")]}, "policy": POLICY, "sink": {"uri": str(tmp_path / "db"), **sink}}
    )


def table_rows(uri: str, storage_options: dict | None = None) -> list[dict]:
    return lancedb.connect(uri, storage_options=storage_options).open_table("media").to_arrow().to_pylist()


def kill_an_encoder_once_it_works(killed: list[int]) -> None:
    """SIGKILL the first encoder actor's process a moment after it comes up (GCS actor table)."""
    from ray._private import state

    deadline = time.time() + 180
    while time.time() < deadline:
        for actor in state.actors().values():
            if "EncodeClassifyActor" in actor["ActorClassName"] and actor["State"] == "ALIVE" and actor["Pid"]:
                time.sleep(2.0)
                os.kill(actor["Pid"], signal.SIGKILL)
                killed.append(actor["Pid"])
                return
        time.sleep(0.2)


def test_killed_encoder_actor_loses_and_duplicates_nothing(ray_local, tmp_path):
    (tmp_path / "in").mkdir()
    for part in range(4):
        write_parquet(image_rows(f"p{part}", 100, seed=part), tmp_path / "in" / f"p{part}.parquet")
    killed: list[int] = []
    killer = threading.Thread(target=kill_an_encoder_once_it_works, args=(killed,))
    killer.start()
    summary = run_job(local_job(tmp_path))
    killer.join()
    assert killed, "no encoder actor was killed"
    ids = [row["id"] for row in table_rows(str(tmp_path / "db"))]
    assert summary.rows_in == 400 and len(ids) == len(set(ids)) == 400


def kill_a_writer_mid_write(killed: list[int], deadline_s: float = 240) -> None:
    """SIGKILL a worker process while it runs a staging write (Ray titles it after the task)."""
    deadline = time.time() + deadline_s
    while time.time() < deadline and not killed:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(b"ray::") and b"StagingSink" in title and b"IDLE" not in title:
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
                return
        time.sleep(0.005)


def test_killed_writer_task_loses_and_duplicates_nothing(ray_local, tmp_path):
    (tmp_path / "in").mkdir()
    for part in range(3):
        write_parquet(image_rows(f"w{part}", 80, seed=part), tmp_path / "in" / f"w{part}.parquet")
    killed: list[int] = []
    killer = threading.Thread(target=kill_a_writer_mid_write, args=(killed,))
    killer.start()
    summary = run_job(local_job(tmp_path, commit_rows=8))  # 30 writer tasks
    killer.join()
    assert killed, "no writer task was caught running"
    rows = table_rows(str(tmp_path / "db"))
    ids, sources = [row["id"] for row in rows], [row["source"] for row in rows]
    assert summary.rows_in == summary.rows_written == 240
    assert len(ids) == len(set(ids)) == 240 and len(set(sources)) == 240


def test_driver_killed_after_fragments_are_written_leaves_the_table_unchanged(ray_local, tmp_path):
    (tmp_path / "in").mkdir()
    write_parquet(image_rows("k", 300, seed=7), tmp_path / "in" / "k.parquet", row_group_size=16)
    job = tmp_path / "job.yaml"
    # Small staging chunks keep the run in its staging phase long enough to be caught there; a short
    # claim TTL lets the rerun take over the dead run's claim.
    job.write_text(
        yaml.safe_dump(
            {
                "source": {"paths": ["in"]},
                "policy": POLICY,
                "sink": {"uri": "db", "commit_rows": 16, "claim_ttl_hours": 0.001},
            }
        )
    )
    address = ray_local.get_runtime_context().gcs_address
    run = subprocess.Popen(
        [sys.executable, "-m", "clipline.jobs.run", "--config", str(job), "--address", address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    staging = tmp_path / "db" / "_clipline" / "staging"
    deadline = time.time() + 300
    while time.time() < deadline and not (staging.exists() and any(staging.glob("*.lance"))):
        assert run.poll() is None, "the run finished before it was caught staging"
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=60)
    table = lancedb.connect(str(tmp_path / "db")).open_table("media")
    assert table.count_rows() == 0 and table.version == 1

    time.sleep(4)  # past the claim TTL
    summary = run_job(local_job(tmp_path, claim_ttl_hours=0.001))
    assert summary.rows_in == 300
    ids = [row["id"] for row in table_rows(str(tmp_path / "db"))]
    assert len(ids) == len(set(ids)) == 300


def test_retry_failed_reprocesses_only_failed_rows_under_their_ids(ray_local, tmp_path):
    (tmp_path / "in").mkdir()
    later = tmp_path / "in" / "late.png"  # beside the input: under the default allowed prefix
    rows = [*image_rows("r", 5), {"id": "late", "image_uri": str(later)}, {"id": "bad", "image": b"not an image"}]
    write_parquet(rows, tmp_path / "in" / "r.parquet")
    first = run_job(local_job(tmp_path))
    assert first.failed_by_code == {"uri_not_found": 1, "image_decode_failed": 1}
    before = {row["id"]: row for row in table_rows(str(tmp_path / "db"))}

    later.write_bytes(png_bytes("star", "blue", seed=3))
    retry = run_job(local_job(tmp_path), RunOptions(retry_failed=True))
    assert retry.rows_in == 2 and retry.files_processed == [str(tmp_path / "in" / "r.parquet")]
    after = {row["id"]: row for row in table_rows(str(tmp_path / "db"))}
    assert set(after) == set(before)
    assert after["late"]["status"] == "ok" and after["late"]["image_embedding"] is not None
    assert after["bad"]["status"] == "failed"
    assert all(after[f"r-{i}"]["run_id"] == first.run_id for i in range(5))
    assert after["late"]["run_id"] == retry.run_id


def test_retry_failed_refuses_a_file_changed_since_it_was_recorded(ray_local, tmp_path):
    """Failed rows are found again by position: a rewritten file would give the wrong rows."""
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "r.parquet"
    write_parquet([*image_rows("c", 3), {"id": "bad", "image": b"not an image"}], path)
    run_job(local_job(tmp_path))
    write_parquet([{"id": "other", "image": b"still not an image"}, *image_rows("c", 3)], path)  # rows moved
    with pytest.raises(InputChanged, match=str(path)):
        run_job(local_job(tmp_path), RunOptions(retry_failed=True))
    assert {row["id"] for row in table_rows(str(tmp_path / "db"))} == {"c-0", "c-1", "c-2", "bad"}


def test_transient_s3_errors_are_retried_and_nothing_is_lost(ray_local, s3_endpoint, s3_bucket):
    proxy = FlakyS3Proxy(s3_endpoint, every=5).start()
    try:
        filesystem = pyarrow.fs.S3FileSystem(endpoint_override=s3_endpoint, scheme="http", region="us-east-1")
        for part in range(3):
            write_parquet(image_rows(f"s{part}", 10, seed=part), f"{s3_bucket}/in/s{part}.parquet", filesystem)
        boto3.client("s3", endpoint_url=s3_endpoint).put_object(
            Bucket=s3_bucket, Key="in/img/one.png", Body=png_bytes("cross", "green", seed=1)
        )
        write_parquet(
            [{"id": "via-uri", "image_uri": f"s3://{s3_bucket}/in/img/one.png"}],
            f"{s3_bucket}/in/uri.parquet",
            filesystem,
        )
        storage = {"endpoint_url": proxy.endpoint, "region": "us-east-1"}
        config = JobConfig.model_validate(
            {
                "source": {"paths": [f"s3://{s3_bucket}/in/"]},
                "policy": POLICY,
                "sink": {"uri": f"s3://{s3_bucket}/db"},
                "storage": storage,
            }
        )
        summary = run_job(config)
    finally:
        proxy.stop()
    assert proxy.failed > 0
    uri = f"s3://{s3_bucket}/db"
    rows = table_rows(uri, StorageConfig(endpoint_url=s3_endpoint, region="us-east-1").lance_options(uri))
    assert summary.rows_in == len(rows) == 31
    assert all(row["status"] == "ok" for row in rows)
    assert len({row["id"] for row in rows}) == 31
