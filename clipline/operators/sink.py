"""LanceDB sink: upsert rows on `id` so a rerun replaces rows instead of duplicating them.

The table is created with the schema from `schemas.table`, whose metadata pins the model and
embedding dimension; opening an existing table built by another model is refused before any row
is written, since mixing two models' vectors in one column silently breaks every search.
"""

from __future__ import annotations

from datetime import datetime, timezone

import lancedb
import numpy as np
import pyarrow as pa

from clipline.operators.columns import column_or_nulls
from clipline.schemas.config import ModelConfig
from clipline.schemas.table import META_DIM, META_MODEL, META_PRETRAINED, output_schema


class TableMismatch(ValueError):
    """The existing table was written by a different model or with a different dimension."""


def last_row_per_id(batch: pa.Table) -> pa.Table:
    """Keep the last row of each id: merge_insert refuses two source rows for one target row."""
    ids = batch.column("id").to_numpy(zero_copy_only=False)
    _, first_in_reversed = np.unique(ids[::-1], return_index=True)
    keep = np.sort(len(ids) - 1 - first_in_reversed)
    return batch if len(keep) == len(ids) else batch.take(pa.array(keep))


def open_existing_table(db: lancedb.DBConnection, name: str) -> lancedb.table.Table | None:
    """The table if it exists, else None (LanceDB signals a missing table with ValueError)."""
    try:
        return db.open_table(name)
    except ValueError:
        return None


def check_table_model(existing: pa.Schema, wanted: pa.Schema, table: str) -> None:
    """Refuse to mix embeddings: say which of model, weights or dimension differs."""
    have, want = existing.metadata or {}, wanted.metadata or {}
    for key, label in (
        (META_MODEL, "model"),
        (META_PRETRAINED, "weights"),
        (META_DIM, "embedding dimension"),
    ):
        if have.get(key) != want.get(key):
            found = have.get(key, b"(none)").decode()
            raise TableMismatch(
                f"table {table!r} holds vectors of {label} {found!r}, this run writes "
                f"{want.get(key, b'').decode()!r}; use another table or the same model"
            )


class LanceSink:
    """Conforms batches to the output schema and upserts them with `merge_insert` on `id`."""

    name = "sink"

    def __init__(
        self,
        uri: str,
        table: str,
        embedding_dim: int,
        model: ModelConfig,
        run_id: str,
        storage_options: dict | None = None,
    ) -> None:
        self.uri = uri
        self.table_name = table
        self.schema = output_schema(embedding_dim, model)
        model, pretrained = model.arch, model.weights_label
        self.provenance = {"model": model, "pretrained": pretrained, "run_id": run_id}
        self.storage_options = storage_options or {}
        self.table: lancedb.table.Table | None = None

    def setup(self) -> None:
        """Open or create the table; refuse one written by another model."""
        db = lancedb.connect(self.uri, storage_options=self.storage_options or None)
        self.table = open_existing_table(db, self.table_name) or db.create_table(
            self.table_name, schema=self.schema, exist_ok=True
        )
        check_table_model(self.table.schema, self.schema, self.table_name)

    def conform(self, batch: pa.Table) -> pa.Table:
        """Select and cast to the output schema; stamp provenance; fill absent columns with nulls."""
        now = datetime.now(timezone.utc)
        columns = []
        for field in self.schema:
            if field.name in self.provenance:
                columns.append(pa.array([self.provenance[field.name]] * batch.num_rows, field.type))
            elif field.name == "processed_at":
                columns.append(pa.array([now] * batch.num_rows, field.type))
            else:
                columns.append(column_or_nulls(batch, field.name, field.type))
        return pa.Table.from_arrays(columns, schema=self.schema)

    def write(self, batch: pa.Table) -> int:
        """Upsert one chunk as one commit; returns the number of distinct ids written."""
        if self.table is None:
            raise RuntimeError("LanceSink.setup() must run before write()")
        if batch.num_rows == 0:
            return 0
        rows = last_row_per_id(self.conform(batch))
        # Null vectors are legitimate (text-only rows have no image embedding); LanceDB's
        # default treats them as malformed, so tell it to keep them as nulls.
        upsert = self.table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
        upsert.execute(rows, on_bad_vectors="null")
        return rows.num_rows

    def count_rows(self, where: str | None = None) -> int:
        return self.table.count_rows(where) if self.table is not None else 0

    @property
    def version(self) -> int:
        return self.table.version if self.table is not None else 0
