"""Calibrate a policy's thresholds on labelled rows of a table, from the stored embeddings.

Labels are (id, category, label ∈ {0, 1}) rows. Each labelled row is scored by the same code
that scored it in the pipeline (`PromptBank.score` on its stored image embedding, else its text
embedding): nothing is decoded or re-encoded, only the policy's prompts are embedded.

Per category the labels are split, stably and stratified, into a calibration part and a held-out
part (`holdout`, by sha256 of category and id, so the split does not depend on file order and a
re-run with more labels keeps most rows where they were). Thresholds are picked on the
calibration part; the held-out part says what they are worth on rows they were not picked on:

- block threshold: the lowest score whose precision is ≥ the target precision. Lowest, because
  among the thresholds the team accepts (precision ≥ target) it blocks the most violating rows.
  When no threshold reaches the target, the category does not block at all: blocking at a
  precision the team did not sign off on is worse than sending those rows to review.
- review threshold: the highest score whose recall is ≥ the target recall. Highest, because it
  reaches the recall the team asked for with the fewest rows for humans to look at.
- if the block threshold comes out below the review threshold, the review band is empty and the
  review threshold is set to the block threshold (everything the review band would catch is
  already blocked).

Calibration moves thresholds; it does not decide which categories may block: a moderation category
gets a calibrated block threshold only if the input policy gives it one, and topic categories get a
review threshold only. Rules (threshold tightening) act on top of the calibrated base thresholds
and are not part of the calibration.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipline.moderation.labels import (
    CategoryLabels,
    LabelError,
    LabelledSet,
    check_label_counts,
    held_out_mask,
    labels_digest,
)
from clipline.schemas.policy import Policy, write_policy
from clipline.schemas.storage import StorageConfig

SCORING_COLUMNS = ["id", "status", "image_embedding", "text_embedding"]
IDS_PER_QUERY = 1000
THRESHOLD_DECIMALS = 6


# --------------------------------------------------------------------------- curves


@dataclass(frozen=True)
class PRCurve:
    """Precision and recall at each distinct score, thresholds descending (flag: score ≥ threshold)."""

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    positives: int

    @classmethod
    def of(cls, scores: np.ndarray, labels: np.ndarray) -> PRCurve:
        order = np.argsort(-scores, kind="stable")
        ordered, truth = scores[order], labels[order].astype(np.float64)
        last_of_run = np.r_[np.flatnonzero(np.diff(ordered)), len(ordered) - 1] if len(ordered) else np.array([], int)
        tp, fp = np.cumsum(truth)[last_of_run], np.cumsum(1 - truth)[last_of_run]
        positives = int(truth.sum())
        return cls(ordered[last_of_run], tp / (tp + fp), tp / max(positives, 1), positives)

    def average_precision(self) -> float | None:
        """Σ (Rₙ − Rₙ₋₁)·Pₙ over the thresholds (no interpolation, as scikit-learn computes it)."""
        if self.positives == 0:
            return None
        return float(np.sum(np.diff(np.r_[0.0, self.recall]) * self.precision))

    def lowest_threshold_with_precision(self, target: float) -> float | None:
        reaching = np.flatnonzero(self.precision >= target)
        return None if len(reaching) == 0 else float(self.thresholds[reaching[-1]])

    def highest_threshold_with_recall(self, target: float) -> float | None:
        reaching = np.flatnonzero(self.recall >= target)
        return None if len(reaching) == 0 else float(self.thresholds[reaching[0]])


def at_threshold(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Precision, recall and counts of flagging score ≥ threshold (precision None when nothing is flagged)."""
    flagged = scores >= threshold
    tp = int((flagged & (labels == 1)).sum())
    positives = int((labels == 1).sum())
    return {
        "precision": round(tp / int(flagged.sum()), 4) if flagged.any() else None,
        "recall": round(tp / positives, 4) if positives else None,
        "flagged": int(flagged.sum()),
        "true_positives": tp,
    }


def floor_threshold(value: float) -> float:
    """Round down, so the row the threshold was picked at stays flagged (score ≥ threshold)."""
    scale = 10**THRESHOLD_DECIMALS
    return math.floor(value * scale) / scale


def plot_pr(
    path: Path,
    category: str,
    curves: dict[str, PRCurve],
    points: dict[str, tuple[float, float]],
    targets: tuple[float, float],
) -> None:
    """One PNG: the PR curves (calibration, held-out), the targets and the chosen operating points.

    Drawn as steps where each recall interval (Rₙ₋₁, Rₙ] has precision Pₙ: the area under the
    steps is the AP in the legend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for (name, curve), style in zip(curves.items(), ("-", "--"), strict=False):
        if len(curve.thresholds) and curve.positives:
            ap = curve.average_precision()
            recall = np.r_[0.0, curve.recall]
            precision = np.r_[curve.precision[0], curve.precision]
            axes.step(recall, precision, style, where="pre", label=f"{name} (AP {ap:.3f})")
    target_precision, target_recall = targets
    axes.axhline(target_precision, color="grey", linewidth=0.8, linestyle=":")
    axes.axvline(target_recall, color="grey", linewidth=0.8, linestyle=":")
    for (name, (recall, precision)), marker in zip(points.items(), ("o", "s"), strict=False):
        axes.plot([recall], [precision], marker, markersize=9, label=name)
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title=category)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


# --------------------------------------------------------------------------- calibration


def calibrate_category(
    category_name: str,
    kind: str,
    blocks: bool,
    group: CategoryLabels,
    scores: dict[str, np.ndarray],
    column: int,
    holdout: float,
    target_precision: float,
    target_recall: float,
) -> dict:
    """Pick one category's thresholds on its calibration split and measure them on the held-out split."""
    keep = np.array([row_id in scores for row_id in group.ids], dtype=bool)
    ids = [row_id for row_id, kept in zip(group.ids, keep, strict=True) if kept]
    truth = group.labels[keep]
    values = np.array([scores[row_id][column] for row_id in ids], dtype=np.float64)
    held = held_out_mask(category_name, ids, truth, holdout)
    if len(set(truth[~held].tolist())) < 2:
        raise LabelError(f"{category_name}: the calibration split needs positive and negative labels; lower --holdout")
    calib, test = PRCurve.of(values[~held], truth[~held]), PRCurve.of(values[held], truth[held])

    block = None
    block_note = "topic categories never block" if kind != "moderation" else "review-only category (no block_threshold)"
    if blocks:
        picked = calib.lowest_threshold_with_precision(target_precision)
        block = None if picked is None else floor_threshold(picked)
        best = float(calib.precision.max()) if len(calib.precision) else 0.0
        block_note = (
            None if block is not None else f"no threshold reaches precision {target_precision} (best {best:.3f})"
        )
    review = floor_threshold(calib.highest_threshold_with_recall(target_recall))
    review_note = None
    if block is not None and block < review:
        review, review_note = block, "review band empty: the block threshold already reaches the target recall"

    def point(threshold: float | None, note: str | None) -> dict:
        if threshold is None:
            return {"threshold": None, "note": note}
        return {
            "threshold": threshold,
            "calibration": at_threshold(values[~held], truth[~held], threshold),
            "held_out": at_threshold(values[held], truth[held], threshold),
            **({"note": note} if note else {}),
        }

    return {
        "kind": kind,
        "rows": {"calibration": int((~held).sum()), "held_out": int(held.sum())},
        "average_precision": {
            "calibration": _round(calib.average_precision()),
            "held_out": _round(test.average_precision()),
            "all": _round(PRCurve.of(values, truth).average_precision()),
        },
        "block": point(block, block_note),
        "review": point(review, review_note),
        "_curves": {"calibration": calib, "held-out": test},
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def calibrated_policy(
    policy: Policy, results: dict[str, dict], version: str, storage: StorageConfig | None = None
) -> Policy:
    """The policy with calibrated thresholds, validated again (its hash lists read with `storage`)."""
    data = policy.model_dump(mode="json")
    data["version"] = version
    for category in data["categories"]:
        result = results.get(category["name"])
        if result is None:
            continue
        category["review_threshold"] = result["review"]["threshold"]
        if category.get("block_threshold") is not None:
            category["block_threshold"] = result["block"]["threshold"]
    return Policy.model_validate(data, context={"storage": storage})


def calibrate(
    uri: str,
    table_name: str,
    labels_path: str | Path,
    policy_path: str | Path,
    out_path: str | Path,
    target_precision: float = 0.95,
    target_recall: float = 0.9,
    holdout: float = 0.25,
    min_labels: int = 20,
    version: str | None = None,
    report_dir: str | Path | None = None,
    storage: StorageConfig | None = None,
) -> dict:
    """Write a calibrated policy, a PR-curve PNG per category and `report.json`; returns the report."""
    for name, value in (("target precision", target_precision), ("target recall", target_recall)):
        if not 0.0 < value <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], got {value}")
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    if min_labels < 1:
        raise ValueError(f"min labels must be at least 1, got {min_labels}")
    data = LabelledSet.load(uri, table_name, labels_path, policy_path, storage)
    policy, labels = data.policy, data.labels
    scores = data.scores(data.prompt_bank())
    counts = check_label_counts(labels, scores, min_labels)

    out_path = Path(out_path)
    report_dir = Path(report_dir) if report_dir else out_path.parent / f"{out_path.stem}.calibration"
    report_dir.mkdir(parents=True, exist_ok=True)
    digest = labels_digest(labels)
    version = version or f"{policy.version}+cal.{digest[:8]}"
    results = {}
    for category in policy.categories:
        if category.name not in labels:
            continue
        result = calibrate_category(
            category.name,
            category.kind,
            category.block_threshold is not None,
            labels[category.name],
            scores,
            policy.category_index[category.name],
            holdout,
            target_precision,
            target_recall,
        )
        curves = result.pop("_curves")
        points = {
            f"{action} ≥ {result[action]['threshold']:.3f}": (chosen["recall"], chosen["precision"])
            for action in ("block", "review")
            if (chosen := result[action].get("calibration")) and chosen["precision"] is not None
        }
        plot = report_dir / f"pr-{category.name}.png"
        plot_pr(plot, category.name, curves, points, (target_precision, target_recall))
        result.update(
            labels=counts[category.name],
            before={"review_threshold": category.review_threshold, "block_threshold": category.block_threshold},
            plot=plot.name,
        )
        results[category.name] = result
    new_policy = calibrated_policy(policy, results, version, storage)
    header = (
        f"Calibrated by `clipline calibrate` from {Path(policy_path).name} (version {policy.version}) on table "
        f"{table_name!r}\nwith {sum(len(g.ids) for g in labels.values())} labels (sha256 {digest[:16]}), target "
        f"precision {target_precision}, target recall {target_recall}.\nReport: {report_dir / 'report.json'}"
    )
    write_policy(new_policy, out_path, header)
    report = {
        "policy_in": {"path": str(policy_path), "version": policy.version, "hash": policy.content_hash},
        "policy_out": {"path": str(out_path), "version": new_policy.version, "hash": new_policy.content_hash},
        "table": {"uri": uri, "name": table_name, "model": data.model},
        "labels": {"path": str(labels_path), "sha256": digest, "rows": sum(len(g.ids) for g in labels.values())},
        "targets": {"precision": target_precision, "recall": target_recall, "holdout": holdout},
        "categories": results,
        "uncalibrated": [name for name in policy.category_names if name not in results],
    }
    (report_dir / "report.json").write_text(json.dumps(report, indent=2))
    report["report_path"] = str(report_dir / "report.json")
    return report


def format_report(report: dict) -> str:
    """The lines `clipline calibrate` prints: one per category with AP and the chosen points."""
    lines = [
        f"policy {report['policy_in']['version']} → {report['policy_out']['version']}  "
        f"({report['policy_out']['path']})",
        f"{'category':<18} {'labels +/-':>10} {'AP held-out':>11}  {'block':>9} {'P/R held-out':>13}  "
        f"{'review':>9} {'P/R held-out':>13}",
    ]

    def cell(point: dict) -> tuple[str, str]:
        if point["threshold"] is None:
            return "-", ""
        held = point["held_out"]
        precision = "-" if held["precision"] is None else f"{held['precision']:.2f}"
        recall = "-" if held["recall"] is None else f"{held['recall']:.2f}"
        return f"{point['threshold']:.4f}", f"{precision}/{recall}"

    for name, result in report["categories"].items():
        block, block_pr = cell(result["block"])
        review, review_pr = cell(result["review"])
        ap = result["average_precision"]["held_out"]
        counts = f"{result['labels']['positives']}/{result['labels']['negatives']}"
        lines.append(
            f"{name:<18} {counts:>10} {'-' if ap is None else f'{ap:.3f}':>11}  {block:>9} {block_pr:>13}  "
            f"{review:>9} {review_pr:>13}"
        )
        for point in (result["block"], result["review"]):
            if point.get("note"):
                lines.append(f"{'':<18} note: {point['note']}")
    if report["uncalibrated"]:
        lines.append(f"unchanged (no labels): {', '.join(report['uncalibrated'])}")
    lines.append(f"report: {report['report_path']}")
    return "\n".join(lines)
