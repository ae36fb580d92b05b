"""The output table: one Arrow schema for every row clipline writes, defined here and nowhere else.

Every input row becomes exactly one row of this schema, whether it succeeded or failed, so a
consumer can always account for its inputs. Table metadata pins the model and embedding
dimension: vectors from a different model in the same column would make search meaningless.
"""

from __future__ import annotations

from enum import StrEnum

import pyarrow as pa

from clipline.schemas.config import ModelConfig


class Status(StrEnum):
    """A row's outcome: every input row lands as exactly one of these."""

    OK = "ok"
    FAILED = "failed"


class Decision(StrEnum):
    """The moderation decision, least to most severe."""

    ALLOW = "allow"
    REVIEW = "review"
    BLOCK = "block"


META_MODEL = b"clipline.model"
META_PRETRAINED = b"clipline.pretrained"
META_DIM = b"clipline.embedding_dim"
META_MODEL_CONFIG = b"clipline.model_config"
META_SCHEMA_VERSION = b"clipline.schema_version"
SCHEMA_VERSION = "1"


class ErrorCode(StrEnum):
    """Why a row failed; stable strings that users filter on."""

    MISSING_CONTENT = "missing_content"
    IMAGE_TOO_LARGE = "image_too_large"
    IMAGE_DECODE_FAILED = "image_decode_failed"
    IMAGE_BAD_ASPECT = "image_bad_aspect"
    URI_NOT_ALLOWED = "uri_not_allowed"
    URI_NOT_FOUND = "uri_not_found"
    URI_UNREADABLE = "uri_unreadable"
    DUPLICATE_ID = "duplicate_id"


class TableMismatch(ValueError):
    """The existing table was written by a different model or with a different dimension."""


SCORE_TYPE = pa.struct([("category", pa.string()), ("score", pa.float32())])
REASON_TYPE = pa.struct(
    [
        ("category", pa.string()),
        ("action", pa.string()),
        ("score", pa.float32()),
        ("threshold", pa.float32()),
        ("margin", pa.float32()),
    ]
)

# One per hash list a row matched: the list, its nearest entry, that entry's label, the distance.
# A column of its own rather than a `label` field in REASON_TYPE: a new struct field changes the
# type of an existing column, which LanceDB cannot evolve in a table that has rows (writes into
# it are refused), while a new nullable column is added to an old table in place
# (`ClipTable.upgrade`).
HASH_MATCH_TYPE = pa.struct(
    [
        ("list", pa.string()),
        ("entry", pa.string()),
        ("label", pa.string()),
        ("distance", pa.int32()),
    ]
)


# The nearest dedup centroid of a row's image embedding (null without one, or with dedup off): rows
# of one bucket are read together, by a scalar index, when a later run dedups against the table.
BUCKET_COLUMNS = {"dup_bucket": pa.int32()}


def embedding_type(dim: int) -> pa.DataType:
    """Fixed-size float32 vectors: the layout LanceDB indexes for vector search."""
    return pa.list_(pa.float32(), dim)


def output_schema(embedding_dim: int, model: ModelConfig) -> pa.Schema:
    """The table schema, with the model recorded in the metadata (enough to rebuild it for queries)."""
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("content_sha256", pa.string()),
        pa.field("pdq_hash", pa.string()),
        pa.field("pdq_quality", pa.int32()),
        pa.field("source", pa.string()),
        pa.field("text", pa.string()),
        pa.field("image_uri", pa.string()),
        pa.field("metadata", pa.string()),
        pa.field("image_embedding", embedding_type(embedding_dim)),
        pa.field("text_embedding", embedding_type(embedding_dim)),
        pa.field("clip_score", pa.float32()),
        pa.field("scores", pa.list_(SCORE_TYPE)),
        pa.field("labels", pa.list_(pa.string())),
        pa.field("decision", pa.string()),
        pa.field("reasons", pa.list_(REASON_TYPE)),
        pa.field("hash_matches", pa.list_(HASH_MATCH_TYPE)),
        pa.field("flags", pa.list_(pa.string())),
        pa.field("override_decision", pa.string()),
        pa.field("override_by", pa.string()),
        pa.field("override_at", pa.timestamp("us", tz="UTC")),
        pa.field("override_note", pa.string()),
        pa.field("dup_of", pa.string()),
        pa.field("dup_cluster", pa.string()),
        pa.field("dup_bucket", BUCKET_COLUMNS["dup_bucket"]),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error_code", pa.string()),
        pa.field("error_message", pa.string()),
        pa.field("model", pa.string()),
        pa.field("pretrained", pa.string()),
        pa.field("policy_version", pa.string()),
        pa.field("policy_hash", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("processed_at", pa.timestamp("us", tz="UTC")),
        pa.field("thumbnail", pa.binary()),  # small WebP of the image (sink.thumbnails), null without one
    ]
    metadata = {
        META_MODEL: model.arch.encode(),
        META_PRETRAINED: model.weights_label.encode(),
        META_MODEL_CONFIG: model.model_dump_json(exclude={"cache_dir"}).encode(),
        META_DIM: str(embedding_dim).encode(),
        META_SCHEMA_VERSION: SCHEMA_VERSION.encode(),
    }
    return pa.schema(fields, metadata=metadata)


OUTPUT_COLUMNS = tuple(output_schema(1, ModelConfig()).names)
# Written only by human review; runs and rescoring never overwrite them, and `decision` follows them.
REVIEW_COLUMNS = ("override_decision", "override_by", "override_at", "override_note")


def pipeline_schema(schema: pa.Schema) -> pa.Schema:
    """The columns a run writes: everything but the human-review columns."""
    return pa.schema([field for field in schema if field.name not in REVIEW_COLUMNS], metadata=schema.metadata)
