"""Rescore from stored embeddings: decisions move exactly where thresholds moved; nothing is decoded.

The expected decisions come from a separate, hand-written reading of the two-category policy
(star blocks/reviews, cross reviews), not from the scoring code under test.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from clipline.jobs.cli import main
from clipline.moderation.rescore import rescore
from clipline.schemas.policy import Policy, write_policy
from clipline.table.store import ClipTable, Sidecars
from tests.moderation.test_calibrate import labelled_rows
from tests.tables import DEMO_POLICY_PATH, demo_policy, ingest

# The tables these tests read are committed by the run's tail, which runs as Ray tasks.
pytestmark = pytest.mark.usefixtures("ray_local")

COLUMNS = ["id", "scores", "decision", "image_embedding", "text_embedding", "run_id", "source", "policy_version"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Built once; each test gets its own copy, since rescore changes the table."""
    root = tmp_path_factory.mktemp("rescore")
    rows, _ = labelled_rows(140, seed=21, prefix="r")
    rows += [{"id": "text-only", "text": "a star"}, {"id": "broken", "image": b"\x89PNG broken"}]
    ingest(str(root / "db"), rows, run_id="first-run")
    return root / "db"


@pytest.fixture
def table_dir(pristine, tmp_path):
    shutil.copytree(pristine, tmp_path / "db")
    return tmp_path


def read(db: str) -> dict[str, dict]:
    table = ClipTable.open(db, "media").lance
    return {row["id"]: row for row in table.to_arrow().select(COLUMNS).to_pylist()}


def score(row: dict, category: str) -> float | None:
    return None if row["scores"] is None else next(s["score"] for s in row["scores"] if s["category"] == category)


def between(values: list[float], quantile: float) -> float:
    """A threshold halfway between two neighbouring observed scores, so no score sits on it."""
    ordered = np.unique(values)
    index = int(quantile * (len(ordered) - 1))
    return float((ordered[index] + ordered[index + 1]) / 2)


def moved_policy(star_review: float, star_block: float, cross_review: float) -> Policy:
    data = demo_policy().model_dump(mode="json")
    data["version"] = "moved"
    for category in data["categories"]:
        if category["name"] == "star":
            category.update(review_threshold=star_review, block_threshold=star_block)
        if category["name"] == "cross":
            category["review_threshold"] = cross_review
    return Policy.model_validate(data)


def expected_decision(star: float, cross: float, star_review: float, star_block: float, cross_review: float) -> str:
    if star >= star_block:
        return "block"
    if star >= star_review or cross >= cross_review:
        return "review"
    return "allow"


def test_decisions_change_exactly_where_thresholds_moved(table_dir):
    db = str(table_dir / "db")
    before = read(db)
    old = demo_policy().categories
    old_limits = (old[0].review_threshold, old[0].block_threshold, old[1].review_threshold)
    scored = {row_id: (score(row, "star"), score(row, "cross")) for row_id, row in before.items() if row["scores"]}
    for row_id, (star, cross) in scored.items():
        assert before[row_id]["decision"] == expected_decision(star, cross, *old_limits)

    stars = [star for star, _ in scored.values()]
    crosses = [cross for _, cross in scored.values()]
    new_limits = (between(stars, 0.55), between(stars, 0.7), between(crosses, 0.9))
    path = write_policy(moved_policy(*new_limits), table_dir / "moved.yaml")
    summary = rescore(db, "media", path)
    after = read(db)

    expected_changes = {
        row_id
        for row_id, (star, cross) in scored.items()
        if expected_decision(star, cross, *old_limits) != expected_decision(star, cross, *new_limits)
    }
    changed = {row_id for row_id in before if before[row_id]["decision"] != after[row_id]["decision"]}
    assert changed == expected_changes and len(changed) >= 5
    for row_id, (star, cross) in scored.items():
        assert after[row_id]["decision"] == expected_decision(star, cross, *new_limits)
    assert summary.changed == len(changed) and summary.rows == len(before) == len(after)
    assert summary.scored == len(before) - 1

    # in place: same ids, same embeddings, same run provenance; scores unchanged (same prompts)
    assert after.keys() == before.keys()
    for row_id, row in before.items():
        for column in ("image_embedding", "text_embedding", "run_id", "source"):
            assert after[row_id][column] == row[column]
        if row["scores"]:
            assert score(after[row_id], "star") == pytest.approx(score(row, "star"), abs=1e-6)
        assert after[row_id]["policy_version"] == "moved"
    assert after["broken"]["decision"] is None and after["broken"]["scores"] is None
    table = ClipTable.open(db, "media").lance
    assert set(table.to_arrow().column("policy_hash").to_pylist()) == {moved_policy(*new_limits).content_hash}
    assert summary.table_version_after == summary.table_version_before + 1  # one commit


def test_rescore_reads_no_image_and_encodes_only_prompts(table_dir, monkeypatch):
    import PIL.Image

    import clipline.models.zero_shot as zero_shot
    import clipline.operators.encode as encode
    from clipline.operators.decode import DecodeImages

    def forbidden(*args, **kwargs):
        raise AssertionError("rescore must not decode or encode images")

    for module, name in (
        (PIL.Image, "open"),
        (zero_shot, "encode_pixels"),
        (zero_shot, "encode_images"),
        (encode, "encode_pixels"),
        (DecodeImages, "__call__"),
    ):
        monkeypatch.setattr(module, name, forbidden)
    encoded: list[str] = []
    real_encode_texts = zero_shot.encode_texts

    def counting(bundle, texts):
        encoded.extend(texts)
        return real_encode_texts(bundle, texts)

    monkeypatch.setattr(zero_shot, "encode_texts", counting)
    shutil.rmtree(Sidecars(str(table_dir / "db")).prompt_banks)  # the run cached them: make rescore encode
    summary = rescore(str(table_dir / "db"), "media", DEMO_POLICY_PATH)
    policy = demo_policy()
    prompts = sum(len(c.positive + c.negative) * len(policy.templates_for(c)) for c in policy.categories)
    assert len(encoded) == prompts  # the policy's prompts, not one caption or text row
    assert "a star" not in encoded
    assert summary.rows == 142


def test_dry_run_counts_and_writes_nothing(table_dir):
    db = str(table_dir / "db")
    version = ClipTable.open(db, "media").lance.version
    path = write_policy(moved_policy(0.0, 0.0, 0.99), table_dir / "strict.yaml")
    summary = rescore(db, "media", path, dry_run=True)
    assert summary.dry_run and summary.changed > 0
    assert summary.decisions_after == {"block": len(read(db)) - 1}  # every scored row; not the failed one
    assert ClipTable.open(db, "media").lance.version == version
    assert {row["policy_version"] for row in read(db).values()} == {"1"}


def test_cli_rescore_prints_a_summary_and_refuses_clearly(table_dir, capsys, tmp_path):
    db = str(table_dir / "db")
    assert main(["rescore", "--db", db, "--table", "media", "--policy", DEMO_POLICY_PATH]) == 0
    out = capsys.readouterr().out
    assert "changed        0" in out and "rows           142" in out

    assert main(["rescore", "--db", db, "--table", "media", "--policy", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.startswith("error: config file not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: p\nversion: 1\ncategories: [{name: star, positive: [a], negative: [b]}]\n")
    assert main(["rescore", "--db", db, "--table", "media", "--policy", str(bad)]) == 2
    assert "categories.0.review_threshold" in capsys.readouterr().err
    assert main(["rescore", "--db", db, "--table", "missing", "--policy", DEMO_POLICY_PATH]) == 2
    assert "no table 'missing'" in capsys.readouterr().err
