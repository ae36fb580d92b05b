"""Tiered dedup of a run against itself and against the table, on Ray workers, linear in N.

Three tiers, all over `ok` rows only, and rows are annotated, never deleted:

- exact: the same `content_sha256` (identical bytes, or identical text for text-only rows),
  found by a hash join: rows are partitioned by hash, and each partition looks its hashes up in
  the table through the scalar index on `content_sha256`;
- perceptual (when rows carry `pdq_hash`): PDQ hashes within `DedupConfig.pdq_distance` bits,
  which survives re-encoding where the content hash does not;
- near: image embeddings with cosine >= `DedupConfig.near_threshold` (resized, re-encoded,
  slightly cropped copies).

The perceptual and near tiers compare rows only inside buckets (the SemDeDup scheme, as NeMo
Curator does it): spherical k-means centroids over image embeddings, fitted once on a sample and
stored beside the table (`Sidecars.centroids`), so that history rows and new rows share buckets.
Every image row carries its nearest centroid in `dup_bucket` (scalar-indexed), and a new row is
compared, exactly, with the new rows and the table's rows of its nearest and second-nearest
buckets: the table is read by bucket, never scanned whole, and the work per run grows with the
run, not with the table. A copy across a bucket border is found through the second bucket;
copies farther apart than that are missed (measured in benchmarks/tail.py).

Every duplicate gets `dup_of` = its canonical's id and every `ok` row gets `dup_cluster` = its
canonical's id (its own when it is the canonical), so `dup_of IS NULL` selects one row per
cluster and pointers go straight to the canonical, never through a chain.

Clusters are centred on their canonical (greedy "leader" clustering, in the order rows were
seen): a row joins a cluster only if it duplicates the canonical itself. So every `dup_of` is a
claim one can check on the two rows alone, and a cluster's radius is bounded (connected
components were measured and rejected: one chance pair merges two clusters whole, and chains
drift). The leader pass is sequential by nature; it runs in one Ray task over the sparse links
the tiers found (a few per duplicate), not over the rows. A row keeps at most `NEIGHBOURS`
earlier near rows as candidate canonicals (the earliest ones): a cluster of more near-identical
rows than that may split in two, each half still a true cluster.

Canonical = earliest seen:
1. Rows already in the table come first. Their annotations are kept (a run annotates only its
   own rows), so a run's row that duplicates a table canonical points at it, and an exact copy of
   any table row points at that row's canonical. Among several table canonicals the earliest
   (`processed_at`, `id`) wins.
2. Within a run, input order: (file, row number), never processing order (Ray Data does not keep
   row order, and a rerun must pick the same canonicals).
3. A rerun rewrites rows whose id and content the table already holds with annotations: those
   keep their annotations (`carried`, decided by `identity.py`), so reruns are stable.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipline.operators.columns import embedding_matrix
from clipline.operators.hamming import column_words, cross_distances
from clipline.operators.pdq import MIN_QUALITY
from clipline.table.buckets import unit_rows

IMAGE = "image_embedding"
PDQ = "pdq_hash"
NEIGHBOURS = 64  # earlier near rows kept per row as candidate canonicals
QUERY_BLOCK = 4096  # rows per side of one similarity block: bounds memory in skewed buckets
LATEST = datetime.max.replace(tzinfo=UTC)


@dataclass
class DedupCounts:
    """What dedup did to one run; `exact + pdq + near == of_table + of_run` duplicates."""

    checked: int = 0  # ok rows of the run considered
    carried: int = 0  # rows already in the table, same content: annotations kept (reruns)
    exact: int = 0  # duplicates with the same content hash as their canonical
    pdq: int = 0  # duplicates by perceptual hash (not the same bytes)
    near: int = 0  # duplicates by image similarity only
    of_table: int = 0  # duplicates whose canonical is a row already in the table
    of_run: int = 0  # duplicates whose canonical is another row of this run
    buckets: int = 0  # centroids in use (0: dedup off or no image rows)
    wall_s: float = 0.0

    @property
    def duplicates(self) -> int:
        return self.exact + self.pdq + self.near

    def to_dict(self) -> dict:
        return {**asdict(self), "duplicates": self.duplicates}


# --------------------------------------------------------------------------- tiers


def vectors_of(rows: pa.Table) -> np.ndarray:
    vectors, _ = embedding_matrix(rows.column(IMAGE))
    return unit_rows(vectors)


def pdq_words(rows: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(n, 4) uint64 PDQ words of every row (zeros where unusable), and which rows have a usable hash.

    A hash of quality below MIN_QUALITY (a flat or featureless picture) is left out: such images
    hash alike whatever they show, and would make false duplicates.
    """
    present = pc.is_valid(rows.column(PDQ)).to_numpy(zero_copy_only=False)
    quality = pc.fill_null(rows.column("pdq_quality"), 0).to_numpy(zero_copy_only=False)
    usable = present & (quality >= MIN_QUALITY)
    words = np.zeros((rows.num_rows, 4), dtype=np.uint64)
    known, _ = column_words(rows.column(PDQ))
    words[present] = known
    return words, usable


@dataclass(frozen=True)
class NearConfig:
    threshold: float
    pdq_distance: int | None  # None: the perceptual tier is off (or no row has a PDQ hash)


KIND_NEAR, KIND_PDQ = 1, 2


@dataclass(frozen=True)
class Points:
    """A set of rows as the near and perceptual tiers compare them: unit vectors and PDQ words.

    Built once per partition and indexed per bucket with numpy: taking Arrow rows (embeddings
    and all) bucket by bucket was most of a partition's time.
    """

    vectors: np.ndarray
    bits: np.ndarray | None  # (n, 4) PDQ words; None when the perceptual tier does not apply
    usable: np.ndarray | None  # rows whose PDQ hash is usable

    @classmethod
    def of(cls, rows: pa.Table, config: NearConfig) -> Points:
        if config.pdq_distance is None or PDQ not in rows.column_names:
            return cls(vectors_of(rows), None, None)
        bits, usable = pdq_words(rows)
        return cls(vectors_of(rows), bits, usable)

    def subset(self, index: np.ndarray) -> Points:
        if self.bits is None:
            return Points(self.vectors[index], None, None)
        return Points(self.vectors[index], self.bits[index], self.usable[index])

    @property
    def has_pdq(self) -> bool:
        return self.usable is not None and bool(self.usable.any())


def pair_blocks(queries: Points, corpus: Points, config: NearConfig) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(query index, corpus index, kind bits) of pairs that are near, block by block."""
    found = []
    use_pdq = queries.has_pdq and corpus.has_pdq  # no usable hash on a side: no PDQ pair to find
    for qs in range(0, len(queries.vectors), QUERY_BLOCK):
        q_block = slice(qs, qs + QUERY_BLOCK)
        for cs in range(0, len(corpus.vectors), QUERY_BLOCK):
            c_block = slice(cs, cs + QUERY_BLOCK)
            kinds = (queries.vectors[q_block] @ corpus.vectors[c_block].T >= config.threshold).astype(np.int8)
            kinds *= KIND_NEAR
            if use_pdq:
                close = cross_distances(queries.bits[q_block], corpus.bits[c_block]) <= config.pdq_distance
                close &= queries.usable[q_block, None] & corpus.usable[None, c_block]
                kinds |= close.astype(np.int8) * KIND_PDQ
            q_index, c_index = np.nonzero(kinds)
            found.append((q_index + qs, c_index + cs, kinds[q_index, c_index]))
    return found


def near_links(
    members: pa.Table, history: pa.Table, config: NearConfig, buckets: list[int]
) -> tuple[pa.Table, pa.Table]:
    """Near pairs inside each of `buckets`: (later run row, earlier run row) and (run row, table
    canonical) links.

    `members`: the run's ok image rows routed to these buckets (addr, rank, id, image_embedding,
    dup_bucket, dup_bucket2, maybe pdq_hash); a row sits in the bucket of its nearest centroid
    and is also looked up from its second-nearest. `history`: the table's canonicals of these
    buckets (id, image_embedding, dup_bucket, first_seen, maybe pdq_hash).
    """
    run_links, table_links = [], []
    points, history_points = Points.of(members, config), Points.of(history, config)
    primary = members.column("dup_bucket").to_numpy(zero_copy_only=False)
    secondary = members.column("dup_bucket2").to_numpy(zero_copy_only=False)
    history_bucket = history.column("dup_bucket").to_numpy(zero_copy_only=False)
    ranks = members.column("rank").to_numpy()
    addrs = members.column("addr").to_numpy()
    for bucket in buckets:
        in_bucket = np.flatnonzero(primary == bucket)
        queries = np.flatnonzero((primary == bucket) | (secondary == bucket))
        query_points = points.subset(queries)
        for q, c, kind in pair_blocks(query_points, points.subset(in_bucket), config):
            later, earlier = queries[q], in_bucket[c]
            keep = ranks[later] > ranks[earlier]
            run_links.append((addrs[later[keep]], addrs[earlier[keep]], ranks[earlier[keep]], kind[keep]))
        in_history = np.flatnonzero(history_bucket == bucket)
        if len(in_history):
            for q, c, kind in pair_blocks(query_points, history_points.subset(in_history), config):
                table_links.append((addrs[queries[q]], in_history[c], kind))
    return _run_link_table(run_links), _table_link_table(table_links, history)


RUN_LINK_SCHEMA = pa.schema(
    [("later", pa.uint64()), ("earlier", pa.uint64()), ("earlier_rank", pa.int64()), ("kind", pa.int8())]
)
SAME_AS_SCHEMA = pa.schema([("later", pa.uint64()), ("first", pa.uint64())])


def empty_run_links() -> pa.Table:
    return RUN_LINK_SCHEMA.empty_table()


def _run_link_table(parts: list[tuple]) -> pa.Table:
    if not parts:
        return empty_run_links()
    stacked = [np.concatenate([part[i] for part in parts]) for i in range(4)]
    return cap_links(pa.table(dict(zip(RUN_LINK_SCHEMA.names, stacked, strict=True))).cast(RUN_LINK_SCHEMA))


def cap_links(links: pa.Table) -> pa.Table:
    """At most NEIGHBOURS earliest earlier rows per row, each pair once (kinds OR-ed)."""
    if links.num_rows == 0:
        return links
    grouped = links.group_by(["later", "earlier", "earlier_rank"]).aggregate([("kind", "max")])
    grouped = grouped.rename_columns(["later", "earlier", "earlier_rank", "kind"]).sort_by(
        [("later", "ascending"), ("earlier_rank", "ascending")]
    )
    later = grouped.column("later").to_numpy()
    starts = np.r_[0, np.flatnonzero(np.diff(later)) + 1]
    position = np.arange(len(later)) - np.repeat(starts, np.diff(np.r_[starts, len(later)]))
    return grouped.filter(pa.array(position < NEIGHBOURS))


def _table_link_table(parts: list[tuple], history: pa.Table) -> pa.Table:
    """(run row addr, table canonical id, its first-seen key, kind), one best canonical per row."""
    if not parts:
        return TABLE_LINK_SCHEMA.empty_table()
    rows = np.concatenate([part[0] for part in parts])
    hist = np.concatenate([part[1] for part in parts])
    kind = np.concatenate([part[2] for part in parts])
    links = pa.table(
        {
            "addr": pa.array(rows, pa.uint64()),
            "canonical": history.column("id").take(pa.array(hist)),
            "first_seen": history.column("first_seen").take(pa.array(hist)),
            "kind": pa.array(kind, pa.int8()),
        }
    )
    return best_table_links(links)


TABLE_LINK_SCHEMA = pa.schema(
    [
        ("addr", pa.uint64()),
        ("canonical", pa.string()),
        ("first_seen", pa.timestamp("us", tz="UTC")),
        ("kind", pa.int8()),
    ]
)


def best_table_links(links: pa.Table) -> pa.Table:
    """For each run row, the table canonical seen first ((first_seen, id) smallest).

    The link's kind says how the row duplicates the table: exact (0) when any of its links is
    by content hash, which is how the tiers rank ("exact" before "perceptual" before "near").
    """
    if links.num_rows == 0:
        return TABLE_LINK_SCHEMA.empty_table()
    filled = links.set_column(2, "first_seen", pc.fill_null(links.column("first_seen"), LATEST))
    ordered = filled.sort_by([("addr", "ascending"), ("first_seen", "ascending"), ("canonical", "ascending")])
    addrs = ordered.column("addr").to_numpy()
    first = np.r_[True, addrs[1:] != addrs[:-1]]
    exact = pc.equal(ordered.column("kind"), 0).to_numpy(zero_copy_only=False)
    group = np.cumsum(first) - 1
    any_exact = np.zeros(int(first.sum()), dtype=bool)
    np.logical_or.at(any_exact, group, exact)
    best = ordered.filter(pa.array(first))
    kinds = np.where(any_exact, 0, best.column("kind").to_numpy(zero_copy_only=False)).astype(np.int8)
    return best.set_column(3, "kind", pa.array(kinds, pa.int8())).cast(TABLE_LINK_SCHEMA)


def exact_links(rows: pa.Table, table_rows: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Same content hash: later run rows follow the run's first copy; any table copy gives its root.

    `rows`: the run's ok rows of one hash partition (addr, rank, content_sha256). `table_rows`:
    the table's ok rows with those hashes (content_sha256, root, first_seen), already without the
    rows this run rewrites. Returns (same_as: later addr → first addr, table links).
    """
    ordered = rows.sort_by([("content_sha256", "ascending"), ("rank", "ascending")])
    shas = ordered.column("content_sha256").to_pylist()
    addrs = ordered.column("addr").to_numpy()
    first_of = {}
    later, first = [], []
    for index, sha in enumerate(shas):
        if sha in first_of:
            later.append(addrs[index])
            first.append(first_of[sha])
        else:
            first_of[sha] = addrs[index]
    same_as = pa.table(
        {"later": pa.array(later, pa.uint64()), "first": pa.array(first, pa.uint64())}, schema=SAME_AS_SCHEMA
    )
    roots = defaultdict(list)
    for sha, root, seen in zip(
        table_rows.column("content_sha256").to_pylist(),
        table_rows.column("root").to_pylist(),
        table_rows.column("first_seen").to_pylist(),
        strict=True,
    ):
        roots[sha].append((seen or LATEST, root))
    links = []
    for sha, addr in zip(rows.column("content_sha256").to_pylist(), rows.column("addr").to_pylist(), strict=True):
        if sha in roots:
            seen, root = min(roots[sha])
            links.append({"addr": addr, "canonical": root, "first_seen": seen, "kind": 0})
    return same_as, pa.Table.from_pylist(links, schema=TABLE_LINK_SCHEMA)


# --------------------------------------------------------------------------- the leader pass


# Buckets assigned during the tail (rows staged before their table had centroids).
BUCKET_PATCH_SCHEMA = pa.schema([("addr", pa.uint64()), ("dup_bucket", pa.int32())])
ANNOTATION_SCHEMA = pa.schema(
    [("addr", pa.uint64()), ("dup_of", pa.string()), ("dup_cluster", pa.string()), ("kind", pa.string())]
)


def leader_pass(
    nodes: pa.Table, same_as: pa.Table, run_links: pa.Table, table_links: pa.Table
) -> tuple[pa.Table, DedupCounts]:
    """Canonicals for every run row that has a link, in input order (see the module docstring).

    `nodes`: (addr, rank, id) of every linked run row, ids final. Returns the annotations of the
    duplicates (canonicals keep the default: no `dup_of`, `dup_cluster` = own id) and the counts.
    """
    counts = DedupCounts()
    order = np.argsort(nodes.column("rank").to_numpy(), kind="stable")
    addrs = nodes.column("addr").to_numpy()[order]
    ids = nodes.column("id").take(pa.array(order)).to_pylist()
    position = {int(addr): index for index, addr in enumerate(addrs)}
    follows = {
        int(a): int(b)
        for a, b in zip(same_as.column("later").to_pylist(), same_as.column("first").to_pylist(), strict=True)
    }
    table_best = {
        int(addr): (canonical, kind)
        for addr, canonical, kind in zip(
            table_links.column("addr").to_pylist(),
            table_links.column("canonical").to_pylist(),
            table_links.column("kind").to_pylist(),
            strict=True,
        )
    }
    earlier: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for later, first, kind in zip(
        run_links.column("later").to_pylist(),
        run_links.column("earlier").to_pylist(),
        run_links.column("kind").to_pylist(),
        strict=True,
    ):
        earlier[int(later)].append((position[int(first)], kind))
    leader_of = np.full(len(addrs), -1)  # position of each decided row's run canonical (-1: a table row)
    canonical_id: list[str | None] = [None] * len(addrs)
    records = []
    for index, addr in enumerate(addrs.tolist()):
        kind = None
        if addr in follows:
            first = position[follows[addr]]
            canonical_id[index], leader_of[index], kind = canonical_id[first], leader_of[first], "exact"
            in_table = leader_of[first] == -1
        elif addr in table_best:
            canonical_id[index], link_kind = table_best[addr]
            kind, in_table = _kind_name(link_kind), True
        else:
            leaders = [(j, k) for j, k in earlier.get(addr, []) if leader_of[j] == j]
            if leaders:
                j, link_kind = min(leaders)
                canonical_id[index], leader_of[index], kind, in_table = ids[j], j, _kind_name(link_kind), False
            else:
                canonical_id[index], leader_of[index] = ids[index], index
        if kind is None:
            continue
        records.append({"addr": addr, "dup_of": canonical_id[index], "dup_cluster": canonical_id[index], "kind": kind})
        setattr(counts, kind, getattr(counts, kind) + 1)
        counts.of_table += bool(in_table)
        counts.of_run += not in_table
    return pa.Table.from_pylist(records, schema=ANNOTATION_SCHEMA), counts


def _kind_name(kind: int) -> str:
    if kind == 0:
        return "exact"
    return "pdq" if kind & KIND_PDQ else "near"
