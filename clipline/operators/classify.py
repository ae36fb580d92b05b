"""Zero-shot policy scoring: per-category probability, labels, decision and reasons for each row.

For each category the row's embedding is compared with the category's positive and negative
prompt embeddings, scaled by the model's logit scale and soft-maxed within the category; the
score is the probability mass on the positive prompts. Categories are independent (multi-label).
Image rows are scored from the image embedding, text-only rows from the text embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from clipline.models.loader import ClipBundle
from clipline.models.zero_shot import prompt_weights
from clipline.operators.columns import embedding_matrix, ok_mask, set_column
from clipline.schemas.policy import Policy
from clipline.schemas.table import REASON_TYPE, SCORE_TYPE


@dataclass(frozen=True)
class PromptBank:
    """All categories' prompt embeddings stacked into one matrix, so scoring is a single matmul.

    `bounds[c]` is (start, end, n_positive) of category c's rows: positives first, then negatives.
    """

    weights: np.ndarray
    bounds: tuple[tuple[int, int, int], ...]
    logit_scale: float

    @classmethod
    def build(cls, bundle: ClipBundle, policy: Policy) -> PromptBank:
        """Encode every category's prompts through its templates, once."""
        blocks, bounds, start = [], [], 0
        for category in policy.categories:
            prompts = category.positive + category.negative
            blocks.append(prompt_weights(bundle, prompts, policy.templates_for(category)))
            bounds.append((start, start + len(prompts), len(category.positive)))
            start += len(prompts)
        return cls(np.concatenate(blocks), tuple(bounds), bundle.logit_scale)

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, D) unit vectors → (n, categories) probabilities in [0, 1]."""
        logits = self.logit_scale * embeddings @ self.weights.T
        scores = np.empty((len(embeddings), len(self.bounds)), dtype=np.float32)
        for column, (start, end, positives) in enumerate(self.bounds):
            block = logits[:, start:end]
            block = np.exp(block - block.max(axis=1, keepdims=True))
            scores[:, column] = block[:, :positives].sum(axis=1) / block.sum(axis=1)
        return scores


def decide(policy: Policy, scores: np.ndarray) -> tuple[str, list[str], list[dict]]:
    """One row's decision, labels and reasons from its category scores.

    A moderation category at or over its block threshold blocks; at or over its review threshold
    it sends the row to review. Topic categories only add labels. Reasons carry the margin to the
    threshold that fired, so a reviewer sees how close the call was.
    """
    decision, labels, reasons = "allow", [], []
    for category, score in zip(policy.categories, scores.tolist(), strict=True):
        if score < category.review_threshold:
            continue
        labels.append(category.name)
        if category.kind != "moderation":
            continue
        blocked = category.block_threshold is not None and score >= category.block_threshold
        threshold = category.block_threshold if blocked else category.review_threshold
        reasons.append(
            {
                "category": category.name,
                "action": "block" if blocked else "review",
                "score": score,
                "threshold": threshold,
                "margin": score - threshold,
            }
        )
        decision = "block" if blocked else ("review" if decision == "allow" else decision)
    return decision, labels, reasons


class ClassifyPolicy:
    """Adds `scores`, `labels`, `decision`, `reasons`, `policy_version` and `policy_hash`."""

    name = "classify"

    def __init__(self, policy: Policy, bank: PromptBank | None = None) -> None:
        self.policy = policy
        self.bank = bank

    def setup(self, bundle: ClipBundle) -> None:
        """Compute the prompt embeddings once per actor, from the actor's already-loaded model."""
        self.bank = PromptBank.build(bundle, self.policy)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.bank is None:
            raise RuntimeError("ClassifyPolicy.setup() must run before the first batch")
        embeddings, scored = self._row_embeddings(batch)
        all_scores = self.bank.score(embeddings)
        names = self.policy.category_names
        columns = {"scores": [], "labels": [], "decision": [], "reasons": []}
        position = 0
        for is_scored in scored:
            if not is_scored:
                for values in columns.values():
                    values.append(None)
                continue
            row_scores = all_scores[position]
            position += 1
            decision, labels, reasons = decide(self.policy, row_scores)
            columns["scores"].append(
                [{"category": n, "score": s} for n, s in zip(names, row_scores.tolist(), strict=True)]
            )
            columns["labels"].append(labels)
            columns["decision"].append(decision)
            columns["reasons"].append(reasons)
        types = {
            "scores": pa.list_(SCORE_TYPE),
            "labels": pa.list_(pa.string()),
            "decision": pa.string(),
            "reasons": pa.list_(REASON_TYPE),
        }
        for name, values in columns.items():
            batch = set_column(batch, name, pa.array(values, types[name]))
        batch = set_column(batch, "policy_version", pa.array([self.policy.version] * batch.num_rows))
        return set_column(batch, "policy_hash", pa.array([self.policy.content_hash] * batch.num_rows))

    @staticmethod
    def _row_embeddings(batch: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """The image embedding where there is one, else the text embedding; ok rows only."""
        images, has_image = embedding_matrix(batch.column("image_embedding"))
        texts, has_text = embedding_matrix(batch.column("text_embedding"))
        dim = images.shape[1]
        full = np.zeros((batch.num_rows, dim), dtype=np.float32)
        full[has_text] = texts
        full[has_image] = images
        scored = ok_mask(batch) & (has_image | has_text)
        return full[scored], scored
