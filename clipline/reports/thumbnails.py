"""Thumbnails of flagged rows, re-read from the run's input (the table keeps no image bytes).

An image is read the way the decode step read it: the `image` column of the source parquet at
`file#row` when that cell holds bytes, else the row's `image_uri`. Only the row groups holding
wanted rows are read, and only the image column. Anything that goes wrong gives a row without a
thumbnail and a reason to show in its place: a report must never fail over one missing image.
"""

from __future__ import annotations

import bisect
import io
from collections import defaultdict
from dataclasses import dataclass

import fsspec
import pyarrow.parquet as pq
from PIL import Image, ImageOps

from clipline.operators.decode import redact_uri, to_rgb
from clipline.schemas.storage import StorageConfig

THUMBNAIL_PX = 160


@dataclass
class Thumbnail:
    """A JPEG thumbnail, or the reason there is none."""

    jpeg: bytes | None = None
    missing: str | None = None


def split_source(source: str) -> tuple[str, int] | None:
    """`file#row` → (file, row); None when the row number is not there."""
    path, _, row = (source or "").rpartition("#")
    return (path, int(row)) if path and row.isdigit() else None


def source_image_bytes(
    sources: list[str], image_column: str, storage: StorageConfig
) -> tuple[dict[str, bytes | None], dict[str, str]]:
    """Image bytes of each `file#row` from its parquet, one open per file, one read per row group.

    Returns (bytes by source, problem by source); a cell that is null maps to None without a problem.
    """
    found: dict[str, bytes | None] = {}
    problems: dict[str, str] = {}
    by_file: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for source in sources:
        parsed = split_source(source)
        if parsed is None:
            problems[source] = "source has no row number"
            continue
        by_file[parsed[0]].append((parsed[1], source))
    for path, wanted in by_file.items():
        try:
            with fsspec.open(path, "rb", **storage.fsspec_options(path)) as handle:
                parquet = pq.ParquetFile(handle)
                if image_column not in parquet.schema_arrow.names:
                    found.update((source, None) for _, source in wanted)
                    continue
                metadata = parquet.metadata
                starts = [0]
                for index in range(metadata.num_row_groups):
                    starts.append(starts[-1] + metadata.row_group(index).num_rows)
                by_group: dict[int, list[tuple[int, str]]] = defaultdict(list)
                for row, source in wanted:
                    group = bisect.bisect_right(starts, row) - 1
                    if row >= starts[-1] or group < 0:
                        problems[source] = f"row {row} is past the end of the file ({starts[-1]} rows)"
                    else:
                        by_group[group].append((row - starts[group], source))
                for group, rows in by_group.items():
                    column = parquet.read_row_group(group, columns=[image_column]).column(0)
                    for offset, source in rows:
                        found[source] = column[offset].as_py()
        except Exception as exc:  # missing file, no permission, not parquet: the rows just get no picture
            for _, source in wanted:
                problems[source] = f"cannot read {redact_uri(path)}: {type(exc).__name__}"
    return found, problems


def uri_bytes(uri: str, max_bytes: int, storage: StorageConfig) -> bytes:
    fs, path = fsspec.core.url_to_fs(uri, **storage.fsspec_options(uri))
    size = fs.size(path)
    if size is not None and size > max_bytes:
        raise ValueError(f"{size} bytes, over {max_bytes}")
    return fs.cat_file(path)


def make_thumbnail(data: bytes, max_pixels: int, size: int = THUMBNAIL_PX) -> bytes:
    """A JPEG no larger than `size` px a side; refuses declared sizes over `max_pixels` (bomb guard)."""
    image = Image.open(io.BytesIO(data))
    if image.width * image.height > max_pixels:
        raise ValueError(f"{image.width}x{image.height} is over {max_pixels} pixels")
    image.draft("RGB", (size, size))
    image = to_rgb(ImageOps.exif_transpose(image))
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def load_thumbnails(
    rows: list[dict],
    image_column: str = "image",
    storage: StorageConfig | None = None,
    max_pixels: int = 64_000_000,
    max_bytes: int = 64 * 1024 * 1024,
) -> dict[str, Thumbnail]:
    """Thumbnails by row `id` for table rows carrying `id`, `source`, `image_uri` and `text`."""
    storage = storage or StorageConfig()
    from_parquet, problems = source_image_bytes(
        [row["source"] for row in rows if row.get("source")], image_column, storage
    )
    thumbnails = {}
    for row in rows:
        source, uri = row.get("source"), row.get("image_uri")
        data = from_parquet.get(source)
        try:
            if data is None and uri:
                data = uri_bytes(uri, max_bytes, storage)
            if data is None:
                reason = problems.get(source) or ("text-only row" if row.get("text") else "no image")
                thumbnails[row["id"]] = Thumbnail(missing=reason)
                continue
            thumbnails[row["id"]] = Thumbnail(jpeg=make_thumbnail(data, max_pixels))
        except Exception as exc:  # unreadable URI, undecodable bytes: show why instead of the picture
            where = uri if uri and from_parquet.get(source) is None else "image"
            thumbnails[row["id"]] = Thumbnail(missing=redact_uri(f"{where}: {type(exc).__name__}: {exc}")[:200])
    return thumbnails
