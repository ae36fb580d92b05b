"""A table created before a column existed keeps taking writes: missing nullable columns are added."""

from __future__ import annotations

import pyarrow as pa

from clipline.schemas.config import ModelConfig
from clipline.schemas.table import META_MODEL, output_schema
from clipline.table.store import ClipTable, connect

NEW_COLUMNS = ("pdq_hash", "pdq_quality", "hash_matches")


def test_an_older_table_gets_the_new_columns_and_takes_new_rows(tmp_path) -> None:
    db = str(tmp_path / "db")
    full = output_schema(8, ModelConfig())
    old = pa.schema([field for field in full if field.name not in NEW_COLUMNS], metadata=full.metadata)
    lance = connect(db).create_table("media", schema=old)
    lance.add(pa.Table.from_pylist([{"id": "before", "status": "ok"}], schema=old))

    table = ClipTable.open_or_create(db, "media", full)

    assert set(NEW_COLUMNS) <= set(table.lance.schema.names)
    assert table.lance.schema.metadata[META_MODEL] == full.metadata[META_MODEL]  # model pinning survives
    row = {"id": "after", "status": "ok", "pdq_hash": "ab" * 32, "pdq_quality": 90}
    written = table.merge(pa.Table.from_pylist([row], schema=full), insert_new=True)
    assert written == 1
    rows = {r["id"]: r for r in table.lance.to_arrow().select(["id", *NEW_COLUMNS]).to_pylist()}
    assert rows["before"] == {"id": "before", "pdq_hash": None, "pdq_quality": None, "hash_matches": None}
    assert rows["after"]["pdq_hash"] == "ab" * 32
