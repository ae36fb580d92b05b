"""Read input parquet one row group at a time, tagging every row with `file#row`.

Ray Data's `read_parquet` forgets where a row came from; clipline needs the file and row number
for each output row's `source` (to trace a verdict back to its input) and the per-file list of
work for incremental runs, so planning reads only parquet footers and reading is an operator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from clipline.operators.base import STATELESS, Resources, WorkerState
from clipline.schemas.base import ConfigError
from clipline.schemas.config import ColumnsConfig
from clipline.schemas.storage import StorageConfig

ROW_COLUMNS = {"id": pa.string(), "image": pa.binary(), "image_uri": pa.string(), "text": pa.string()}
FLAG_NOT_UTF8 = "text_not_utf8"
_STRINGS = (pa.types.is_string, pa.types.is_large_string, pa.types.is_null)
_BINARIES = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_null)
# Integer ids are common and unambiguous as text; text stored as bytes is decoded as UTF-8.
ACCEPTED_TYPES = {
    "id": (*_STRINGS, pa.types.is_integer),
    "image": _BINARIES,
    "image_uri": _STRINGS,
    "text": _STRINGS + _BINARIES,
}
TASK_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("row_group", pa.int32()),
        ("first_row", pa.int64()),
        ("rows", pa.list_(pa.int64())),
        ("ids", pa.list_(pa.string())),
    ]
)


@dataclass(frozen=True)
class InputFile:
    """A parquet file found under the configured source paths, with what planning learned of it."""

    path: str
    size: int
    version: str
    row_groups: tuple[int, ...]

    @property
    def num_rows(self) -> int:
        return sum(self.row_groups)


def _with_protocol(fs: fsspec.AbstractFileSystem, path: str, original: str) -> str:
    """fsspec strips `s3://`; keep the scheme so the path is usable from any process."""
    return path if "://" not in original else fs.unstrip_protocol(path)


def file_version(info: dict) -> str:
    """What changes when a file's content changes: the ETag on object storage, else size + mtime."""
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return str(etag).strip('"')
    return f"{info.get('size')}-{info.get('mtime') or info.get('LastModified') or info.get('created')}"


def _parquet_entries(fs: fsspec.AbstractFileSystem, root: str, original: str) -> dict[str, dict]:
    """Parquet files at or under `root`, with storage errors turned into messages naming the path.

    Unreachable endpoints, missing buckets and refused credentials all surface here, on the
    driver, before any cluster work; the messages name the path and the error type, never a key.
    """
    try:
        info = fs.info(root)
        if info.get("type") != "directory":
            return {root: info}
        return {path: entry for path, entry in fs.find(root, detail=True).items() if path.endswith(".parquet")}
    except FileNotFoundError as exc:
        raise ConfigError(f"source.paths: {original} does not exist") from exc
    except PermissionError as exc:
        raise ConfigError(f"source.paths: access to {original} was refused; check the credentials") from exc
    except Exception as exc:
        raise ConfigError(f"source.paths: cannot read {original}: {type(exc).__name__}: {exc}") from exc


def list_parquet_files(paths: list[str], storage: StorageConfig) -> list[tuple[str, int, str]]:
    """Expand files and directories (recursively) into (parquet file, size, version), sorted."""
    found: dict[str, tuple[int, str]] = {}
    for original in paths:
        fs, root = fsspec.core.url_to_fs(original, **storage.fsspec_options(original))
        for path, info in _parquet_entries(fs, root, original).items():
            found[_with_protocol(fs, path, original)] = (int(info.get("size") or 0), file_version(info))
    if not found:
        raise ConfigError(f"source.paths: no .parquet files under {paths}")
    return sorted((path, size, version) for path, (size, version) in found.items())


def _check_columns(path: str, schema: pa.Schema, columns: ColumnsConfig) -> None:
    """Fail at planning time, naming the file and column, rather than on a worker mid-run."""
    wanted = {role: getattr(columns, role) for role in ROW_COLUMNS}
    present = {role: name for role, name in wanted.items() if name in schema.names}
    if not {"image", "image_uri", "text"} & present.keys():
        raise ConfigError(
            f"{path}: none of the content columns {wanted['image']!r}, {wanted['image_uri']!r}, "
            f"{wanted['text']!r} is present (has: {schema.names}); set source.columns"
        )
    for role, name in present.items():
        actual = schema.field(name).type
        if not any(accepts(actual) for accepts in ACCEPTED_TYPES[role]):
            raise ConfigError(f"{path}: column {name!r} ({role}) has type {actual}, expected {ROW_COLUMNS[role]}")


def plan_input_files(paths: list[str], columns: ColumnsConfig, storage: StorageConfig) -> list[InputFile]:
    """Read every footer once: row-group sizes for splitting work and schemas for early checks."""
    planned = []
    for path, size, version in list_parquet_files(paths, storage):
        with fsspec.open(path, "rb", **storage.fsspec_options(path)) as handle:
            metadata = pq.ParquetFile(handle).metadata
            _check_columns(path, metadata.schema.to_arrow_schema(), columns)
            groups = tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))
        planned.append(InputFile(path=path, size=size, version=version, row_groups=groups))
    return planned


def read_tasks(files: list[InputFile], only: dict[str, dict[int, str]] | None = None) -> pa.Table:
    """One task row per (file, row group): the unit of parallel reading.

    `only` restricts reading to some rows of each file (path → {row number → id to keep}), for
    retrying failed rows under the ids they already have in the table.
    """
    tasks = []
    for file in files:
        first = 0
        for index, count in enumerate(file.row_groups):
            task = {"path": file.path, "row_group": index, "first_row": first, "rows": None, "ids": None}
            if only is not None:
                chosen = sorted(row for row in only.get(file.path, {}) if first <= row < first + count)
                task.update(rows=chosen, ids=[only[file.path][row] for row in chosen])
            if only is None or task["rows"]:
                tasks.append(task)
            first += count
    return pa.Table.from_pylist(tasks, schema=TASK_SCHEMA)


class ReadRowGroups:
    """Task rows (path, row_group, first_row) in, input rows with `source` and `metadata` out."""

    name = "read"

    def __init__(
        self,
        columns: ColumnsConfig,
        keep_columns: list[str],
        storage: StorageConfig,
        resources: Resources = STATELESS,
    ) -> None:
        self.columns = columns
        self.keep_columns = keep_columns
        self.storage = storage
        self.resources = resources

    def setup(self, state: WorkerState) -> None:
        """Nothing to load: reading is stateless."""

    def __call__(self, tasks: pa.Table) -> pa.Table:
        parts = [self._read_one(**task) for task in tasks.to_pylist()]
        return pa.concat_tables(parts) if parts else self._empty()

    def _read_one(
        self, path: str, row_group: int, first_row: int, rows: list[int] | None = None, ids: list[str] | None = None
    ) -> pa.Table:
        with fsspec.open(path, "rb", **self.storage.fsspec_options(path)) as handle:
            parquet = pq.ParquetFile(handle)
            wanted = [getattr(self.columns, role) for role in ROW_COLUMNS] + self.keep_columns
            names = [name for name in dict.fromkeys(wanted) if name in parquet.schema_arrow.names]
            raw = parquet.read_row_group(row_group, columns=names)
        out = {
            role: self._column(raw, getattr(self.columns, role), type_)
            for role, type_ in ROW_COLUMNS.items()
            if role != "text"
        }
        out["text"], out["flags"] = self._text(raw, self.columns.text)
        out["source"] = pa.array([f"{path}#{first_row + i}" for i in range(raw.num_rows)], pa.string())
        out["metadata"] = self._metadata(raw)
        table = pa.table(out)
        if rows is None:
            return table
        table = table.take(pa.array([row - first_row for row in rows]))
        return table.set_column(table.schema.get_field_index("id"), "id", pa.array(ids, pa.string()))

    @staticmethod
    def _text(raw: pa.Table, name: str) -> tuple[pa.Array, pa.Array]:
        """Text as strings; bytes that are not valid UTF-8 are decoded with U+FFFD and the row flagged."""
        is_bytes = name in raw.column_names and (
            pa.types.is_binary(raw.schema.field(name).type) or pa.types.is_large_binary(raw.schema.field(name).type)
        )
        if not is_bytes:
            return ReadRowGroups._column(raw, name, pa.string()), pa.nulls(raw.num_rows, pa.list_(pa.string()))
        texts, flags = [], []
        for value in raw.column(name).to_pylist():
            try:
                texts.append(None if value is None else value.decode("utf-8"))
                flags.append(None)
            except UnicodeDecodeError:
                texts.append(value.decode("utf-8", errors="replace"))
                flags.append([FLAG_NOT_UTF8])
        return pa.array(texts, pa.string()), pa.array(flags, pa.list_(pa.string()))

    @staticmethod
    def _column(raw: pa.Table, name: str, type_: pa.DataType) -> pa.Array:
        if name not in raw.column_names:
            return pa.nulls(raw.num_rows, type_)
        return raw.column(name).combine_chunks().cast(type_)

    def _metadata(self, raw: pa.Table) -> pa.Array:
        """Kept columns travel as one JSON string so the table schema never depends on the input."""
        kept = [name for name in self.keep_columns if name in raw.column_names]
        if not kept:
            return pa.nulls(raw.num_rows, pa.string())
        records = raw.select(kept).to_pylist()
        return pa.array([json.dumps(record, default=str, sort_keys=True) for record in records])

    def _empty(self) -> pa.Table:
        columns = {role: pa.array([], type_) for role, type_ in ROW_COLUMNS.items()}
        columns["flags"] = pa.array([], pa.list_(pa.string()))
        columns["source"] = pa.array([], pa.string())
        columns["metadata"] = pa.array([], pa.string())
        return pa.table(columns)
