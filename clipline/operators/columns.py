"""Arrow column helpers shared by the operators: batches are `pyarrow.Table`s end to end.

Operators add or replace columns and never drop rows, so the one-row-in, one-row-out promise
holds by construction; these helpers keep that bookkeeping in one place.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipline.schemas.table import Status


def set_column(table: pa.Table, name: str, values: pa.Array | pa.ChunkedArray | list) -> pa.Table:
    """Add `name`, or replace it in place when it already exists."""
    index = table.schema.get_field_index(name)
    if index < 0:
        return table.append_column(name, values)
    return table.set_column(index, name, values)


def column_or_nulls(table: pa.Table, name: str, type_: pa.DataType) -> pa.Array:
    """A column as one array, or all nulls when the batch does not have it."""
    if name not in table.column_names:
        return pa.nulls(table.num_rows, type_)
    return table.column(name).combine_chunks().cast(type_)


def is_blank(text: str | None) -> bool:
    """No text, or only whitespace: nothing to embed (one definition for decode and encode)."""
    return text is None or not text.strip()


def ok_mask(table: pa.Table) -> np.ndarray:
    """Rows still in play: status ok (rows that failed earlier are carried, not processed)."""
    status = table.column("status")
    return pc.fill_null(pc.equal(status, Status.OK), False).to_numpy(zero_copy_only=False)


def embedding_array(matrix: np.ndarray, present: np.ndarray, dim: int) -> pa.Array:
    """Rows of `matrix` where `present`, null elsewhere, as a fixed-size float32 list column."""
    full = np.zeros((len(present), dim), dtype=np.float32)
    full[present] = matrix
    values = pa.array(full.reshape(-1), type=pa.float32())
    mask = None if present.all() else pa.array(~present)
    return pa.FixedSizeListArray.from_arrays(values, dim, mask=mask)


def embedding_matrix(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(the non-null vectors as an (n, D) float32 matrix, boolean mask of rows that had one)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    present = column.is_valid().to_numpy(zero_copy_only=False)
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(-1, column.type.list_size), present


def mark_failed(table: pa.Table, failures: dict[int, tuple[str, str]]) -> pa.Table:
    """Set rows failed with {row: (error code, message)}; a row fails once, so earlier outcomes stay put."""
    if not failures:
        return table
    status = table.column("status").to_pylist()
    codes = column_or_nulls(table, "error_code", pa.string()).to_pylist()
    messages = column_or_nulls(table, "error_message", pa.string()).to_pylist()
    for row, (code, message) in failures.items():
        status[row], codes[row], messages[row] = Status.FAILED, code, message
    table = set_column(table, "status", pa.array(status, pa.string()))
    table = set_column(table, "error_code", pa.array(codes, pa.string()))
    return set_column(table, "error_message", pa.array(messages, pa.string()))


def add_flag(table: pa.Table, rows: np.ndarray, flag: str) -> pa.Table:
    """Append `flag` to the `flags` list of the selected rows (flags note issues that did not fail the row)."""
    if not rows.any():
        return table
    current = column_or_nulls(table, "flags", pa.list_(pa.string())).to_pylist()
    updated = [(flags or []) + [flag] if chosen else flags for flags, chosen in zip(current, rows, strict=True)]
    return set_column(table, "flags", pa.array(updated, pa.list_(pa.string())))
