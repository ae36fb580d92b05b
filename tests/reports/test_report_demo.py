"""A demo run on a real local Ray writes its manifest and report next to the table.

The manifest's counts must equal what the table holds for the run, its stage timings must come
from Ray Data, and the report must carry every category's plot and the flagged thumbnails.
"""

from __future__ import annotations

import re
from collections import Counter

import lancedb
import pyarrow as pa
import pytest

from clipline.demo.demo import run_demo
from clipline.pipelines.summary import stage_stats
from clipline.reports.manifest import ManifestStore
from clipline.schemas.policy import load_policy
from tests.reports.browser import chromium, decoded_images

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def demo(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-report")
    summary = run_demo(out)
    runs = out / "_clipline" / "runs" / "media"
    rows = (
        lancedb.connect(str(out))
        .open_table("media")
        .search()
        .where(f"run_id = '{summary.run_id}'")
        .select(["status", "error_code", "decision", "reasons", "image_uri", "source"])
        .limit(None)
        .to_arrow()
        .to_pylist()
    )
    return {
        "out": out,
        "summary": summary,
        "manifest": ManifestStore(str(out), "media").read(summary.run_id),
        "html_path": runs / f"{summary.run_id}.html",
        "rows": rows,
    }


def test_the_run_wrote_a_manifest_whose_counts_equal_the_table(demo):
    manifest, rows = demo["manifest"], demo["rows"]
    assert manifest is not None, "run_job did not write the run manifest"
    assert manifest["rows"]["in"] == manifest["rows"]["written"] == len(rows) == manifest["rows"]["table_rows"]
    assert manifest["rows"]["ok"] == sum(row["status"] == "ok" for row in rows)
    assert manifest["rows"]["failed"] == sum(row["status"] == "failed" for row in rows) == 5
    assert manifest["failed_by_code"] == dict(Counter(row["error_code"] for row in rows if row["error_code"]))
    assert manifest["decisions"] == dict(Counter(row["decision"] for row in rows if row["decision"]))
    flagged = Counter((r["category"], r["action"]) for row in rows for r in row["reasons"] or [])
    assert {(c, a): n for c, actions in manifest["flagged"].items() for a, n in actions.items()} == dict(flagged)
    for histogram in manifest["scores"]["categories"].values():
        assert histogram["n"] == manifest["rows"]["ok"]
    assert manifest["policy"]["hash"] == load_policy(manifest["policy"]["path"]).content_hash


def test_the_manifest_has_ray_data_stage_timings(demo):
    stages = demo["manifest"]["timing"]["stages"]
    assert any("EncodeClassifyActor" in stage["name"] for stage in stages), stages
    encode = next(stage for stage in stages if "EncodeClassifyActor" in stage["name"])
    assert encode["rows"] == demo["manifest"]["rows"]["in"] and encode["wall_s"] > 0 and encode["rows_per_s"] > 0


def test_the_report_has_every_category_plot_and_the_flagged_thumbnails(demo):
    page = demo["html_path"].read_text()
    for category in demo["manifest"]["policy"]["categories"]:
        assert f'id="plot-scores-{category["name"]}"' in page
    decisions = demo["manifest"]["decisions"]
    cards = {decision: page.count(f'class="card {decision}"') for decision in ("block", "review")}
    assert cards == {decision: min(decisions[decision], 48) for decision in ("block", "review")}
    assert cards["block"] > 0 and cards["review"] > 0
    # Every flagged image row shows its stored thumbnail (WebP, not re-read); only text rows have none.
    thumbnails = len(re.findall(r'<img class="thumb" alt="[^"]*" src="data:image/webp;base64,', page))
    placeholders = re.findall(r'<div class="none">([^<]*)</div>', page)
    assert thumbnails > 0 and thumbnails + len(placeholders) == sum(cards.values())
    assert set(placeholders) <= {"text-only row"}


def test_the_demo_report_renders_in_chromium(demo, tmp_path):
    binary = chromium()
    images, broken = decoded_images(binary, demo["html_path"], tmp_path)
    assert broken == [] and images > len(demo["manifest"]["policy"]["categories"])


def test_stage_stats_read_a_real_ray_dataset(ray_local):
    dataset = ray_local.data.from_arrow(pa.table({"x": list(range(100))})).map_batches(
        lambda batch: batch, batch_format="pyarrow"
    )
    assert sum(batch.num_rows for batch in dataset.iter_batches(batch_format="pyarrow")) == 100
    for stats in (dataset, dataset.get_stats_summary()):
        stages = stage_stats(stats)
        assert stages[-1]["rows"] == 100 and stages[-1]["wall_s"] >= 0
        assert "MapBatches" in stages[-1]["name"]
