"""The run's tail on Ray: identity, dedup, final rows, then one table commit; the driver holds metadata.

After the plan has written the run's rows into a committed staging dataset (`sink.py`), the tail
runs as Ray tasks that read the staging dataset and the table themselves:

1. readers, one per group of staging fragments, route each row's keys to partitions: by a hash
   of its id (identity), of its content hash (exact dedup) and by its dedup buckets (near dedup);
2. identity tasks decide each row's final id and which stored row it replaces (`identity.py`);
3. exact, bucket and leader tasks decide the duplicates (`dedup.py`);
4. finalize tasks write the final rows into the table's dataset, uncommitted (`finalize.py`);
5. the driver commits once: the new fragments plus deletion vectors of the replaced rows.

Work per phase grows with the run (and with the table's rows in the run's buckets), never with
the whole table; partitions are sized so that each task holds a bounded number of rows. The
driver receives fragment metadata, counts and the few reviewer overrides, never rows or vectors.
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from lance.commit import CommitConflictError

from clipline.operators.buckets import load_centroids, nearest_two
from clipline.pipelines.accounting import split_source
from clipline.pipelines.dedup import (
    BUCKET_PATCH_SCHEMA,
    IMAGE,
    PDQ,
    SAME_AS_SCHEMA,
    TABLE_LINK_SCHEMA,
    DedupCounts,
    NearConfig,
    best_table_links,
    empty_run_links,
    exact_links,
    leader_pass,
    near_links,
    vectors_of,
)
from clipline.pipelines.finalize import GroupResult, commit_update, delete_rows, finalize_group, locate
from clipline.pipelines.identity import IDENTITY_SCHEMA, candidate_ids, partition_of, resolve, stored_rows
from clipline.pipelines.lance_io import ROW_ADDRESS, LanceLocation, fragment_ids, fragment_of, split_evenly
from clipline.pipelines.summary import Tally
from clipline.schemas.config import DedupConfig
from clipline.schemas.storage import StorageConfig
from clipline.schemas.table import Status
from clipline.table.buckets import (
    CentroidStore,
    bucket_count,
    fit_centroids,
    model_key,
    sample_embeddings,
    sample_size,
)
from clipline.table.store import ClipTable, Sidecars, sql_in

GROUP_ROWS = 50_000  # staged rows per reader / finalize task
PARTITION_ROWS = 100_000  # rows per identity and exact-hash partition
BUCKET_PARTITION_ROWS = 50_000  # new image rows per bucket partition
LOOKUP_BATCH = 20_000  # values per `IN (...)` lookup
COMMIT_ATTEMPTS = 8
IDENTITY_COLUMNS = ["addr", "rank", "id", "content_sha256", "source", "status"]
NODE_COLUMNS = ["addr", "rank", "id"]
NODES = pa.schema([("addr", pa.uint64()), ("rank", pa.int64()), ("id", pa.string())])
RENAMES = pa.schema([("addr", pa.uint64()), ("id", pa.string())])
OK_IMAGES = f"status = '{Status.OK}' AND {IMAGE} IS NOT NULL"
HISTORY_CANONICALS = f"{OK_IMAGES} AND dup_of IS NULL"
PDQ_COLUMNS = [PDQ, "pdq_quality"]
ROOTS = pa.schema(
    [("content_sha256", pa.string()), ("root", pa.string()), ("first_seen", pa.timestamp("us", tz="UTC"))]
)


class CommitFailed(RuntimeError):
    """The table kept changing under the run's commit; nothing was committed, the run can be rerun."""


@dataclass(frozen=True)
class CentroidsInUse:
    version: int
    uri: str
    count: int
    staged: bool  # the staged rows already carry buckets of this version (assigned in the encoder)


@dataclass(frozen=True)
class TailPlan:
    """What every task of the tail needs to know; small and picklable."""

    staging: LanceLocation
    table: LanceLocation
    table_schema: pa.Schema
    storage: StorageConfig
    version: int  # the table version identity and dedup read
    groups: list[list[int]]  # staging fragment ids of each reader / finalize task
    partitions: int
    bucket_partitions: int
    file_ranks: dict[str, int]  # a row's rank = its file's offset + its row number: input order
    dedup: DedupConfig
    update_existing: bool
    centroids: CentroidsInUse | None  # None: dedup off, or no image rows anywhere
    has_pdq: bool

    @property
    def fragment_group(self) -> dict[int, int]:
        return {fragment: group for group, fragments in enumerate(self.groups) for fragment in fragments}

    @property
    def near(self) -> NearConfig:
        return NearConfig(self.dedup.near_threshold, self.dedup.pdq_distance if self.has_pdq else None)


@dataclass
class TailResult:
    """What the tail did, for the run summary."""

    rows_written: int = 0
    tally: Tally = field(default_factory=Tally)
    dedup: DedupCounts = field(default_factory=DedupCounts)
    replaced: int = 0
    updated_existing: int = 0
    commit_attempts: int = 0
    version: int = 0
    carried: int = 0
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds per phase
    driver_bytes: int = 0  # what the driver received from the tasks, pickled

    def pull(self, refs):
        """`ray.get`, counting the bytes the driver receives (to show it receives metadata only)."""
        values = ray.get(refs)
        self.driver_bytes += len(pickle.dumps(values))
        return values

    def phase(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.phases[name] = round(now - since, 3)
        return now


# --------------------------------------------------------------------------- small helpers


def concat_nonempty(parts: list[pa.Table | None]) -> pa.Table | None:
    parts = [part for part in parts if part is not None and part.num_rows]
    return pa.concat_tables(parts) if parts else None


def split_by(rows: pa.Table, keys: np.ndarray, parts: int) -> list[pa.Table]:
    return [rows.filter(pa.array(keys == part)) for part in range(parts)]


def hash_keys(values: list[str | None], parts: int) -> np.ndarray:
    return np.array([partition_of(value or "", parts) for value in values], dtype=np.int64)


def gathered(refs: list) -> np.ndarray:
    """Row addresses from several tasks' outputs, as one array."""
    arrays = [np.asarray(array, dtype=np.uint64) for array in ray.get(refs)]
    return np.concatenate(arrays) if arrays else np.zeros(0, np.uint64)


def without(rows: pa.Table, column: str, addrs: np.ndarray) -> pa.Table:
    if not len(addrs) or rows.num_rows == 0:
        return rows
    return rows.filter(pc.invert(pc.is_in(rows.column(column), pa.array(addrs, pa.uint64()))))


def linked_nodes(rows: pa.Table, addrs: set[int]) -> pa.Table:
    keep = pc.is_in(rows.column("addr"), pa.array(sorted(addrs), pa.uint64()))
    return rows.filter(keep).select(NODE_COLUMNS).cast(NODES)


def lookup(plan: TailPlan, column: str, values: list[str], columns: list[str], where: str | None = None) -> pa.Table:
    """Table rows (at the tail's version) whose `column` is one of `values`, with row addresses."""
    dataset = plan.table.open(plan.version)
    parts = []
    if dataset.count_rows() == 0:  # a first run: nothing to look up (a metadata read, no scan)
        values = []
    for start in range(0, len(values), LOOKUP_BATCH):
        condition = sql_in(column, values[start : start + LOOKUP_BATCH])
        parts.append(
            dataset.to_table(
                columns=columns, filter=f"{where} AND {condition}" if where else condition, with_row_address=True
            )
        )
    if parts:
        return pa.concat_tables(parts)
    return pa.schema([plan.table_schema.field(name) for name in columns] + [(ROW_ADDRESS, pa.uint64())]).empty_table()


# --------------------------------------------------------------------------- 1. read and route


def ranks_of(sources: list[str], file_ranks: dict[str, int]) -> np.ndarray:
    ranks = np.empty(len(sources), dtype=np.int64)
    for index, source in enumerate(sources):
        path, row = split_source(source)
        ranks[index] = file_ranks.get(path, 0) + row
    return ranks


def staged_keys(plan: TailPlan, group: int) -> pa.Table:
    """A group's staged rows with what the tail routes on (addr, rank, ids, hashes, vectors, buckets)."""
    columns = ["id", "content_sha256", "source", "status"]
    if plan.centroids is not None:
        columns += [IMAGE, "dup_bucket", "dup_bucket2"] + (PDQ_COLUMNS if plan.has_pdq else [])
    rows = plan.staging.read(columns, plan.groups[group])
    rows = rows.append_column("rank", pa.array(ranks_of(rows.column("source").to_pylist(), plan.file_ranks)))
    return rows.rename_columns(["addr" if name == ROW_ADDRESS else name for name in rows.column_names])


def assign_buckets(plan: TailPlan, images: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Image rows with buckets of the centroids in use, and the buckets computed here (patches).

    Rows staged before the table had centroids, or under an older version, carry no (or stale)
    buckets; they get them here, and the final rows are written with them.
    """
    centroids = plan.centroids
    if centroids.staged or images.num_rows == 0:
        return images, BUCKET_PATCH_SCHEMA.empty_table()
    first, second = nearest_two(vectors_of(images), load_centroids(centroids.uri, plan.storage))
    images = images.set_column(images.schema.get_field_index("dup_bucket"), "dup_bucket", pa.array(first, pa.int32()))
    images = images.set_column(
        images.schema.get_field_index("dup_bucket2"), "dup_bucket2", pa.array(second, pa.int32())
    )
    return images, images.select(["addr", "dup_bucket"]).cast(BUCKET_PATCH_SCHEMA)


def route(plan: TailPlan, group: int) -> list:
    """[identity parts (P), exact parts (P), bucket parts (B), bucket patches, ok rows]: one reader's outputs."""
    rows = staged_keys(plan, group)
    identity = split_by(
        rows.select(IDENTITY_COLUMNS), hash_keys(rows.column("id").to_pylist(), plan.partitions), plan.partitions
    )
    ok = rows.filter(pc.equal(rows.column("status"), Status.OK))
    if plan.centroids is None:
        return [*identity, *[None] * (plan.partitions + plan.bucket_partitions), None, ok.num_rows]
    hashed = ok.filter(pc.is_valid(ok.column("content_sha256")))
    exact = split_by(
        hashed.select(["addr", "rank", "id", "content_sha256"]),
        hash_keys(hashed.column("content_sha256").to_pylist(), plan.partitions),
        plan.partitions,
    )
    members = ["addr", "rank", "id", IMAGE, "dup_bucket", "dup_bucket2"] + (PDQ_COLUMNS if plan.has_pdq else [])
    images, patches = assign_buckets(plan, ok.filter(pc.is_valid(ok.column(IMAGE))).select(members))
    first = images.column("dup_bucket").to_numpy(zero_copy_only=False) % plan.bucket_partitions
    second = images.column("dup_bucket2").to_numpy(zero_copy_only=False) % plan.bucket_partitions
    buckets = [images.filter(pa.array((first == part) | (second == part))) for part in range(plan.bucket_partitions)]
    return [*identity, *exact, *buckets, patches, ok.num_rows]


def route_unbucketed_history(plan: TailPlan, fragments: list[int]) -> list[pa.Table]:
    """Table canonicals that have no bucket yet (written before dedup had centroids), bucketed here
    and routed like the run's rows, so dedup still finds them until `clipline maintain` stores their buckets."""
    columns = ["id", IMAGE, "processed_at"] + (PDQ_COLUMNS if plan.has_pdq else [])
    rows = plan.table.read(
        columns, fragments, filter=f"{HISTORY_CANONICALS} AND dup_bucket IS NULL", version=plan.version
    )
    first, _ = nearest_two(vectors_of(rows), load_centroids(plan.centroids.uri, plan.storage))
    rows = rows.append_column("dup_bucket", pa.array(first, pa.int32()))
    rows = rows.rename_columns(["first_seen" if name == "processed_at" else name for name in rows.column_names])
    return split_by(rows, first % plan.bucket_partitions, plan.bucket_partitions)


# --------------------------------------------------------------------------- 2. identity


def identity_for_partition(plan: TailPlan, *parts: pa.Table) -> list:
    """[changes per finalize group (G), addrs kept out of dedup, replaced table addrs, renames]."""
    rows = concat_nonempty(list(parts))
    if rows is None:
        empty = [IDENTITY_SCHEMA.empty_table() for _ in plan.groups]
        return [*empty, np.zeros(0, np.uint64), np.zeros(0, np.uint64), RENAMES.empty_table()]
    stored = lookup(plan, "id", candidate_ids(rows), ["id", "source", "content_sha256", "dup_of", "dup_cluster"])
    changes = resolve(rows, stored_rows(stored), plan.update_existing)
    owner = plan.fragment_group
    groups = np.array([owner[fragment_of(addr)] for addr in changes.column("addr").to_pylist()], dtype=np.int64)
    excluded = pc.filter(changes.column("addr"), pc.or_(changes.column("failed"), changes.column("carried")))
    replaced = changes.column("replaced_addr").drop_null()
    original = dict(zip(rows.column("addr").to_pylist(), rows.column("id").to_pylist(), strict=True))
    renamed = [
        original[addr] != row_id
        for addr, row_id in zip(*changes.select(["addr", "id"]).to_pydict().values(), strict=True)
    ]
    renames = changes.filter(pa.array(renamed, pa.bool_())).select(["addr", "id"])
    return [
        *split_by(changes, groups, len(plan.groups)),
        excluded.to_numpy(zero_copy_only=False),
        replaced.to_numpy(zero_copy_only=False),
        renames,
    ]


# --------------------------------------------------------------------------- 3. dedup


def lookup_roots(plan: TailPlan, shas: list[str], replaced: np.ndarray) -> pa.Table:
    """Table rows with these content hashes as (content_sha256, root = their canonical, root's first_seen)."""
    rows = lookup(
        plan, "content_sha256", shas, ["id", "content_sha256", "dup_of", "processed_at"], f"status = '{Status.OK}'"
    )
    rows = without(rows, ROW_ADDRESS, replaced)
    if rows.num_rows == 0:
        return ROOTS.empty_table()
    roots = pc.coalesce(rows.column("dup_of"), rows.column("id"))
    seen = dict(zip(rows.column("id").to_pylist(), rows.column("processed_at").to_pylist(), strict=True))
    missing = sorted(set(roots.to_pylist()) - set(seen))
    extra = lookup(plan, "id", missing, ["id", "processed_at"])
    seen.update(zip(extra.column("id").to_pylist(), extra.column("processed_at").to_pylist(), strict=True))
    first_seen = pa.array([seen.get(root) for root in roots.to_pylist()], pa.timestamp("us", tz="UTC"))
    return pa.table({"content_sha256": rows.column("content_sha256"), "root": roots, "first_seen": first_seen})


def exact_for_partition(plan: TailPlan, excluded_refs: list, replaced_refs: list, *parts: pa.Table) -> list:
    """[same_as, table links, linked nodes] for one content-hash partition."""
    rows = concat_nonempty(list(parts))
    if rows is None:
        return [SAME_AS_SCHEMA.empty_table(), TABLE_LINK_SCHEMA.empty_table(), NODES.empty_table()]
    rows = without(rows, "addr", gathered(excluded_refs))
    table_rows = lookup_roots(plan, sorted(set(rows.column("content_sha256").to_pylist())), gathered(replaced_refs))
    same_as, links = exact_links(rows, table_rows)
    linked = {
        *same_as.column("later").to_pylist(),
        *same_as.column("first").to_pylist(),
        *links.column("addr").to_pylist(),
    }
    return [same_as, links, linked_nodes(rows, linked)]


def history_of(plan: TailPlan, buckets: list[int], replaced: np.ndarray) -> pa.Table:
    """The table's canonical image rows of these buckets, read by bucket, minus the rows this run replaces."""
    columns = ["id", IMAGE, "dup_bucket", "processed_at"] + (PDQ_COLUMNS if plan.has_pdq else [])
    in_buckets = f"dup_bucket IN ({', '.join(str(bucket) for bucket in buckets)})" if buckets else "false"
    rows = plan.table.read(columns, filter=f"{HISTORY_CANONICALS} AND {in_buckets}", version=plan.version)
    rows = without(rows, ROW_ADDRESS, replaced).drop_columns([ROW_ADDRESS])
    return rows.rename_columns(["first_seen" if name == "processed_at" else name for name in rows.column_names])


def near_for_partition(
    plan: TailPlan, partition: int, excluded_refs: list, replaced_refs: list, history_refs: list, *parts: pa.Table
) -> list:
    """[run links, table links, linked nodes] for one bucket partition."""
    members = concat_nonempty(list(parts))
    if members is None:
        return [empty_run_links(), TABLE_LINK_SCHEMA.empty_table(), NODES.empty_table()]
    members = without(members, "addr", gathered(excluded_refs))
    seen = np.unique(
        np.concatenate([members.column(name).to_numpy(zero_copy_only=False) for name in ("dup_bucket", "dup_bucket2")])
    )
    owned = [int(bucket) for bucket in seen if bucket % plan.bucket_partitions == partition]
    replaced = gathered(replaced_refs)
    history = history_of(plan, owned, replaced)
    unbucketed = concat_nonempty(ray.get(history_refs))
    if unbucketed is not None:
        unbucketed = without(unbucketed, ROW_ADDRESS, replaced).select(history.column_names).cast(history.schema)
        history = pa.concat_tables([history, unbucketed])
    run_links, table_links = near_links(members, history, plan.near, owned)
    linked = {
        *run_links.column("later").to_pylist(),
        *run_links.column("earlier").to_pylist(),
        *table_links.column("addr").to_pylist(),
    }
    return [run_links, table_links, linked_nodes(members, linked)]


def leaders(plan: TailPlan, rename_refs: list, exact_refs: list, near_refs: list) -> list:
    """[annotations per finalize group (G), counts]: the leader pass over every link of the run."""
    exact, near = [ray.get(refs) for refs in exact_refs], [ray.get(refs) for refs in near_refs]
    nodes = pa.concat_tables([NODES.empty_table(), *(part[2] for part in exact + near)])
    nodes = nodes.group_by("addr").aggregate([("rank", "min"), ("id", "max")]).rename_columns(NODE_COLUMNS)
    renames = concat_nonempty(ray.get(rename_refs))
    if renames is not None and nodes.num_rows:
        final = dict(zip(renames.column("addr").to_pylist(), renames.column("id").to_pylist(), strict=True))
        ids = [
            final.get(addr, row_id)
            for addr, row_id in zip(nodes.column("addr").to_pylist(), nodes.column("id").to_pylist(), strict=True)
        ]
        nodes = nodes.set_column(2, "id", pa.array(ids, pa.string()))
    same_as = pa.concat_tables([SAME_AS_SCHEMA.empty_table(), *(part[0] for part in exact)])
    run_links = pa.concat_tables([empty_run_links(), *(part[0] for part in near)])
    table_links = best_table_links(
        pa.concat_tables([TABLE_LINK_SCHEMA.empty_table(), *(part[1] for part in exact + near)])
    )
    annotations, counts = leader_pass(nodes, same_as, run_links, table_links)
    owner = plan.fragment_group
    groups = np.array([owner[fragment_of(addr)] for addr in annotations.column("addr").to_pylist()], dtype=np.int64)
    return [*split_by(annotations, groups, len(plan.groups)), counts]


# --------------------------------------------------------------------------- 4./5. finalize and commit


def overrides_changed(plan: TailPlan, identity_refs: list, before: dict[str, dict], now: dict[str, dict]) -> bool:
    """Whether a row this group replaces got, lost or changed a reviewer override since `before`."""
    changes = concat_nonempty(ray.get(identity_refs))
    if changes is None:
        return False
    replacing = pc.filter(changes.column("id"), changes.column("replaces")).to_pylist()
    return any(before.get(row_id) != now.get(row_id) for row_id in replacing)


def deletions(plan: TailPlan, version: int, identity_refs: list) -> tuple[list[str], list[int]]:
    """Deletion vectors (uncommitted) for every stored row this run replaces, at `version`."""
    changes = concat_nonempty(ray.get(identity_refs))
    if changes is None:
        return [], []
    replacing = sorted(set(pc.filter(changes.column("id"), changes.column("replaces")).to_pylist()))
    updated, removed = [], []
    for fragment, ids in sorted(locate(plan.table, version, replacing).items()):
        metadata = delete_rows(plan.table, version, fragment, ids)
        if metadata is None:
            removed.append(fragment)
        else:
            updated.append(metadata)
    return updated, removed


def finalize_task(
    plan: TailPlan,
    group: int,
    reviews: dict[str, dict],
    annotations: pa.Table | None,
    patches: pa.Table | None,
    identity_refs: list,
) -> GroupResult:
    """Finalize one group; `annotations` and `patches` arrive resolved (top-level task arguments)."""
    return finalize_group(
        plan.staging,
        plan.groups[group],
        plan.table,
        plan.table_schema,
        ray.get(identity_refs),
        [annotations],
        [patches],
        reviews,
        plan.centroids is not None,
    )


def submit(function, returns: int, *args) -> list:
    """Run `function` (which returns a list of `returns` outputs) as a Ray task: one ref per output."""
    if returns == 1:
        return [ray.remote(_only_output).remote(function, *args)]
    return ray.remote(num_returns=returns)(function).remote(*args)


def _only_output(function, *args):
    [output] = function(*args)
    return output


def run_remote(function, *args):
    """Run `function` as a Ray task and wait for its (small) result."""
    return ray.get(ray.remote(function).remote(*args))


def location_of(table: ClipTable) -> LanceLocation:
    """The table's dataset as tasks open it (the table room cannot name the pipelines' LanceLocation)."""
    return LanceLocation(table.lance.uri, table.storage_options)


def count_remote(location: LanceLocation, filter: str, version: int | None = None) -> int:
    """A filtered row count, counted by a task: the driver never scans rows."""
    return run_remote(LanceLocation.count, location, filter, version)


# --------------------------------------------------------------------------- the driver side


def partitions_for(rows: int, per_partition: int) -> int:
    return max(1, math.ceil(rows / per_partition))


def file_ranks(paths: list[str], rows: dict[str, int]) -> dict[str, int]:
    """Offsets that make (file, row) one integer in input order: files sorted, rows within files."""
    ranks, offset = {}, 0
    for path in sorted(paths):
        ranks[path] = offset
        offset += rows[path]
    return ranks


def centroids_for(table: ClipTable, staging: LanceLocation, staged_version: int | None) -> CentroidsInUse | None:
    """The table's centroids, fitted now (on a sample, in a task) when the table has none yet."""
    store = CentroidStore(table.sidecars, model_key(table.lance.schema), table.storage)
    latest = store.latest()
    if latest is None:
        table_location = location_of(table)
        image_rows = count_remote(staging, OK_IMAGES) + count_remote(table_location, OK_IMAGES, table.version)
        if image_rows == 0:
            return None
        k = bucket_count(image_rows)
        sample = ray.remote(sample_images).remote(staging, table_location, sample_size(k))
        latest = run_remote(fit_and_store, table.sidecars, model_key(table.lance.schema), table.storage, sample, k)
    version, uri = latest
    count = len(store.load(version))
    return CentroidsInUse(version=version, uri=uri, count=count, staged=staged_version == version)


def sample_images(staging: LanceLocation, table: LanceLocation, size: int) -> np.ndarray:
    """Up to `size` ok image embeddings, drawn at random (seeded) from the staged rows and the table."""
    return sample_embeddings([staging.open(), table.open()], size)


def fit_and_store(sidecars: Sidecars, key: str, storage: StorageConfig, sample: np.ndarray, k: int) -> tuple[int, str]:
    return CentroidStore(sidecars, key, storage).write(fit_centroids(sample, k))


def plan_tail(
    table: ClipTable,
    staging: LanceLocation,
    dedup: DedupConfig,
    update_existing: bool,
    ranks: dict[str, int],
    staged_centroids: int | None,
) -> TailPlan:
    """Partition sizes from the staged row count; centroids fitted if the table has none."""
    fragments = fragment_ids(staging)
    dataset = staging.open()
    rows = dataset.count_rows()
    group_count = partitions_for(rows, GROUP_ROWS)
    centroids = centroids_for(table, staging, staged_centroids) if dedup.enabled else None
    return TailPlan(
        staging=staging,
        table=location_of(table),
        table_schema=table.lance.schema,
        storage=table.storage,
        version=table.version,
        groups=split_evenly(fragments, group_count) or [[]],
        partitions=partitions_for(rows, PARTITION_ROWS),
        # sized by all staged rows, not counted image rows: a count would scan the embeddings
        bucket_partitions=min(centroids.count, partitions_for(rows, BUCKET_PARTITION_ROWS)) if centroids else 1,
        file_ranks=ranks,
        dedup=dedup,
        update_existing=update_existing,
        centroids=centroids,
        has_pdq=PDQ in dataset.schema.names and PDQ in table.lance.schema.names,
    )


def run_tail(plan: TailPlan, table: ClipTable, guard: Callable[[], None] = lambda: None) -> TailResult:
    """Identity, dedup, final rows and the one commit (`guard` runs right before it); see the module docstring."""
    started = time.perf_counter()
    result = TailResult()
    groups, p, b = len(plan.groups), plan.partitions, plan.bucket_partitions
    routed = [submit(route, 2 * p + b + 2, plan, group) for group in range(groups)]
    identity = [
        submit(identity_for_partition, groups + 3, plan, *(outputs[part] for outputs in routed)) for part in range(p)
    ]
    identity_of_group = [[outputs[group] for outputs in identity] for group in range(groups)]
    excluded, replaced, renames = ([outputs[groups + k] for outputs in identity] for k in range(3))
    ray.wait([ref for outputs in identity for ref in outputs], num_returns=p * (groups + 3), fetch_local=False)
    checked = sum(result.pull([outputs[-1] for outputs in routed]))
    since = result.phase("identity", started)
    annotations, counts = [None] * groups, DedupCounts()
    if plan.centroids is not None:
        annotations, counts = deduplicate(plan, result, routed, excluded, replaced, renames)
    since = result.phase("dedup", since)
    patches = [outputs[-2] if plan.centroids is not None else None for outputs in routed]
    commit(plan, table, result, identity_of_group, annotations, patches, guard)
    result.dedup = counts
    result.dedup.checked, result.dedup.carried = checked, result.carried
    result.dedup.wall_s = round(time.perf_counter() - started, 3)
    return result


def deduplicate(
    plan: TailPlan, result: TailResult, routed: list, excluded: list, replaced: list, renames: list
) -> tuple[list, DedupCounts]:
    """Exact, perceptual and near tiers, then the leader pass; returns annotations per group and counts."""
    p, b = plan.partitions, plan.bucket_partitions
    exact = [
        submit(exact_for_partition, 3, plan, excluded, replaced, *(outputs[p + part] for outputs in routed))
        for part in range(p)
    ]
    history = unbucketed_history(plan)
    near = [
        submit(
            near_for_partition,
            3,
            plan,
            part,
            excluded,
            replaced,
            [outputs[part] for outputs in history],
            *(outputs[2 * p + part] for outputs in routed),
        )
        for part in range(b)
    ]
    outputs = submit(leaders, len(plan.groups) + 1, plan, renames, exact, near)
    counts = result.pull(outputs[-1])
    counts.buckets = plan.centroids.count
    return outputs[:-1], counts


def unbucketed_history(plan: TailPlan) -> list[list]:
    """Routing tasks for table canonicals without a bucket (none when every row has one)."""
    if count_remote(plan.table, f"{HISTORY_CANONICALS} AND dup_bucket IS NULL", plan.version) == 0:
        return []
    dataset = plan.table.open(plan.version)
    fragments = [fragment.fragment_id for fragment in dataset.get_fragments()]
    groups = split_evenly(fragments, partitions_for(dataset.count_rows(), GROUP_ROWS * 4))
    return [submit(route_unbucketed_history, plan.bucket_partitions, plan, group) for group in groups]


def commit(
    plan: TailPlan,
    table: ClipTable,
    result: TailResult,
    identity_of_group: list[list],
    annotations: list,
    patches: list,
    guard: Callable[[], None],
) -> None:
    """Finalize every group, then commit once; on a conflict, redo what changed and try again.

    Reviewer overrides are read just before the groups are finalized; if the table moved before
    the commit and a replaced row's override changed meanwhile, the groups holding such rows are
    finalized again with the overrides read now. Deletions are always computed at the version
    the commit is made against, so a commit never rests on a stale view of the rows it retires.
    """
    reviews, reviewed_at = table.reviews(), table.version

    def finalize(group: int) -> object:
        return ray.remote(finalize_task).remote(
            plan, group, reviews, annotations[group], patches[group], identity_of_group[group]
        )

    since = time.perf_counter()
    results = result.pull([finalize(group) for group in range(len(plan.groups))])
    since = result.phase("finalize", since)
    all_identity = [ref for refs in identity_of_group for ref in refs]
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        version = table.version
        if version != reviewed_at:
            now = table.reviews()
            if now != reviews:
                stale = [
                    group
                    for group in range(len(plan.groups))
                    if run_remote(overrides_changed, plan, identity_of_group[group], reviews, now)
                ]
                reviews = now
                for group, redone in zip(stale, result.pull([finalize(group) for group in stale]), strict=True):
                    results[group] = redone
            reviewed_at = version
        updated, removed = result.pull(ray.remote(deletions).remote(plan, version, all_identity))
        new = [fragment for group in results for fragment in group.fragments]
        guard()
        try:
            result.version = commit_update(plan.table, version, new, updated, removed)
        except CommitConflictError:
            continue
        result.commit_attempts = attempt
        break
    else:
        raise CommitFailed(
            f"the table changed under the commit {COMMIT_ATTEMPTS} times in a row; nothing was committed"
        )
    result.phase("commit", since)
    for group in results:
        result.carried += group.carried
        result.tally.merge(group.tally)
        result.rows_written += group.rows
        result.replaced += group.replaced
        result.updated_existing += group.updated_existing
