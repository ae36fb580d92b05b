"""The main Ray Data plan: read → decode (CPU tasks) → encode + classify (actor pool) → LanceDB.

Planning happens on the driver before any cluster work that costs: footers are read, columns
checked, the table opened and its model checked. Rows stream back to the driver, which upserts
them in large chunks (one Lance commit per chunk, not per batch) and tallies the run summary.
"""

from __future__ import annotations

import math
import os
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import ray

from clipline.models.loader import check_weights_source, image_size_for, model_config_dict
from clipline.models.prompt_cache import PromptCache, prompt_cache_uri
from clipline.operators.decode import DecodeImages
from clipline.operators.encode import torch_threads_for
from clipline.operators.ledger import Ledger
from clipline.operators.read import InputFile, ReadRowGroups, plan_input_files, read_tasks
from clipline.operators.sink import LanceSink
from clipline.pipelines.dedup import annotate_duplicates
from clipline.pipelines.encode_classify import EncodeClassifyActor
from clipline.pipelines.maintain import maintain_table
from clipline.pipelines.read_decode import ReadAndDecode
from clipline.reports import write_run_artifacts
from clipline.schemas.base import ConfigError
from clipline.schemas.config import JobConfig, ResourcesConfig
from clipline.schemas.policy import Policy, load_policy
from clipline.schemas.table import STATUS_FAILED, STATUS_OK, ErrorCode


class RowsLost(RuntimeError):
    """Fewer (or more) rows came out of the plan than went in: the run must not look successful."""


@dataclass(frozen=True)
class RunOptions:
    """How to run a job: where, and which rows."""

    address: str | None = None
    full: bool = False
    retry_failed: bool = False


@dataclass(frozen=True)
class EncoderPlan:
    """How many encoder actors, and what each one reserves."""

    actors: int
    cpus: float
    gpus: float
    threads: int


@dataclass
class RunSummary:
    """What a run did, in numbers a person reads at the end of the run."""

    run_id: str
    table_uri: str
    table: str
    rows_in: int = 0
    rows_written: int = 0
    ok: int = 0
    failed: int = 0
    failed_by_code: dict[str, int] = field(default_factory=dict)
    decisions: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    flagged: dict[str, dict[str, int]] = field(default_factory=dict)
    files_total: int = 0
    files_processed: list[str] = field(default_factory=list)
    files_skipped: list[str] = field(default_factory=list)
    files_claimed_elsewhere: list[str] = field(default_factory=list)
    table_rows: int = 0
    table_version_before: int = 0
    table_version_after: int = 0
    wall_s: float = 0.0
    dedup: dict = field(default_factory=dict)
    maintenance: dict = field(default_factory=dict)
    manifest_uri: str | None = None
    report_uri: str | None = None

    @property
    def rows_per_s(self) -> float:
        return self.rows_written / self.wall_s if self.wall_s else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "rows_per_s": round(self.rows_per_s, 2)}


class Tally:
    """Counts per status, error code, decision and label, accumulated batch by batch."""

    def __init__(self) -> None:
        self.counters: dict[str, Counter] = {name: Counter() for name in ("status", "error_code", "decision")}
        self.labels: Counter = Counter()
        self.flagged: Counter = Counter()
        self.stats = None  # Ray Data's stats summary of the plan, set by execute(), for the manifest

    def add(self, batch: pa.Table) -> None:
        for name, counter in self.counters.items():
            for item in pc.value_counts(batch.column(name)).to_pylist():
                if item["values"] is not None:
                    counter[item["values"]] += item["counts"]
        self.labels.update(pc.list_flatten(batch.column("labels")).to_pylist())
        reasons = pc.list_flatten(batch.column("reasons"))
        self.flagged.update(
            zip(
                pc.struct_field(reasons, "category").to_pylist(),
                pc.struct_field(reasons, "action").to_pylist(),
                strict=True,
            )
        )

    def fill(self, summary: RunSummary) -> None:
        summary.ok = self.counters["status"][STATUS_OK]
        summary.failed = self.counters["status"][STATUS_FAILED]
        summary.failed_by_code = dict(self.counters["error_code"])
        summary.decisions = dict(self.counters["decision"])
        summary.labels = dict(self.labels)
        for (category, action), count in sorted(self.flagged.items()):
            summary.flagged.setdefault(category, {})[action] = count


def new_run_id() -> str:
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def plan_encoders(resources: ResourcesConfig, cluster: dict[str, float]) -> EncoderPlan:
    """Size the actor pool from the cluster, always leaving CPUs for read/decode tasks.

    On a 2-CPU machine this gives one 1-CPU encoder and one CPU for decoding; an actor pool
    that reserved both CPUs would wait forever for blocks that no read task can produce.
    """
    cpus_total = float(cluster.get("CPU", 0))
    gpus_total = float(cluster.get("GPU", 0))
    gpus = resources.encoder_gpus if resources.encoder_gpus is not None else (1.0 if gpus_total else 0.0)
    spare_cpus = cpus_total - resources.decode_cpus
    if resources.encoders is not None:
        actors = resources.encoders
    elif gpus:
        actors = max(1, int(gpus_total // gpus))
    else:
        actors = max(1, math.floor(spare_cpus / resources.encoder_cpus))
    if actors * resources.encoder_cpus > spare_cpus:
        raise ConfigError(
            f"resources.encoders: {actors} encoder(s) x {resources.encoder_cpus} CPU leave no CPU for "
            f"read/decode tasks ({resources.decode_cpus} CPU) on a cluster of {cpus_total:g} CPUs"
        )
    if gpus > gpus_total:
        raise ConfigError(f"resources.encoder_gpus: {gpus} GPU per encoder, cluster has {gpus_total:g}")
    threads = resources.torch_threads or encoder_threads(resources.encoder_cpus, gpus, cpus_total, actors)
    return EncoderPlan(actors=actors, cpus=resources.encoder_cpus, gpus=gpus, threads=threads)


def encoder_threads(encoder_cpus: float, gpus: float, cpus_total: float, actors: int) -> int:
    """Torch threads per encoder: CPU encoders share every core, the decode CPUs' included.

    The decode CPUs are reserved so that reads always get scheduled, but decoding is a small
    share of the work (about a tenth of ViT-B-32's per-image CPU time), so threads limited to
    the encoder's own reservation would leave those cores idle most of the run: on 2 CPUs, half
    the machine. A GPU encoder's threads only feed the GPU and keep to their reservation.
    """
    reserved = torch_threads_for(encoder_cpus)
    if gpus:
        return reserved
    return max(reserved, int(cpus_total // actors))


def build_dataset(config: JobConfig, tasks: pa.Table, policy: Policy | None, encoders: EncoderPlan) -> ray.data.Dataset:
    """The lazy plan over read tasks (see `read_tasks`); nothing runs until the driver iterates it."""
    blocks = [tasks.slice(i, 1) for i in range(tasks.num_rows)]
    source, resources = config.source, config.resources
    reader = ReadRowGroups(source.columns, source.keep_columns, config.storage)
    decoder = DecodeImages(
        image_size_for(config.model.arch), source.max_image_pixels, source.max_image_bytes, config.storage
    )
    return (
        ray.data.from_arrow(blocks)
        .map_batches(
            ReadAndDecode(reader, decoder, resources.decode_batch_size),
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=resources.decode_cpus,
        )
        .map_batches(
            EncodeClassifyActor,
            fn_constructor_kwargs={
                "model": config.model,
                "policy": policy,
                "threads": encoders.threads,
                "storage": config.storage,
                "prompt_cache": PromptCache(prompt_cache_uri(config.sink.uri), config.storage),
            },
            compute=ray.data.ActorPoolStrategy(size=encoders.actors),
            batch_size=resources.batch_size,
            batch_format="pyarrow",
            num_cpus=encoders.cpus,
            num_gpus=encoders.gpus,
            # The memory reservation also differs from the decode tasks' resources, which keeps
            # Ray Data from fusing decode into the actor: fused, decode and encode would take
            # turns on one CPU instead of overlapping on two.
            memory=resources.encoder_memory_gb * 1024**3,
            udf_modifying_row_count=False,
        )
    )


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


def ensure_ray(address: str | None) -> None:
    """Join the given cluster (or RAY_ADDRESS, as inside `ray job submit`), else start a local one.

    A local Ray started here serves only this process, so it listens on loopback, not on the
    machine's network interfaces; `address="local"` keeps Ray from attaching to whatever cluster
    `ray start` last recorded on this machine.
    """
    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)
    else:
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False)


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
    config: JobConfig, tasks: pa.Table, policy: Policy | None, sink: LanceSink, address: str | None
) -> tuple[Tally, Counter]:
    """Run the plan over the read tasks, staging every row; checks that no row was lost on the way."""
    ensure_ray(address)
    encoders = plan_encoders(config.resources, ray.cluster_resources())
    dataset = build_dataset(config, tasks, policy, encoders)
    tally, per_file = Tally(), Counter()
    batches = dataset.iter_batches(batch_size=None, batch_format="pyarrow")
    for chunk in chunks(batches, config.sink.commit_rows):
        tally.add(sink.stage(chunk))
        per_file.update(rows_per_file(chunk))
    tally.stats = dataset.get_stats_summary()
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
        storage_options=config.storage.lance_options(config.sink.uri),
    )
    sink.setup()
    return sink


def commit(config: JobConfig, sink: LanceSink, summary: RunSummary) -> None:
    """Annotate duplicates on the staged rows, merge them in one commit, then optional upkeep."""
    summary.dedup = annotate_duplicates(sink.staging, sink.table, config.dedup).to_dict()
    summary.rows_written = sink.commit()
    if config.sink.maintain_after_run:
        summary.maintenance = maintain_table(sink.table).to_dict()


def process_and_commit(
    config: JobConfig, tasks: pa.Table, policy: Policy | None, sink: LanceSink, summary: RunSummary, address: str | None
) -> tuple[Tally, Counter]:
    """Run the plan over `tasks`, check that every row came out, commit; a failure leaves no staged rows."""
    try:
        tally, per_file = execute(config, tasks, policy, sink, address)
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
        sink.table.search()
        .where(f"status = '{STATUS_FAILED}' AND coalesce(error_code, '') != '{ErrorCode.DUPLICATE_ID.value}'")
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
    started = time.perf_counter()
    policy, files = prepare(config)
    summary = RunSummary(run_id=config.run_id or new_run_id(), table_uri=config.sink.uri, table=config.sink.table)
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
    try:
        artifacts = write_run_artifacts(summary, config, tally.stats if tally else None, config.storage, policy=policy)
        summary.manifest_uri, summary.report_uri = artifacts.manifest_uri, artifacts.report_uri
    except Exception as exc:  # the rows are committed: a manifest/report problem must not fail the run
        warnings.warn(f"run {summary.run_id}: manifest/report not written: {type(exc).__name__}: {exc}", stacklevel=2)
    return summary
