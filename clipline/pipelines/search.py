"""Text → image search over a clipline table, with an optional SQL prefilter.

The query is embedded by the same model that wrote the table, rebuilt from the model config the
sink stored in the table metadata, so a query can never be compared with another model's vectors.
"""

from __future__ import annotations

import lancedb
import pyarrow as pa

from clipline.models.loader import ClipBundle, load_clip
from clipline.models.zero_shot import encode_texts
from clipline.operators.sink import open_existing_table
from clipline.schemas.config import ModelConfig
from clipline.schemas.storage import StorageConfig
from clipline.schemas.table import META_MODEL_CONFIG

RESULT_COLUMNS = ["id", "source", "text", "image_uri", "decision", "labels", "status"]


def open_table(uri: str, table: str, storage_options: dict | None = None) -> lancedb.table.Table:
    db = lancedb.connect(uri, storage_options=storage_options or None)
    found = open_existing_table(db, table)
    if found is None:
        raise ValueError(f"no table {table!r} in {uri}")
    return found


def table_model(table: lancedb.table.Table) -> ModelConfig:
    """The model that wrote the table, from its metadata."""
    raw = (table.schema.metadata or {}).get(META_MODEL_CONFIG)
    if raw is None:
        raise ValueError("table metadata has no clipline model config: not written by clipline")
    return ModelConfig.model_validate_json(raw)


def search_text(
    table: lancedb.table.Table,
    bundle: ClipBundle,
    text: str,
    k: int = 10,
    where: str | None = None,
) -> pa.Table:
    """Top-k rows by cosine between the text and the image embeddings; `score` is the cosine.

    The filter runs before the vector search (prefilter), so it narrows the candidates instead
    of cutting the k results afterwards.
    """
    query = encode_texts(bundle, [text])[0]
    condition = "image_embedding IS NOT NULL" + (f" AND ({where})" if where else "")
    results = (
        table.search(query, vector_column_name="image_embedding")
        .distance_type("cosine")
        .where(condition, prefilter=True)
        .select(RESULT_COLUMNS)
        .limit(k)
        .to_arrow()
    )
    scores = pa.compute.subtract(1.0, results.column("_distance"))
    return results.drop_columns(["_distance"]).append_column("score", scores.cast(pa.float32()))


def search_table(
    uri: str,
    table_name: str,
    text: str,
    k: int = 10,
    where: str | None = None,
    storage: StorageConfig | None = None,
) -> pa.Table:
    """Open the table, load its model and run one text query (the CLI's path)."""
    storage = storage or StorageConfig()
    table = open_table(uri, table_name, storage.lance_options(uri))
    bundle = load_clip(table_model(table), storage=storage)
    return search_text(table, bundle, text, k, where)
