"""Calibration from stored embeddings: PR maths on hand-made scores, then the tiny CLIP on a real table.

The labelled data are rendered shapes; the demo policy's `star` (blockable) and `cross`
(review-only) categories are labelled by the shape that was drawn, so the labels are true and
the held-out split measures what the thresholds are worth on rows they were not picked on.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import ImageFilter

from clipline.demo.shapes import COLOURS, SHAPES, render
from clipline.jobs.cli import main
from clipline.moderation.calibrate import PRCurve, calibrate
from clipline.moderation.labels import LabelError, held_out_mask, read_labels
from clipline.schemas.policy import load_policy
from tests.tables import DEMO_POLICY_PATH, demo_policy, ingest

# The tables these tests read are committed by the run's tail, which runs as Ray tasks.
pytestmark = pytest.mark.usefixtures("ray_local")

TARGET_PRECISION = 0.95
TARGET_RECALL = 0.9


# --------------------------------------------------------------------------- shared data (also used by other modules)


def blurred_png(shape: str, colour: str, rng: np.random.Generator) -> bytes:
    """A shape blurred by a random radius in [0, 3] px: from crisp to barely recognisable."""
    image = render(shape, colour, rng, size=int(rng.integers(64, 129)))
    buffer = io.BytesIO()
    image.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 3.0))).save(buffer, format="PNG")
    return buffer.getvalue()


def labelled_rows(count: int, seed: int, prefix: str = "img") -> tuple[list[dict], list[dict]]:
    """(table rows, label rows): shapes with stars and crosses over-represented (~2/9 each).

    Images are blurred by a random amount, so the tiny model is good but not perfect (star AP
    about 0.96): the precision/recall curves have a real trade-off to calibrate. Labels are the
    truth the image was drawn from: `star`, `cross`, and `warm` (red, orange or yellow).
    """
    rng = np.random.default_rng(seed)
    weights = np.array([2.0 if shape in ("star", "cross") else 1.0 for shape in SHAPES])
    rows, labels = [], []
    for index in range(count):
        shape = str(rng.choice(SHAPES, p=weights / weights.sum()))
        colour = str(rng.choice(COLOURS))
        row_id = f"{prefix}-{index}"
        rows.append({"id": row_id, "image": blurred_png(shape, colour, rng)})
        for category in ("star", "cross"):
            labels.append({"id": row_id, "category": category, "label": int(shape == category)})
        labels.append({"id": row_id, "category": "warm", "label": int(colour in ("red", "orange", "yellow"))})
    return rows, labels


def write_labels(path: Path, labels: list[dict], categories: tuple[str, ...] = ("star", "cross")) -> Path:
    pq.write_table(pa.Table.from_pylist([label for label in labels if label["category"] in categories]), path)
    return path


@pytest.fixture(scope="module")
def labelled_table(tmp_path_factory):
    """1500 labelled images (enough that a held-out precision is good to about ±0.02), plus a
    text-only row and a row that failed to decode."""
    root = tmp_path_factory.mktemp("calibrate")
    rows, labels = labelled_rows(1500, seed=11)
    rows += [{"id": "text-only", "text": "a red star"}, {"id": "broken", "image": b"not an image"}]
    ingest(str(root / "db"), rows)
    return root, labels


# --------------------------------------------------------------------------- PR maths


def test_pr_curve_and_average_precision_match_hand_computation():
    scores = np.array([0.9, 0.8, 0.8, 0.6, 0.3, 0.1])
    labels = np.array([1, 0, 1, 1, 0, 0])
    curve = PRCurve.of(scores, labels)
    assert curve.thresholds.tolist() == [0.9, 0.8, 0.6, 0.3, 0.1]  # ties form one point
    assert curve.precision.tolist() == pytest.approx([1.0, 2 / 3, 3 / 4, 3 / 5, 3 / 6])
    assert curve.recall.tolist() == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0, 1.0])
    assert curve.average_precision() == pytest.approx(1 / 3 * 1.0 + 1 / 3 * 2 / 3 + 1 / 3 * 3 / 4)
    assert curve.lowest_threshold_with_precision(0.7) == 0.6  # 0.75 at 0.6: lowest that reaches 0.7
    assert curve.lowest_threshold_with_precision(0.99) == 0.9
    assert curve.highest_threshold_with_recall(0.6) == 0.8
    assert curve.highest_threshold_with_recall(1.0) == 0.6
    assert PRCurve.of(np.array([0.2, 0.1]), np.array([1, 0])).average_precision() == 1.0
    assert PRCurve.of(np.array([0.2]), np.array([0])).average_precision() is None


def test_held_out_split_is_stable_stratified_and_order_free():
    ids = [f"id-{i}" for i in range(100)]
    labels = np.array([1] * 20 + [0] * 80)
    mask = held_out_mask("star", ids, labels, 0.25)
    assert mask[labels == 1].sum() == 5 and mask[labels == 0].sum() == 20
    order = np.random.default_rng(0).permutation(100)
    shuffled = held_out_mask("star", [ids[i] for i in order], labels[order], 0.25)
    assert {ids[i] for i, held in zip(order, shuffled, strict=True) if held} == {ids[i] for i in range(100) if mask[i]}
    assert not held_out_mask("star", ids, labels, 0.0).any()


def test_label_files_are_checked(tmp_path):
    policy = demo_policy()
    good = [{"id": "a", "category": "star", "label": 1}, {"id": "b", "category": "star", "label": 0}]
    grouped = read_labels(write_labels(tmp_path / "ok.parquet", good), policy)
    assert grouped["star"].ids == ["a", "b"] and grouped["star"].labels.tolist() == [1, 0]
    (tmp_path / "ok.csv").write_text("id,category,label\n007,star,1\nb,cross,0\n")
    from_csv = read_labels(tmp_path / "ok.csv", policy)
    assert set(from_csv) == {"star", "cross"} and from_csv["star"].ids == ["007"]  # ids stay text
    bad = [
        *good,
        {"id": "a", "category": "star", "label": 0},
        {"id": "c", "category": "violence", "label": 1},
        {"id": "d", "category": "cross", "label": 2},
    ]
    with pytest.raises(LabelError) as caught:
        read_labels(write_labels(tmp_path / "bad.parquet", bad, ("star", "cross", "violence")), policy)
    message = str(caught.value)
    assert "labelled both 0 and 1" in message and "'violence'" in message and "is not 0 or 1" in message
    pq.write_table(pa.table({"id": ["a"], "label": [1]}), tmp_path / "nocat.parquet")
    with pytest.raises(LabelError, match="missing column"):
        read_labels(tmp_path / "nocat.parquet", policy)
    with pytest.raises(LabelError, match="not found"):
        read_labels(tmp_path / "missing.parquet", policy)


# --------------------------------------------------------------------------- calibration on the tiny CLIP


def test_calibration_hits_its_targets_on_held_out_rows(labelled_table):
    root, labels = labelled_table
    labels_path = write_labels(root / "labels.parquet", labels)
    out = root / "policies" / "calibrated.yaml"
    report = calibrate(
        str(root / "db"),
        "media",
        labels_path,
        DEMO_POLICY_PATH,
        out,
        target_precision=TARGET_PRECISION,
        target_recall=TARGET_RECALL,
        holdout=0.5,
    )
    star, cross = report["categories"]["star"], report["categories"]["cross"]
    # block at the target precision, measured on rows the threshold was not picked on
    held = star["block"]["held_out"]
    assert held["precision"] == pytest.approx(TARGET_PRECISION, abs=0.05)
    assert star["block"]["calibration"]["precision"] >= TARGET_PRECISION
    # review at the target recall
    assert star["review"]["held_out"]["recall"] == pytest.approx(TARGET_RECALL, abs=0.1)
    assert cross["review"]["held_out"]["recall"] == pytest.approx(TARGET_RECALL, abs=0.1)
    assert cross["block"]["threshold"] is None  # review-only stays review-only
    assert star["average_precision"]["held_out"] > 0.8
    assert star["labels"]["positives"] >= 250 and star["labels"]["unmatched"] == 0

    calibrated = load_policy(out)
    assert calibrated.version.startswith("1+cal.") and calibrated.version != demo_policy().version
    by_name = {category.name: category for category in calibrated.categories}
    assert by_name["star"].block_threshold == star["block"]["threshold"]
    assert by_name["star"].review_threshold == star["review"]["threshold"]
    assert by_name["cross"].block_threshold is None
    assert by_name["red"] == {c.name: c for c in demo_policy().categories}["red"]  # unlabelled: unchanged
    assert report["uncalibrated"] == ["red", "blue"]

    report_dir = out.parent / "calibrated.calibration"
    written = json.loads((report_dir / "report.json").read_text())
    assert written["policy_out"]["hash"] == calibrated.content_hash
    for category in ("star", "cross"):
        png = report_dir / f"pr-{category}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000


def test_too_few_labels_are_refused_by_category(labelled_table):
    root, labels = labelled_table
    few = [label for label in labels if label["category"] == "cross"][:60] + [
        label for label in labels if label["category"] == "star"
    ]
    path = write_labels(root / "few.parquet", few)
    with pytest.raises(LabelError) as caught:
        calibrate(str(root / "db"), "media", path, DEMO_POLICY_PATH, root / "few.yaml")
    assert "too few labels" in str(caught.value) and "cross:" in str(caught.value)
    assert "star:" not in str(caught.value)
    assert not (root / "few.yaml").exists()


def test_cli_refuses_clearly(labelled_table, capsys):
    root, _ = labelled_table
    ghost = write_labels(root / "ghost.parquet", [{"id": "nope", "category": "star", "label": 1}])
    common = ["--db", str(root / "db"), "--table", "media", "--policy", DEMO_POLICY_PATH, "--out", str(root / "x.yaml")]
    assert main(["calibrate", *common, "--labels", str(ghost)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: too few labels") and "1 labelled ids not in the table" in err
    assert main(["calibrate", *common, "--labels", str(root / "missing.parquet")]) == 2
    assert "labels file not found" in capsys.readouterr().err
    assert main(["calibrate", *common[:2], "--table", "nope", *common[4:], "--labels", str(ghost)]) == 2
    assert "no table 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["calibrate", *common, "--labels", str(ghost), "--target-precision", "1.5"])
    assert exited.value.code == 2
