"""A run: plan on the driver, execute the Ray Data plan, check every row came out, commit once.

Planning happens on the driver before any cluster work that costs: footers are read, columns
checked, the table opened and its model checked. Rows stream back to the driver, which stages
them beside the table in large chunks, annotates duplicates and merges the run into the table as
one commit. Run modes: incremental (files not yet in the ledger, or all with `full`) and
`retry_failed` (only the table's failed rows). The run's manifest and report are written by the
caller (`jobs/run.py`, the demo), not here: the run never imports the report code.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pyarrow as pa
import ray

from clipline.models.loader import check_weights_source, model_config_dict
from clipline.operators.read import InputFile, plan_input_files, read_tasks
from clipline.pipelines.dedup import annotate_duplicates
from clipline.pipelines.ledger import Ledger
from clipline.pipelines.plan import build_dataset, ensure_ray, plan_encoders
from clipline.pipelines.sink import LanceSink
from clipline.pipelines.stages import run_stages
from clipline.pipelines.startup import StartupWatch
from clipline.pipelines.summary import RunOptions, RunSummary, Tally, new_run_id, stage_stats
from clipline.schemas.base import ConfigError
from clipline.schemas.config import JobConfig
from clipline.schemas.policy import Policy, load_policy
from clipline.schemas.table import ErrorCode, Status
from clipline.table.maintain import maintain_table


class RowsLost(RuntimeError):
    """Fewer (or more) rows came out of the plan than went in: the run must not look successful."""


def chunks(batches: Iterator[pa.Table], rows_per_chunk: int) -> Iterator[pa.Table]:
    """Regroup streamed batches into commit-sized tables."""
    pending, size = [], 0
    for batch in batches:
        pending.append(batch)
        size += batch.num_rows
        if size >= rows_per_chunk:
            yield pa.concat_tables(pending, promote_options="permissive")
            pending, size = [], 0
    if pending:
        yield pa.concat_tables(pending, promote_options="permissive")


def prepare(config: JobConfig) -> tuple[Policy | None, list[InputFile]]:
    """Everything that can fail without a cluster: policy, model config, input footers."""
    policy = load_policy(config.policy) if config.policy else None
    try:
        check_weights_source(config.model)
        if policy is not None:
            embed_dim = int(model_config_dict(config.model.arch)["embed_dim"])
            policy.check_heads(f"{config.model.arch}/{config.model.weights_label}", embed_dim)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    files = plan_input_files(config.source.paths, config.source.columns, config.storage)
    return policy, files


def rows_per_file(batch: pa.Table) -> Counter:
    """Rows of each input file in a batch, from `source` = `file#row`."""
    return Counter(source.rsplit("#", 1)[0] for source in batch.column("source").to_pylist())


def execute(
    config: JobConfig,
    tasks: pa.Table,
    policy: Policy | None,
    sink: LanceSink,
    summary: RunSummary,
    address: str | None,
) -> tuple[Tally, Counter]:
    """Run the plan over the read tasks, staging every row; counts rows per input file on the way."""
    ensure_ray(address)
    encoders = plan_encoders(config.resources, ray.cluster_resources())
    stages = run_stages(config, policy, encoders)
    dataset = build_dataset(tasks, stages, encoders, config.resources.decode_batch_size)
    tally, per_file = Tally(), Counter()
    startup = StartupWatch(summary.startup)
    batches = startup.batches(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
    for chunk in chunks(batches, config.sink.commit_rows):
        tally.add(sink.stage(chunk))
        per_file.update(rows_per_file(chunk))
    summary.stages = stage_stats(dataset.get_stats_summary())
    return tally, per_file


def check_no_rows_lost(expected: int, per_file: Counter) -> None:
    if sum(per_file.values()) != expected:
        raise RowsLost(f"{expected} rows read from the input but {sum(per_file.values())} came out of the plan")


def open_sink(config: JobConfig, run_id: str) -> LanceSink:
    sink = LanceSink(
        config.sink.uri,
        config.sink.table,
        embedding_dim=int(model_config_dict(config.model.arch)["embed_dim"]),
        model=config.model,
        run_id=run_id,
        storage=config.storage,
    )
    sink.setup()
    return sink


def commit(config: JobConfig, sink: LanceSink, summary: RunSummary) -> None:
    """Annotate duplicates on the staged rows, merge them in one commit, then optional upkeep."""
    summary.dedup = annotate_duplicates(sink.staging, sink.table, config.dedup).to_dict()
    summary.rows_written = sink.commit()
    if config.sink.maintain_after_run:
        summary.maintenance = maintain_table(sink.table.lance).to_dict()


def process_and_commit(
    config: JobConfig, tasks: pa.Table, policy: Policy | None, sink: LanceSink, summary: RunSummary, address: str | None
) -> tuple[Tally, Counter]:
    """Run the plan over `tasks`, check that every row came out, commit; a failure leaves no staged rows."""
    try:
        tally, per_file = execute(config, tasks, policy, sink, summary, address)
        check_no_rows_lost(summary.rows_in, per_file)
        commit(config, sink, summary)
    except BaseException:
        sink.discard()
        raise
    return tally, per_file


def run_incremental(
    config: JobConfig,
    files: list[InputFile],
    policy: Policy | None,
    sink: LanceSink,
    summary: RunSummary,
    options: RunOptions,
) -> Tally | None:
    """Claim the files not yet in the ledger (all with `full`), process them, commit, then record them."""
    ledger = Ledger(
        config.sink.uri, config.sink.table, summary.run_id, config.storage, config.sink.claim_ttl_hours * 3600
    )
    ledger.setup()
    selection = ledger.select(files, options.full)
    summary.files_processed = [file.path for file in selection.todo]
    summary.files_skipped = [file.path for file in selection.already_committed]
    summary.files_claimed_elsewhere = [file.path for file in selection.claimed_elsewhere]
    summary.rows_in = sum(file.num_rows for file in selection.todo)
    if not selection.todo:
        return None
    try:
        tally, per_file = process_and_commit(config, read_tasks(selection.todo), policy, sink, summary, options.address)
        ledger.record(selection.todo, per_file)
    except BaseException:
        ledger.release(selection.todo)
        raise
    return tally


def failed_rows(sink: LanceSink) -> dict[str, dict[int, str]]:
    """Failed rows worth retrying, as input file → {row number → id}.

    `duplicate_id` is a fact about the input, not a transient failure, so it is not retried.
    """
    rows = (
        sink.table.lance.search()
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


def run_retry_failed(
    config: JobConfig,
    files: list[InputFile],
    policy: Policy | None,
    sink: LanceSink,
    summary: RunSummary,
    options: RunOptions,
) -> Tally | None:
    """Reprocess only the table's failed rows, under the ids they already have, in one commit.

    The ledger is left alone: these files are already recorded, only some of their rows change.
    """
    only = failed_rows(sink)
    retry_files = [file for file in files if file.path in only]
    summary.files_processed = [file.path for file in retry_files]
    summary.rows_in = sum(len(only[file.path]) for file in retry_files)
    if not retry_files:
        return None
    tally, _ = process_and_commit(config, read_tasks(retry_files, only), policy, sink, summary, options.address)
    return tally


def run_job(config: JobConfig, options: RunOptions | None = None) -> RunSummary:
    """Validate and plan (no cluster yet), process, commit once, and summarise.

    Default: only input files not yet in the ledger. `full`: every file again (upserts keep ids
    unique). `retry_failed`: only rows whose status is failed. Files claimed by a concurrent run
    are skipped in every mode.
    """
    options = options or RunOptions()
    started, started_at = time.perf_counter(), time.time()
    policy, files = prepare(config)
    summary = RunSummary(run_id=config.run_id or new_run_id(), table_uri=config.sink.uri, table=config.sink.table)
    summary.startup["run_started_at"] = started_at
    summary.files_total = len(files)
    sink = open_sink(config, summary.run_id)
    summary.table_version_before = sink.version
    mode = run_retry_failed if options.retry_failed else run_incremental
    tally = mode(config, files, policy, sink, summary, options)
    if tally is not None:
        tally.fill(summary)
    summary.table_rows = sink.count_rows()
    summary.table_version_after = sink.version
    summary.wall_s = time.perf_counter() - started
    return summary
