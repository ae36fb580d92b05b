"""Planning and reading input parquet (no Ray): footers, column checks, row provenance."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipline.operators.read import ReadRowGroups, plan_input_files, read_tasks
from clipline.schemas.base import ConfigError
from clipline.schemas.config import ColumnsConfig
from clipline.schemas.storage import StorageConfig


def write(path, table: pa.Table, row_group_size: int = 2) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return str(path)


def test_plan_finds_files_recursively_with_row_groups(tmp_path):
    write(tmp_path / "a" / "one.parquet", pa.table({"text": ["x", "y", "z"]}))
    write(tmp_path / "a" / "b" / "two.parquet", pa.table({"text": ["w"]}))
    (tmp_path / "a" / "notes.txt").write_text("ignored")
    files = plan_input_files([str(tmp_path / "a")], ColumnsConfig(), StorageConfig())
    assert [f.path.rsplit("/", 1)[-1] for f in files] == ["two.parquet", "one.parquet"]
    assert [f.row_groups for f in files] == [(1,), (2, 1)]
    tasks = read_tasks(files).to_pylist()
    assert [(t["row_group"], t["first_row"]) for t in tasks] == [(0, 0), (0, 0), (1, 2)]


def test_plan_rejects_missing_content_columns_and_wrong_types(tmp_path):
    no_content = write(tmp_path / "x.parquet", pa.table({"caption": ["a"]}))
    with pytest.raises(ConfigError, match="none of the content columns"):
        plan_input_files([no_content], ColumnsConfig(), StorageConfig())
    wrong_type = write(tmp_path / "y.parquet", pa.table({"image": [1, 2]}))
    with pytest.raises(ConfigError, match=r"column 'image' \(image\) has type int64"):
        plan_input_files([wrong_type], ColumnsConfig(), StorageConfig())
    with pytest.raises(ConfigError, match="does not exist"):
        plan_input_files([str(tmp_path / "nope")], ColumnsConfig(), StorageConfig())


def test_renamed_columns_and_kept_metadata(tmp_path):
    path = write(
        tmp_path / "in.parquet",
        pa.table({"caption": ["a", "b", "c"], "key": ["k1", "k2", "k3"], "shard": [7, 7, 8]}),
    )
    columns = ColumnsConfig(text="caption", id="key")
    files = plan_input_files([path], columns, StorageConfig())
    out = ReadRowGroups(columns, keep_columns=["shard"], storage=StorageConfig())(read_tasks(files)).to_pylist()
    assert [row["id"] for row in out] == ["k1", "k2", "k3"]
    assert [row["text"] for row in out] == ["a", "b", "c"]
    assert [row["source"] for row in out] == [f"{path}#0", f"{path}#1", f"{path}#2"]
    assert [json.loads(row["metadata"]) for row in out] == [{"shard": 7}, {"shard": 7}, {"shard": 8}]
    assert all(row["image"] is None for row in out)


def test_text_stored_as_bytes_is_decoded_and_invalid_utf8_is_flagged(tmp_path):
    texts = [b"plain", "caf\xe9".encode("latin-1"), None, "ok ✓".encode()]
    path = write(tmp_path / "bytes.parquet", pa.table({"text": pa.array(texts, pa.binary()), "id": [1, 2, 3, 4]}))
    files = plan_input_files([path], ColumnsConfig(), StorageConfig())
    out = ReadRowGroups(ColumnsConfig(), keep_columns=[], storage=StorageConfig())(read_tasks(files)).to_pylist()
    assert [row["text"] for row in out] == ["plain", "caf\ufffd", None, "ok ✓"]
    assert [row["flags"] for row in out] == [None, ["text_not_utf8"], None, None]
    assert [row["id"] for row in out] == ["1", "2", "3", "4"]
