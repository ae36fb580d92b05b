"""`clipline demo`: generate a small realistic input, run the real pipeline on it, show the result.

The demo data are drawn by the same generator the bundled tiny CLIP learned from, so the model
recognises them: images as JPEG/PNG bytes with captions, images behind `image_uri` paths,
text-only rows, and a handful of deliberately broken rows that must come out as `failed`.
Ground truth (shape, colour, kind) rides along as kept metadata columns.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from clipline.demo.shapes import COLOURS, SHAPES, caption, render, sample_rng
from clipline.models.loader import TINY_DIR
from clipline.pipelines.run import run_job
from clipline.pipelines.summary import RunOptions, RunSummary
from clipline.reports import record_run
from clipline.schemas.config import JobConfig

DEMO_POLICY = TINY_DIR / "demo_policy.yaml"
DEMO_SEED = 20261122
IMAGE_ROWS = 240
URI_ROWS = 16
TEXT_ROWS = 24
ROW_GROUP_ROWS = 64
TRUTH_COLUMNS = ["shape", "colour", "kind"]


def encode_image(image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _drawn_row(index: int, seed: int) -> tuple[dict, object]:
    """One generated concept image with its caption and truth; the image is returned separately."""
    rng = sample_rng(seed, index)
    shape = SHAPES[index % len(SHAPES)]
    colour = COLOURS[int(rng.integers(len(COLOURS)))]
    image = render(shape, colour, rng, size=int(rng.integers(96, 257)))
    row = {"id": f"demo-{index:05d}", "text": caption(shape, colour, rng), "shape": shape, "colour": colour}
    return row, image


def broken_rows(image_dir: Path) -> list[dict]:
    """Inputs that must fail with an error code, never take the run down."""
    good = encode_image(render("circle", "red", np.random.default_rng(0), size=128), "JPEG")
    rng = np.random.default_rng(1)
    rows = [
        {"image": good[: len(good) // 3], "kind": "broken-truncated-jpeg"},
        {"image": rng.bytes(2048), "kind": "broken-random-bytes"},
        {"image": b"", "kind": "broken-zero-bytes"},
        {"image_uri": str(image_dir / "does-not-exist.png"), "kind": "broken-missing-uri"},
        {"kind": "broken-no-content"},
    ]
    return [{"id": f"demo-broken-{i}", **row} for i, row in enumerate(rows)]


def demo_rows(out_dir: Path, seed: int = DEMO_SEED) -> list[dict]:
    """All demo rows; URI images are written under `out_dir/input/images`."""
    image_dir = out_dir / "input" / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(IMAGE_ROWS + URI_ROWS):
        row, image = _drawn_row(index, seed)
        if index < IMAGE_ROWS:
            row.update(image=encode_image(image, "JPEG" if index % 2 else "PNG"), kind="image")
        else:
            path = image_dir / f"{row['id']}.png"
            image.save(path)
            row.update(image_uri=str(path), kind="image-uri")
        rows.append(row)
    for index in range(TEXT_ROWS):
        rng = sample_rng(seed + 1, index)
        shape, colour = SHAPES[index % len(SHAPES)], COLOURS[int(rng.integers(len(COLOURS)))]
        rows.append(
            {
                "id": f"demo-text-{index:03d}",
                "text": caption(shape, colour, rng),
                "shape": shape,
                "colour": colour,
                "kind": "text",
            }
        )
    return rows + broken_rows(image_dir)


def write_demo_input(out_dir: Path, seed: int = DEMO_SEED) -> Path:
    """Write the demo parquet (several row groups, so reads run in parallel)."""
    schema = pa.schema(
        [("id", pa.string()), ("image", pa.binary()), ("image_uri", pa.string()), ("text", pa.string())]
        + [(name, pa.string()) for name in TRUTH_COLUMNS]
    )
    rows = demo_rows(out_dir, seed)
    table = pa.Table.from_pylist(rows, schema=schema)
    path = out_dir / "input" / "demo.parquet"
    pq.write_table(table, path, row_group_size=ROW_GROUP_ROWS)
    return path


def demo_config(out_dir: Path, input_path: Path) -> JobConfig:
    """The demo's job config; also written next to the data for `clipline run` to reuse."""
    data = {
        "source": {"paths": [str(input_path)], "keep_columns": TRUTH_COLUMNS},
        "model": {"arch": "clipline-tiny"},
        "policy": str(DEMO_POLICY),
        "sink": {"uri": str(out_dir), "table": "media"},
    }
    (out_dir / "job.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return JobConfig.model_validate(data)


def run_demo(out_dir: str | Path, address: str | None = None) -> RunSummary:
    """Regenerate the (deterministic) demo input and run it in full, so the demo always does work."""
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = demo_config(out, write_demo_input(out))
    return record_run(run_job(config, RunOptions(address=address, full=True)), config)
