"""Re-apply a policy to every row of a table from its stored embeddings, as one in-place update.

A policy change (new thresholds from `clipline calibrate`, a new category, a trained head) must
not cost a re-run: decoding and encoding are nearly all of a run's time, and the embeddings do
not depend on the policy. Rescore reads `id`, `status` and the two embedding columns, scores them
with the pipeline's own `ClassifyPolicy` (only the policy's prompts are embedded; no image is
read, decoded or encoded), and writes `scores`, `labels`, `decision`, `reasons`, `policy_version`
and `policy_hash` back with one `merge_insert` on `id`. Columns absent from that update (ids,
embeddings, provenance of the run, reviewer overrides) keep their values.

Results are staged in a LanceDB table beside the database (bounded memory, like the sink) and
merged in one commit, so a rescore killed halfway leaves the table as it was. Reviewer overrides
are re-read just before that commit and win over the model's decision, as they do in every run.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lancedb
import pyarrow as pa

from clipline.operators.classify import ClassifyPolicy, PromptBank
from clipline.operators.sink import apply_overrides, load_overrides
from clipline.pipelines.calibrate import SCORING_COLUMNS, load_table_and_model, table_prompt_bank
from clipline.schemas.policy import Policy, load_policy
from clipline.schemas.storage import StorageConfig

RESULT_COLUMNS = ["id", "scores", "labels", "decision", "reasons", "policy_version", "policy_hash"]
STAGING_DIR = "_clipline/staging"


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
    overrides: int = 0
    table_version_before: int = 0
    table_version_after: int = 0
    wall_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _count(counter: Counter, values: list) -> None:
    counter.update(value for value in values if value is not None)


def rescore_table(
    table: lancedb.table.Table,
    policy: Policy,
    bank: PromptBank,
    staging_uri: str,
    storage_options: dict | None = None,
    dry_run: bool = False,
) -> RescoreSummary:
    """Rescore every row of an open table; the CLI's `rescore_from_files` wraps this."""
    started = time.perf_counter()
    summary = RescoreSummary(
        table_uri="", table=table.name, policy_version=policy.version, policy_hash=policy.content_hash, dry_run=dry_run
    )
    summary.table_version_before = table.version
    classify = ClassifyPolicy(policy, bank)
    overrides = load_overrides(table)
    result_schema = pa.schema([table.schema.field(name) for name in RESULT_COLUMNS])
    before, after, versions, transitions = Counter(), Counter(), Counter(), Counter()
    staging_db = staging = None
    staging_name = f"rescore-{uuid.uuid4().hex[:12]}"
    if not dry_run:
        staging_db = lancedb.connect(staging_uri, storage_options=storage_options)
        staging = staging_db.create_table(staging_name, schema=result_schema, mode="overwrite")
    try:
        reader = table.search().select([*SCORING_COLUMNS, "decision", "policy_version"]).limit(None).to_batches()
        for record_batch in reader:
            batch = pa.Table.from_batches([record_batch])
            old = batch.column("decision").to_pylist()
            _count(versions, batch.column("policy_version").to_pylist())
            model_rows = classify(batch.select(SCORING_COLUMNS)).select(RESULT_COLUMNS).cast(result_schema)
            new = apply_overrides(model_rows, overrides).column("decision").to_pylist()
            _count(before, old)
            _count(after, new)
            transitions.update(f"{a}→{b}" for a, b in zip(old, new, strict=True) if a != b)
            summary.rows += batch.num_rows
            summary.scored += sum(value is not None for value in model_rows.column("scores").to_pylist())
            if staging is not None:
                staging.add(model_rows)
        if staging is not None and summary.rows:
            _commit(table, staging, result_schema)
    finally:
        if staging_db is not None:
            staging_db.drop_table(staging_name)
    summary.decisions_before, summary.decisions_after = dict(before), dict(after)
    summary.policy_versions_before = dict(versions)
    summary.transitions = dict(transitions)
    summary.changed = sum(transitions.values())
    summary.overrides = len(overrides)
    table.checkout_latest()
    summary.table_version_after = table.version
    summary.wall_s = time.perf_counter() - started
    return summary


def _commit(table: lancedb.table.Table, staging: lancedb.table.Table, schema: pa.Schema) -> None:
    """One merge_insert of the staged columns; overrides re-read now win over the model's decision.

    Staged rows hold the model's decision; applying overrides only here means a review applied
    while the rescore ran is honoured (and one cleared meanwhile is not resurrected).
    """
    overrides = load_overrides(table)

    def batches() -> Iterator[pa.RecordBatch]:
        for record_batch in staging.search().limit(None).to_batches():
            rows = pa.Table.from_batches([record_batch]).select(RESULT_COLUMNS).cast(schema)
            yield from apply_overrides(rows, overrides).to_batches()

    reader = pa.RecordBatchReader.from_batches(schema, batches())
    table.merge_insert("id").when_matched_update_all().execute(reader)


def rescore(
    uri: str,
    table_name: str,
    policy_path: str | Path,
    storage: StorageConfig | None = None,
    dry_run: bool = False,
) -> RescoreSummary:
    """Load the policy and the table's own model (for the prompt embeddings), then rescore every row."""
    storage = storage or StorageConfig()
    policy = load_policy(policy_path)
    table, bundle = load_table_and_model(uri, table_name, storage)
    bank = table_prompt_bank(bundle, policy, uri, storage)
    summary = rescore_table(
        table,
        policy,
        bank,
        f"{uri.rstrip('/')}/{STAGING_DIR}",
        storage.lance_options(uri) or None,
        dry_run=dry_run,
    )
    summary.table_uri = uri
    return summary


def format_summary(summary: RescoreSummary) -> str:
    """What `clipline rescore` prints."""

    def counts(values: dict[str, int]) -> str:
        return ", ".join(f"{key}: {value}" for key, value in sorted(values.items())) or "-"

    verb = "would change" if summary.dry_run else "changed"
    lines = [
        f"rescore {summary.table_uri} :: {summary.table}{'  (dry run: nothing written)' if summary.dry_run else ''}",
        f"  policy         {summary.policy_version} ({summary.policy_hash[:12]})",
        f"  rows           {summary.rows} ({summary.scored} scored, {summary.rows - summary.scored} failed rows)",
        f"  was scored by  {counts(summary.policy_versions_before)}",
        f"  decisions      {counts(summary.decisions_before)}  →  {counts(summary.decisions_after)}",
        f"  {verb:<14} {summary.changed}  ({counts(summary.transitions)})",
        f"  overrides      {summary.overrides} reviewer decisions kept",
        f"  table version  {summary.table_version_before} → {summary.table_version_after}",
        f"  wall time      {summary.wall_s:.2f} s",
    ]
    return "\n".join(lines)
