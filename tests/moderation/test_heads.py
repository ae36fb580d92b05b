"""Linear heads on stored embeddings: the fit is the logistic-regression optimum, a head can replace a
category's prompts, and the report says where the head beats the prompts on held-out labels.

`warm` (red, orange or yellow) is a concept the tiny CLIP was never taught a word for, so its
prompts are close to chance while 100-odd labels teach a head; `star` is one the prompts know.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from clipline.jobs.cli import main
from clipline.moderation.calibrate import calibrate
from clipline.moderation.heads import fit_logistic, head_scores, train_heads
from clipline.moderation.rescore import rescore
from clipline.operators.classify import PromptBank
from clipline.schemas.policy import load_policy
from clipline.table.store import ClipTable
from tests.moderation.test_calibrate import labelled_rows, write_labels
from tests.tables import DEMO_POLICY_PATH, bundle, ingest

# The tables these tests read are committed by the run's tail, which runs as Ray tasks.
pytestmark = pytest.mark.usefixtures("ray_local")


def test_fit_reaches_the_regularised_optimum():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    truth = (x @ rng.normal(size=16) + 0.1 * rng.normal(size=300) > 0).astype(np.float64)
    weights, bias = fit_logistic(x, truth, l2=1e-3)
    w = torch.tensor(weights, dtype=torch.float64, requires_grad=True)
    b = torch.tensor([bias], dtype=torch.float64, requires_grad=True)
    loss = (
        torch.nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(x) @ w + b, torch.from_numpy(truth))
        + 0.5e-3 * w @ w
    )
    loss.backward()
    assert w.grad.abs().max() < 1e-4 and b.grad.abs().max() < 1e-4  # convex: zero gradient = the optimum
    assert ((head_scores(x, weights, bias) >= 0.5) == truth).mean() > 0.9


@pytest.fixture(scope="module")
def probe_table(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    rows, labels = labelled_rows(240, seed=41, prefix="p")
    ingest(str(root / "db"), rows)
    policy = yaml.safe_load(Path(DEMO_POLICY_PATH).read_text())
    policy["categories"].append(
        {
            "name": "warm",
            "kind": "topic",
            "positive": ["warm colour"],
            "negative": ["cold colour"],
            "review_threshold": 0.5,
        }
    )
    (root / "policy.yaml").write_text(yaml.safe_dump(policy))
    write_labels(root / "labels.parquet", labels, ("star", "warm"))
    return root


def test_heads_are_judged_on_held_out_labels_and_replace_prompts_where_they_win(probe_table):
    root = probe_table
    report = train_heads(
        str(root / "db"),
        "media",
        root / "labels.parquet",
        root / "policy.yaml",
        root / "heads" / "heads.json",
        out_policy=root / "with-heads.yaml",
    )
    warm = report["categories"]["warm"]
    assert warm["head_beats_prompts"] and warm["held_out_ap"]["head"] > warm["held_out_ap"]["prompts"] + 0.2
    assert warm["rows"]["held_out"] == 60 and warm["rows"]["train"] == 180
    assert report["categories"]["star"]["held_out_ap"]["prompts"] > 0.8
    assert "warm" in report["winners"]
    written = json.loads((root / "heads" / "heads.json").read_text())
    assert written["model"] == "clipline-tiny/bundled" and len(written["heads"]["warm"]["weights"]) == 128
    assert json.loads((root / "heads" / "heads.report.json").read_text())["winners"] == report["winners"]

    policy = load_policy(root / "with-heads.yaml")
    assert policy.version == "1+heads"
    assert {c.name for c in policy.categories if c.head} == set(report["winners"])
    assert (root / "with-heads.yaml").read_text().count("head: heads/heads.json") == len(report["winners"])

    # the head's score is what the pipeline, rescore and calibrate see for `warm`
    bank = PromptBank.build(bundle(), policy)
    table = ClipTable.open(str(root / "db"), "media")
    rows = table.rows_by_ids(["p-0", "p-1", "p-2"], ["id", "status", "image_embedding", "text_embedding"])
    vectors = np.stack(rows.column("image_embedding").to_numpy(zero_copy_only=False))
    head = written["heads"]["warm"]
    expected = head_scores(vectors, np.array(head["weights"], dtype=np.float32), head["bias"])
    assert bank.score(vectors)[:, policy.category_index["warm"]] == pytest.approx(expected, abs=1e-5)
    # the documented flow: train-head → calibrate the head's thresholds → rescore the table
    calibrated = calibrate(
        str(root / "db"), "media", root / "labels.parquet", root / "with-heads.yaml", root / "calibrated.yaml"
    )
    assert calibrated["categories"]["warm"]["average_precision"]["held_out"] > 0.95  # rows the head never saw
    summary = rescore(str(root / "db"), "media", root / "calibrated.yaml")
    assert summary.scored == 240
    truth = pq.read_table(root / "labels.parquet").to_pylist()
    warm = {label["id"] for label in truth if label["category"] == "warm" and label["label"] == 1}
    rows = ClipTable.open(str(root / "db"), "media").lance.to_arrow().to_pylist()
    tagged = {row["id"] for row in rows if "warm" in row["labels"]}
    assert len(warm & tagged) >= 0.85 * len(warm) and len(tagged - warm) <= 0.15 * len(tagged)


def test_cli_train_head_reports_and_refuses_clearly(probe_table, capsys):
    root = probe_table
    common = ["train-head", "--db", str(root / "db"), "--table", "media", "--policy", str(root / "policy.yaml")]
    assert main([*common, "--labels", str(root / "labels.parquet"), "--out", str(root / "cli" / "h.json")]) == 0
    out = capsys.readouterr().out
    assert "warm" in out and "head wins" in out
    assert (
        main([*common, "--labels", str(root / "labels.parquet"), "--out", str(root / "h.json"), "--holdout", "0"]) == 2
    )
    assert "holdout must be in (0, 1)" in capsys.readouterr().err
    assert main([*common, "--labels", str(root / "nope.parquet"), "--out", str(root / "h.json")]) == 2
    assert "labels file not found" in capsys.readouterr().err
