"""Labelled rows for calibration and trained heads: the labels file, its stable split, and the
labelled rows' stored embeddings, loaded the same way for `calibrate` and `train-head`.

Labels are (id, category, label ∈ {0, 1}) rows. The split into a fitting part and a held-out part
is stable and stratified (by sha256 of category and id), so it does not depend on file order,
and a re-run with more labels keeps most rows where they were; `calibrate` and `train-head` with
the same `--holdout` hold out the same rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from clipline.models.loader import ClipBundle
from clipline.moderation.scoring import load_table_and_model, stored_embeddings, table_prompt_bank
from clipline.operators.classify import PromptBank
from clipline.schemas.policy import Policy, load_policy
from clipline.schemas.storage import StorageConfig
from clipline.table.store import ClipTable


class LabelError(ValueError):
    """The labels file cannot be used as given; the message says why, for the person who made it."""


@dataclass(frozen=True)
class CategoryLabels:
    """One category's labelled ids, in label-file order, with 0/1 labels."""

    ids: list[str]
    labels: np.ndarray


def read_labels(path: str | Path, policy: Policy) -> dict[str, CategoryLabels]:
    """Read (id, category, label) rows from parquet or CSV, checked against the policy."""
    path = Path(path)
    if not path.is_file():
        raise LabelError(f"labels file not found: {path}")
    try:
        if path.suffix.lower() == ".csv":  # ids stay text: "007" must not become 7
            text = pacsv.ConvertOptions(column_types={"id": pa.string(), "category": pa.string()})
            table = pacsv.read_csv(path, convert_options=text)
        else:
            table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise LabelError(f"cannot read labels {path}: {exc}") from exc
    missing = [name for name in ("id", "category", "label") if name not in table.column_names]
    if missing:
        raise LabelError(
            f"labels {path}: missing column(s) {missing} (has {table.column_names}); need id, category, label"
        )
    ids = [None if value is None else str(value) for value in table.column("id").to_pylist()]
    categories = table.column("category").to_pylist()
    raw_labels = table.column("label").to_pylist()
    problems, seen = [], {}
    for row, (row_id, category, label) in enumerate(zip(ids, categories, raw_labels, strict=True)):
        if row_id is None or category is None:
            problems.append(f"row {row}: id and category must not be empty")
        elif label not in (0, 1, True, False):
            problems.append(f"row {row}: label {label!r} is not 0 or 1")
        elif seen.setdefault((category, row_id), int(label)) != int(label):
            problems.append(f"row {row}: id {row_id!r} is labelled both 0 and 1 for {category!r}")
    unknown = sorted({c for c in categories if c is not None} - set(policy.category_names))
    if unknown:
        problems.append(f"categories not in policy {policy.name!r}: {unknown} (policy has {policy.category_names})")
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise LabelError(f"labels {path}:\n  {shown}")
    grouped: dict[str, CategoryLabels] = {}
    for category in policy.category_names:
        pairs = [(row_id, label) for (c, row_id), label in seen.items() if c == category]
        if pairs:
            grouped[category] = CategoryLabels([p[0] for p in pairs], np.array([p[1] for p in pairs], dtype=np.int8))
    if not grouped:
        raise LabelError(f"labels {path}: no rows")
    return grouped


def labels_digest(labels: dict[str, CategoryLabels]) -> str:
    """Content digest of a label set: the same labels give the same calibrated policy version."""
    digest = hashlib.sha256()
    for category in sorted(labels):
        for row_id, label in sorted(zip(labels[category].ids, labels[category].labels.tolist(), strict=True)):
            digest.update(f"{category}\0{row_id}\0{label}\n".encode())
    return digest.hexdigest()


def held_out_mask(category: str, ids: list[str], labels: np.ndarray, fraction: float) -> np.ndarray:
    """Stable stratified split: per class, the `fraction` of ids with the smallest sha256 are held out."""
    mask = np.zeros(len(ids), dtype=bool)
    if fraction <= 0:
        return mask
    keys = np.array([hashlib.sha256(f"{category}\0{row_id}".encode()).hexdigest() for row_id in ids])
    for value in (0, 1):
        members = np.flatnonzero(labels == value)
        count = round(fraction * len(members))
        mask[members[np.argsort(keys[members], kind="stable")[:count]]] = True
    return mask


def check_label_counts(
    labels: dict[str, CategoryLabels], scores: dict[str, np.ndarray], min_labels: int
) -> dict[str, dict]:
    """Counts per category of the labels that matched a scorable row; refuses too few of either class."""
    counts, short = {}, []
    for category, group in labels.items():
        matched = np.array([row_id in scores for row_id in group.ids], dtype=bool)
        positives = int((group.labels[matched] == 1).sum())
        negatives = int((group.labels[matched] == 0).sum())
        counts[category] = {"positives": positives, "negatives": negatives, "unmatched": int((~matched).sum())}
        if positives < min_labels or negatives < min_labels:
            short.append(
                f"{category}: {positives} positive and {negatives} negative labels matched rows "
                f"({int((~matched).sum())} labelled ids not in the table or failed)"
            )
    if short:
        raise LabelError(
            f"too few labels to calibrate (need at least {min_labels} positive and {min_labels} negative per "
            "category; lower --min-labels only if you accept noisy thresholds):\n  " + "\n  ".join(short)
        )
    return counts


@dataclass(frozen=True)
class LabelledSet:
    """A policy, its labels, the table they label, the table's model and the labelled rows' embeddings."""

    policy: Policy
    labels: dict[str, CategoryLabels]
    table: ClipTable
    bundle: ClipBundle
    embeddings: dict[str, np.ndarray]  # id → stored embedding, for labelled ids that are scorable rows

    @classmethod
    def load(
        cls, uri: str, table_name: str, labels_path: str | Path, policy_path: str | Path, storage: StorageConfig | None
    ) -> LabelledSet:
        policy = load_policy(policy_path, storage)
        labels = read_labels(labels_path, policy)
        table, bundle = load_table_and_model(uri, table_name, storage)
        found, vectors = stored_embeddings(table, [row_id for group in labels.values() for row_id in group.ids])
        return cls(policy, labels, table, bundle, dict(zip(found, vectors, strict=True)))

    @property
    def model(self) -> str:
        return f"{self.bundle.arch}/{self.bundle.pretrained}"

    def prompt_bank(self, use_heads: bool = True) -> PromptBank:
        return table_prompt_bank(self.table, self.bundle, self.policy, use_heads=use_heads)

    def scores(self, bank: PromptBank) -> dict[str, np.ndarray]:
        """Category scores by id for the labelled rows, as the pipeline would score them."""
        if not self.embeddings:
            return {}
        ids = list(self.embeddings)
        return dict(zip(ids, bank.score(np.stack([self.embeddings[row_id] for row_id in ids])), strict=True))
