"""Table upkeep: the index plan, building/keeping/rebuilding indexes, compaction and version cleanup."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from clipline.jobs.cli import main
from clipline.schemas.config import DedupConfig
from clipline.table import maintain
from clipline.table.maintain import (
    ProbeSettings,
    maintain_table,
    plan_vector_index,
    probe_settings,
    vector_index,
)
from clipline.table.search import search_vector
from clipline.table.store import ClipTable
from tests.pipelines.test_dedup import row, unit, write_run

# The tables these tests read are committed by the run's tail, which runs as Ray tasks.
pytestmark = pytest.mark.usefixtures("ray_local")

CLI = [sys.executable, "-m", "clipline.jobs.cli"]


@pytest.mark.parametrize(
    ("rows", "dim", "kind", "partitions", "sub_vectors"),
    [
        (0, 512, None, 0, 0),
        (4_000, 512, None, 0, 0),  # 8 MB of floats: a flat scan is a few ms
        (5_000, 512, "ivf_sq", 1, 0),
        (50_000, 512, "ivf_sq", 7, 0),
        (1_000_000, 768, "ivf_sq", 123, 0),
        (10_000_000, 512, "ivf_pq", 1221, 32),  # SQ codes would be 5 GB
        (20_000_000, 500, "ivf_pq", 2442, 25),  # sub-vectors divide the dimension
    ],
)
def test_index_plan_follows_rows_and_dimension(rows, dim, kind, partitions, sub_vectors):
    plan = plan_vector_index(rows, dim)
    assert (plan.kind, plan.partitions, plan.sub_vectors) == (kind, partitions, sub_vectors)
    if kind:
        assert plan.name == f"image_embedding_{kind}_p{partitions}"


def small_plans(monkeypatch):
    """Index plans for tables of a few hundred rows, so the tests stay fast."""
    monkeypatch.setattr(maintain, "BRUTE_FORCE_VALUES", 1_000)
    monkeypatch.setattr(maintain, "PARTITION_ROWS", 64)
    monkeypatch.setattr(maintain, "SCAN_ROWS", 128)


def fragmented_table(uri: str, runs: int, per_run: int, start: int = 0):
    """`runs` separate commits: one fragment and one version each, like a table after many runs."""
    for r in range(start, start + runs):
        rows = [
            row(f"r{r}-{i}", unit(r * 1000 + i), decision=("allow", "review")[i % 2], labels=["star"] if i % 3 else [])
            for i in range(per_run)
        ]
        _, table = write_run(uri, rows, config=DedupConfig(enabled=False), run_id=f"run{r}")
    return table


def maintained(table, **options):
    """`maintain_table` on the clipline table behind a LanceDB handle."""
    return maintain_table(ClipTable(str(Path(table.uri).parent), table), **options)


@pytest.mark.filterwarnings("ignore:optimize.cleanup_older_than=0")
def test_maintain_builds_indexes_compacts_and_removes_old_versions(tmp_path, monkeypatch):
    small_plans(monkeypatch)
    table = fragmented_table(str(tmp_path), runs=6, per_run=50)
    report = maintained(table, retention=timedelta(0))
    before, after = report.before, report.after
    assert before.fragments == 6 and after.fragments == 1
    assert before.versions >= 6 and after.versions == 1
    assert after.rows == before.rows == 300
    name = "image_embedding_ivf_sq_p5"
    assert name in after.indices and report.vector["image_embedding"].endswith(
        f"built in {report.build_s['image_embedding']:.1f} s"
    )
    assert report.scalar == {
        "decision": "BITMAP built",
        "status": "BITMAP built",
        "labels": "LABEL_LIST built",
        "id": "BTREE built",
        "content_sha256": "BTREE built",
        "dup_bucket": "BTREE built",
    }
    text = report.format()
    assert "fragments       6 → 1" in text and "versions" in text
    # 300 rows in 5 partitions, 128 rows per query: 3 probes, then an exact rerank of SQ codes.
    assert probe_settings(table) == ProbeSettings(nprobes=3, refine_factor=4)

    again = maintained(table)
    assert again.vector["image_embedding"].endswith("kept") and set(again.scalar.values()) == {"kept"}
    fragmented_table(str(tmp_path), runs=4, per_run=100, start=6)  # 700 rows: 11 partitions planned
    grown = maintained(table, retention=timedelta(0))
    assert "rebuilt" in grown.vector["image_embedding"]
    assert vector_index(table, "image_embedding").name == "image_embedding_ivf_sq_p11"
    assert grown.after.fragments == 1


def test_search_after_maintain_matches_exact_search_and_filters_fill_k(tmp_path, monkeypatch):
    small_plans(monkeypatch)
    table = fragmented_table(str(tmp_path), runs=4, per_run=100)
    maintained(table)
    vectors = {r["id"]: np.array(r["image_embedding"]) for r in table.to_arrow().to_pylist()}
    ids = list(vectors)
    matrix = np.stack([vectors[i] for i in ids])
    for seed in range(5):
        query = unit(10_000 + seed)
        exact = [ids[i] for i in np.argsort(-(matrix @ query))[:10]]
        found = search_vector(table, query, 10, columns=["id"]).column("id").to_pylist()
        assert len(set(found) & set(exact)) >= 9
    # rows with labels ['star'] and decision 'review': 1 in 6 rows; the probes alone may not hold 10
    where = "decision = 'review' AND array_has_any(labels, ['star'])"
    matching = table.count_rows(where)
    filtered = search_vector(table, unit(1), 10, where=where, columns=["id", "decision", "labels"])
    assert filtered.num_rows == 10 <= matching
    assert set(filtered.column("decision").to_pylist()) == {"review"}
    few = search_vector(table, unit(1), 10, where="id IN ('r0-1', 'r1-1', 'r2-2')", columns=["id"])
    assert sorted(few.column("id").to_pylist()) == ["r0-1", "r1-1", "r2-2"]


def test_text_only_rows_leave_the_image_column_brute_force(tmp_path):
    table = fragmented_table(str(tmp_path), runs=1, per_run=20)
    report = maintained(table)
    assert report.vector["image_embedding"].startswith("brute force") and vector_index(table, "image_embedding") is None


def test_cli_maintain_prints_before_and_after(tmp_path, capsys):
    fragmented_table(str(tmp_path), runs=3, per_run=10)
    result = subprocess.run(
        [*CLI, "maintain", "--db", str(tmp_path), "--table", "media", "--retention-days", "0"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fragments       3 → 1" in result.stdout and "scalar indexes" in result.stdout
    assert main(["maintain", "--db", str(tmp_path), "--table", "nope"]) == 2
    assert "no table 'nope'" in capsys.readouterr().err
    assert main(["maintain", "--db", str(tmp_path), "--table", "media", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["after"]["fragments"] == 1
