"""A run: plan on the driver, stage every row from the workers, check none was lost, then the tail.

Planning happens on the driver before any cluster work that costs: footers are read, columns
checked, the table opened and its model checked. The Ray Data plan decodes, encodes and scores
the rows, and writer tasks stage them as Lance fragments beside the table; the driver receives
fragment metadata and per-file row ranges only, commits the staging dataset, and checks that the
*set* of input rows written equals the set planned. The tail (`tail.py`) then decides identity
and duplicates on Ray and commits the run into the table as one version.

Run modes: incremental (input files not yet in the ledger, or all with `full`) and
`retry_failed` (only the table's failed rows). The run's manifest and report are written by the
caller (`jobs/run.py`, the demo): the run never imports the report code.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import ray

from clipline.models.loader import check_weights_source, model_config_dict
from clipline.operators.read import InputFile, plan_input_files, read_tasks
from clipline.pipelines.accounting import Ranges, RowAccount, split_source, to_ranges
from clipline.pipelines.lance_io import LanceLocation
from clipline.pipelines.ledger import Ledger
from clipline.pipelines.plan import build_dataset, ensure_ray, plan_encoders
from clipline.pipelines.sink import StagingSink, staging_schema
from clipline.pipelines.stages import run_stages
from clipline.pipelines.startup import EncoderStartup, StartupWatch
from clipline.pipelines.summary import RunOptions, RunSummary, new_run_id, stage_stats
from clipline.pipelines.tail import TailResult, file_ranks, plan_tail, run_tail
from clipline.schemas.base import ConfigError
from clipline.schemas.config import JobConfig
from clipline.schemas.policy import Policy, load_policy
from clipline.schemas.table import ErrorCode, Status, output_schema
from clipline.table.buckets import CentroidStore, model_key
from clipline.table.maintain import maintain_table
from clipline.table.store import ClipTable


@dataclass
class RunContext:
    """Everything one run shares between its steps."""

    config: JobConfig
    policy: Policy | None
    table: ClipTable
    summary: RunSummary
    options: RunOptions

    @property
    def staging(self) -> LanceLocation:
        uri = f"{self.table.sidecars.staging}/{self.summary.run_id}.lance"
        return LanceLocation(uri, self.table.storage_options)


def prepare(config: JobConfig) -> tuple[Policy | None, list[InputFile]]:
    """Everything that can fail without a cluster: policy, model config, input footers."""
    policy = load_policy(config.policy, config.storage) if config.policy else None
    try:
        check_weights_source(config.model, config.storage)
        if policy is not None:
            embed_dim = int(model_config_dict(config.model.arch)["embed_dim"])
            policy.check_heads(f"{config.model.arch}/{config.model.weights_label}", embed_dim)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    files = plan_input_files(config.source.paths, config.source.columns, config.storage)
    return policy, files


def open_table(config: JobConfig) -> ClipTable:
    """The output table, created when missing; refused when another model wrote it."""
    schema = output_schema(int(model_config_dict(config.model.arch)["embed_dim"]), config.model)
    return ClipTable.open_or_create(config.sink.uri, config.sink.table, schema, config.storage)


def centroids_version(run: RunContext) -> tuple[int, str] | None:
    """The table's dedup centroids now, so the encoders can bucket rows as they embed them."""
    if not run.config.dedup.enabled:
        return None
    return CentroidStore(run.table.sidecars, model_key(run.table.lance.schema), run.table.storage).latest()


def stage_rows(run: RunContext, tasks: pa.Table, centroids: tuple[int, str] | None) -> tuple[RowAccount, list[str]]:
    """Run the plan: workers decode, encode and stage every row; the driver collects metadata only."""
    config = run.config
    ensure_ray(run.options.address)
    encoders = plan_encoders(config.resources, ray.cluster_resources())
    stages = run_stages(config, run.policy, encoders, centroids[1] if centroids else None)
    sink = StagingSink.for_run(config, run.staging, run.table.lance.schema, run.summary.run_id)
    dataset = build_dataset(tasks, stages, encoders, config.resources.decode_batch_size, sink, config.sink.commit_rows)
    account, fragments = RowAccount(), []
    startup = StartupWatch(run.summary.startup)
    for written in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        for block in written.to_pylist():
            fragments.extend(json.loads(block["fragments"]))
            account.add(json.loads(block["sources"]))
            startup.note(EncoderStartup.from_json(block["startup"]))
    run.summary.stages = stage_stats(dataset.get_stats_summary())
    return account, fragments


def commit_staged(
    run: RunContext,
    fragments: list[str],
    ranks: dict[str, int],
    staged_centroids: int | None,
    guard: Callable[[], None] = lambda: None,
) -> None:
    """Commit the staging dataset, then the tail: identity, dedup and the one table commit.

    `guard` runs right before the table commit (the ledger's claims check: a run never commits
    a file another run has taken over).
    """
    run.staging.create(staging_schema(run.table.lance.schema), fragments)
    config = run.config
    plan = plan_tail(run.table, run.staging, config.dedup, config.sink.update_existing_ids, ranks, staged_centroids)
    fill_summary(run.summary, run_tail(plan, run.table, guard))


def commit_encoded(config: JobConfig, table: ClipTable, rows: pa.Table, policy: Policy | None = None) -> RunSummary:
    """Stage rows that are already encoded and scored, from this process, and commit them through the
    tail, exactly as a run's writers and tail would (test tables, the Lance-write benchmark)."""
    run_id = config.run_id or new_run_id()
    run = RunContext(config, policy, table, RunSummary(run_id, config.sink.uri, config.sink.table), RunOptions())
    written = StagingSink.for_run(config, run.staging, table.lance.schema, run_id)(rows)
    by_file: dict[str, int] = {}
    for source in rows.column("source").to_pylist():
        path, row = split_source(source)
        by_file[path] = max(by_file.get(path, 0), row + 1)
    try:
        commit_staged(run, json.loads(written.column("fragments")[0].as_py()), file_ranks(list(by_file), by_file), None)
    finally:
        discard_staging(run)
    return run.summary


def process_and_commit(
    run: RunContext, tasks: pa.Table, expected: dict[str, Ranges], guard: Callable[[], None]
) -> RowAccount:
    """Stage, check that exactly the planned rows came out, then the tail; the staging never outlives it."""
    centroids = centroids_version(run)
    try:
        account, fragments = stage_rows(run, tasks, centroids)
        account.check(expected)
        rows = {path: max(end for _, end in ranges) for path, ranges in expected.items()}
        ranks = file_ranks(list(expected), rows)
        commit_staged(run, fragments, ranks, centroids[0] if centroids else None, guard)
    finally:
        discard_staging(run)
    if run.config.sink.maintain_after_run:
        run.summary.maintenance = maintain_table(run.table).to_dict()
    return account


def discard_staging(run: RunContext) -> None:
    fs, path = fsspec.core.url_to_fs(run.staging.uri, **run.table.storage.fsspec_options(run.staging.uri))
    if fs.exists(path):
        fs.rm(path, recursive=True)


def fill_summary(summary: RunSummary, result: TailResult) -> None:
    result.tally.fill(summary)
    summary.rows_written = result.rows_written
    summary.rows_replaced = result.replaced
    summary.ids_updated = result.updated_existing
    summary.dedup = result.dedup.to_dict()
    summary.tail = {
        "phases_s": result.phases,
        "driver_bytes": result.driver_bytes,
        "commit_attempts": result.commit_attempts,
    }


def open_ledger(run: RunContext) -> Ledger:
    config = run.config
    ledger = Ledger(
        config.sink.uri, config.sink.table, run.summary.run_id, config.storage, config.sink.claim_ttl_hours * 3600
    )
    ledger.setup()
    return ledger


def run_incremental(run: RunContext, files: list[InputFile]) -> None:
    """Claim the files not yet in the ledger (all with `full`), process them, commit, then record them.

    The claims are renewed by a heartbeat while the run works, and checked before the commit.
    """
    summary = run.summary
    ledger = open_ledger(run)
    selection = ledger.select(files, run.options.full)
    summary.files_processed = [file.path for file in selection.todo]
    summary.files_skipped = [file.path for file in selection.already_committed]
    summary.files_claimed_elsewhere = [file.path for file in selection.claimed_elsewhere]
    summary.rows_in = sum(file.num_rows for file in selection.todo)
    if not selection.todo:
        return
    expected = {file.path: [(0, file.num_rows)] for file in selection.todo if file.num_rows}
    try:
        with ledger.heartbeat() as heartbeat:
            account = process_and_commit(run, read_tasks(selection.todo), expected, heartbeat.check)
        ledger.record(selection.todo, account.per_file())
    except BaseException:
        ledger.release(selection.todo)
        raise


def failed_rows(table: ClipTable) -> dict[str, dict[int, str]]:
    """Failed rows worth retrying, as input file → {row number → id}.

    `duplicate_id` is a fact about the input, not a transient failure, so it is not retried.
    """
    rows = (
        table.lance.search()
        .where(f"status = '{Status.FAILED}' AND coalesce(error_code, '') != '{ErrorCode.DUPLICATE_ID}'")
        .select(["id", "source"])
        .limit(None)
        .to_arrow()
    )
    only: dict[str, dict[int, str]] = {}
    for row_id, source in zip(rows.column("id").to_pylist(), rows.column("source").to_pylist(), strict=True):
        path, row = source.rsplit("#", 1)
        only.setdefault(path, {})[int(row)] = row_id
    return only


def run_retry_failed(run: RunContext, files: list[InputFile]) -> None:
    """Reprocess only the table's failed rows, under the ids they already have, in one commit.

    Rows are found again by position, so a file changed since it was recorded is refused by name
    (InputChanged). The files are claimed like any run's; the ledger's records stay as they are:
    these files are already recorded, only some of their rows change.
    """
    only = failed_rows(run.table)
    ledger = open_ledger(run)
    selection = ledger.claim_for_retry([file for file in files if file.path in only])
    run.summary.files_processed = [file.path for file in selection.todo]
    run.summary.files_claimed_elsewhere = [file.path for file in selection.claimed_elsewhere]
    run.summary.rows_in = sum(len(only[file.path]) for file in selection.todo)
    if not selection.todo:
        return
    expected = {file.path: to_ranges(only[file.path]) for file in selection.todo}
    try:
        with ledger.heartbeat() as heartbeat:
            process_and_commit(run, read_tasks(selection.todo, only), expected, heartbeat.check)
    finally:
        ledger.release(selection.todo)


def run_job(config: JobConfig, options: RunOptions | None = None) -> RunSummary:
    """Validate and plan (no cluster yet), process, commit once, and summarise.

    Default: only input files not yet in the ledger. `full`: every file again (reruns replace
    rows, never duplicate them). `retry_failed`: only rows whose status is failed. Files claimed
    by a concurrent run are skipped in every mode.
    """
    options = options or RunOptions()
    started, started_at = time.perf_counter(), time.time()
    policy, files = prepare(config)
    summary = RunSummary(run_id=config.run_id or new_run_id(), table_uri=config.sink.uri, table=config.sink.table)
    summary.startup["run_started_at"] = started_at
    summary.files_total = len(files)
    run = RunContext(config, policy, open_table(config), summary, options)
    summary.table_version_before = run.table.version
    mode = run_retry_failed if options.retry_failed else run_incremental
    mode(run, files)
    summary.table_rows = run.table.count_rows()
    summary.table_version_after = run.table.version
    summary.wall_s = time.perf_counter() - started
    return summary
