"""Re-apply a policy to every row of a table from its stored embeddings, as one in-place update.

A policy change (new thresholds from `clipline calibrate`, a new category, a trained head) must
not cost a re-run: decoding and encoding are nearly all of a run's time, and the embeddings do
not depend on the policy. Rescore reads `id`, `status` and the two embedding columns, scores them
with the pipeline's own `ClassifyPolicy` (only the policy's prompts are embedded; no image is
read, decoded or encoded), and writes `scores`, `labels`, `decision`, `reasons`, `policy_version`
and `policy_hash` back with one `merge_insert` on `id`. Columns absent from that update (ids,
embeddings, provenance of the run, reviewer overrides) keep their values.

The policy's hash lists are applied the same way, from the stored `pdq_hash` and `pdq_quality`
(no image is read to re-hash it): a list that grew blocks the rows near its new entries, one
that shrank releases the rows only its removed entries matched; `hash_matches` is rewritten.

Results are staged beside the table (bounded memory, like the sink) and merged in one commit, so
a rescore killed halfway leaves the table as it was. Reviewer overrides are re-read just before
that commit and win over the model's decision, as they do in every run.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa

from clipline.moderation.scoring import SCORING_COLUMNS, load_table_and_model, table_prompt_bank
from clipline.operators.classify import ClassifyPolicy, PromptBank
from clipline.operators.hash_lists import PolicyHashLists
from clipline.schemas.policy import Policy, load_policy
from clipline.schemas.storage import StorageConfig
from clipline.table.store import ClipTable, apply_overrides

RESULT_COLUMNS = ["id", "scores", "labels", "decision", "reasons", "hash_matches", "policy_version", "policy_hash"]
HASH_COLUMNS = ["pdq_hash", "pdq_quality"]
# Written back unchanged: a write must carry the vectors of the table's embedding functions, and the
# content hash keeps a row re-ingested during the rescore from getting its old vectors back.
CARRIED_COLUMNS = ["content_sha256", "image_embedding", "text_embedding"]


@dataclass
class RescoreSummary:
    """What a rescore changed, in numbers a person reads."""

    table_uri: str
    table: str
    policy_version: str
    policy_hash: str
    dry_run: bool = False
    rows: int = 0
    scored: int = 0
    changed: int = 0
    transitions: dict[str, int] = field(default_factory=dict)
    decisions_before: dict[str, int] = field(default_factory=dict)
    decisions_after: dict[str, int] = field(default_factory=dict)
    policy_versions_before: dict[str, int] = field(default_factory=dict)
    hash_matches: dict[str, int] = field(default_factory=dict)
    overrides: int = 0
    table_version_before: int = 0
    table_version_after: int = 0
    wall_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        """What `clipline rescore` prints."""

        def counts(values: dict[str, int]) -> str:
            return ", ".join(f"{key}: {value}" for key, value in sorted(values.items())) or "-"

        verb = "would change" if self.dry_run else "changed"
        lines = [
            f"rescore {self.table_uri} :: {self.table}{'  (dry run: nothing written)' if self.dry_run else ''}",
            f"  policy         {self.policy_version} ({self.policy_hash[:12]})",
            f"  rows           {self.rows} ({self.scored} scored, {self.rows - self.scored} failed rows)",
            f"  was scored by  {counts(self.policy_versions_before)}",
            f"  decisions      {counts(self.decisions_before)}  →  {counts(self.decisions_after)}",
            f"  {verb:<14} {self.changed}  ({counts(self.transitions)})",
            f"  hash matches   {counts(self.hash_matches)}",
            f"  overrides      {self.overrides} reviewer decisions kept",
            f"  table version  {self.table_version_before} → {self.table_version_after}",
            f"  wall time      {self.wall_s:.2f} s",
        ]
        return "\n".join(lines)


def _count(counter: Counter, values: list) -> None:
    counter.update(value for value in values if value is not None)


def _matches_per_list(rows: pa.Table) -> list[str]:
    return [match["list"] for matches in rows.column("hash_matches").to_pylist() for match in matches or []]


def rescore_table(
    table: ClipTable,
    policy: Policy,
    bank: PromptBank,
    dry_run: bool = False,
    hash_lists: PolicyHashLists | None = None,
) -> RescoreSummary:
    """Rescore every row of an open table; the CLI's `rescore` wraps this.

    `hash_lists` are the policy's lists, loaded (default: read with the table's storage settings).
    """
    started = time.perf_counter()
    summary = RescoreSummary(
        table_uri=table.db_uri,
        table=table.name,
        policy_version=policy.version,
        policy_hash=policy.content_hash,
        dry_run=dry_run,
    )
    summary.table_version_before = table.version
    if not dry_run:  # a table from before `hash_matches` existed gets the column it is about to be written
        table.upgrade()
    if hash_lists is None:
        hash_lists = PolicyHashLists.load(policy, table.storage)
    classify = ClassifyPolicy(policy, bank, hash_lists=hash_lists)
    overrides = table.overrides()
    stored = table.lance.schema
    written = [name for name in [*RESULT_COLUMNS, *CARRIED_COLUMNS] if name in stored.names]
    result_schema = pa.schema([stored.field(name) for name in written])
    scoring = SCORING_COLUMNS + [name for name in HASH_COLUMNS if name in stored.names]
    before, after, versions, transitions, listed = Counter(), Counter(), Counter(), Counter(), Counter()
    staging = table.staging(f"rescore-{uuid.uuid4().hex[:12]}", result_schema)
    try:
        reader = table.lance.search().select([*scoring, "decision", "policy_version", "content_sha256"]).limit(None)
        for record_batch in reader.to_batches():
            batch = pa.Table.from_batches([record_batch])
            old = batch.column("decision").to_pylist()
            _count(versions, batch.column("policy_version").to_pylist())
            results = classify(batch.select([*scoring, "content_sha256"]))
            listed.update(_matches_per_list(results))
            model_rows = results.select(result_schema.names).cast(result_schema)
            new = apply_overrides(model_rows, overrides).column("decision").to_pylist()
            _count(before, old)
            _count(after, new)
            transitions.update(f"{a}→{b}" for a, b in zip(old, new, strict=True) if a != b)
            summary.rows += batch.num_rows
            summary.scored += sum(value is not None for value in model_rows.column("scores").to_pylist())
            if not dry_run:
                staging.add(model_rows)
        # Staged rows hold the model's decision; overrides re-read now win over it, so a review
        # applied while the rescore ran is honoured (and one cleared meanwhile is not resurrected).
        latest = table.overrides()
        staging.merge_into(
            table, insert_new=False, transform=lambda rows: apply_overrides(rows, latest), if_unchanged=True
        )
    finally:
        staging.drop()
    summary.decisions_before, summary.decisions_after = dict(before), dict(after)
    summary.policy_versions_before = dict(versions)
    summary.hash_matches = dict(listed)
    summary.transitions = dict(transitions)
    summary.changed = sum(transitions.values())
    summary.overrides = len(overrides)
    summary.table_version_after = table.version
    summary.wall_s = time.perf_counter() - started
    return summary


def rescore(
    uri: str,
    table_name: str,
    policy_path: str | Path,
    storage: StorageConfig | None = None,
    dry_run: bool = False,
) -> RescoreSummary:
    """Load the policy (and its hash lists) and the table's own model (for the prompt embeddings), then
    rescore every row."""
    policy = load_policy(policy_path, storage)
    table, bundle = load_table_and_model(uri, table_name, storage)
    return rescore_table(table, policy, table_prompt_bank(table, bundle, policy), dry_run=dry_run)
