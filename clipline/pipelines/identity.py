"""Row identity: which id each of a run's rows lands under, and which stored row it replaces.

A row's key is its given id, else the sha256 of its content (DESIGN §3). Rules, per original id:

- A rerun of the same file row (same id, same `source`) replaces the stored row: idempotent.
- The same content from another file or row is its own row, never a replacement: the first copy
  (the table's, else the run's first in input order) keeps the content id; later copies get
  sha256(content|source) and are exact duplicates of the first (`dup_of`).
- A given id arriving from another source than the row holding it is `failed` with
  `duplicate_id` (kept under `id#<12 hex>`, so no input row is lost), unless the job opts in with
  `sink.update_existing_ids`, in which case the newer row replaces the stored one.
- Within a run the first occurrence in input order keeps a repeated id (not the first to be
  processed: Ray Data does not keep order, and reruns must agree).

Rows are partitioned by a stable hash of their original id, so every copy of an id meets in one
task; each task looks its candidate ids up in the table (`id IN (...)`, scalar-indexed) and
returns changes only for the rows that need one.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from clipline.schemas.table import ErrorCode, Status

ID_LOOKUP_BATCH = 20_000  # ids per `IN (...)` lookup: one scan per 20k ids where there is no index

IDENTITY_SCHEMA = pa.schema(
    [
        ("addr", pa.uint64()),
        ("id", pa.string()),
        ("failed", pa.bool_()),  # renamed to id#… and failed with duplicate_id
        ("error_message", pa.string()),
        ("identity_dup_of", pa.string()),  # content renames: the first copy (used when dedup is off)
        ("replaces", pa.bool_()),  # a stored row with this id is replaced by this row
        ("updates_existing", pa.bool_()),  # ... one from another source (sink.update_existing_ids)
        ("carried", pa.bool_()),  # same content as the replaced row: its dedup annotations are kept
        ("carried_dup_of", pa.string()),
        ("carried_dup_cluster", pa.string()),
        ("replaced_addr", pa.uint64()),  # the replaced row's address in the table version read
    ]
)


def partition_of(row_id: str, partitions: int) -> int:
    """A stable partition (Python's hash() differs between processes)."""
    return zlib.crc32(row_id.encode()) % partitions


def content_suffix(content_sha256: str | None, source: str | None) -> str:
    """sha256 of content and source: stable across reruns of the same file row."""
    return hashlib.sha256(f"{content_sha256}|{source}".encode()).hexdigest()


def is_content_id(row: dict) -> bool:
    return row["content_sha256"] is not None and row["id"] == row["content_sha256"]


def alternate_id(row: dict) -> str:
    """The id a row gets when its original id belongs to another row."""
    suffix = content_suffix(row["content_sha256"], row["source"])
    return suffix if is_content_id(row) else f"{row['id']}#{suffix[:12]}"


def candidate_ids(rows: pa.Table) -> list[str]:
    """Every id a row of `rows` may land under: its own and its alternate."""
    records = rows.select(["id", "content_sha256", "source"]).to_pylist()
    return sorted({row["id"] for row in records} | {alternate_id(row) for row in records})


@dataclass(frozen=True)
class Stored:
    """What identity needs of a stored row."""

    source: str | None
    content_sha256: str | None
    dup_of: str | None
    dup_cluster: str | None
    addr: int

    @property
    def root(self) -> str | None:
        return self.dup_of


def stored_rows(table_rows: pa.Table) -> dict[str, Stored]:
    return {
        row["id"]: Stored(row["source"], row["content_sha256"], row["dup_of"], row["dup_cluster"], row["_rowaddr"])
        for row in table_rows.to_pylist()
    }


def resolve(rows: pa.Table, stored: dict[str, Stored], update_existing: bool) -> pa.Table:
    """Identity changes for one partition: a row per run row that is renamed, fails or replaces."""
    groups: dict[str, list[dict]] = {}
    for row in rows.to_pylist():
        groups.setdefault(row["id"], []).append(row)
    changes = []
    for original, members in groups.items():
        members.sort(key=lambda row: row["rank"])
        changes.extend(resolve_group(original, members, stored, update_existing))
    return pa.Table.from_pylist(changes, schema=IDENTITY_SCHEMA)


def resolve_group(original: str, members: list[dict], stored: dict[str, Stored], update_existing: bool) -> list[dict]:
    """The rows sharing one original id: who keeps it, who is renamed, what each replaces."""
    held = stored.get(original)
    by_source = {row["source"]: row for row in members}
    content = is_content_id(members[0])
    if held is not None and held.source in by_source:
        keeper = by_source[held.source]
    elif held is not None and (content or not update_existing):
        keeper = None
    else:
        keeper = members[0]
    first_copy = original if keeper is not None else (held.root or original if held else original)
    changes = []
    for row in members:
        if row is keeper:
            replaced = held
            final, failed, message = original, False, None
        else:
            final = alternate_id(row)
            replaced = stored.get(final)
            failed = not content
            message = None if content else duplicate_message(original, in_table=keeper is None)
        change = identity_change(row, final, failed, message, replaced)
        change["identity_dup_of"] = first_copy if content and row is not keeper else None
        change["updates_existing"] = row is keeper and held is not None and held.source != row["source"]
        if change != unchanged(row):
            changes.append(change)
    return changes


def duplicate_message(original: str, in_table: bool) -> str:
    if in_table:
        return (
            f"id {original!r} is already in the table from another source; set sink.update_existing_ids to replace it"
        )
    return f"id {original!r} appears more than once in this run; the first occurrence keeps it"


def identity_change(row: dict, final: str, failed: bool, message: str | None, replaced: Stored | None) -> dict:
    carried = (
        replaced is not None
        and not failed
        and row["status"] == Status.OK
        and replaced.content_sha256 == row["content_sha256"]
        and replaced.dup_cluster is not None
    )
    return {
        "addr": row["addr"],
        "id": final,
        "failed": failed,
        "error_message": message,
        "identity_dup_of": None,
        "replaces": replaced is not None,
        "updates_existing": False,
        "carried": carried,
        "carried_dup_of": replaced.dup_of if carried else None,
        "carried_dup_cluster": replaced.dup_cluster if carried else None,
        "replaced_addr": replaced.addr if replaced is not None and not carried else None,
    }


def unchanged(row: dict) -> dict:
    """The change record of a row that keeps its id, fails nothing and replaces nothing."""
    return identity_change(row, row["id"], False, None, None) | {"identity_dup_of": None, "updates_existing": False}


def apply_identity(rows: pa.Table, changes: pa.Table) -> pa.Table:
    """Rows with their identity changes applied (by row address); renamed duplicates of given ids fail.

    Column-wise (Arrow compute), never row by row: the rows carry their embeddings, and a
    per-row Python pass over them was most of a finalize task's time.
    """
    if changes.num_rows == 0:
        return rows
    position = pc.index_in(rows.column("_rowaddr"), value_set=changes.column("addr"))
    failed = pc.fill_null(pc.take(changes.column("failed"), position), False)

    def where_failed(name: str, value: pa.Scalar | pa.Array) -> pa.ChunkedArray:
        column = rows.column(name)
        return pc.if_else(failed, value, column).cast(column.type)

    columns = {
        "id": pc.if_else(pc.is_valid(position), pc.take(changes.column("id"), position), rows.column("id")),
        "status": where_failed("status", pa.scalar(Status.FAILED.value)),
        "error_code": where_failed("error_code", pa.scalar(ErrorCode.DUPLICATE_ID.value)),
        "error_message": where_failed("error_message", pc.take(changes.column("error_message"), position)),
        "decision": where_failed("decision", pa.scalar(None, rows.schema.field("decision").type)),
    }
    for name, column in columns.items():
        rows = rows.set_column(rows.schema.get_field_index(name), rows.schema.field(name), column)
    return rows
