"""Thumbnails of flagged rows, re-read from the run's input (the table keeps no image bytes).

An image is read the way the decode step read it: the `image` column of the source parquet at
`file#row` when that cell holds bytes, else the row's `image_uri` under the run's
`source.allowed_uri_prefixes`, with the same byte cap and the same bounded decode. Only the row
groups holding wanted rows are read, and only the image column. Anything that goes wrong gives a
row without a thumbnail and a reason to show in its place: a report must never fail over one
missing image.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass

import fsspec
import pyarrow.parquet as pq

from clipline.operators.decode import DecodeLimits, RowFailure, redact_uri, thumbnail_jpeg
from clipline.operators.uri_policy import UriPolicy, UriReader
from clipline.schemas.config import SourceConfig
from clipline.schemas.storage import StorageConfig
from clipline.schemas.table import ErrorCode


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


def load_thumbnails(
    rows: list[dict], source: SourceConfig, storage: StorageConfig | None = None
) -> dict[str, Thumbnail]:
    """Thumbnails by row `id` for table rows carrying `id`, `source`, `image_uri` and `text`."""
    storage = storage or StorageConfig()
    limits = DecodeLimits(max_pixels=source.max_image_pixels, max_aspect=source.max_image_aspect)
    reader = UriReader(UriPolicy.from_prefixes(source.uri_prefixes()), source.max_image_bytes, storage)
    from_parquet, problems = source_image_bytes(
        [row["source"] for row in rows if row.get("source")], source.columns.image, storage
    )
    thumbnails = {}
    for row in rows:
        data, uri = from_parquet.get(row.get("source")), row.get("image_uri")
        try:
            if data is None and uri:
                data = reader.read(uri)
            if data is None:
                reason = problems.get(row.get("source")) or ("text-only row" if row.get("text") else "no image")
                thumbnails[row["id"]] = Thumbnail(missing=reason)
                continue
            if len(data) > source.max_image_bytes:
                raise RowFailure(ErrorCode.IMAGE_TOO_LARGE, f"{len(data)} bytes, over {source.max_image_bytes}")
            thumbnails[row["id"]] = Thumbnail(jpeg=thumbnail_jpeg(data, limits))
        except RowFailure as failure:  # not allowed, unreadable, undecodable: show why instead
            thumbnails[row["id"]] = Thumbnail(missing=redact_uri(f"{failure.code}: {failure.message}")[:200])
    return thumbnails
