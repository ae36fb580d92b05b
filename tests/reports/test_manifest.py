"""The run manifest: counts equal the table's, histograms, drift, stage stats, no credentials."""

from __future__ import annotations

import json
from types import SimpleNamespace

import lancedb
import numpy as np
import pytest

from clipline.pipelines.summary import RunSummary, stage_stats
from clipline.reports import write_run_artifacts
from clipline.reports.manifest import DRIFT_THRESHOLD, ManifestStore, js_distance, wasserstein
from clipline.table.store import Sidecars
from tests.conftest import FAKE_AWS
from tests.reports.synthetic import scored_rows, write_run


def table_counts(db, run_id: str) -> dict:
    rows = lancedb.connect(str(db)).open_table("media").search().where(f"run_id = '{run_id}'").limit(None)
    rows = rows.select(["status", "error_code", "decision", "reasons", "scores"]).to_arrow().to_pylist()
    counts = {"ok": 0, "failed": 0, "failed_by_code": {}, "decisions": {}, "flagged": {}}
    for row in rows:
        counts[row["status"]] += 1
        if row["error_code"]:
            counts["failed_by_code"][row["error_code"]] = counts["failed_by_code"].get(row["error_code"], 0) + 1
        if row["decision"]:
            counts["decisions"][row["decision"]] = counts["decisions"].get(row["decision"], 0) + 1
        for reason in row["reasons"] or []:
            actions = counts["flagged"].setdefault(reason["category"], {})
            actions[reason["action"]] = actions.get(reason["action"], 0) + 1
    return {**counts, "rows": len(rows)}


@pytest.fixture
def first_run(tmp_path):
    rows = [
        *scored_rows(24, seed=1),
        {"id": "broken-1", "image": b"not an image", "error_code": "image_decode_failed"},
        {"id": "broken-2", "error_code": "missing_content"},
    ]
    summary, config = write_run(
        tmp_path / "db", tmp_path / "in", "run-1", rows, extra_paths=("s3://AKIAFAKE:supersecret@bucket/in/",)
    )
    return tmp_path, summary, config, write_run_artifacts(summary, config)


def test_manifest_lands_next_to_the_table_and_its_counts_equal_the_table(first_run):
    tmp_path, _, _, artifacts = first_run
    assert artifacts.manifest_uri == f"{Sidecars(str(tmp_path / 'db')).runs('media')}/run-1.json"
    on_disk = json.loads((tmp_path / "db" / "_clipline" / "runs" / "media" / "run-1.json").read_text())
    assert on_disk == artifacts.manifest
    counts = table_counts(tmp_path / "db", "run-1")
    assert on_disk["rows"]["in"] == on_disk["rows"]["written"] == counts["rows"] == 26
    assert on_disk["rows"]["ok"] == counts["ok"] and on_disk["rows"]["failed"] == counts["failed"] == 2
    assert on_disk["failed_by_code"] == counts["failed_by_code"]
    assert on_disk["decisions"] == counts["decisions"]
    assert on_disk["flagged"] == counts["flagged"]
    assert set(on_disk["decisions"]) == {"allow", "review", "block"}
    assert on_disk["table_version"]["after"] > on_disk["table_version"]["before"]


def test_manifest_records_policy_thresholds_model_config_hash_and_histograms(first_run):
    _, summary, _, artifacts = first_run
    manifest = artifacts.manifest
    star = next(c for c in manifest["policy"]["categories"] if c["name"] == "star")
    assert (star["review_threshold"], star["block_threshold"]) == (0.5, 0.8)
    assert manifest["policy"]["version"] == "1" and len(manifest["policy"]["hash"]) == 64
    assert manifest["model"]["arch"] == "clipline-tiny"
    assert len(manifest["config_hash"]) == 64
    scores = manifest["scores"]
    assert len(scores["edges"]) == 21
    for name in ("star", "cross", "red", "blue"):
        histogram = scores["categories"][name]
        assert histogram["n"] == sum(histogram["counts"]) == summary.ok
    # A quarter of the rows are stars scored ~0.9: they sit in the top bins.
    assert sum(scores["categories"]["star"]["counts"][16:]) == 6
    assert manifest["dedup"] == {"rows_with_dup_of": 0, "clusters": 0, "duplicate_ids": 0}
    assert manifest["drift"]["previous_run_id"] is None


def test_manifest_and_report_hold_no_credentials(first_run):
    tmp_path, _, _, _ = first_run
    runs = tmp_path / "db" / "_clipline" / "runs" / "media"
    for path in (runs / "run-1.json", runs / "run-1.html"):
        text = path.read_text()
        assert "supersecret" not in text and "AKIAFAKE" not in text
        assert FAKE_AWS["AWS_SECRET_ACCESS_KEY"] not in text and FAKE_AWS["AWS_ACCESS_KEY_ID"] not in text
    assert "s3://bucket/in/" in (runs / "run-1.json").read_text()


def test_next_run_compares_with_the_previous_manifest_and_flags_the_category_that_moved(first_run):
    tmp_path, first, config, _ = first_run
    # A run that found nothing new to process is recorded, but drift looks past it.
    idle = RunSummary(run_id="run-idle", table_uri=first.table_uri, table="media", table_rows=first.table_rows)
    assert write_run_artifacts(idle, config).manifest["drift"]["previous_run_id"] == "run-1"
    summary, config = write_run(tmp_path / "db", tmp_path / "in", "run-2", scored_rows(24, seed=2, star_shift=-0.4))
    drift = write_run_artifacts(summary, config).manifest["drift"]
    assert drift["previous_run_id"] == "run-1"
    assert drift["categories"]["star"]["drifted"]
    assert drift["categories"]["star"]["wasserstein"] > DRIFT_THRESHOLD
    for name in ("cross", "red", "blue"):
        assert not drift["categories"][name]["drifted"], (name, drift["categories"][name])
    assert not drift["policy_changed"]
    assert ManifestStore(str(tmp_path / "db"), "media").run_ids() == ["run-1", "run-idle", "run-2"]


def test_distances_on_histograms():
    edges = np.linspace(0, 1, 11)
    low, high = np.eye(10)[0], np.eye(10)[9]
    assert wasserstein(low, low, edges) == 0 and js_distance(low, low) == 0
    assert wasserstein(low, high, edges) == pytest.approx(0.9)
    assert js_distance(low, high) == pytest.approx(1.0)
    half = (low + high) / 2
    assert wasserstein(low, half, edges) == pytest.approx(0.45)


def test_stage_stats_read_ray_summaries_source_first():
    def operator(name, seconds, rows):
        return SimpleNamespace(
            operator_name=name,
            time_total_s=seconds,
            output_num_rows=SimpleNamespace(sum=rows),
            wall_time=SimpleNamespace(sum=seconds * 2),
            cpu_time=None,
        )

    read = SimpleNamespace(operators_stats=[operator("FromArrow", 0.5, 4)], parents=[])
    decode = SimpleNamespace(operators_stats=[operator("MapBatches(DecodeImages)", 4.0, 400)], parents=[read])
    encode = SimpleNamespace(operators_stats=[operator("MapBatches(EncodeClassifyActor)", 8.0, 400)], parents=[decode])
    stages = stage_stats(encode)
    assert [stage["name"] for stage in stages] == [
        "FromArrow",
        "MapBatches(DecodeImages)",
        "MapBatches(EncodeClassifyActor)",
    ]
    assert stages[1] == {
        "name": "MapBatches(DecodeImages)",
        "wall_s": 4.0,
        "rows": 400,
        "rows_per_s": 100.0,
        "task_s": 8.0,
        "cpu_s": 0.0,
    }
    assert stage_stats(None) == []
