"""A small WebP of each image, kept in the table's `thumbnail` column.

The web page, the review queue and the run report show a row's picture from this column instead
of re-reading the input, which may have moved, been deleted or be private to the ingest job. It is
made from the decoded whole frame (`DecodedImage.frame`, long side <= 500 px) that decode already
holds, so it costs one resize and one encode per image: a few KB and a few ms (measured by
`benchmarks/thumbnails.py`). `sink.thumbnails: false` leaves the extra out and the column null.
"""

from __future__ import annotations

import io

import pyarrow as pa
from PIL import Image

THUMBNAIL_PX = 160
WEBP_QUALITY = 75
# libwebp's effort 0-6: on photos 2 gives files 2-3 % larger than 4 (the default), 2-3 times faster.
WEBP_METHOD = 2


class FrameThumbnail:
    """FrameExtra: `thumbnail` = WebP, long side at most `size` px, aspect ratio kept."""

    def __init__(self, size: int = THUMBNAIL_PX, quality: int = WEBP_QUALITY) -> None:
        self.columns = {"thumbnail": pa.binary()}
        self.size = size
        self.quality = quality

    def __call__(self, frame: Image.Image) -> dict[str, object]:
        small = frame.copy()
        small.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        small.save(buffer, format="WEBP", quality=self.quality, method=WEBP_METHOD)
        return {"thumbnail": buffer.getvalue()}
