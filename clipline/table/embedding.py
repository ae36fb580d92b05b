"""The table's own model as a LanceDB embedding function (`clipline-clip`), and query embeddings.

A clipline table records in its schema metadata (`embedding_functions`, LanceDB's key) that
`image_embedding` and `text_embedding` are embedded by `clipline-clip` with the model that wrote
them. Any LanceDB user can then query it by text or by image with LanceDB's own API:

    lancedb.connect(db).open_table("media").search("a red star", vector_column_name="image_embedding")

LanceDB rebuilds the function from that metadata by name, so the name must be registered in the
process: importing this module registers it. It is imported by `table/store.py` (every clipline
reader and writer) and, in any Python process of an environment where clipline is installed, by
the import hook that `clipline-lancedb.pth` installs (`table/lancedb_hook.py`).

Importing this module is cheap (no torch): LanceDB rebuilds the function on every write to the
table, so the model is loaded only on the first query embedding, once per process and config.

Writes: clipline computes vectors in the pipeline, never through LanceDB. LanceDB calls
`compute_source_embeddings` on a write whose batch lacks a function's vector column or holds only
nulls in it, with the function's source column. The source column recorded here is the vector
column itself, so that call returns the vectors the batch already carries (nulls stay null), and
a write that omits the vector column fails loudly in LanceDB instead of replacing stored vectors
with nulls. Hence the rule `ClipTable.merge` enforces: every write carries both vector columns.
"""

from __future__ import annotations

import io
import json
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from lancedb.embeddings import EmbeddingFunction, register

from clipline.schemas.config import ModelConfig

if TYPE_CHECKING:  # torch comes with the model, loaded on the first query only
    from clipline.models.loader import ClipBundle

FUNCTION_NAME = "clipline-clip"
FUNCTIONS_KEY = b"embedding_functions"
VECTOR_COLUMNS = ("image_embedding", "text_embedding")
MAX_QUERY_IMAGE_BYTES = 64 * 1024 * 1024
MAX_QUERY_IMAGE_PIXELS = 64_000_000


@cache
def query_model(config: ModelConfig) -> ClipBundle:
    """The table's model for embedding queries, built once per process (the web app, a notebook)."""
    from clipline.models.loader import load_clip

    return load_clip(config)


def embed_text(bundle: ClipBundle, text: str) -> np.ndarray:
    """A text query's L2-normalised embedding."""
    from clipline.models.zero_shot import encode_texts

    return encode_texts(bundle, [text])[0]


def embed_image(bundle: ClipBundle, data: bytes) -> np.ndarray:
    """One image's embedding exactly as the pipeline computes it (same decode, resize, crop)."""
    from clipline.models.zero_shot import encode_pixels
    from clipline.operators.decode import RowFailure, decode_image

    if len(data) > MAX_QUERY_IMAGE_BYTES:
        raise ValueError(f"query image: {len(data)} bytes, over the limit of {MAX_QUERY_IMAGE_BYTES}")
    try:
        pixels = decode_image(data, bundle.image_size, MAX_QUERY_IMAGE_PIXELS)
    except RowFailure as exc:
        raise ValueError(f"query image: {exc.message}") from exc
    return encode_pixels(bundle, pixels[None])[0]


@register(FUNCTION_NAME)
class ClipLineClip(EmbeddingFunction):
    """Query embeddings by the model that wrote a clipline table; its fields are what the metadata records."""

    arch: str
    pretrained: str | None = None
    checkpoint: str | None = None
    precision: str = "auto"
    dim: int
    max_retries: int = 0  # LanceDB retries any exception 7 times with backoff: a bad query image would hang

    def ndims(self) -> int:
        return self.dim

    def clipline_model(self) -> ModelConfig:
        return ModelConfig(
            arch=self.arch, pretrained=self.pretrained, checkpoint=self.checkpoint, precision=self.precision
        )

    def compute_query_embeddings(self, query: Any, *args: Any, **kwargs: Any) -> list[np.ndarray]:
        """A text (str), image bytes or a PIL image: one embedding, comparable with both columns."""
        bundle = query_model(self.clipline_model())
        if isinstance(query, str):
            return [embed_text(bundle, query)]
        if isinstance(query, bytes | bytearray | memoryview):
            return [embed_image(bundle, bytes(query))]
        if hasattr(query, "save"):  # a PIL image: through the pipeline's own decode, as stored images went
            buffer = io.BytesIO()
            query.save(buffer, format="PNG")
            return [embed_image(bundle, buffer.getvalue())]
        raise TypeError(f"{FUNCTION_NAME} embeds a text, image bytes or a PIL image, not {type(query).__name__}")

    def compute_source_embeddings(self, source: Any, *args: Any, **kwargs: Any) -> list:
        """The vectors the written rows already carry (the source column is the vector column)."""
        values = source.to_pylist() if isinstance(source, pa.Array | pa.ChunkedArray) else list(source)
        return [None if value is None else np.asarray(value, dtype=np.float32) for value in values]


def function_entries(model: ModelConfig, dim: int) -> list[dict]:
    """LanceDB's `embedding_functions` entries of a clipline table: one per vector column."""
    arguments = {
        "arch": model.arch,
        "pretrained": model.pretrained,
        "checkpoint": model.checkpoint,
        "precision": model.precision,
        "dim": dim,
    }
    return [
        {"name": FUNCTION_NAME, "model": arguments, "source_column": column, "vector_column": column}
        for column in VECTOR_COLUMNS
    ]


def with_functions(schema: pa.Schema, model: ModelConfig, dim: int) -> pa.Schema:
    """`schema` with the table's embedding functions recorded in its metadata."""
    entries = json.dumps(function_entries(model, dim)).encode()
    return schema.with_metadata({**(schema.metadata or {}), FUNCTIONS_KEY: entries})


def functions_for_columns(schema: pa.Schema) -> pa.Schema:
    """`schema` keeping only the function entries whose vector column it has.

    A projection of a clipline table keeps the table's metadata; written as a new dataset (a
    curated export, a scratch table), an entry for an absent vector column would make LanceDB
    fail on the first write, and a scratch table updated by partial rows must have none.
    """
    metadata = dict(schema.metadata or {})
    raw = metadata.pop(FUNCTIONS_KEY, None)
    kept = [entry for entry in json.loads(raw) if entry["vector_column"] in schema.names] if raw else []
    if kept:
        metadata[FUNCTIONS_KEY] = json.dumps(kept).encode()
    return schema.with_metadata(metadata)


def without_functions(schema: pa.Schema) -> pa.Schema:
    metadata = {key: value for key, value in (schema.metadata or {}).items() if key != FUNCTIONS_KEY}
    return schema.with_metadata(metadata)


def function_columns(schema: pa.Schema) -> list[str]:
    """Vector columns that a LanceDB write into a table of this schema must carry."""
    raw = (schema.metadata or {}).get(FUNCTIONS_KEY)
    return [entry["vector_column"] for entry in json.loads(raw)] if raw else []
