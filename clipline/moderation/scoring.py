"""Scoring what a table stores: the table's own model, its prompt bank, the stored embeddings of rows.

`rescore`, `calibrate` and `train-head` all score rows from their stored embeddings with the
model that wrote the table (only the policy's prompts go through the text tower), reading the
prompt embeddings through the table's prompt cache, as the pipeline's actors do.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipline.models.loader import ClipBundle, load_clip
from clipline.models.prompt_cache import PromptCache
from clipline.operators.classify import PromptBank, row_embeddings
from clipline.schemas.policy import Policy
from clipline.schemas.storage import StorageConfig
from clipline.table.store import ClipTable

SCORING_COLUMNS = ["id", "status", "image_embedding", "text_embedding"]


def load_table_and_model(
    uri: str, table_name: str, storage: StorageConfig | None = None
) -> tuple[ClipTable, ClipBundle]:
    """The table and the model that wrote it (needed for the prompts' text embeddings only)."""
    table = ClipTable.open(uri, table_name, storage)
    return table, load_clip(table.model(), storage=table.storage)


def table_prompt_bank(table: ClipTable, bundle: ClipBundle, policy: Policy, use_heads: bool = True) -> PromptBank:
    """The policy's prompt embeddings through the table's prompt cache, as the pipeline's actors read them.

    `rescore`, `calibrate` and `train-head` then reuse what the runs already encoded instead of
    encoding every prompt again on the driver.
    """
    cache = PromptCache(table.sidecars.prompt_banks, table.storage)
    return PromptBank.build(bundle, policy, use_heads=use_heads, cache=cache)


def stored_embeddings(table: ClipTable, ids: list[str]) -> tuple[list[str], np.ndarray]:
    """(ids, (n, D) vectors) of the given ids that are in the table and scorable (status ok): the
    image embedding where there is one, else the text embedding, exactly as the pipeline scores."""
    rows = table.rows_by_ids(ids, SCORING_COLUMNS)
    if rows.num_rows == 0:
        return [], np.zeros((0, 0), dtype=np.float32)
    vectors, scored = row_embeddings(rows)
    return pc.filter(rows.column("id"), pa.array(scored)).to_pylist(), vectors
