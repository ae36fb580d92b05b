"""The run's last step: final rows written into the table's dataset by workers, then ONE commit.

Workers read the staged rows, apply what identity and dedup decided (ids, duplicate-id failures,
annotations, buckets) and the reviewer overrides of the rows they replace, and write the final
rows as new fragments straight into the table's dataset, uncommitted (sorted by `dup_bucket`, so
a later run reads one bucket from few pages). The driver then commits once, as one Lance
`Update`: the new fragments, plus deletion vectors for the stored rows this run replaces. The
commit is metadata only (milliseconds, whatever the run's size), and a run killed before it
leaves the table's version unchanged; the files it wrote are unreferenced and `clipline maintain`
removes them with the table's old versions.

Overrides are read at commit: the rows a run replaces get the overrides read just before the
final rows are written, and the commit is made against that same table version. A review that
commits in between touches a fragment the commit also changes, so Lance refuses the commit as a
conflict; the driver then reads the overrides again, rewrites the affected groups, and retries.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import lance
import pyarrow as pa
import pyarrow.compute as pc
from lance.fragment import FragmentMetadata

from clipline.pipelines.dedup import ANNOTATION_SCHEMA, BUCKET_PATCH_SCHEMA
from clipline.pipelines.identity import IDENTITY_SCHEMA, apply_identity
from clipline.pipelines.lance_io import ROW_ADDRESS, LanceLocation, fragment_json
from clipline.pipelines.sink import SECOND_BUCKET
from clipline.pipelines.summary import Tally
from clipline.schemas.table import REVIEW_COLUMNS, Status
from clipline.table.store import apply_overrides, sql_in

LOCATE_BATCH = 20_000  # ids per lookup of where replaced rows live


@dataclass(frozen=True)
class GroupResult:
    """What one finalize task reports: new fragments (JSON), counts, and the overrides it applied."""

    fragments: list[str]
    tally: dict
    rows: int
    replaced: int
    updated_existing: int
    carried: int
    applied_overrides: dict[str, dict]


def concat(parts: Sequence[pa.Table], schema: pa.Schema) -> pa.Table:
    parts = [part for part in parts if part is not None and part.num_rows]
    return pa.concat_tables(parts).cast(schema) if parts else schema.empty_table()


def annotate(rows: pa.Table, identity: pa.Table, annotations: pa.Table, buckets: pa.Table, dedup: bool) -> pa.Table:
    """`dup_of`, `dup_cluster` and `dup_bucket` as identity and dedup decided, by row address."""
    addrs = rows.column(ROW_ADDRESS).to_pylist()
    ids = rows.column("id").to_pylist()
    ok = [status == Status.OK for status in rows.column("status").to_pylist()]
    dup_of = [None] * len(addrs)
    cluster = [row_id if dedup and good else None for row_id, good in zip(ids, ok, strict=True)]
    bucket = rows.column("dup_bucket").to_pylist() if dedup else [None] * len(addrs)
    position = {addr: index for index, addr in enumerate(addrs)}
    for change in identity.to_pylist():
        index = position[change["addr"]]
        if change["carried"]:
            dup_of[index], cluster[index] = change["carried_dup_of"], change["carried_dup_cluster"]
        elif change["identity_dup_of"] and not dedup and ok[index]:
            dup_of[index] = cluster[index] = change["identity_dup_of"]
    for note in annotations.to_pylist():
        index = position[note["addr"]]
        dup_of[index], cluster[index] = note["dup_of"], note["dup_cluster"]
    if dedup:
        for patch in buckets.to_pylist():
            bucket[position[patch["addr"]]] = patch["dup_bucket"]
    rows = rows.set_column(rows.schema.get_field_index("dup_of"), "dup_of", pa.array(dup_of, pa.string()))
    rows = rows.set_column(rows.schema.get_field_index("dup_cluster"), "dup_cluster", pa.array(cluster, pa.string()))
    return rows.set_column(rows.schema.get_field_index("dup_bucket"), "dup_bucket", pa.array(bucket, pa.int32()))


def with_overrides(rows: pa.Table, replacing: set[str], overrides: dict[str, dict]) -> tuple[pa.Table, dict[str, dict]]:
    """Rows that replace a reviewed row keep its review columns, and `decision` follows the reviewer."""
    applied = {
        row_id: overrides[row_id]
        for row_id in rows.column("id").to_pylist()
        if row_id in replacing and row_id in overrides
    }
    for name in REVIEW_COLUMNS:
        values = [applied.get(row_id, {}).get(name) for row_id in rows.column("id").to_pylist()]
        rows = rows.append_column(name, pa.array(values, OVERRIDE_TYPES[name]))
    decisions = {row_id: value["override_decision"] for row_id, value in applied.items()}
    return apply_overrides(rows, decisions), applied


OVERRIDE_TYPES = {
    "override_decision": pa.string(),
    "override_by": pa.string(),
    "override_at": pa.timestamp("us", tz="UTC"),
    "override_note": pa.string(),
}


def finalize_group(
    staging: LanceLocation,
    fragment_ids: list[int],
    table: LanceLocation,
    table_schema: pa.Schema,
    identity_parts: Sequence[pa.Table],
    annotation_parts: Sequence[pa.Table],
    bucket_parts: Sequence[pa.Table],
    overrides: dict[str, dict],
    dedup: bool,
) -> GroupResult:
    """Final rows of some staging fragments, written as uncommitted fragments of the table."""
    identity = concat(identity_parts, IDENTITY_SCHEMA)
    staged_columns = [name for name in staging.open().schema.names if name != SECOND_BUCKET]
    rows = staging.read(staged_columns, fragment_ids)
    rows = apply_identity(rows, identity)
    rows = annotate(
        rows, identity, concat(annotation_parts, ANNOTATION_SCHEMA), concat(bucket_parts, BUCKET_PATCH_SCHEMA), dedup
    )
    replacing = set(pc.filter(identity.column("id"), identity.column("replaces")).to_pylist())
    rows, applied = with_overrides(rows.drop_columns([ROW_ADDRESS]), replacing, overrides)
    rows = rows.select(table_schema.names).cast(table_schema)
    rows = rows.sort_by([("dup_bucket", "ascending")])
    tally = Tally()
    tally.add(rows)
    return GroupResult(
        fragments=table.write(rows, table_schema) if rows.num_rows else [],
        tally=tally.to_dict(),
        rows=rows.num_rows,
        replaced=len(replacing),
        updated_existing=int(pc.sum(identity.column("updates_existing")).as_py() or 0),
        carried=int(pc.sum(identity.column("carried")).as_py() or 0),
        applied_overrides=applied,
    )


def locate(table: LanceLocation, version: int, ids: list[str]) -> dict[int, list[str]]:
    """Which fragment of the table (at `version`) holds each of these ids."""
    found: dict[int, list[str]] = {}
    dataset = table.open(version)
    for start in range(0, len(ids), LOCATE_BATCH):
        batch = ids[start : start + LOCATE_BATCH]
        hits = dataset.to_table(columns=["id"], filter=sql_in("id", batch), with_row_address=True)
        for addr, row_id in zip(hits.column(ROW_ADDRESS).to_pylist(), hits.column("id").to_pylist(), strict=True):
            found.setdefault(addr >> 32, []).append(row_id)
    return found


def delete_rows(table: LanceLocation, version: int, fragment_id: int, ids: list[str]) -> str | None:
    """A deletion vector for these ids in one fragment (uncommitted, one predicate: a second delete
    on the same uncommitted fragment would not see the first): the fragment's new metadata, or
    None when every row of the fragment goes."""
    metadata = table.open(version).get_fragment(fragment_id).delete(sql_in("id", ids))
    return None if metadata is None else fragment_json(metadata)


def commit_update(table: LanceLocation, version: int, new: list[str], updated: list[str], removed: list[int]) -> int:
    """One Lance Update against `version`; returns the new version (raises CommitConflictError)."""
    operation = lance.LanceOperation.Update(
        removed_fragment_ids=removed,
        updated_fragments=[FragmentMetadata.from_json(fragment) for fragment in updated],
        new_fragments=[FragmentMetadata.from_json(fragment) for fragment in new],
    )
    # Lance rebases over concurrent commits that touched other fragments; one that touched a
    # fragment this commit changes (a review of a replaced row) raises CommitConflictError.
    dataset = lance.LanceDataset.commit(
        table.uri, operation, read_version=version, storage_options=table.storage_options
    )
    return dataset.version


def json_fragments(parts: Sequence[str]) -> list[str]:
    return [fragment for part in parts for fragment in json.loads(part)]
