"""The one way into a clipline table: open or create it, read its model, look rows up, commit merges.

A clipline table is a LanceDB table plus the files clipline keeps beside it under
`<db>/_clipline/` (staging, claims, prompt banks, run manifests). Everything that touches a
table goes through this module, so that:

- the model recorded in the table's metadata is read in one place (and a run with another model
  is refused in one place: mixing two models' vectors in one column silently breaks search);
- every sidecar path is defined once (`Sidecars`), so a reader and a writer never disagree;
- every SQL string literal is quoted by one function (`sql_literal`);
- every write of rows into the table is one `merge_insert` on `id` (`ClipTable.merge`), and rows
  too many for memory are staged beside the table first (`Staging`) and merged as one commit, so
  a writer killed halfway leaves the table's version unchanged;
- the table's LanceDB embedding function (`table/embedding.py`, imported here so that every
  clipline reader and writer has it registered) is recorded when a table is created, added to an
  older table the next time a run opens it, and every write carries the vector columns it covers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import lancedb
import pyarrow as pa

from clipline.schemas.config import ModelConfig
from clipline.schemas.storage import StorageConfig
from clipline.schemas.table import (
    META_DIM,
    META_MODEL,
    META_MODEL_CONFIG,
    META_PRETRAINED,
    REVIEW_COLUMNS,
    TableMismatch,
    output_schema,
)
from clipline.table.embedding import FUNCTIONS_KEY, function_columns, with_functions, without_functions

SIDECAR_DIR = "_clipline"
FEW_ROWS = 20_000  # a merge of at most this many rows may join through the id index
IDS_PER_QUERY = 1000  # values per `IN (...)` filter: long enough to batch, short enough to parse fast


def sql_literal(value: str) -> str:
    """A SQL string literal for a LanceDB filter (ids, run ids and hashes can come from users)."""
    return "'" + str(value).replace("'", "''") + "'"


def sql_in(column: str, values: Iterable[str]) -> str:
    return f"{column} IN ({', '.join(sql_literal(value) for value in values)})"


@dataclass(frozen=True)
class Sidecars:
    """Paths of the files clipline keeps beside the tables of one database."""

    db_uri: str

    @property
    def root(self) -> str:
        return f"{self.db_uri.rstrip('/')}/{SIDECAR_DIR}"

    @property
    def staging(self) -> str:
        """A LanceDB database of scratch tables: rows staged before their one merge commit."""
        return f"{self.root}/staging"

    @property
    def prompt_banks(self) -> str:
        """Prompt embeddings, one `.npy` per (text tower, prompts, templates) key."""
        return f"{self.root}/prompt_banks"

    @property
    def dedup(self) -> str:
        """Dedup centroids, one versioned `.npy` per model: shared by every run, so buckets match."""
        return f"{self.root}/dedup"

    def centroids(self, model_key: str, version: int) -> str:
        return f"{self.dedup}/centroids-{model_key}-v{version}.npy"

    def claims(self, table: str) -> str:
        """Claim objects that keep two concurrent runs off the same input file."""
        return f"{self.root}/claims/{table}"

    def runs(self, table: str) -> str:
        """Run manifests (`<run id>.json`) and reports (`<run id>.html`)."""
        return f"{self.root}/runs/{table}"

    def review_log(self, table: str) -> str:
        """The audit log of reviewer decisions: one JSON record per committed batch."""
        return f"{self.root}/review-log/{table}"

    def leases(self, table: str) -> str:
        """Review-queue leases: which reviewer holds which rows on their open page, until when."""
        return f"{self.root}/leases/{table}"


def connect(db_uri: str, storage: StorageConfig | None = None) -> lancedb.DBConnection:
    storage = storage or StorageConfig()
    return lancedb.connect(db_uri, storage_options=storage.lance_options(db_uri) or None)


def open_lance_table(db: lancedb.DBConnection, name: str) -> lancedb.table.Table | None:
    """The table if it exists, else None (LanceDB signals a missing table with ValueError)."""
    try:
        return db.open_table(name)
    except ValueError:
        return None


def open_or_create_lance_table(db: lancedb.DBConnection, name: str, schema: pa.Schema) -> lancedb.table.Table:
    """The existing table (whatever its schema: callers check it), else a new empty one.

    Not `open(...) or create(...)`: a LanceDB table with 0 rows is falsy.
    """
    table = open_lance_table(db, name)
    return table if table is not None else db.create_table(name, schema=schema, exist_ok=True)


def clip_table_schema(schema: pa.Schema) -> pa.Schema:
    """An output schema with its LanceDB embedding functions, built from the model it records."""
    metadata = schema.metadata or {}
    model = ModelConfig.model_validate_json(metadata[META_MODEL_CONFIG])
    return with_functions(schema, model, int(metadata[META_DIM]))


def upgrade_table(table: lancedb.table.Table, schema: pa.Schema) -> None:
    """Give a table written by an older clipline the columns and embedding functions `schema` has.

    One metadata-only commit (LanceDB's `add_columns` with null columns): no row is rewritten.
    Only new metadata keys are added; existing ones (the model) are never replaced.
    """
    missing = [field for field in schema if field.name not in table.schema.names]
    have = table.schema.metadata or {}
    added = {FUNCTIONS_KEY: schema.metadata[FUNCTIONS_KEY]} if FUNCTIONS_KEY not in have else {}
    if missing or added:
        table.add_columns(pa.schema(missing, metadata=added))


def check_table_model(existing: pa.Schema, wanted: pa.Schema, table: str) -> None:
    """Refuse to mix embeddings: say which of model, weights or dimension differs."""
    have, want = existing.metadata or {}, wanted.metadata or {}
    for key, label in ((META_MODEL, "model"), (META_PRETRAINED, "weights"), (META_DIM, "embedding dimension")):
        if have.get(key) != want.get(key):
            found = have.get(key, b"(none)").decode()
            raise TableMismatch(
                f"table {table!r} holds vectors of {label} {found!r}, this run writes "
                f"{want.get(key, b'').decode()!r}; use another table or the same model"
            )


def model_of(table: lancedb.table.Table) -> ModelConfig:
    """The model that wrote the table, from its metadata (enough to rebuild it for queries)."""
    raw = (table.schema.metadata or {}).get(META_MODEL_CONFIG)
    if raw is None:
        raise ValueError(f"table {table.name!r} has no clipline model config in its metadata: not written by clipline")
    return ModelConfig.model_validate_json(raw)


def apply_overrides(rows: pa.Table, overrides: dict[str, str]) -> pa.Table:
    """A reviewer's decision wins over the model's, in every run and every rescore."""
    if not overrides:
        return rows
    ids = rows.column("id").to_pylist()
    decisions = [
        overrides.get(row_id, decision)
        for row_id, decision in zip(ids, rows.column("decision").to_pylist(), strict=True)
    ]
    index = rows.schema.get_field_index("decision")
    return rows.set_column(index, "decision", pa.array(decisions, pa.string()))


class ClipTable:
    """An open clipline table: the LanceDB handle, its database and the storage settings to reach both."""

    def __init__(self, db_uri: str, lance: lancedb.table.Table, storage: StorageConfig | None = None) -> None:
        self.db_uri = db_uri.rstrip("/")
        self.lance = lance
        self.storage = storage or StorageConfig()
        self.sidecars = Sidecars(self.db_uri)

    @classmethod
    def open(cls, db_uri: str, name: str, storage: StorageConfig | None = None) -> ClipTable:
        """An existing table; a missing one is a user error naming the table and the database."""
        found = open_lance_table(connect(db_uri, storage), name)
        if found is None:
            raise ValueError(f"no table {name!r} in {db_uri}")
        return cls(db_uri, found, storage)

    @classmethod
    def open_or_create(
        cls, db_uri: str, name: str, schema: pa.Schema, storage: StorageConfig | None = None
    ) -> ClipTable:
        """The table, created with `schema` when missing; refused when another model wrote it.

        A table written by an older clipline gets the columns and embedding functions it lacks, all
        null (one metadata-only commit, once): every writer then writes the same columns.
        """
        schema = clip_table_schema(schema)
        lance = open_or_create_lance_table(connect(db_uri, storage), name, schema)
        check_table_model(lance.schema, schema, name)
        upgrade_table(lance, schema)
        return cls(db_uri, lance, storage)

    @property
    def name(self) -> str:
        return self.lance.name

    @property
    def storage_options(self) -> dict[str, str] | None:
        return self.storage.lance_options(self.db_uri) or None

    def model(self) -> ModelConfig:
        return model_of(self.lance)

    def upgrade(self) -> None:
        """Give the table what this clipline's schema has and it lacks (a table from an older version)."""
        dim = int(self.lance.schema.metadata[META_DIM])
        upgrade_table(self.lance, clip_table_schema(output_schema(dim, self.model())))

    @property
    def version(self) -> int:
        """The latest committed version (another process may have committed since this handle opened)."""
        self.lance.checkout_latest()
        return self.lance.version

    def count_rows(self, where: str | None = None) -> int:
        self.lance.checkout_latest()
        return self.lance.count_rows(where)

    def rows_where_in(
        self, column: str, values: Iterable[str], columns: list[str] | dict[str, str], where: str | None = None
    ) -> Iterator[pa.Table]:
        """Rows whose `column` is one of `values` (and match `where`), a thousand values per filtered scan."""
        unique = sorted(set(values))
        for start in range(0, len(unique), IDS_PER_QUERY):
            condition = sql_in(column, unique[start : start + IDS_PER_QUERY])
            if where:
                condition = f"{where} AND {condition}"
            yield self.lance.search().where(condition).select(columns).limit(None).to_arrow()

    def rows_by_ids(self, ids: Iterable[str], columns: list[str]) -> pa.Table:
        """The stored rows with these ids (those that exist)."""
        parts = list(self.rows_where_in("id", ids, columns))
        return pa.concat_tables(parts) if parts else self.lance.schema.empty_table().select(columns)

    def overrides(self) -> dict[str, str]:
        """Reviewer decisions by id; few (human-made), so they fit in memory."""
        return {row_id: review["override_decision"] for row_id, review in self.reviews().items()}

    def reviews(self) -> dict[str, dict]:
        """Every reviewed row's review columns by id, read at the latest version."""
        self.lance.checkout_latest()
        query = self.lance.search().where("override_decision IS NOT NULL").select(["id", *REVIEW_COLUMNS])
        return {row.pop("id"): row for row in query.limit(None).to_arrow().to_pylist()}

    def merge(
        self, rows: pa.Table | pa.RecordBatchReader, insert_new: bool, if_unchanged: bool = False, few: bool = False
    ) -> int:
        """One `merge_insert` on `id`: update the rows that exist, insert the others only if `insert_new`.

        Returns the number of rows written. Null vectors are legitimate (text-only rows have no
        image embedding); LanceDB's default treats them as malformed, so they are kept as nulls.
        The rows must carry the vector columns of the table's embedding functions (LanceDB
        refuses a write without them; `update_columns` adds them to a partial update).
        `if_unchanged` updates only rows whose stored `content_sha256` equals the given one, so
        an update computed from an older read never lands on a row re-ingested meanwhile.
        Only a `few` rows (a review batch) may join through the scalar index on `id`: the indexed
        join buffers every source row (~16 KB each) and fails beyond ~50k rows, where the plain
        join scans the table's ids instead.
        """
        absent = [column for column in function_columns(self.lance.schema) if column not in rows.schema.names]
        if absent:
            raise ValueError(f"a write into table {self.name!r} must carry {absent} (its embedding functions' columns)")
        condition = (
            "target.content_sha256 = source.content_sha256"
            " OR (target.content_sha256 IS NULL AND source.content_sha256 IS NULL)"
            if if_unchanged
            else None
        )
        upsert = self.lance.merge_insert("id").when_matched_update_all(where=condition).use_index(few)
        if insert_new:
            upsert = upsert.when_not_matched_insert_all()
        result = upsert.execute(rows, on_bad_vectors="null")
        return result.num_inserted_rows + result.num_updated_rows

    def update_columns(self, rows: pa.Table) -> list[str]:
        """Set some columns of existing rows in one commit; returns the ids it left alone.

        The stored content hash and vectors ride along (LanceDB's embedding-function hook needs the
        vectors in every write), and a row whose content a concurrent run replaced between this
        read and the commit keeps the new content untouched: its id is returned. Ids not in the
        table are ignored (callers check them first).
        """
        carried = ["content_sha256", *function_columns(self.lance.schema)]
        stored = self.rows_by_ids(rows.column("id").to_pylist(), ["id", *carried])
        position = {row_id: index for index, row_id in enumerate(stored.column("id").to_pylist())}
        rows = rows.filter(pa.array([row_id in position for row_id in rows.column("id").to_pylist()]))
        along = stored.take([position[row_id] for row_id in rows.column("id").to_pylist()])
        for name in carried:
            rows = rows.append_column(along.schema.field(name), along.column(name))
        self.merge(rows, insert_new=False, if_unchanged=True, few=rows.num_rows <= FEW_ROWS)
        before = dict(zip(stored.column("id").to_pylist(), stored.column("content_sha256").to_pylist(), strict=True))
        after = self.rows_by_ids(before, ["id", "content_sha256"]).to_pylist()
        return sorted(row["id"] for row in after if row["content_sha256"] != before[row["id"]])

    def staging(self, name: str, schema: pa.Schema) -> Staging:
        """A scratch table beside this one, to merge into it later in one commit."""
        return Staging(connect(self.sidecars.staging, self.storage), name, schema)


class Staging:
    """Rows staged in a scratch LanceDB table under `_clipline/staging`, merged into a table as one commit.

    Staging keeps a writer's memory bounded whatever it writes, and keeps the table's version
    unchanged until the one merge: a writer killed before it leaves the table as it was.
    The scratch table is created on the first `add` and dropped by `drop` (after the merge, or
    when the writer gives up).
    """

    def __init__(self, db: lancedb.DBConnection, name: str, schema: pa.Schema) -> None:
        self.db = db
        self.name = name
        # Scratch rows are updated by partial rows (dedup annotations): no embedding functions here.
        self.schema = without_functions(schema)
        self.table: lancedb.table.Table | None = None

    def add(self, rows: pa.Table) -> None:
        if self.table is None:
            self.table = self.db.create_table(self.name, schema=self.schema, mode="overwrite")
        self.table.add(rows, on_bad_vectors="null")

    def update(self, rows: pa.Table) -> None:
        """Update staged rows in place by `id` (columns absent from `rows` keep their values)."""
        if self.table is not None and rows.num_rows:
            self.table.merge_insert("id").when_matched_update_all().execute(rows)

    def batches(self) -> Iterator[pa.RecordBatch]:
        if self.table is not None:
            yield from self.table.search().limit(None).to_batches()

    def merge_into(
        self,
        target: ClipTable,
        insert_new: bool,
        transform: Callable[[pa.Table], pa.Table] | None = None,
        if_unchanged: bool = False,
    ) -> int:
        """Merge everything staged into `target` as one commit; `transform` rewrites each batch on the way.

        `if_unchanged`: see `ClipTable.merge`.
        """
        if self.table is None:
            return 0
        schema = self.table.schema

        def batches() -> Iterator[pa.RecordBatch]:
            for batch in self.batches():
                rows = pa.Table.from_batches([batch])
                yield from (transform(rows) if transform else rows).cast(schema).to_batches()

        reader = pa.RecordBatchReader.from_batches(schema, batches())
        return target.merge(reader, insert_new=insert_new, if_unchanged=if_unchanged)

    def drop(self) -> None:
        if self.table is not None:
            self.db.drop_table(self.name)
            self.table = None
