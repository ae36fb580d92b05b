"""Search a clipline table: text → image, image → image (reverse image search), more like a row,
and rows near a PDQ hash.

Every query is embedded by the model that wrote the table, rebuilt from the model config the sink
stored in the table metadata, so a query is never compared with another model's vectors. Image
queries go through the pipeline's own decode and `encode_pixels` (`table/embedding.py`, shared with
the table's LanceDB embedding function), so a query image and its copy in the table get the same
embedding.

Filters are prefilters: the SQL condition narrows the candidates before the vector search, and
the index is allowed to probe further partitions until k matching rows are found
(`ProbeSettings.apply`); if the index still returns fewer rows than match, the query is rerun
exhaustively over the matching rows. So a filter never returns fewer than k rows when k match.

PDQ search (`search_pdq`) is a scan of the `pdq_hash` column (LanceDB has no Hamming index),
compared in vectorised batches: the rows within a number of bits of a hash, nearest first.
"""

from __future__ import annotations

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipline.models.loader import ClipBundle, load_clip
from clipline.operators.decode import RowFailure
from clipline.operators.hamming import BITS, dihedral_words, distances, hex_to_words
from clipline.operators.uri_policy import read_trusted
from clipline.schemas.hash_lists import DEFAULT_MAX_DISTANCE
from clipline.schemas.storage import StorageConfig
from clipline.table.embedding import MAX_QUERY_IMAGE_BYTES, embed_image, embed_text
from clipline.table.maintain import ProbeSettings, probe_settings
from clipline.table.store import ClipTable, sql_in, sql_literal

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


def search_pdq(
    table: lancedb.table.Table,
    query: str,
    k: int = 10,
    where: str | None = None,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    dihedral: bool = False,
) -> pa.Table:
    """The k rows whose `pdq_hash` is nearest to `query` (64 hex digits) and within `max_distance`
    bits, nearest first; `distance` is in bits and `score` is 1 - distance/256, as in hash-list
    reasons. `dihedral` also finds rotated and mirrored copies (the query's 8 symmetries)."""
    if k <= 0:
        raise ValueError("k must be at least 1")
    if not 0 <= max_distance <= BITS:
        raise ValueError(f"the distance is in bits, 0..{BITS}, got {max_distance}")
    if "pdq_hash" not in table.schema.names:
        raise ValueError(f"table {table.name!r} has no pdq_hash column: it was written before PDQ hashes existed")
    try:
        query_words = hex_to_words([query])
    except ValueError:
        raise ValueError(f"a PDQ hash is 64 hex digits, got {query!r}") from None
    variants = dihedral_words(query_words)[:, 0] if dihedral else query_words
    condition = "pdq_hash IS NOT NULL" + (f" AND ({where})" if where else "")
    ids, found = [], []
    for batch in table.search().where(condition).select(["id", "pdq_hash"]).limit(None).to_batches():
        words = hex_to_words(batch.column("pdq_hash").to_pylist())
        nearest = np.min([distances(words, variant) for variant in variants], axis=0)
        near = np.flatnonzero(nearest <= max_distance)
        ids.extend(batch.column("id").take(pa.array(near)).to_pylist())
        found.extend(nearest[near].tolist())
    best = sorted(zip(found, ids, strict=True))[:k]
    if not best:
        return table.schema.empty_table().select(RESULT_COLUMNS).append_column("distance", pa.array([], pa.int32()))
    distance_of = {row_id: distance for distance, row_id in best}
    rows = table.search().where(sql_in("id", distance_of)).select(RESULT_COLUMNS).limit(None).to_arrow()
    rows = rows.append_column("distance", pa.array([distance_of[i] for i in rows.column("id").to_pylist()], pa.int32()))
    rows = rows.sort_by([("distance", "ascending"), ("id", "ascending")])
    return rows.append_column("score", pc.subtract(1.0, pc.divide(rows.column("distance").cast(pa.float32()), BITS)))


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
    pdq: str | None = None,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    dihedral: bool = False,
) -> pa.Table:
    """Open the table and run one query, given as exactly one of text, image (path/URI), like (row id)
    or pdq (a PDQ hash; `max_distance` and `dihedral` apply to it)."""
    if sum(value is not None for value in (text, image, like, pdq)) != 1:
        raise ValueError("give exactly one of text, image, like or pdq")
    storage = storage or StorageConfig()
    table = ClipTable.open(uri, table_name, storage)
    if like is not None:
        return search_like(table.lance, like, k, where)
    if pdq is not None:
        return search_pdq(table.lance, pdq, k, where, max_distance, dihedral)
    bundle = load_clip(table.model(), storage=storage)
    if text is not None:
        return search_text(table.lance, bundle, text, k, where)
    return search_image(table.lance, bundle, read_image(image, storage), k, where)
