"""Tiered dedup of a run against itself and against the table: annotate, never delete.

Two tiers, both only over `ok` rows:

- exact: the same `content_sha256` (identical image bytes, or identical text for text-only rows);
- near: image embeddings with cosine >= `DedupConfig.near_threshold` (resized, re-encoded,
  slightly cropped copies), found exactly with numpy while that is cheap and through the
  LanceDB vector index (ANN) beyond.

Every duplicate gets `dup_of` = its canonical's id and every `ok` row gets `dup_cluster` = its
canonical's id (its own when it is the canonical), so `dup_of IS NULL` selects one row per
cluster and `dup_cluster = X` lists a cluster. Pointers go straight to the canonical, never
through a chain.

Clusters are centred on their canonical (greedy "leader" clustering, in the order rows were
seen): a row joins a cluster only if it duplicates the canonical itself (same hash, or cosine >=
threshold to it). So every `dup_of` is a claim one can check on the two rows alone, and a
cluster's radius is bounded. Connected components (single linkage) were measured first and
rejected: one chance pair above the threshold between two unrelated images merges both clusters
whole, and chains of copies drift arbitrarily far from the canonical. With the bundled tiny CLIP
on generated shapes (tests/pipelines/test_dedup.py), leader clustering had pairwise precision
0.95 where components had 0.91 on the same set.
A row identical in content to an earlier row (same hash) shares that row's canonical.

Canonical = earliest seen, defined as:

1. Rows already in the table were seen before any row of this run. Their annotations are kept as
   they are (a run only annotates its staged rows; the table is never rewritten), so a run's row
   that duplicates a table canonical points at it; an exact copy of any table row points at that
   row's canonical. When several table canonicals qualify, the one with the earliest
   (`processed_at`, `id`) wins.
2. Within a run, input order: (source file, row number, id) from `source`. Not `processed_at`
   nor staging order: Ray Data does not keep row order, so those differ between two runs of the
   same files, and a rerun must pick the same canonicals.
3. A rerun restages rows whose id and content are already in the table with annotations: those
   keep their annotations (`carried`), so reruns are stable by construction. A row whose content
   changed, or one written before dedup existed, is annotated afresh like a new row.

`annotate_duplicates` runs on the run's staging table after every row is staged and before the
single merge commit, so the table only ever sees annotated rows, in the same commit as the rows.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipline.schemas.config import DedupConfig
from clipline.schemas.table import Status
from clipline.table.maintain import ensure_vector_index, probe_settings, vector_index
from clipline.table.store import ClipTable, Staging

IMAGE = "image_embedding"
OK_IMAGES = f"status = '{Status.OK}' AND {IMAGE} IS NOT NULL"  # scans only; vector queries skip nulls
# Runs with at most this many image rows compare all pairs with numpy (50k x 50k x 512 is ~10^12
# multiply-adds, tens of seconds on one core); larger runs index the staging table and ask each
# row for its ANN neighbours instead.
EXACT_PAIRS_MAX_ROWS = 50_000
QUERY_BLOCK = 2048  # query rows per numpy block / multi-vector ANN query
CORPUS_BLOCK = 8192
# ANN neighbours asked per row: the canonical must be among them, so a cluster of more than this
# many near-identical rows may split in two (each half still a true cluster).
NEIGHBOURS = 32
LATEST = datetime.max.replace(tzinfo=UTC)


@dataclass
class DedupCounts:
    """What dedup did to one run; `exact + near == of_table + of_run` duplicates."""

    checked: int = 0  # ok rows of the run considered
    carried: int = 0  # rows already in the table, same content: annotations kept (reruns)
    exact: int = 0  # duplicates with the same content hash as an earlier row
    near: int = 0  # duplicates by image similarity only
    of_table: int = 0  # duplicates whose canonical is a row already in the table
    of_run: int = 0  # duplicates whose canonical is another row of this run
    wall_s: float = 0.0

    @property
    def duplicates(self) -> int:
        return self.exact + self.near

    def to_dict(self) -> dict:
        return {**asdict(self), "duplicates": self.duplicates}


def input_order(source: str | None, row_id: str) -> tuple:
    """(file, row number, id) from `source` = `file#row`: the order rows were given in."""
    path, _, row = (source or "").rpartition("#")
    return (path, int(row) if row.isdigit() else -1, row_id)


class Seen:
    """The run's new rows in the order they were seen, and what each one duplicates."""

    def __init__(self, ids: list[str], sources: list[str | None]) -> None:
        self.ids = ids
        self.index = {row_id: i for i, row_id in enumerate(ids)}
        self.order = [input_order(source, row_id) for source, row_id in zip(sources, ids, strict=True)]
        self.same_as: dict[int, int] = {}  # row -> the earliest run row with the same content hash
        self.table_canonicals: dict[int, set[str]] = defaultdict(set)  # table rows it may point at
        self.near: dict[int, set[int]] = defaultdict(set)  # earlier run rows within the threshold
        self.exact = [False] * len(ids)

    def earlier(self, i: int, j: int) -> bool:
        return self.order[i] < self.order[j]

    def link_run(self, i: int, j: int) -> None:
        """Rows i and j of the run are near duplicates: remember the pair on the later one."""
        if i != j:
            first, later = (i, j) if self.earlier(i, j) else (j, i)
            self.near[later].add(first)


def lookup(table: ClipTable, column: str, values: list[str], columns: list[str]) -> Iterator[dict]:
    """Ok rows of `table` whose `column` is one of `values`."""
    for rows in table.rows_where_in(column, values, columns, where=f"status = '{Status.OK}'"):
        yield from rows.to_pylist()


def as_matrix(vectors: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Fixed-size-list vectors as a re-normalised float32 matrix (cosine = dot product)."""
    if isinstance(vectors, pa.ChunkedArray):
        vectors = vectors.combine_chunks()
    dim = vectors.type.list_size
    matrix = vectors.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def root_of(row: dict) -> str:
    return row["dup_of"] or row["id"]


def carried_annotations(staged: pa.Table, table: ClipTable) -> dict[str, tuple[str | None, str]]:
    """Staged rows the table already holds with the same content and annotations: (dup_of, dup_cluster)."""
    sha_of = dict(zip(staged.column("id").to_pylist(), staged.column("content_sha256").to_pylist(), strict=True))
    carried = {}
    for row in lookup(table, "id", list(sha_of), ["id", "content_sha256", "dup_of", "dup_cluster"]):
        if row["dup_cluster"] is not None and row["content_sha256"] == sha_of[row["id"]]:
            carried[row["id"]] = (row["dup_of"], row["dup_cluster"])
    return carried


def exact_tier(seen: Seen, shas: list[str | None], table: ClipTable) -> None:
    """Identical content hashes: later copies follow the run's first; any table copy gives its canonical."""
    by_sha = defaultdict(list)
    for i, sha in enumerate(shas):
        if sha is not None:
            by_sha[sha].append(i)
    for members in by_sha.values():
        members.sort(key=lambda i: seen.order[i])
        for i in members[1:]:
            seen.same_as[i] = members[0]
            seen.exact[i] = True
    for row in lookup(table, "content_sha256", list(by_sha), ["id", "content_sha256", "dup_of"]):
        if row["id"] in seen.index:  # the old copy of a row this run rewrites
            continue
        for i in by_sha[row["content_sha256"]]:
            seen.table_canonicals[i].add(root_of(row))  # same content: same duplicates as that row
            seen.exact[i] = True


def image_blocks(staging: lancedb.table.Table, seen: Seen) -> Iterator[tuple[list[int], np.ndarray]]:
    """The run's new image rows as (row indexes, embedding matrix) blocks; exact copies are skipped
    (they follow their first copy, whose neighbours are theirs)."""
    scan = staging.search().where(OK_IMAGES).select(["id", IMAGE]).limit(None)
    for batch in scan.to_batches(QUERY_BLOCK):
        ids = batch.column("id").to_pylist()
        keep = [k for k, row_id in enumerate(ids) if row_id in seen.index and seen.index[row_id] not in seen.same_as]
        if keep:
            rows = batch.take(pa.array(keep))
            yield [seen.index[row_id] for row_id in rows.column("id").to_pylist()], as_matrix(rows.column(IMAGE))


def ann_matches(corpus: lancedb.table.Table, vectors: np.ndarray, threshold: float) -> Iterator[tuple[int, dict]]:
    """(query row, corpus row) pairs with cosine >= threshold, from the corpus's vector index."""
    # No `status = 'ok'` prefilter: a filtered query may probe every partition (ProbeSettings),
    # and nearly all rows with a vector are ok; the few failed ones are dropped here instead.
    query = (
        corpus.search(vectors, vector_column_name=IMAGE)
        .distance_type("cosine")
        .select(["id", "dup_of", "status", "_distance"])
        .limit(NEIGHBOURS)
    )
    results = probe_settings(corpus, IMAGE).apply(query).to_arrow()
    near = pc.less_equal(results.column("_distance"), 1.0 - threshold)
    close = results.filter(pc.and_(near, pc.equal(results.column("status"), Status.OK)))
    for row in close.to_pylist():
        yield row.get("query_index", 0), row  # a one-vector query has no query_index column


def exact_matches(corpus: lancedb.table.Table, vectors: np.ndarray, threshold: float) -> Iterator[tuple[int, dict]]:
    """The same pairs by brute force over every image row of the corpus, block by block."""
    scan = corpus.search().where(OK_IMAGES).select(["id", "dup_of", IMAGE]).limit(None)
    for batch in scan.to_batches(CORPUS_BLOCK):
        sims = vectors @ as_matrix(batch.column(IMAGE)).T
        ids, dup_of = batch.column("id").to_pylist(), batch.column("dup_of").to_pylist()
        for q, c in zip(*np.nonzero(sims >= threshold), strict=True):
            yield int(q), {"id": ids[c], "dup_of": dup_of[c]}


def near_tier(seen: Seen, staging: lancedb.table.Table, table: ClipTable, threshold: float) -> None:
    """Image cosine >= threshold: table canonicals (ANN when indexed) and earlier rows of the run."""
    history = ann_matches if vector_index(table.lance, IMAGE) is not None else exact_matches
    if staging.count_rows(OK_IMAGES) > EXACT_PAIRS_MAX_ROWS:
        ensure_vector_index(staging, IMAGE)  # scratch table: indexing it commits nothing to the table
        within = ann_matches
    else:
        within = exact_matches
    for rows, vectors in image_blocks(staging, seen):
        for q, match in history(table.lance, vectors, threshold):
            # only canonicals: a table duplicate's own canonical qualifies by its own similarity
            if match["dup_of"] is None and match["id"] not in seen.index:
                seen.table_canonicals[rows[q]].add(match["id"])
        for q, match in within(staging, vectors, threshold):
            j = seen.index.get(match["id"])
            if j is not None:
                seen.link_run(rows[q], j)


def first_seen(table: ClipTable, root_ids: set[str]) -> dict[str, tuple]:
    """(processed_at, id) of table canonicals, the tie-break between table clusters."""
    seen = {root: (LATEST, root) for root in root_ids}
    for row in lookup(table, "id", sorted(root_ids), ["id", "processed_at"]):
        seen[row["id"]] = (row["processed_at"] or LATEST, row["id"])
    return seen


def canonicals(seen: Seen, table: ClipTable) -> list[tuple[str, bool]]:
    """Per new row, in the order seen: (canonical id, canonical is a table row)."""
    contested = set().union(*(roots for roots in seen.table_canonicals.values() if len(roots) > 1))
    first = first_seen(table, contested) if contested else {}
    result: list[tuple[str, bool]] = [("", False)] * len(seen.ids)
    canonical_of: dict[int, int] = {}  # run rows decided so far -> index of their canonical (run rows)
    for i in sorted(range(len(seen.ids)), key=lambda i: seen.order[i]):
        if i in seen.same_as:
            j = seen.same_as[i]
            result[i] = result[j]
            canonical_of[i] = canonical_of.get(j, -1)
        elif seen.table_canonicals[i]:
            result[i] = (min(seen.table_canonicals[i], key=lambda r: first.get(r, (LATEST, r))), True)
            canonical_of[i] = -1
        else:
            leaders = [j for j in seen.near[i] if canonical_of.get(j) == j]
            j = min(leaders, key=lambda j: seen.order[j]) if leaders else i
            result[i] = (seen.ids[j], False)
            canonical_of[i] = j
    return result


def annotate_duplicates(staging: Staging, table: ClipTable, config: DedupConfig) -> DedupCounts:
    """Set `dup_of`/`dup_cluster` on every staged row, in place (one merge into staging)."""
    started = time.perf_counter()
    counts = DedupCounts()
    if not config.enabled or staging.table is None:
        return counts
    staged = staging.table.search().select(["id", "content_sha256", "source", "status"]).limit(None).to_arrow()
    ok = staged.filter(pc.equal(staged.column("status"), Status.OK))
    counts.checked = ok.num_rows
    carried = carried_annotations(ok, table)
    counts.carried = len(carried)
    new = ok.filter(pc.invert(pc.is_in(ok.column("id"), pa.array(list(carried), pa.string()))))
    seen = Seen(new.column("id").to_pylist(), new.column("source").to_pylist())
    exact_tier(seen, new.column("content_sha256").to_pylist(), table)
    near_tier(seen, staging.table, table, config.near_threshold)

    annotation = dict.fromkeys(staged.column("id").to_pylist(), (None, None))
    annotation.update(carried)
    for i, (canonical, in_table) in enumerate(canonicals(seen, table)):
        row_id = seen.ids[i]
        if canonical == row_id:
            annotation[row_id] = (None, row_id)
            continue
        annotation[row_id] = (canonical, canonical)
        counts.exact += seen.exact[i]
        counts.near += not seen.exact[i]
        counts.of_table += in_table
        counts.of_run += not in_table
    updates = pa.table(
        {
            "id": pa.array(list(annotation), pa.string()),
            "dup_of": pa.array([value[0] for value in annotation.values()], pa.string()),
            "dup_cluster": pa.array([value[1] for value in annotation.values()], pa.string()),
        }
    )
    staging.update(updates)
    counts.wall_s = round(time.perf_counter() - started, 3)
    return counts
