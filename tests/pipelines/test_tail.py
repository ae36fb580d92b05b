"""The tail's buckets and history: centroids fitted once and reused, history found by bucket, upkeep.

Hand-made 16-d vectors, committed through the run's own sink and tail on the session's Ray.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

import lancedb
import numpy as np
import pytest

from clipline.schemas.config import DedupConfig
from clipline.table import buckets
from clipline.table.buckets import CentroidStore, maintain_buckets, model_key
from clipline.table.maintain import maintain_table, remove_stale_staging
from clipline.table.store import ClipTable
from tests.pipelines.test_dedup import annotations, nudge, row, unit, write_run

pytestmark = pytest.mark.usefixtures("ray_local")


def stored_buckets(uri: str) -> dict[str, int | None]:
    rows = lancedb.connect(uri).open_table("media").search().select(["id", "dup_bucket"]).limit(None).to_arrow()
    return dict(zip(rows.column("id").to_pylist(), rows.column("dup_bucket").to_pylist(), strict=True))


def centroid_versions(uri: str) -> list[int]:
    table = ClipTable.open(uri, "media")
    return CentroidStore(table.sidecars, model_key(table.lance.schema), table.storage).versions()


def spread_rows(prefix: str, count: int, file: str, seed: int) -> list[dict]:
    return [row(f"{prefix}{i}", unit(seed + i), source=f"{file}#{i}") for i in range(count)]


def test_history_dedup_finds_a_copy_of_a_row_committed_three_runs_earlier(tmp_path, monkeypatch):
    monkeypatch.setattr(buckets, "BUCKET_ROWS", 5)  # many buckets: history is read by bucket, not whole
    uri = str(tmp_path)
    original = unit(424242)
    write_run(uri, [row("first", original, source="day1.parquet#0"), *spread_rows("a", 40, "day1.parquet", 100)[1:]])
    write_run(uri, spread_rows("b", 30, "day2.parquet", 200), run_id="day2")
    write_run(uri, spread_rows("c", 30, "day3.parquet", 300), run_id="day3")
    copy = row("copy", nudge(original, 0.1, 9), source="day4.parquet#0")
    counts, table = write_run(uri, [copy, *spread_rows("d", 20, "day4.parquet", 400)[1:]], run_id="day4")
    assert annotations(table)["copy"] == ("first", "first")
    assert counts.of_table == 1 and counts.near == 1 and counts.buckets == 8
    assert centroid_versions(uri) == [1]  # fitted by the first run, reused by the three after


def test_buckets_and_canonicals_are_stable_across_reruns(tmp_path, monkeypatch):
    monkeypatch.setattr(buckets, "BUCKET_ROWS", 4)
    uri = str(tmp_path)
    rows = spread_rows("r", 24, "f.parquet", 500)
    rows += [row(f"n{i}", nudge(unit(500 + i), 0.08, i), source=f"f.parquet#{24 + i}") for i in range(8)]
    write_run(uri, rows)
    first_buckets, first_marks = stored_buckets(uri), annotations(lancedb.connect(uri).open_table("media"))
    counts, table = write_run(uri, rows, run_id="rerun")
    assert stored_buckets(uri) == first_buckets and annotations(table) == first_marks
    assert counts.carried == len(rows) and counts.duplicates == 0
    assert len(set(first_buckets.values())) > 1 and centroid_versions(uri) == [1]


def test_a_run_with_dedup_disabled_writes_no_buckets_and_no_centroids(tmp_path):
    uri = str(tmp_path)
    a = unit(1)
    rows = [row("a", a, source="f.parquet#0"), row("b", nudge(a, 0.05, 1), source="f.parquet#1")]
    write_run(uri, rows, config=DedupConfig(enabled=False))
    assert set(stored_buckets(uri).values()) == {None}
    assert centroid_versions(uri) == []
    assert not os.path.exists(ClipTable.open(uri, "media").sidecars.dedup)


def test_maintain_buckets_old_rows_and_refits_when_the_table_has_outgrown_its_centroids(tmp_path, monkeypatch):
    monkeypatch.setattr(buckets, "BUCKET_ROWS", 10)
    uri = str(tmp_path)
    write_run(uri, spread_rows("old", 30, "old.parquet", 700), config=DedupConfig(enabled=False))
    table = ClipTable.open(uri, "media")
    fitted = maintain_buckets(table)
    assert (fitted.action, fitted.centroids, fitted.rows_bucketed) == ("fitted", 3, 30)
    assert None not in stored_buckets(uri).values()
    assert maintain_buckets(table).action == "kept"
    write_run(uri, spread_rows("new", 40, "new.parquet", 900), run_id="grow")
    refit = maintain_buckets(table)  # 70 rows: 7 buckets planned, 3 in use
    assert (refit.action, refit.centroids, refit.rows_bucketed) == ("refitted", 7, 70)
    assert centroid_versions(uri) == [1, 2] and max(v for v in stored_buckets(uri).values()) >= 3


def test_maintain_removes_staging_left_by_killed_runs_once_stale(tmp_path):
    uri = str(tmp_path)
    write_run(uri, spread_rows("s", 3, "f.parquet", 1))
    table = ClipTable.open(uri, "media")
    staging = table.sidecars.staging
    for name, age_hours in (("killed-run.lance", 8), ("running-run.lance", 1)):
        os.makedirs(f"{staging}/{name}/data")
        path = f"{staging}/{name}/data/part.lance"
        with open(path, "wb") as handle:
            handle.write(b"x")
        then = time.time() - age_hours * 3600
        os.utime(path, (then, then))
    assert remove_stale_staging(table, timedelta(hours=6)) == ["killed-run.lance"]
    assert os.listdir(staging) == ["running-run.lance"]
    report = maintain_table(table, stale_staging=timedelta(hours=0))
    assert report.stale_staging == ["running-run.lance"] and not os.listdir(staging)
    assert np.isfinite(report.wall_s)


def test_the_perceptual_tier_links_copies_the_embeddings_miss_but_not_featureless_images(tmp_path):
    """Re-encoded copies keep their PDQ hash within a few bits even where embeddings drift; flat
    images (PDQ quality below 50) hash alike whatever they show, so they are never linked by hash."""
    original = "f0" * 32
    reencoded = "f1" + "f0" * 31  # 1 bit off
    flat = "00" * 32
    rows = [
        row("a", unit(11), source="f.parquet#0", pdq_hash=original, pdq_quality=90),
        row("b", unit(12), source="f.parquet#1", pdq_hash=reencoded, pdq_quality=90),
        row("c", unit(13), source="f.parquet#2", pdq_hash=flat, pdq_quality=10),
        row("d", unit(14), source="f.parquet#3", pdq_hash=flat, pdq_quality=10),
    ]
    counts, table = write_run(str(tmp_path), rows)
    marks = annotations(table)
    assert marks["b"] == ("a", "a") and marks["c"] == (None, "c") and marks["d"] == (None, "d")
    assert (counts.pdq, counts.near, counts.exact) == (1, 0, 0)
    strict, _ = write_run(str(tmp_path / "strict"), rows, config=DedupConfig(pdq_distance=0))
    assert strict.duplicates == 0  # the tier's distance is the job's to set
