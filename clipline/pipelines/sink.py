"""LanceDB sink: upsert rows on `id` so a rerun replaces rows instead of duplicating them.

The table is created with the schema from `schemas.table`, whose metadata pins the model and
embedding dimension; opening an existing table built by another model is refused before any row
is written, since mixing two models' vectors in one column silently breaks every search.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pyarrow as pa

from clipline.operators.columns import column_or_nulls
from clipline.schemas.config import ModelConfig
from clipline.schemas.storage import StorageConfig
from clipline.schemas.table import ErrorCode, Status, output_schema, pipeline_schema
from clipline.table.store import ClipTable, Staging, apply_overrides


def renamed_duplicate(row: dict) -> dict:
    """A later row whose id this run already used, under an id of its own.

    A repeated content-derived id is the same image or text again: the row stays `ok` and points
    at the first with `dup_of`. A repeated id given in the input is a data error: the row is kept
    as `failed` with `duplicate_id`. Either way the new id is stable across reruns of the file.
    """
    suffix = hashlib.sha256(f"{row['content_sha256']}|{row['source']}".encode()).hexdigest()
    if row["id"] == row["content_sha256"]:
        return {**row, "id": suffix, "dup_of": row["id"], "dup_cluster": row["id"]}
    return {
        **row,
        "id": f"{row['id']}#{suffix[:12]}",
        "status": Status.FAILED,
        "error_code": ErrorCode.DUPLICATE_ID.value,
        "error_message": f"id {row['id']!r} appears more than once in this run; the first occurrence keeps it",
        "decision": None,
    }


def resolve_duplicate_ids(rows: pa.Table, seen: set[str]) -> pa.Table:
    """Make ids unique within a run (`seen` holds the run's ids so far, ~100 bytes a row)."""
    ids = rows.column("id").to_pylist()
    repeated = []
    for index, row_id in enumerate(ids):
        if row_id in seen:
            repeated.append(index)
        seen.add(row_id)
    if not repeated:
        return rows
    records = rows.to_pylist()
    for index in repeated:
        records[index] = renamed_duplicate(records[index])
        seen.add(records[index]["id"])
    return pa.Table.from_pylist(records, schema=rows.schema)


class LanceSink:
    """Stages conformed rows, then upserts them into the table with one `merge_insert` commit.

    Rows stream into a staging table beside the database (bounded driver memory); `commit()`
    merges the whole run into the table as one new version. A run killed before that commit
    leaves the table exactly as it was, and its rerun redoes the work.
    """

    def __init__(
        self,
        uri: str,
        table: str,
        embedding_dim: int,
        model: ModelConfig,
        run_id: str,
        storage: StorageConfig | None = None,
    ) -> None:
        self.uri = uri.rstrip("/")
        self.table_name = table
        self.run_id = run_id
        self.table_schema = output_schema(embedding_dim, model)
        self.schema = pipeline_schema(self.table_schema)
        self.provenance = {"model": model.arch, "pretrained": model.weights_label, "run_id": run_id}
        self.storage = storage or StorageConfig()
        self.table: ClipTable | None = None
        self.staging: Staging | None = None
        self.seen_ids: set[str] = set()
        self.overrides: dict[str, str] = {}

    def setup(self) -> None:
        """Open or create the table; refuse one written by another model; load human overrides."""
        self.table = ClipTable.open_or_create(self.uri, self.table_name, self.table_schema, self.storage)
        self.overrides = self.table.overrides()
        self.staging = self.table.staging(self.run_id, self.schema)

    def conform(self, batch: pa.Table) -> pa.Table:
        """Select and cast to the output schema; stamp provenance; fill absent columns with nulls."""
        now = datetime.now(UTC)
        columns = []
        for field in self.schema:
            if field.name in self.provenance:
                columns.append(pa.array([self.provenance[field.name]] * batch.num_rows, field.type))
            elif field.name == "processed_at":
                columns.append(pa.array([now] * batch.num_rows, field.type))
            else:
                columns.append(column_or_nulls(batch, field.name, field.type))
        return apply_overrides(pa.Table.from_arrays(columns, schema=self.schema), self.overrides)

    def stage(self, batch: pa.Table) -> pa.Table:
        """Conform, make ids unique within the run, append to staging; returns the staged rows."""
        if self.staging is None:
            raise RuntimeError("LanceSink.setup() must run before stage()")
        rows = resolve_duplicate_ids(self.conform(batch), self.seen_ids)
        self.staging.add(rows)
        return rows

    def commit(self) -> int:
        """Upsert everything staged as one table version; returns the number of rows merged."""
        if self.staging is None:
            return 0
        written = self.staging.merge_into(self.table, insert_new=True)
        self.discard()
        return written

    def discard(self) -> None:
        """Drop this run's staging table (after a commit, or when the run fails)."""
        if self.staging is not None:
            self.staging.drop()

    def count_rows(self, where: str | None = None) -> int:
        return 0 if self.table is None else self.table.count_rows(where)

    @property
    def version(self) -> int:
        return 0 if self.table is None else self.table.version
