"""Classifier on hand-made embeddings (no model, no Ray): scores, bands, labels and reasons."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from clipline.operators.classify import ClassifyPolicy, PromptBank, decide
from clipline.operators.columns import embedding_array
from clipline.schemas.policy import Policy

DIM = 4
POLICY = Policy.model_validate(
    {
        "name": "t",
        "version": "7",
        "categories": [
            {
                "name": "star",
                "positive": ["star"],
                "negative": ["circle"],
                "review_threshold": 0.5,
                "block_threshold": 0.9,
            },
            {"name": "cross", "positive": ["cross"], "negative": ["square"], "review_threshold": 0.6},
            {"name": "red", "kind": "topic", "positive": ["red"], "negative": ["blue"], "review_threshold": 0.5},
        ],
    }
)


def unit(*values: float) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


# Prompt rows per category: positive first, then negative (PromptBank's layout).
BANK = PromptBank(
    weights=np.stack(
        [unit(1, 0, 0, 0), unit(0, 1, 0, 0), unit(0, 0, 1, 0), unit(0, 1, 0, 0), unit(0, 0, 0, 1), unit(0, 1, 0, 0)]
    ),
    bounds=((0, 2, 1), (2, 4, 1), (4, 6, 1)),
    logit_scale=100.0,
)


def test_score_is_softmax_mass_on_positive_prompts():
    scores = BANK.score(np.stack([unit(1, 0, 0, 0), unit(0, 1, 0, 0), unit(1, 1, 0, 0)]))
    assert scores.shape == (3, 3)
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-6)
    assert scores[1, 0] == pytest.approx(0.0, abs=1e-6)
    assert scores[2, 0] == pytest.approx(0.5, abs=1e-6)
    expected = np.exp(100 * 0.5) / (np.exp(100 * 0.5) + np.exp(0.0))  # row 3 vs cross: cos 0 vs cos 0.707
    assert scores[2, 1] == pytest.approx(1 - expected, abs=1e-6)
    assert ((scores >= 0) & (scores <= 1)).all()


@pytest.mark.parametrize(
    ("scores", "decision", "labels", "actions"),
    [
        ([0.1, 0.1, 0.1], "allow", [], []),
        ([0.95, 0.1, 0.1], "block", ["star"], [("star", "block")]),
        ([0.7, 0.1, 0.1], "review", ["star"], [("star", "review")]),
        ([0.1, 0.99, 0.1], "review", ["cross"], [("cross", "review")]),
        ([0.1, 0.1, 0.99], "allow", ["red"], []),
        ([0.95, 0.7, 0.8], "block", ["star", "cross", "red"], [("star", "block"), ("cross", "review")]),
        ([0.5, 0.59, 0.5], "review", ["star", "red"], [("star", "review")]),
    ],
)
def test_decide_bands(scores, decision, labels, actions):
    got_decision, got_labels, reasons = decide(POLICY, np.array(scores, dtype=np.float32))
    assert got_decision == decision
    assert got_labels == labels
    assert [(reason["category"], reason["action"]) for reason in reasons] == actions
    for reason in reasons:
        assert reason["margin"] == pytest.approx(reason["score"] - reason["threshold"])
        assert reason["margin"] >= 0


def test_operator_scores_images_and_text_only_rows_and_skips_failed():
    image = np.stack([unit(1, 0, 0, 0), unit(0, 1, 0, 0)])
    text = np.stack([unit(0, 0, 0, 1), unit(1, 0, 0, 0)])
    batch = pa.table(
        {
            "id": ["img-star", "text-only-star", "failed", "img-plain"],
            "status": ["ok", "ok", "failed", "ok"],
            "image_embedding": embedding_array(image, np.array([True, False, False, True]), DIM),
            "text_embedding": embedding_array(text, np.array([True, True, False, False]), DIM),
        }
    )
    out = ClassifyPolicy(POLICY, BANK)(batch).to_pylist()
    star = {row["id"]: next(s["score"] for s in row["scores"]) if row["scores"] else None for row in out}
    assert star["img-star"] == pytest.approx(1.0, abs=1e-5)  # image wins over the caption's embedding
    assert star["text-only-star"] == pytest.approx(1.0, abs=1e-5)
    assert star["failed"] is None and out[2]["decision"] is None
    assert [row["decision"] for row in out] == ["block", "block", None, "allow"]
    assert all(row["policy_version"] == "7" and row["policy_hash"] == POLICY.content_hash for row in out)
    assert [s["category"] for s in out[0]["scores"]] == ["star", "cross", "red"]


def test_operator_refuses_to_run_before_setup():
    with pytest.raises(RuntimeError, match="setup"):
        ClassifyPolicy(POLICY)(pa.table({"status": ["ok"]}))
