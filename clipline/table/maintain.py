"""Table upkeep: vector and scalar indexes, compaction, cleanup of old versions.

Every run and every review adds a version and a few fragments; left alone, a table ends up with
thousands of small files and unindexed rows that each query scans. `maintain_table` is the one
place that decides what the table needs, so `clipline maintain` and a run's optional final step
(`sink.maintain_after_run`) do the same thing.

Why IVF_SQ (and IVF_PQ only when huge), not HNSW: measured on this project's 2-core machine over
50,000 x 512 random unit vectors, IVF_SQ builds in ~1.5 s and, with an exact rerank of its 1-byte
codes (`refine_factor`), reaches recall@10 1.0; IVF_HNSW_SQ took 30-90 s to build and reached only
0.45 at ef=400 on that (structureless) data. IVF_PQ (1 byte per 16 dimensions) only pays off once
SQ codes would no longer fit comfortably in memory; its build is slow (~2 min for 50k here).

Why a query probes enough partitions to cover a fixed number of rows (`SCAN_ROWS`), not a fixed
number of partitions: cost per query stays bounded (~10-15 ms on one core for 200k SQ codes at
512-d) at any table size, and every table up to 200k rows is probed whole, so search there is
exact up to the SQ rerank (an in-memory quantised scan, still ~30x faster than LanceDB's flat
path, which re-reads the float32 column for every query). Beyond that size recall depends on the
data: on clustered embeddings (CLIP's) the neighbours sit in the query's nearest partitions
(measured recall@10 0.99 at 500k, 25 of 62 partitions), on structureless uniform random vectors it
is the fraction probed (0.58 there). `benchmarks/search_latency.py` measures both.

The index name records the plan (`image_embedding_ivf_sq_p7`): LanceDB does not report an index's
partition count, and search needs it to size `nprobes` while upkeep compares it with the plan for
today's row count to know when the partitions no longer fit the table (retrain at 2x).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import fsspec
import lancedb
import pyarrow as pa
from lancedb.index import Bitmap, BTree, IvfPq, IvfSq, LabelList

from clipline.table.buckets import maintain_buckets
from clipline.table.store import ClipTable

EMBEDDING_COLUMNS = ("image_embedding", "text_embedding")
# Below this many float32 values (rows x dim: 4,096 rows at 512-d, 8 MB) a flat scan costs a few
# ms per query, is exact and needs no upkeep; IVF k-means also needs a few thousand rows to learn
# partitions worth probing.
BRUTE_FORCE_VALUES = 2**21
# Beyond this many SQ code bytes (rows x dim: 8 M rows at 512-d) the index would hold GiBs in the
# query process's cache; PQ codes are 16x smaller at the price of a larger exact rerank.
SQ_MAX_BYTES = 4 * 2**30
# Rows per IVF partition, LanceDB's own default target. Not sqrt(rows): each probed partition has a
# fixed cost (~0.4 ms measured), so 224 partitions of 223 rows (sqrt rule at 50k) answer ~20x
# slower than 7 partitions of 8k for the same rows scanned.
PARTITION_ROWS = 8192
# Rows a query's probed partitions cover (see the module docstring): 25 partitions.
SCAN_ROWS = 200_000
REFINE = {"ivf_sq": 4, "ivf_pq": 20}
# Retrain when the planned partition count is this far from the index's (the table doubled).
RETRAIN_RATIO = 2.0
DEFAULT_RETENTION = timedelta(days=7)
STALE_STAGING = timedelta(hours=6)  # the default claim TTL (`sink.claim_ttl_hours`)
# decision/status: a handful of values -> bitmap; labels: list membership (array_has_any) ->
# label list; id/content_sha256: point lookups (merge_insert on id, exact dedup by hash) -> btree.
SCALAR_INDEXES = {
    "decision": Bitmap,
    "status": Bitmap,
    "labels": LabelList,
    "id": BTree,
    "content_sha256": BTree,
    "dup_bucket": BTree,  # a run reads the table's rows of its dedup buckets: up to ~100k distinct values
}
SCALAR_NAMES = {Bitmap: "BITMAP", LabelList: "LABEL_LIST", BTree: "BTREE"}
_PLAN_NAME = re.compile(r"_(ivf_sq|ivf_pq)_p(\d+)$")


@dataclass(frozen=True)
class VectorIndexPlan:
    """What one embedding column should have: nothing (brute force), IVF_SQ or IVF_PQ."""

    column: str
    rows: int
    dim: int
    kind: str | None  # "ivf_sq", "ivf_pq", or None for brute force
    partitions: int = 0
    sub_vectors: int = 0

    @property
    def name(self) -> str:
        return f"{self.column}_{self.kind}_p{self.partitions}"

    def config(self) -> IvfSq | IvfPq:
        if self.kind == "ivf_sq":
            return IvfSq(distance_type="cosine", num_partitions=self.partitions)
        return IvfPq(distance_type="cosine", num_partitions=self.partitions, num_sub_vectors=self.sub_vectors)

    def describe(self) -> str:
        if self.kind is None:
            return f"brute force ({self.rows:,} vectors x {self.dim} < {BRUTE_FORCE_VALUES:,} values)"
        extra = f", {self.sub_vectors} sub-vectors" if self.kind == "ivf_pq" else ""
        return f"{self.kind.upper()}, {self.partitions} partitions{extra} ({self.rows:,} vectors)"


def plan_vector_index(rows: int, dim: int, column: str = "image_embedding") -> VectorIndexPlan:
    """Choose the index for `rows` vectors of `dim` (see PARTITION_ROWS for the partition count)."""
    if rows * dim < BRUTE_FORCE_VALUES:
        return VectorIndexPlan(column, rows, dim, None)
    partitions = max(1, math.ceil(rows / PARTITION_ROWS))
    if rows * dim <= SQ_MAX_BYTES:
        return VectorIndexPlan(column, rows, dim, "ivf_sq", partitions)
    # 1 byte per 16 dimensions, using a divisor of dim so every sub-vector has the same width.
    sub_vectors = max(d for d in range(1, dim // 16 + 1) if dim % d == 0)
    return VectorIndexPlan(column, rows, dim, "ivf_pq", partitions, sub_vectors)


@dataclass(frozen=True)
class ProbeSettings:
    """Query-time knobs for a column's vector index; all None means brute force / LanceDB defaults."""

    nprobes: int | None = None
    refine_factor: int | None = None

    def apply(self, query, filtered: bool = False):
        """Set the probes on a LanceDB vector query.

        Unfiltered: exactly `nprobes` partitions, so the cost stays bounded. Filtered: at least
        `nprobes`, and with `maximum_nprobes(0)` LanceDB may search every partition, so that a
        selective prefilter still finds k matching rows when k exist (measured: with no upper
        bound LanceDB searches all partitions, which is why unfiltered queries set one).
        """
        if self.nprobes is not None:
            query = query.minimum_nprobes(self.nprobes).maximum_nprobes(0 if filtered else self.nprobes)
        if self.refine_factor is not None:
            query = query.refine_factor(self.refine_factor)
        return query


def vector_index(table: lancedb.table.Table, column: str):
    """The vector index on `column` (an IndexConfig), or None."""
    for index in table.list_indices():
        if list(index.columns) == [column] and index.index_type.lower().startswith(("ivf", "hnsw")):
            return index
    return None


def probe_settings(table: lancedb.table.Table, column: str = "image_embedding") -> ProbeSettings:
    """nprobes covering ~SCAN_ROWS rows of the indexed column, and the rerank for its codes."""
    index = vector_index(table, column)
    if index is None:
        return ProbeSettings()
    match = _PLAN_NAME.search(index.name)
    if match is None:  # an index this module did not build: LanceDB's defaults, filters still complete
        return ProbeSettings()
    kind, partitions = match.group(1), int(match.group(2))
    rows = max(1, index.num_indexed_rows or 1)
    nprobes = min(partitions, max(1, math.ceil(partitions * SCAN_ROWS / rows)))
    return ProbeSettings(nprobes=nprobes, refine_factor=REFINE[kind])


def is_stale(index, plan: VectorIndexPlan) -> bool:
    """Rebuild when the index was not planned here, is of another kind, or its partitions no longer fit."""
    match = _PLAN_NAME.search(index.name)
    if match is None or match.group(1) != plan.kind:
        return True
    partitions = int(match.group(2))
    return max(partitions, plan.partitions) / max(1, min(partitions, plan.partitions)) >= RETRAIN_RATIO


def embedding_dim(schema: pa.Schema, column: str) -> int | None:
    if column not in schema.names:
        return None
    type_ = schema.field(column).type
    return type_.list_size if pa.types.is_fixed_size_list(type_) else None


def ensure_vector_index(table: lancedb.table.Table, column: str) -> tuple[VectorIndexPlan, str, float]:
    """Create or rebuild the planned index when needed; returns (plan, what was done, build seconds)."""
    dim = embedding_dim(table.schema, column)
    plan = plan_vector_index(table.count_rows(f"{column} IS NOT NULL"), dim, column)
    existing = vector_index(table, column)
    if plan.kind is None:
        # A table rarely shrinks; an index it already has stays (it is still correct).
        return plan, "kept" if existing else "none", 0.0
    if existing is not None and not is_stale(existing, plan):
        return plan, "kept", 0.0  # optimize() adds rows written since training
    started = time.perf_counter()
    if existing is not None:
        table.drop_index(existing.name)
    table.create_index(column, config=plan.config(), name=plan.name)
    return plan, "rebuilt" if existing else "built", time.perf_counter() - started


@dataclass
class TableState:
    """What `maintain` prints before and after: rows, fragments, versions, indexes."""

    rows: int
    version: int
    versions: int
    fragments: int
    small_fragments: int
    indices: list[str]

    @classmethod
    def of(cls, table: lancedb.table.Table) -> TableState:
        table.checkout_latest()
        stats = table.stats()
        fragments = stats["fragment_stats"]
        return cls(
            rows=stats["num_rows"],
            version=table.version,
            versions=len(table.list_versions()),
            fragments=fragments["num_fragments"],
            small_fragments=fragments["num_small_fragments"],
            indices=sorted(index.name for index in table.list_indices()),
        )


@dataclass
class MaintainReport:
    """The result of one `maintain_table` call."""

    table: str
    before: TableState
    after: TableState
    vector: dict[str, str] = field(default_factory=dict)
    build_s: dict[str, float] = field(default_factory=dict)
    scalar: dict[str, str] = field(default_factory=dict)
    buckets: str = "-"
    stale_staging: list[str] = field(default_factory=list)
    optimize_s: float = 0.0
    wall_s: float = 0.0

    def format(self) -> str:
        b, a = self.before, self.after
        lines = [
            f"table {self.table}",
            f"  rows            {a.rows:,}",
            f"  fragments       {b.fragments} → {a.fragments}  (small: {b.small_fragments} → {a.small_fragments})",
            f"  versions        {b.versions} → {a.versions}  (latest {b.version} → {a.version})",
        ]
        for column, text in self.vector.items():
            lines.append(f"  {column:<15} {text}")
        scalar = ", ".join(f"{column} {text}" for column, text in self.scalar.items())
        lines.append(f"  scalar indexes  {scalar or '-'}")
        lines.append(f"  dedup buckets   {self.buckets}")
        lines.append(f"  stale staging   {len(self.stale_staging)} removed")
        lines.append(f"  optimize        {self.optimize_s:.1f} s (compaction, index refresh, cleanup)")
        lines.append(f"  wall time       {self.wall_s:.1f} s")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def ensure_scalar_indexes(table: lancedb.table.Table) -> dict[str, str]:
    """Create the missing scalar indexes; existing ones are brought up to date by optimize()."""
    indexed = {index.columns[0] for index in table.list_indices() if len(index.columns) == 1}
    done = {}
    for column, config in SCALAR_INDEXES.items():
        if column not in table.schema.names:
            continue
        if column in indexed:
            done[column] = "kept"
            continue
        table.create_index(column, config=config())
        done[column] = f"{SCALAR_NAMES[config]} built"
    return done


def maintain_table(
    table: ClipTable, retention: timedelta = DEFAULT_RETENTION, stale_staging: timedelta = STALE_STAGING
) -> MaintainReport:
    """Buckets, then indexes (trained on all rows), then one optimize(): compaction, index refresh, cleanup.

    Versions older than `retention` are removed; readers pinned to such a version (a curation
    export in progress, another process's stale handle) fail, so keep retention above the
    longest job that reads the table. The latest version is never removed. Files a killed run
    wrote into the table without committing them are removed with the versions of their age.
    Staging left by killed runs is removed once older than `stale_staging` (the claim TTL: a run
    that old no longer holds its files).
    """
    started = time.perf_counter()
    lance_table = table.lance
    before = TableState.of(lance_table)
    report = MaintainReport(table=lance_table.name, before=before, after=before)
    if before.rows:
        report.buckets = maintain_buckets(table).describe()
        for column in EMBEDDING_COLUMNS:
            if embedding_dim(lance_table.schema, column) is None:
                continue
            plan, action, seconds = ensure_vector_index(lance_table, column)
            report.vector[column] = f"{plan.describe()}: {action}" + (f" in {seconds:.1f} s" if seconds else "")
            if seconds:
                report.build_s[column] = round(seconds, 3)
        report.scalar = ensure_scalar_indexes(lance_table)
    optimize_started = time.perf_counter()
    lance_table.optimize(cleanup_older_than=retention)
    # optimize() prunes old versions before it folds new rows into the indexes, so that fold's own
    # version is left behind; a second pass (nothing left to compact or index) prunes it too.
    lance_table.optimize(cleanup_older_than=retention)
    report.optimize_s = time.perf_counter() - optimize_started
    report.stale_staging = remove_stale_staging(table, stale_staging)
    report.after = TableState.of(lance_table)
    report.wall_s = time.perf_counter() - started
    return report


def remove_stale_staging(table: ClipTable, older_than: timedelta) -> list[str]:
    """Remove scratch datasets under `Sidecars.staging` whose newest file is older than `older_than`."""
    uri = table.sidecars.staging
    fs, root = fsspec.core.url_to_fs(uri, **table.storage.fsspec_options(uri))
    try:
        entries = fs.ls(root, detail=False)
    except FileNotFoundError:
        return []
    cutoff = time.time() - older_than.total_seconds()
    removed = []
    for entry in entries:
        files = fs.find(entry, detail=True)
        newest = max((listing_time(info) for info in files.values()), default=0.0)
        if newest < cutoff:
            fs.rm(entry, recursive=True)
            removed.append(entry.rsplit("/", 1)[-1])
    return removed


def listing_time(info: dict) -> float:
    """When an object was written, from an fsspec listing (local mtime or S3 LastModified)."""
    value = info.get("mtime") or info.get("LastModified") or info.get("created") or 0
    return value.timestamp() if isinstance(value, datetime) else float(value)
