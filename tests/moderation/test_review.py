"""Human review: queue export with thumbnails, decisions written back, overrides that outlive rescores."""

from __future__ import annotations

import csv
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image

from clipline.jobs.cli import main
from clipline.moderation.rescore import rescore
from clipline.moderation.review import (
    ReviewerDecision,
    ReviewError,
    apply_decisions,
    export_queue,
    id_from_cell,
    model_decision,
    record_decisions,
    undo_batch,
)
from clipline.moderation.review_log import ReviewLog
from clipline.schemas.policy import Policy, write_policy
from clipline.table.store import ClipTable
from tests.moderation.test_calibrate import labelled_rows
from tests.pipelines.inputs import png_bytes, write_parquet
from tests.reports.synthetic import write_run
from tests.tables import demo_policy, ingest

# The tables these tests read are committed by the run's tail, which runs as Ray tasks.
pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Input parquet on disk (so thumbnails can be re-read from `source`), an image_uri row, a text row."""
    root = tmp_path_factory.mktemp("review")
    rows, _ = labelled_rows(70, seed=31, prefix="q")
    write_parquet(rows, root / "input.parquet")
    (root / "uri.png").write_bytes(png_bytes("cross", "blue", 5, size=96))
    table_rows = [{**row, "source": f"{root / 'input.parquet'}#{index}"} for index, row in enumerate(rows)]
    table_rows += [
        {"id": "by-uri", "image_uri": str(root / "uri.png"), "source": "elsewhere.parquet#0"},
        {"id": "text-only", "text": "a cross", "source": "elsewhere.parquet#1"},
    ]
    ingest(str(root / "db"), table_rows)
    return root


@pytest.fixture
def workdir(pristine, tmp_path):
    shutil.copytree(pristine / "db", tmp_path / "db")
    return tmp_path


def table_rows(db: str) -> dict[str, dict]:
    return {row["id"]: row for row in ClipTable.open(db, "media").lance.to_arrow().to_pylist()}


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_export_writes_the_review_queue_with_thumbnails(workdir, pristine):
    db = str(workdir / "db")
    stored = table_rows(db)
    in_review = {row_id for row_id, row in stored.items() if row["decision"] == "review"}
    assert len(in_review) >= 10 and {"by-uri", "text-only"} <= in_review  # crosses: a review-only category

    summary = export_queue(db, "media", workdir / "out" / "queue.csv")
    queue = read_csv(workdir / "out" / "queue.csv")
    assert {row["id"] for row in queue} == in_review and summary["rows"] == len(in_review)
    priorities = [max(float(part.split()[1]) for part in row["reasons"].split("; ")) for row in queue]
    assert priorities == sorted(priorities, reverse=True)  # most likely violations first
    by_id = {row["id"]: row for row in queue}
    assert by_id["by-uri"]["thumbnail"] == str(pristine / "uri.png")
    assert by_id["text-only"]["thumbnail"] == ""  # in review from its text; no image to show
    inline = [row for row in queue if row["id"] not in ("by-uri", "text-only")]
    assert summary["thumbnails_written"] == len(inline) and not summary["thumbnail_failures"]
    for row in inline:
        with Image.open(workdir / "out" / row["thumbnail"]) as thumbnail:
            assert thumbnail.format == "JPEG" and max(thumbnail.size) <= 160
    assert all(row["override_decision"] == "" and ":review " in row["reasons"] for row in queue)

    limited = export_queue(db, "media", workdir / "top.csv", limit=3, thumbnails=False, where="id LIKE 'q-%'")
    assert limited["rows"] == 3 and not (workdir / "top-thumbs").exists()
    assert [row["id"] for row in read_csv(workdir / "top.csv")] == [row["id"] for row in inline[:3]]


def test_export_survives_moved_input(workdir, pristine, tmp_path_factory):
    moved = tmp_path_factory.mktemp("moved")
    shutil.copytree(pristine / "db", moved / "db")
    (pristine / "input.parquet").rename(pristine / "input.parquet.bak")
    try:
        summary = export_queue(str(moved / "db"), "media", moved / "queue.csv")
    finally:
        (pristine / "input.parquet.bak").rename(pristine / "input.parquet")
    failures = summary["thumbnail_failures"]
    assert summary["thumbnails_written"] == 0 and sum(failures.values()) == summary["rows"] - 2  # uri, text rows
    assert all("FileNotFoundError" in reason for reason in failures)


def test_apply_writes_overrides_that_win_and_survive_rescore(workdir):
    db = str(workdir / "db")
    export_queue(db, "media", workdir / "queue.csv", thumbnails=False)
    queue = read_csv(workdir / "queue.csv")
    first, second = queue[0]["id"], queue[1]["id"]
    queue[0].update(override_decision="block", override_note="clearly a cross")
    queue[1].update(override_decision=" Allow ")
    started = datetime.now(UTC)
    summary = apply_decisions(db, "media", write_csv(workdir / "decisions.csv", queue), reviewer="alice")
    assert summary["applied"] == 2 and summary["by_decision"] == {"allow": 1, "block": 1}

    stored = table_rows(db)
    assert stored[first]["decision"] == "block" and stored[first]["override_note"] == "clearly a cross"
    assert stored[second]["decision"] == "allow" and stored[second]["override_note"] is None
    for row_id in (first, second):
        assert stored[row_id]["override_by"] == "alice"
        assert started - timedelta(seconds=1) <= stored[row_id]["override_at"] <= datetime.now(UTC)
    assert stored[queue[2]["id"]]["override_decision"] is None and stored[queue[2]["id"]]["decision"] == "review"
    assert {row["id"] for row in read_csv(Path(export_queue(db, "media", workdir / "q2.csv")["path"]))} == {
        row["id"] for row in queue[2:]
    }

    # a policy that blocks everything: the reviewer's "allow" still wins, and who/when stay
    data = demo_policy().model_dump(mode="json")
    for category in data["categories"][:2]:
        category.update(review_threshold=0.0, block_threshold=0.0)
    summary = rescore(db, "media", write_policy(Policy.model_validate(data), workdir / "strict.yaml"))
    after = table_rows(db)
    assert after[second]["decision"] == "allow" and after[second]["override_by"] == "alice"
    assert after[second]["override_at"] == stored[second]["override_at"]
    assert after[first]["decision"] == "block"
    assert {row["decision"] for row_id, row in after.items() if row_id != second} == {"block"}
    assert summary.overrides == 2


def test_clear_restores_the_model_decision(workdir):
    db = str(workdir / "db")
    target = next(row_id for row_id, row in table_rows(db).items() if row["decision"] == "review")
    write_csv(workdir / "d.csv", [{"id": target, "override_decision": "block", "override_by": "bob"}])
    apply_decisions(db, "media", workdir / "d.csv")
    assert table_rows(db)[target]["decision"] == "block"
    write_csv(workdir / "c.csv", [{"id": target, "override_decision": "clear", "override_by": "bob"}])
    assert apply_decisions(db, "media", workdir / "c.csv")["cleared"] == 1
    row = table_rows(db)[target]
    assert row["decision"] == "review" == model_decision(row["reasons"])
    assert row["override_decision"] is None and row["override_by"] is None and row["override_at"] is None


def test_bad_decisions_are_refused_and_nothing_is_written(workdir, capsys):
    db = str(workdir / "db")
    version = ClipTable.open(db, "media").lance.version
    some_id = next(iter(table_rows(db)))
    cases = [
        ([{"id": "ghost", "override_decision": "block"}], "not in table"),
        ([{"id": "broken-row-free", "override_decision": "maybe"}], "is not one of"),
        (
            [{"id": some_id, "override_decision": "block"}, {"id": some_id, "override_decision": "allow"}],
            "two different",
        ),
    ]
    for rows, message in cases:
        with pytest.raises(ReviewError, match=message):
            apply_decisions(db, "media", write_csv(workdir / "bad.csv", rows), reviewer="carol")
    with pytest.raises(ReviewError, match="no reviewer"):
        apply_decisions(db, "media", write_csv(workdir / "bad.csv", [{"id": some_id, "override_decision": "block"}]))
    write_csv(workdir / "nocol.csv", [{"id": some_id, "decision": "block"}])
    assert main(["review", "apply", "--db", db, "--table", "media", str(workdir / "nocol.csv")]) == 2
    assert "missing column(s) ['override_decision']" in capsys.readouterr().err
    assert main(["review", "apply", "--db", db, "--table", "media", str(workdir / "none.csv")]) == 2
    assert "decisions file not found" in capsys.readouterr().err
    assert ClipTable.open(db, "media").lance.version == version


def test_cli_export_and_apply(workdir, capsys):
    db = str(workdir / "db")
    queue_path = workdir / "cli" / "queue.csv"
    assert main(["review", "export", "--db", db, "--table", "media", "--out", str(queue_path), "--limit", "2"]) == 0
    assert "review queue: 2 rows" in capsys.readouterr().out
    rows = read_csv(queue_path)
    rows[0]["override_decision"] = "allow"
    write_csv(queue_path, rows)
    args = ["review", "apply", "--db", db, "--table", "media", str(queue_path), "--reviewer", "dana"]
    assert main(args) == 0
    assert "applied 1 reviewer decisions (allow: 1)" in capsys.readouterr().out
    assert table_rows(db)[rows[0]["id"]]["override_by"] == "dana"
    bad_where = ["review", "export", "--db", db, "--table", "media", "--out", str(queue_path), "--where", "nope = 1"]
    assert main(bad_where) == 2
    assert "--where 'nope = 1'" in capsys.readouterr().err


def test_export_neutralises_formula_cells_and_apply_reads_the_ids_back(tmp_path):
    """Ids, captions and URIs come from uploads: none may start a spreadsheet formula."""
    cross = {"star": 0.01, "cross": 0.7, "red": 0.05, "blue": 0.9}  # in review, not blocked
    hostile_ids = ['=HYPERLINK("http://x")', "+1+1", "-2", "@SUM(A1)", "\tTAB", "\rCR", "'quoted", "plain"]
    rows = [
        {"id": row_id, "text": f"=cmd|' /C calc'!A{index}", "image": png_bytes("cross", "blue", index), "scores": cross}
        for index, row_id in enumerate(hostile_ids)
    ]
    write_run(tmp_path / "db", tmp_path / "in", "run-csv", rows)
    db = str(tmp_path / "db")
    export_queue(db, "media", tmp_path / "queue.csv", thumbnails=False)
    with (tmp_path / "queue.csv").open(newline="") as handle:
        cells = [cell for row in csv.reader(handle) for cell in row]
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in cells)
    queue = read_csv(tmp_path / "queue.csv")
    assert {row["id"] for row in queue} == {"'" + row_id for row_id in hostile_ids[:-1]} | {"plain"}
    assert all(row["text"].startswith("'=cmd") for row in queue)

    # a tool that keeps the marker, and one that drops it (as a spreadsheet saving text cells does)
    dropping = {'=HYPERLINK("http://x")', "-2", "'quoted", "plain"}
    decisions = [
        {"id": id_from_cell(row["id"]), "override_decision": "block"}
        if id_from_cell(row["id"]) in dropping
        else {"id": row["id"], "override_decision": "allow"}
        for row in queue
    ]
    assert sum(decision["id"] in dropping for decision in decisions) == len(dropping)
    apply_decisions(db, "media", write_csv(tmp_path / "d.csv", decisions), reviewer="dana")
    decided = {row_id: row["override_decision"] for row_id, row in table_rows(db).items()}
    assert decided == {row_id: "block" if row_id in dropping else "allow" for row_id in hostile_ids}


def test_every_batch_is_audited_and_the_last_one_can_be_undone(workdir):
    db = str(workdir / "db")
    table = ClipTable.open(db, "media")
    in_review = sorted(row_id for row_id, row in table_rows(db).items() if row["decision"] == "review")
    first, second = in_review[:2]
    write_csv(
        workdir / "d.csv", [{"id": first, "override_decision": "block"}, {"id": second, "override_decision": "allow"}]
    )
    summary = apply_decisions(db, "media", workdir / "d.csv", reviewer="alice")

    record = ReviewLog(table).read(summary["batch"])
    assert record["source"] == str(workdir / "d.csv") and record["reviewers"] == ["alice"]
    assert record["table_version"] == summary["table_version"] == table.version
    logged = {row["id"]: row for row in record["rows"]}
    assert logged[first]["override_decision"] == "block" and logged[first]["before"]["decision"] == "review"
    assert logged[second]["before"]["override_decision"] is None

    # another reviewer changes one of the rows: undo restores only the row still as the batch left it
    record_decisions(table, [ReviewerDecision(second, "block", "bob")], "web")
    with pytest.raises(ReviewError, match="not by 'bob'"):
        undo_batch(table, summary["batch"], "bob")
    undone = undo_batch(table, summary["batch"], "alice")
    assert undone["undone"] == 1 and undone["undoes"] == summary["batch"]
    rows = table_rows(db)
    assert rows[first]["decision"] == "review" and rows[first]["override_decision"] is None
    assert rows[second]["override_decision"] == "block" and rows[second]["override_by"] == "bob"
    assert rows[first]["image_embedding"] is not None  # partial updates keep the vectors
    with pytest.raises(ReviewError, match="nothing to undo"):
        undo_batch(table, summary["batch"], "alice")
    log = ReviewLog(table)
    assert [log.read(batch)["source"] for batch in log.batches()] == [str(workdir / "d.csv"), "web", "undo"]


def test_web_and_csv_decisions_are_checked_alike(workdir):
    table = ClipTable.open(str(workdir / "db"), "media")
    version = table.version
    with pytest.raises(ReviewError, match="web: nothing applied"):
        record_decisions(table, [ReviewerDecision("ghost", "block", "erin")], "web")
    with pytest.raises(ReviewError, match="is not one of"):
        record_decisions(table, [ReviewerDecision(next(iter(table_rows(str(workdir / "db")))), "maybe", "erin")], "web")
    assert table.version == version and ReviewLog(table).batches() == []
