"""LanceDB sink: upsert rows on `id` so a rerun replaces rows instead of duplicating them.

The table is created with the schema from `schemas.table`, whose metadata pins the model and
embedding dimension; opening an existing table built by another model is refused before any row
is written, since mixing two models' vectors in one column silently breaks every search.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

import lancedb
import pyarrow as pa

from clipline.operators.columns import column_or_nulls
from clipline.schemas.config import ModelConfig
from clipline.schemas.table import (
    META_DIM,
    META_MODEL,
    META_PRETRAINED,
    STATUS_FAILED,
    ErrorCode,
    output_schema,
    pipeline_schema,
)


class TableMismatch(ValueError):
    """The existing table was written by a different model or with a different dimension."""


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
        "status": STATUS_FAILED,
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


def open_existing_table(db: lancedb.DBConnection, name: str) -> lancedb.table.Table | None:
    """The table if it exists, else None (LanceDB signals a missing table with ValueError)."""
    try:
        return db.open_table(name)
    except ValueError:
        return None


def open_or_create_table(db: lancedb.DBConnection, name: str, schema: pa.Schema) -> lancedb.table.Table:
    """The existing table (whatever its schema: callers check it), else a new empty one."""
    table = open_existing_table(db, name)
    return table if table is not None else db.create_table(name, schema=schema, exist_ok=True)


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


def load_overrides(table: lancedb.table.Table) -> dict[str, str]:
    """Reviewer decisions by id; few (human-made), so they fit in memory."""
    rows = (
        table.search().where("override_decision IS NOT NULL").select(["id", "override_decision"]).limit(None).to_arrow()
    )
    return dict(zip(rows.column("id").to_pylist(), rows.column("override_decision").to_pylist(), strict=True))


def apply_overrides(rows: pa.Table, overrides: dict[str, str]) -> pa.Table:
    """A reviewer's decision wins over the model's, in every run and every rescore."""
    ids = rows.column("id").to_pylist()
    decisions = [
        overrides.get(row_id, decision)
        for row_id, decision in zip(ids, rows.column("decision").to_pylist(), strict=True)
    ]
    index = rows.schema.get_field_index("decision")
    return rows.set_column(index, "decision", pa.array(decisions, pa.string()))


class LanceSink:
    """Stages conformed rows, then upserts them into the table with one `merge_insert` commit.

    Rows stream into a staging table beside the database (bounded driver memory); `commit()`
    merges the whole run into the table as one new version. A run killed before that commit
    leaves the table exactly as it was, and its rerun redoes the work.
    """

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
        self.uri = uri.rstrip("/")
        self.table_name = table
        self.run_id = run_id
        self.table_schema = output_schema(embedding_dim, model)
        self.schema = pipeline_schema(self.table_schema)
        self.provenance = {"model": model.arch, "pretrained": model.weights_label, "run_id": run_id}
        self.storage_options = storage_options or None
        self.table: lancedb.table.Table | None = None
        self.staging_db: lancedb.DBConnection | None = None
        self.staging: lancedb.table.Table | None = None
        self.seen_ids: set[str] = set()
        self.overrides: dict[str, str] = {}

    def setup(self) -> None:
        """Open or create the table; refuse one written by another model; load human overrides."""
        db = lancedb.connect(self.uri, storage_options=self.storage_options)
        self.table = open_or_create_table(db, self.table_name, self.table_schema)
        check_table_model(self.table.schema, self.table_schema, self.table_name)
        self.overrides = load_overrides(self.table)
        self.staging_db = lancedb.connect(f"{self.uri}/_clipline/staging", storage_options=self.storage_options)

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
        rows = pa.Table.from_arrays(columns, schema=self.schema)
        return apply_overrides(rows, self.overrides) if self.overrides else rows

    def stage(self, batch: pa.Table) -> pa.Table:
        """Conform, make ids unique within the run, append to staging; returns the staged rows."""
        if self.staging_db is None:
            raise RuntimeError("LanceSink.setup() must run before stage()")
        rows = resolve_duplicate_ids(self.conform(batch), self.seen_ids)
        if self.staging is None:
            self.staging = self.staging_db.create_table(self.run_id, schema=self.schema, mode="overwrite")
        # Null vectors are legitimate (text-only rows have no image embedding); LanceDB's
        # default treats them as malformed, so tell it to keep them as nulls.
        self.staging.add(rows, on_bad_vectors="null")
        return rows

    def commit(self) -> int:
        """Upsert everything staged as one table version; returns the number of rows merged."""
        if self.staging is None:
            return 0
        staged = self.staging.search().limit(None).to_batches()
        upsert = self.table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
        result = upsert.execute(staged, on_bad_vectors="null")
        self.discard()
        return result.num_inserted_rows + result.num_updated_rows

    def discard(self) -> None:
        """Drop this run's staging table (after a commit, or when the run fails)."""
        if self.staging is not None:
            self.staging_db.drop_table(self.run_id)
            self.staging = None

    def count_rows(self, where: str | None = None) -> int:
        if self.table is None:
            return 0
        self.table.checkout_latest()
        return self.table.count_rows(where)

    @property
    def version(self) -> int:
        if self.table is None:
            return 0
        self.table.checkout_latest()
        return self.table.version
