"""Zero-shot policy scoring: per-category probability, labels, decision and reasons for each row.

For each category the row's embedding is compared with the category's positive and negative
prompt embeddings, scaled by the model's logit scale and soft-maxed within the category; the
score is the probability mass on the positive prompts. Categories are independent (multi-label).
Image rows are scored from the image embedding, text-only rows from the text embedding.

This module is the only scoring implementation: the pipeline, `clipline rescore`, `calibrate` and
`train-head` all score stored or fresh embeddings through `PromptBank.score` and `decide`.

A policy's hash lists (`hash_lists.py`) are matched in the same stage: a row whose PDQ hash is
near a list entry gets the list's action whatever its scores say (a block beats any score), a
reason `hash:<list>` first among its reasons, and the entry and its label in `hash_matches`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from clipline.models.loader import ClipBundle
from clipline.models.prompt_cache import PromptCache
from clipline.models.zero_shot import prompt_weights
from clipline.operators.base import STATEFUL, Resources, WorkerState
from clipline.operators.columns import embedding_matrix, ok_mask, set_column
from clipline.operators.hash_lists import PolicyHashLists, RowMatches
from clipline.schemas.policy import ALL_MODERATION, Policy
from clipline.schemas.storage import StorageConfig
from clipline.schemas.table import HASH_MATCH_TYPE, REASON_TYPE, SCORE_TYPE

SEVERITY = {"allow": 0, "review": 1, "block": 2}
RESULT_TYPES = {
    "scores": pa.list_(SCORE_TYPE),
    "labels": pa.list_(pa.string()),
    "decision": pa.string(),
    "reasons": pa.list_(REASON_TYPE),
    "hash_matches": pa.list_(HASH_MATCH_TYPE),
}


@dataclass(frozen=True)
class PromptBank:
    """All categories' prompt embeddings stacked into one matrix, so scoring is a single matmul.

    `bounds[c]` is (start, end, n_positive) of category c's rows: positives first, then negatives.
    A category scored by a trained linear head has no prompt rows (start == end); `heads` holds
    (column, weights, bias) for those, and its score is the head's sigmoid.
    """

    weights: np.ndarray
    bounds: tuple[tuple[int, int, int], ...]
    logit_scale: float
    heads: tuple[tuple[int, np.ndarray, float], ...] = ()

    @classmethod
    def build(
        cls, bundle: ClipBundle, policy: Policy, use_heads: bool = True, cache: PromptCache | None = None
    ) -> PromptBank:
        """Encode every category's prompts through its templates, once (or read them from `cache`).

        `use_heads=False` scores every category from its prompts, even where the policy names a
        head (train-head compares the two on held-out labels).
        """
        encode = cache.prompt_weights if cache is not None else prompt_weights
        if use_heads:
            policy.check_heads(f"{bundle.arch}/{bundle.pretrained}", bundle.embed_dim)
        blocks, bounds, heads, start = [], [], [], 0
        for column, category in enumerate(policy.categories):
            head = policy.head_for(category.name) if use_heads else None
            if head is not None:
                heads.append((column, np.asarray(head.weights, dtype=np.float32), float(head.bias)))
                bounds.append((start, start, 0))
                continue
            prompts = category.positive + category.negative
            blocks.append(encode(bundle, prompts, policy.templates_for(category)))
            bounds.append((start, start + len(prompts), len(category.positive)))
            start += len(prompts)
        weights = np.concatenate(blocks) if blocks else np.zeros((0, bundle.embed_dim), dtype=np.float32)
        return cls(weights, tuple(bounds), bundle.logit_scale, tuple(heads))

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, D) unit vectors → (n, categories) probabilities in [0, 1]."""
        logits = self.logit_scale * embeddings @ self.weights.T
        scores = np.empty((len(embeddings), len(self.bounds)), dtype=np.float32)
        for column, (start, end, positives) in enumerate(self.bounds):
            if start == end:
                continue
            block = logits[:, start:end]
            block = np.exp(block - block.max(axis=1, keepdims=True))
            scores[:, column] = block[:, :positives].sum(axis=1) / block.sum(axis=1)
        for column, weights, bias in self.heads:
            scores[:, column] = 1.0 / (1.0 + np.exp(-(embeddings @ weights + bias)))
        return scores


def thresholds(policy: Policy, scores: np.ndarray) -> list[tuple[float, float | None]]:
    """(review, block) threshold per category for one row, after the policy's rules.

    Rules read the raw scores, so one rule firing never makes another fire; where several name a
    category, the largest delta wins. Thresholds never go below 0.
    """
    lowered: dict[str, float] = {}
    for rule in policy.rules:
        if scores[policy.category_index[rule.when]] < rule.at:
            continue
        for target, delta in rule.tighten.items():
            if target == ALL_MODERATION:
                names = [c.name for c in policy.categories if c.kind == "moderation" and c.name != rule.when]
            else:
                names = [target]
            for name in names:
                lowered[name] = max(lowered.get(name, 0.0), delta)
    result = []
    for category in policy.categories:
        delta = lowered.get(category.name, 0.0)
        block = None if category.block_threshold is None else max(0.0, category.block_threshold - delta)
        result.append((max(0.0, category.review_threshold - delta), block))
    return result


def decide(policy: Policy, scores: np.ndarray) -> tuple[str, list[str], list[dict]]:
    """One row's decision, labels and reasons from its category scores.

    A moderation category at or over its block threshold blocks; at or over its review threshold
    it sends the row to review. Topic categories only add labels. Reasons carry the margin to the
    threshold that fired, so a reviewer sees how close the call was; where a rule tightened it,
    the reason shows the tightened threshold.
    """
    decision, labels, reasons = "allow", [], []
    limits = thresholds(policy, scores) if policy.rules else None
    for index, (category, score) in enumerate(zip(policy.categories, scores.tolist(), strict=True)):
        review_at, block_at = limits[index] if limits else (category.review_threshold, category.block_threshold)
        if score < review_at:
            continue
        labels.append(category.name)
        if category.kind != "moderation":
            continue
        blocked = block_at is not None and score >= block_at
        threshold = block_at if blocked else review_at
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


def row_embeddings(batch: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """The image embedding where there is one, else the text embedding; ok rows only.

    Returns (the scored rows' vectors, boolean mask of the rows that were scored).
    """
    images, has_image = embedding_matrix(batch.column("image_embedding"))
    texts, has_text = embedding_matrix(batch.column("text_embedding"))
    dim = images.shape[1]
    full = np.zeros((batch.num_rows, dim), dtype=np.float32)
    full[has_text] = texts
    full[has_image] = images
    scored = ok_mask(batch) & (has_image | has_text)
    return full[scored], scored


class ClassifyPolicy:
    """Adds `scores`, `labels`, `decision`, `reasons`, `hash_matches`, `policy_version` and `policy_hash`."""

    name = "classify"

    def __init__(
        self,
        policy: Policy,
        bank: PromptBank | None = None,
        cache: PromptCache | None = None,
        resources: Resources = STATEFUL,
        storage: StorageConfig | None = None,
        hash_lists: PolicyHashLists | None = None,
    ) -> None:
        self.policy = policy
        self.bank = bank
        self.cache = cache
        self.resources = resources
        self.storage = storage or StorageConfig()
        if hash_lists is None and not policy.hash_lists:
            hash_lists = PolicyHashLists([])  # nothing to read: usable without setup(), given a bank
        self.hash_lists = hash_lists

    def setup(self, state: WorkerState) -> None:
        """Prompt embeddings from the worker's already-loaded model (from the cache, else encoded
        once), and the policy's hash lists, read and indexed once per worker."""
        if state.clip is None:
            raise RuntimeError("ClassifyPolicy scores with the encoder's model: set up EncodeClip first")
        self.bank = PromptBank.build(state.clip, self.policy, cache=self.cache)
        self.hash_lists = PolicyHashLists.load(self.policy, self.storage)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.bank is None or self.hash_lists is None:
            raise RuntimeError("ClassifyPolicy.setup() must run before the first batch")
        embeddings, scored = row_embeddings(batch)
        all_scores = iter(self.bank.score(embeddings))
        listed = self.hash_lists.match(batch)
        columns: dict[str, list] = {name: [] for name in RESULT_TYPES}
        for is_scored, found in zip(scored.tolist(), listed, strict=True):
            row = self._row(next(all_scores) if is_scored else None, found)
            for name, values in columns.items():
                values.append(row[name])
        for name, values in columns.items():
            batch = set_column(batch, name, pa.array(values, RESULT_TYPES[name]))
        batch = set_column(batch, "policy_version", pa.array([self.policy.version] * batch.num_rows))
        return set_column(batch, "policy_hash", pa.array([self.policy.content_hash] * batch.num_rows))

    def _row(self, row_scores: np.ndarray | None, found: RowMatches | None) -> dict:
        """One row's results from its category scores (None: not scored) and its hash-list matches."""
        result = dict.fromkeys(RESULT_TYPES)
        if row_scores is not None:
            names = self.policy.category_names
            result["decision"], result["labels"], result["reasons"] = decide(self.policy, row_scores)
            result["scores"] = [{"category": n, "score": s} for n, s in zip(names, row_scores.tolist(), strict=True)]
        if found is not None:
            decision = result["decision"] or "allow"
            result["decision"] = max(decision, found.action, key=SEVERITY.__getitem__)
            result["reasons"] = found.reasons + (result["reasons"] or [])
            result["hash_matches"] = found.matches
        return result
