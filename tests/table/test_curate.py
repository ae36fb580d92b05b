"""Curated exports: selection order, per-reason counts, cluster caps, both formats, the manifest."""

from __future__ import annotations

import json
import subprocess
import sys

import lancedb
import pyarrow.parquet as pq
import pytest

from clipline.jobs.cli import main
from clipline.table.curate import CurateQuery, curate, manifest_path
from clipline.table.store import model_of
from tests.pipelines.test_dedup import nudge, row, unit, write_run

CLI = [sys.executable, "-m", "clipline.jobs.cli"]


@pytest.fixture
def table(tmp_path):
    """12 rows: a cluster of 4 (c0 canonical), a pair (p0), 4 singletons, 1 text row, 1 failed row."""
    a, b = unit(1), unit(2)
    rows = [
        row("c0", a, source="f.parquet#0", decision="allow", clip_score=0.20, text="a red star"),
        row("c1", nudge(a, 0.05, 1), source="f.parquet#1", decision="allow", clip_score=0.35, text="red star"),
        row("c2", nudge(a, 0.05, 2), source="f.parquet#2", decision="allow", clip_score=0.30, text="star"),
        row("c3", nudge(a, 0.05, 3), source="f.parquet#3", decision="review", clip_score=0.40, text="a star"),
        row("p0", b, source="f.parquet#4", decision="allow", clip_score=0.31, text="a circle"),
        row("p1", b, sha="sha-p0", source="f.parquet#5", decision="allow", clip_score=0.31, text="a circle"),
        *(
            row(f"s{i}", unit(10 + i), source=f"f.parquet#{6 + i}", decision="allow", clip_score=0.1 * i, text="x")
            for i in range(4)
        ),
        row("t0", None, source="f.parquet#10", decision="allow", text="only text"),
        row("x0", None, source="f.parquet#11", status="failed"),
    ]
    _, table = write_run(str(tmp_path / "db"), rows, run_id="r1")
    return table


def ids_in(path: str) -> list[str]:
    return sorted(pq.read_table(path).column("id").to_pylist())


def test_filters_count_each_drop_under_its_first_reason(table, tmp_path):
    out = str(tmp_path / "out" / "curated.parquet")
    query = CurateQuery(where="decision = 'allow'", min_clip_score=0.25, dedup=True)
    manifest = curate(table, out, query, table_uri="db")
    # failed: x0; where: c3; clip_score: c0 (0.20), s0-s2 (< 0.25), t0 (no score); duplicate: c2 (c1 wins), p1
    assert manifest["counts"] == {
        "rows": 12,
        "kept": 3,
        "dropped": {"failed": 1, "where": 1, "clip_score": 5, "duplicate": 2},
    }
    assert ids_in(out) == ["c1", "p0", "s3"]
    assert manifest["table"] == {"uri": "db", "name": "media", "version": table.version, "rows": 12}
    assert manifest["query"]["where"] == "decision = 'allow'" and manifest["query"]["dedup"] is True
    with open(manifest_path(out)) as handle:
        assert json.load(handle) == manifest
    assert manifest_path(out).endswith("out/curated.manifest.json")


def test_dedup_keeps_the_canonical_and_cap_keeps_the_best_scores(table, tmp_path):
    out = str(tmp_path / "dedup.parquet")
    manifest = curate(table, out, CurateQuery(dedup=True))
    assert ids_in(out) == ["c0", "p0", "s0", "s1", "s2", "s3", "t0"]
    assert manifest["counts"]["dropped"] == {"failed": 1, "duplicate": 4}
    capped = str(tmp_path / "cap.parquet")
    manifest = curate(table, capped, CurateQuery(max_per_cluster=2))
    assert ids_in(capped) == ["c0", "c3", "p0", "p1", "s0", "s1", "s2", "s3", "t0"]  # c3: best score after c0
    assert manifest["counts"]["dropped"] == {"failed": 1, "cluster_cap": 2}


def test_lance_output_keeps_columns_and_model_metadata(table, tmp_path):
    out = str(tmp_path / "exports" / "subset.lance")
    columns = ["id", "source", "text", "image_embedding"]
    manifest = curate(table, out, CurateQuery(where="clip_score >= 0.31", columns=columns))
    exported = lancedb.connect(str(tmp_path / "exports")).open_table("subset")
    assert exported.schema.names == columns
    assert sorted(exported.to_arrow().column("id").to_pylist()) == ["c1", "c3", "p0", "p1"]
    assert model_of(exported) == model_of(table)  # the export says which model made its vectors
    assert manifest["counts"]["kept"] == 4 and manifest["format"] == "lance"


def test_export_pins_the_version_and_leaves_the_handle_writable(table, tmp_path):
    version = table.version
    manifest = curate(table, str(tmp_path / "a.parquet"))
    assert manifest["table"]["version"] == version
    table.update(where="id = 'x0'", values={"error_message": "still writable"})  # not left on an old version
    assert curate(table, str(tmp_path / "b.parquet"))["table"]["version"] == version + 1


def test_bad_requests_are_refused(table, tmp_path):
    with pytest.raises(ValueError, match="parquet or"):
        curate(table, str(tmp_path / "out.csv"))
    with pytest.raises(ValueError, match="unknown column"):
        curate(table, str(tmp_path / "out.parquet"), CurateQuery(columns=["id", "nope"]))
    with pytest.raises(ValueError, match="at least 1"):
        CurateQuery(max_per_cluster=0)


def test_cli_curate(table, tmp_path, capsys):
    db = str(tmp_path / "db")
    out = str(tmp_path / "cli.parquet")
    args = ["curate", "--db", db, "--table", "media", "--out", out, "--where", "decision = 'allow'", "--dedup"]
    result = subprocess.run([*CLI, *args, "--min-clip-score", "0.25"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "kept         3" in result.stdout and "clip_score: 5" in result.stdout
    assert ids_in(out) == ["c1", "p0", "s3"]
    assert main([*args, "--where", "no_such_column = 1"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert main([*args[:-3], "--max-per-cluster", "2", "--columns", "image_embedding", "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["query"]["columns"][-1] == "image_embedding" and manifest["counts"]["kept"] == 9
