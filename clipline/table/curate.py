"""Curated exports: the selected rows of one table version, plus a manifest saying how they were chosen.

In the spirit of DataComp's filtering baselines: a training subset is a query over the table
(SQL filter, CLIP-score threshold, dedup), and the manifest records that query, the table version
it ran on and how many rows each step dropped, so a subset can be audited and rebuilt.

Steps run in a fixed order and every dropped row is counted under the first step that dropped it:
`failed` (status is not ok) → `where` → `clip_score` (below the threshold, or no score: rows
without an image–text pair) → `duplicate` / `cluster_cap`. The cluster step works on the
`dup_cluster` annotations: `dedup` keeps one row per cluster, `max_per_cluster N` up to N; within a
cluster the canonical comes first, then higher CLIP score, then id. It runs after the other
filters, so a cluster whose canonical was filtered out is still represented by its best surviving
member instead of vanishing.

The table version is pinned for the whole export (count, selection and write read the same
snapshot), even while a run commits to the table.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import fsspec
import lancedb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipline.schemas.storage import StorageConfig
from clipline.schemas.table import Status
from clipline.table.embedding import functions_for_columns

DEFAULT_COLUMNS = (
    "id",
    "source",
    "text",
    "image_uri",
    "content_sha256",
    "decision",
    "labels",
    "clip_score",
    "dup_of",
    "dup_cluster",
)
FORMATS = {".parquet": "parquet", ".lance": "lance"}
BATCH_ROWS = 8192


@dataclass
class CurateQuery:
    """How rows are selected; recorded verbatim in the manifest."""

    where: str | None = None
    dedup: bool = False
    min_clip_score: float | None = None
    max_per_cluster: int | None = None
    columns: list[str] = field(default_factory=lambda: list(DEFAULT_COLUMNS))

    def __post_init__(self) -> None:
        if self.max_per_cluster is not None and self.max_per_cluster < 1:
            raise ValueError("max_per_cluster must be at least 1")

    @property
    def cap(self) -> int | None:
        return 1 if self.dedup else self.max_per_cluster

    def filters(self) -> list[tuple[str, str]]:
        """(drop reason, SQL that keeps a row) in the order they apply."""
        steps = [("failed", f"status = '{Status.OK}'")]
        if self.where:
            steps.append(("where", f"({self.where})"))
        if self.min_clip_score is not None:
            steps.append(("clip_score", f"clip_score >= {float(self.min_clip_score)!r}"))
        return steps


def output_format(out: str) -> str:
    for suffix, name in FORMATS.items():
        if out.rstrip("/").endswith(suffix):
            return name
    raise ValueError(f"--out {out!r}: name the output *.parquet or *.lance")


def manifest_path(out: str) -> str:
    """`data/curated.parquet` → `data/curated.manifest.json` (beside the output, either format)."""
    stem = out.rstrip("/")
    for suffix in FORMATS:
        stem = stem.removesuffix(suffix)
    return f"{stem}.manifest.json"


def cluster_cap(rows: pa.Table, cap: int) -> set[str]:
    """Ids kept when each dup cluster keeps at most `cap` rows: canonical, then best CLIP score, then id."""
    clusters = defaultdict(list)
    for row in rows.to_pylist():
        score = row["clip_score"]
        rank = (row["dup_of"] is not None, -score if score is not None else float("inf"), row["id"])
        clusters[row["dup_cluster"] or row["id"]].append((rank, row["id"]))
    return {row_id for members in clusters.values() for _, row_id in sorted(members)[:cap]}


def selected_batches(
    table: lancedb.table.Table, condition: str, columns: list[str], keep: set[str] | None
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The export as a stream, with the table's metadata (model, dimension) on its schema."""
    reader = table.search().where(condition).select(columns).limit(None).to_batches(BATCH_ROWS)
    schema = functions_for_columns(reader.schema.with_metadata(table.schema.metadata or {}))
    kept = pa.array(sorted(keep), pa.string()) if keep is not None else None

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            if kept is not None:
                batch = batch.filter(pc.is_in(batch.column("id"), kept))
            if batch.num_rows:
                yield pa.RecordBatch.from_arrays(batch.columns, schema=schema)

    return schema, batches()


def write_output(out: str, schema: pa.Schema, batches: Iterator[pa.RecordBatch], storage: StorageConfig) -> int:
    """Write parquet through fsspec, or a Lance dataset at exactly `out` (no pylance needed)."""
    written = 0

    def counted() -> Iterator[pa.RecordBatch]:
        nonlocal written
        for batch in batches:
            written += batch.num_rows
            yield batch

    if output_format(out) == "parquet":
        fs, path = fsspec.core.url_to_fs(out, **storage.fsspec_options(out))
        fs.makedirs(fs._parent(path), exist_ok=True)
        with fs.open(path, "wb") as handle, pq.ParquetWriter(handle, schema) as writer:
            for batch in counted():
                writer.write_batch(batch)
        return written
    parent, _, name = out.rstrip("/").rpartition("/")
    db = lancedb.connect(parent or ".", storage_options=storage.lance_options(out) or None)
    db.create_table(name.removesuffix(".lance"), pa.RecordBatchReader.from_batches(schema, counted()), mode="overwrite")
    return written


def curate(
    table: lancedb.table.Table,
    out: str,
    query: CurateQuery | None = None,
    storage: StorageConfig | None = None,
    table_uri: str | None = None,
) -> dict:
    """Export the rows `query` selects to `out` (*.parquet or *.lance) and write the manifest; returns it."""
    query = query or CurateQuery()
    storage = storage or StorageConfig()
    output_format(out)
    missing = [column for column in query.columns if column not in table.schema.names]
    if missing:
        raise ValueError(f"unknown column(s) {missing}; the table has {table.schema.names}")
    table.checkout_latest()
    version = table.version
    table.checkout(version)
    try:
        total = table.count_rows()
        dropped, condition, remaining = {}, None, total
        for reason, sql in query.filters():
            condition = sql if condition is None else f"{condition} AND {sql}"
            left = table.count_rows(condition)
            dropped[reason] = remaining - left
            remaining = left
        keep = None
        if query.cap is not None:
            light = table.search().where(condition).select(["id", "dup_of", "dup_cluster", "clip_score"])
            keep = cluster_cap(light.limit(None).to_arrow(), query.cap)
            dropped["duplicate" if query.dedup else "cluster_cap"] = remaining - len(keep)
        columns = list(dict.fromkeys(query.columns))
        schema, batches = selected_batches(table, condition, columns, keep)
        kept = write_output(out, schema, batches, storage)
    finally:
        table.checkout_latest()
    manifest = {
        "output": out,
        "format": output_format(out),
        "created_at": datetime.now(UTC).isoformat(),
        "table": {"uri": table_uri, "name": table.name, "version": version, "rows": total},
        "query": asdict(query),
        "counts": {"rows": total, "kept": kept, "dropped": dropped},
    }
    with fsspec.open(manifest_path(out), "w", **storage.fsspec_options(out)) as handle:
        json.dump(manifest, handle, indent=2)
    return manifest
