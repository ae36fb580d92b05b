"""Scheduled reruns on a real local Ray: only new or changed files, `--full`, concurrent runs."""

from __future__ import annotations

import os
import subprocess
import sys

import lancedb
import pytest
import yaml

from clipline.jobs.run import run_and_record
from clipline.pipelines.run import run_job
from clipline.pipelines.summary import RunOptions
from clipline.schemas.config import load_job_config
from tests.pipelines.inputs import image_rows, write_parquet

pytestmark = pytest.mark.ray

DEMO_POLICY = os.path.abspath("clipline/demo/tiny/demo_policy.yaml")


def job_file(tmp_path, **resources) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(
        yaml.safe_dump(
            {"source": {"paths": ["in/"]}, "policy": DEMO_POLICY, "sink": {"uri": "db"}, "resources": resources}
        )
    )
    return str(path)


def table_ids(tmp_path) -> list[str]:
    return lancedb.connect(str(tmp_path / "db")).open_table("media").to_arrow().column("id").to_pylist()


def names(paths: list[str]) -> list[str]:
    return sorted(path.rsplit("/", 1)[-1] for path in paths)


def test_rerun_processes_only_new_or_changed_files(ray_local, tmp_path):
    (tmp_path / "in").mkdir()
    write_parquet(image_rows("a", 6, seed=1), tmp_path / "in" / "a.parquet")
    write_parquet(image_rows("b", 5, seed=2), tmp_path / "in" / "b.parquet")
    config = load_job_config(job_file(tmp_path))
    first = run_job(config)
    assert names(first.files_processed) == ["a.parquet", "b.parquet"] and first.rows_in == 11

    write_parquet(image_rows("b2", 4, seed=3), tmp_path / "in" / "b.parquet")
    write_parquet(image_rows("c", 3, seed=4), tmp_path / "in" / "c.parquet")
    second = run_job(config)
    assert names(second.files_processed) == ["b.parquet", "c.parquet"]
    assert names(second.files_skipped) == ["a.parquet"]
    assert second.rows_in == 7
    ids = table_ids(tmp_path)
    assert len(ids) == len(set(ids)) == 6 + 5 + 4 + 3  # rows of b's first version stay (never deleted)

    nothing = run_job(config)
    assert nothing.rows_in == 0 and nothing.table_version_after == nothing.table_version_before

    full = run_job(config, RunOptions(full=True))
    assert names(full.files_processed) == ["a.parquet", "b.parquet", "c.parquet"] and full.rows_in == 13
    assert len(table_ids(tmp_path)) == 18

    ledger = lancedb.connect(str(tmp_path / "db")).open_table("media_ledger").to_arrow().to_pylist()
    committed = {(row["path"].rsplit("/", 1)[-1], row["run_id"]): row["rows"] for row in ledger}
    assert committed[("a.parquet", first.run_id)] == 6 and committed[("c.parquet", second.run_id)] == 3


@pytest.mark.slow
def test_two_runs_at_once_never_commit_the_same_file(ray_local, tmp_path):
    (tmp_path / "in").mkdir()
    for index in range(6):
        write_parquet(image_rows(f"f{index}", 4, seed=10 + index), tmp_path / "in" / f"f{index}.parquet")
    # Half a CPU per stage lets two runs share the 2-CPU test cluster without starving each other.
    path = job_file(tmp_path, encoders=1, encoder_cpus=0.5, decode_cpus=0.5)
    address = ray_local.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "clipline.jobs.run", "--config", path, "--address", address, "--json"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err[-2000:] for _, err in outputs]
    ledger = lancedb.connect(str(tmp_path / "db")).open_table("media_ledger").to_arrow()
    paths = ledger.column("path").to_pylist()
    assert sorted(paths) == sorted(str(tmp_path / "in" / f"f{i}.parquet") for i in range(6))
    ids = table_ids(tmp_path)
    assert len(ids) == len(set(ids)) == 24


def test_embedding_only_run_has_vectors_and_no_decisions(ray_local, tmp_path):
    (tmp_path / "in").mkdir()
    write_parquet(image_rows("e", 4, seed=5), tmp_path / "in" / "e.parquet")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({"source": {"paths": ["in/"]}, "sink": {"uri": "db"}}))
    summary = run_and_record(load_job_config(tmp_path / "job.yaml"))
    rows = lancedb.connect(str(tmp_path / "db")).open_table("media").to_arrow().to_pylist()
    assert summary.ok == len(rows) == 4
    assert all(row["image_embedding"] is not None and row["decision"] is None for row in rows)
    assert all(row["policy_hash"] is None for row in rows)
    assert summary.report_uri and os.path.exists(summary.report_uri)
