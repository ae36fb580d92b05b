"""Search a clipline table: text → image, image → image (reverse image search), more like a row.

Every query is embedded by the model that wrote the table, rebuilt from the model config the sink
stored in the table metadata, so a query is never compared with another model's vectors. Image
queries go through the pipeline's own decode and `encode_pixels` (`table/embedding.py`, shared with
the table's LanceDB embedding function), so a query image and its copy in the table get the same
embedding.

Filters are prefilters: the SQL condition narrows the candidates before the vector search, and
the index is allowed to probe further partitions until k matching rows are found
(`ProbeSettings.apply`); if the index still returns fewer rows than match, the query is rerun
exhaustively over the matching rows. So a filter never returns fewer than k rows when k match.
"""

from __future__ import annotations

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipline.models.loader import ClipBundle, load_clip
from clipline.operators.decode import RowFailure
from clipline.operators.uri_policy import read_trusted
from clipline.schemas.storage import StorageConfig
from clipline.table.embedding import MAX_QUERY_IMAGE_BYTES, embed_image, embed_text
from clipline.table.maintain import ProbeSettings, probe_settings
from clipline.table.store import ClipTable, sql_literal

RESULT_COLUMNS = ["id", "source", "text", "image_uri", "decision", "labels", "status", "dup_of", "dup_cluster"]
IMAGE_COLUMN = "image_embedding"


def _query(table, vector, column, where, columns, k, settings: ProbeSettings, exhaustive: bool):
    query = (
        table.search(vector, vector_column_name=column).distance_type("cosine").select([*columns, "_distance"]).limit(k)
    )
    if where:
        query = query.where(where, prefilter=True)
    return query.bypass_vector_index() if exhaustive else settings.apply(query, filtered=bool(where))


def search_vector(
    table: lancedb.table.Table,
    vector: np.ndarray,
    k: int = 10,
    where: str | None = None,
    column: str = IMAGE_COLUMN,
    exclude_id: str | None = None,
    columns: list[str] | None = None,
    settings: ProbeSettings | None = None,
) -> pa.Table:
    """Top-k rows by cosine to `vector` (already L2-normalised); `score` is the cosine, best first.

    Rows without a vector (text-only or failed rows) never match: LanceDB skips null vectors, so
    no `IS NOT NULL` filter is needed (one would cost a scan of the vector column per query).
    `exclude_id` drops one row (the query row of "more like this") by asking for one more result.
    `settings` defaults to the probes the column's index was planned for; pass it to skip the
    index lookup when issuing many queries.
    """
    if k <= 0:
        raise ValueError("k must be at least 1")
    columns = list(dict.fromkeys(["id", *(columns or RESULT_COLUMNS)]))
    settings = probe_settings(table, column) if settings is None else settings
    limit = k + (exclude_id is not None)
    results = _query(table, vector, column, where, columns, limit, settings, exhaustive=False).to_arrow()
    if results.num_rows < limit:
        matching = f"{column} IS NOT NULL" + (f" AND ({where})" if where else "")
        if results.num_rows < table.count_rows(matching):
            results = _query(table, vector, column, where, columns, limit, settings, exhaustive=True).to_arrow()
    if exclude_id is not None:
        results = results.filter(pc.not_equal(results.column("id"), exclude_id))
    results = results.slice(0, k)
    scores = pc.subtract(1.0, results.column("_distance")).cast(pa.float32())
    return results.drop_columns(["_distance"]).append_column("score", scores)


def search_text(
    table: lancedb.table.Table,
    bundle: ClipBundle,
    text: str,
    k: int = 10,
    where: str | None = None,
) -> pa.Table:
    """Text → image: top-k rows by cosine between the text and the image embeddings."""
    return search_vector(table, embed_text(bundle, text), k, where)


def read_image(path_or_uri: str, storage: StorageConfig | None = None) -> bytes:
    """Query image bytes from a local path, `file://` or s3:// (with the table's storage settings).

    The operator typed the path, so no allowlist applies; the byte cap and regular-file check do.
    """
    try:
        return read_trusted(path_or_uri, MAX_QUERY_IMAGE_BYTES, storage or StorageConfig())
    except RowFailure as exc:
        raise ValueError(f"query image: {exc.message}") from exc


def search_image(
    table: lancedb.table.Table,
    bundle: ClipBundle,
    image: bytes,
    k: int = 10,
    where: str | None = None,
) -> pa.Table:
    """Reverse image search: the rows whose images are closest to `image` (encoded bytes)."""
    return search_vector(table, embed_image(bundle, image), k, where)


def row_vector(table: lancedb.table.Table, row_id: str) -> np.ndarray:
    """A row's image embedding, else its text embedding (text-only rows find images like their text)."""
    found = table.search().where(f"id = {sql_literal(row_id)}").select(["image_embedding", "text_embedding"]).limit(1)
    rows = found.to_arrow().to_pylist()
    if not rows:
        raise ValueError(f"no row with id {row_id!r}")
    vector = rows[0]["image_embedding"] or rows[0]["text_embedding"]
    if vector is None:
        raise ValueError(f"row {row_id!r} has no embedding (failed row?)")
    return np.asarray(vector, dtype=np.float32)


def search_like(table: lancedb.table.Table, row_id: str, k: int = 10, where: str | None = None) -> pa.Table:
    """More like this row: its nearest images, the row itself excluded. No model needed."""
    return search_vector(table, row_vector(table, row_id), k, where, exclude_id=row_id)


def search_table(
    uri: str,
    table_name: str,
    text: str | None = None,
    k: int = 10,
    where: str | None = None,
    storage: StorageConfig | None = None,
    *,
    image: str | None = None,
    like: str | None = None,
) -> pa.Table:
    """Open the table and run one query, given as exactly one of text, image (path/URI) or like (row id)."""
    if sum(value is not None for value in (text, image, like)) != 1:
        raise ValueError("give exactly one of text, image or like")
    storage = storage or StorageConfig()
    table = ClipTable.open(uri, table_name, storage)
    if like is not None:
        return search_like(table.lance, like, k, where)
    bundle = load_clip(table.model(), storage=storage)
    if text is not None:
        return search_text(table.lance, bundle, text, k, where)
    return search_image(table.lance, bundle, read_image(image, storage), k, where)
