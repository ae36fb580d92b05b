"""Input parquet built by test code from the tiny model's shape generator."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipline.demo.shapes import COLOURS, SHAPES, caption, render

INPUT_SCHEMA = pa.schema(
    [("id", pa.string()), ("image", pa.binary()), ("image_uri", pa.string()), ("text", pa.string())]
)


def png_bytes(shape: str, colour: str, seed: int, size: int = 96) -> bytes:
    buffer = io.BytesIO()
    render(shape, colour, np.random.default_rng(seed), size=size).save(buffer, format="PNG")
    return buffer.getvalue()


def image_rows(prefix: str, count: int, seed: int = 0) -> list[dict]:
    """Rows with inline PNG bytes and a caption; ids are `prefix-N`."""
    rows = []
    for index in range(count):
        shape, colour = SHAPES[index % len(SHAPES)], COLOURS[(index // len(SHAPES)) % len(COLOURS)]
        rng = np.random.default_rng(seed * 10_000 + index)
        rows.append(
            {
                "id": f"{prefix}-{index}",
                "image": png_bytes(shape, colour, seed * 10_000 + index),
                "text": caption(shape, colour, rng),
            }
        )
    return rows


def write_parquet(rows: list[dict], destination, filesystem=None, row_group_size: int = 8) -> None:
    table = pa.Table.from_pylist(rows, schema=INPUT_SCHEMA)
    pq.write_table(table, destination, row_group_size=row_group_size, filesystem=filesystem)
