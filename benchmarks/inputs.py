"""Generated inputs for the throughput harness: photo-like JPEGs with captions, in parquet, and a big policy.

Two image sizes, because decode cost grows with pixels while the model's cost does not: `phone`
is what a phone upload is after the app has shrunk it (640×480), `camera` is 480–1024 px on the
long side, as uploads straight from a camera roll.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

# name → ((min width, max width), (min height, max height)); a fixed size has min == max.
IMAGE_SIZES = {"phone": ((640, 640), (480, 480)), "camera": ((480, 1024), (360, 768))}
JPEG_QUALITY = 85
ROW_GROUP_ROWS = 64
_WORDS = {
    "subject": ["dog", "bicycle", "kitchen", "beach", "street", "cake", "mountain", "child", "car", "garden"],
    "look": ["blurry", "bright", "dark", "close-up", "wide", "old", "colourful", "quiet", "busy", "snowy"],
    "place": ["in the park", "at night", "on a table", "by the sea", "in the city", "at a party", "indoors"],
}


def photo_like(rng: np.random.Generator, size: str) -> Image.Image:
    """A smooth gradient with blobs and sensor noise: JPEG sizes like real photos', not like flat test cards."""
    (min_w, max_w), (min_h, max_h) = IMAGE_SIZES[size]
    width, height = int(rng.integers(min_w, max_w + 1)), int(rng.integers(min_h, max_h + 1))
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
    for _ in range(4):
        cx, cy, radius = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(30, 200)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))[..., None]
        base = base * (1 - blob) + rng.uniform(0, 255, 3) * blob
    base += rng.normal(0, 6, base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def camera_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """`count` camera-sized photo-like JPEGs, the same for every harness that asks with the same seed."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        photo_like(rng, "camera").save(buffer, format="JPEG", quality=JPEG_QUALITY)
        out.append(buffer.getvalue())
    return out


def caption(rng: np.random.Generator) -> str:
    """A caption of typical alt-text length (8-12 words), so the text tower does realistic work."""
    words = [rng.choice(_WORDS[part]) for part in ("look", "subject", "place")]
    return f"a {words[0]} photo of a {words[1]} {words[2]}, taken with a phone, shared by a user"


def write_inputs(directory: Path, n: int, size: str = "camera", seed: int = 0, unique: int | None = None) -> Path:
    """`n` rows of id, JPEG bytes and a caption, in row groups of 64 (one decode task each).

    `unique` images are generated and repeated to `n` rows (every row is still decoded and
    encoded): the GPU check needs inputs far larger than it has time to generate.
    """
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for _ in range(min(n, unique or n)):
        buffer = io.BytesIO()
        photo_like(rng, size).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        images.append(buffer.getvalue())
        captions.append(caption(rng))
    images = [images[i % len(images)] for i in range(n)]
    captions = [captions[i % len(captions)] for i in range(n)]
    path = directory / f"in-{size}" / "images.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": [f"img-{i}" for i in range(n)], "image": pa.array(images, pa.binary()), "text": captions})
    pq.write_table(table, path, row_group_size=ROW_GROUP_ROWS)
    return path


def big_policy(directory: Path, prompts: int) -> Path:
    """A policy with at least `prompts` prompts (templates not counted), for the moderation cost."""
    per_category = 10
    categories = [
        {
            "name": f"c{i}",
            "positive": [f"concept {i} variant {j}" for j in range(per_category // 2)],
            "negative": [f"other thing {i} variant {j}" for j in range(per_category // 2)],
            "review_threshold": 0.5,
            "block_threshold": 0.9,
        }
        for i in range(-(-prompts // per_category))
    ]
    path = directory / "policy.yaml"
    path.write_text(yaml.safe_dump({"name": "bench", "version": "1", "categories": categories}))
    return path
