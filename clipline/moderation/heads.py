"""Few-shot linear probes: a logistic-regression head per category, fitted on stored embeddings.

Zero-shot prompts know only what the prompts say; labels from the team's own traffic often
separate a category better (in the CLIP paper, zero-shot matches a linear probe trained on about
four labels per class, and probes with more labels pull ahead). A head is score = sigmoid(x·w + b) on
the same stored embedding the prompts are scored from, so a policy can switch one category to
its head (`head: heads.json`) and every other piece (bands, reasons, rescore, calibration) works
unchanged.

Each head is fitted on the calibration split of its labels (the same stable split `calibrate`
uses, so with the same `--holdout` calibrate's held-out rows are rows the head never saw) and is
compared with the category's prompts on the held-out split by average precision. A head wins when
its AP beats the prompts' by at least `min_gain` (default 0.01): a smaller gain on a few hundred
held-out labels is noise, and switching a category costs a re-calibration. The report says which
won, and `--out-policy` switches exactly the categories whose head won. A head's probabilities are
on another scale than the prompts' softmax, so thresholds must be re-calibrated after switching
(`clipline calibrate` on the new policy).

The fit is L2-regularised logistic regression by L-BFGS in float64 (torch, no scikit-learn): the
loss is convex, so L-BFGS converges to the one optimum in a few dozen steps for any D ≤ 1024.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from clipline.moderation.calibrate import PRCurve
from clipline.moderation.labels import LabelledSet, check_label_counts, held_out_mask, labels_digest
from clipline.schemas.policy import HEADS_FORMAT, Policy, write_policy
from clipline.schemas.storage import StorageConfig

DEFAULT_L2 = 1e-3
DEFAULT_MIN_GAIN = 0.01


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = DEFAULT_L2, max_iter: int = 200) -> tuple[np.ndarray, float]:
    """Minimise mean binary cross-entropy + l2/2·‖w‖² (bias unpenalised); returns (w, b)."""
    features = torch.from_numpy(np.asarray(x, dtype=np.float64))
    targets = torch.from_numpy(np.asarray(y, dtype=np.float64))
    weights = torch.zeros(features.shape[1], dtype=torch.float64, requires_grad=True)
    prior = float(np.clip(targets.mean().item(), 1e-3, 1 - 1e-3))
    bias = torch.tensor([np.log(prior / (1 - prior))], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [weights, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        logits = features @ weights + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets) + 0.5 * l2 * weights @ weights
        loss.backward()
        return loss

    optimiser.step(closure)
    return weights.detach().numpy().astype(np.float32), float(bias.detach().item())


def head_scores(x: np.ndarray, weights: np.ndarray, bias: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(x @ weights + bias)))


def train_heads(
    uri: str,
    table_name: str,
    labels_path: str | Path,
    policy_path: str | Path,
    out_path: str | Path,
    out_policy: str | Path | None = None,
    holdout: float = 0.25,
    l2: float = DEFAULT_L2,
    min_gain: float = DEFAULT_MIN_GAIN,
    min_labels: int = 20,
    storage: StorageConfig | None = None,
) -> dict:
    """Fit one head per labelled category, write the heads file (and optionally a policy using the
    heads that beat their prompts); returns the report that is also written next to the heads."""
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1): heads are judged on held-out labels, got {holdout}")
    if l2 < 0:
        raise ValueError(f"l2 must be ≥ 0, got {l2}")
    if min_labels < 1:
        raise ValueError(f"min labels must be at least 1, got {min_labels}")
    data = LabelledSet.load(uri, table_name, labels_path, policy_path, storage)
    policy, labels, embeddings, model = data.policy, data.labels, data.embeddings, data.model
    # Embeddings are what the heads learn from; the prompts' scores are what they must beat.
    prompt_scores = data.scores(data.prompt_bank(use_heads=False))
    counts = check_label_counts(labels, embeddings, min_labels)

    heads, results = {}, {}
    for name, group in labels.items():
        keep = np.array([row_id in embeddings for row_id in group.ids], dtype=bool)
        kept_ids = [row_id for row_id, kept in zip(group.ids, keep, strict=True) if kept]
        truth = group.labels[keep]
        x = np.stack([embeddings[row_id] for row_id in kept_ids])
        prompts = np.array([prompt_scores[row_id][policy.category_index[name]] for row_id in kept_ids])
        held = held_out_mask(name, kept_ids, truth, holdout)
        weights, bias = fit_logistic(x[~held], truth[~held], l2)
        ap_head = PRCurve.of(head_scores(x[held], weights, bias), truth[held]).average_precision()
        ap_prompts = PRCurve.of(prompts[held], truth[held]).average_precision()
        beats = ap_head is not None and ap_prompts is not None and ap_head >= ap_prompts + min_gain
        results[name] = {
            "labels": counts[name],
            "rows": {"train": int((~held).sum()), "held_out": int(held.sum())},
            "held_out_ap": {"head": _round(ap_head), "prompts": _round(ap_prompts)},
            "head_beats_prompts": beats,
        }
        heads[name] = {"weights": [float(value) for value in weights], "bias": bias, **results[name]}

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "format": HEADS_FORMAT,
        "model": model,
        "embedding_dim": data.bundle.embed_dim,
        "l2": l2,
        "labels_sha256": labels_digest(labels),
        "heads": heads,
    }
    out_path.write_text(json.dumps(document))
    report = {
        "heads": str(out_path),
        "model": model,
        "min_gain": min_gain,
        "categories": results,
        "winners": [name for name, result in results.items() if result["head_beats_prompts"]],
    }
    if out_policy is not None:
        switched = switch_to_heads(policy, out_path, report["winners"], storage)
        header = (
            f"{Path(policy_path).name} with linear heads from {out_path.name} for: "
            f"{', '.join(report['winners']) or '-'}"
            "\n(heads that beat their prompts on held-out labels). Head probabilities are on another scale than"
            "\nprompt scores: run `clipline calibrate` on this policy before using its thresholds."
        )
        write_policy(switched, out_policy, header)
        report["policy_out"] = {"path": str(out_policy), "version": switched.version, "hash": switched.content_hash}
    out_path.with_suffix(".report.json").write_text(json.dumps(report, indent=2))
    return report


def switch_to_heads(
    policy: Policy, heads_path: Path, categories: list[str], storage: StorageConfig | None = None
) -> Policy:
    """The policy with `head:` set for these categories; a new version, since scores change (its hash
    lists are read again with `storage`)."""
    data = policy.model_dump(mode="json")
    for category in data["categories"]:
        if category["name"] in categories:
            category["head"] = str(Path(heads_path).resolve())
    if categories:
        data["version"] = f"{policy.version}+heads"
    return Policy.model_validate(data, context={"storage": storage})


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def format_report(report: dict) -> str:
    """What `clipline train-head` prints: held-out AP of head and prompts per category, and the winner."""
    lines = [
        f"heads → {report['heads']}  (model {report['model']})",
        f"{'category':<18} {'AP head':>8} {'AP prompts':>10}  (held-out; a head must gain ≥ {report['min_gain']})",
    ]
    for name, result in report["categories"].items():
        ap = result["held_out_ap"]
        verdict = "head wins" if result["head_beats_prompts"] else "prompts stay"
        head = "-" if ap["head"] is None else f"{ap['head']:.3f}"
        prompts = "-" if ap["prompts"] is None else f"{ap['prompts']:.3f}"
        lines.append(f"{name:<18} {head:>8} {prompts:>10}  {verdict}")
    if "policy_out" in report:
        lines.append(f"policy → {report['policy_out']['path']} (version {report['policy_out']['version']})")
        lines.append("next: clipline calibrate on that policy (head probabilities need their own thresholds)")
    return "\n".join(lines)
