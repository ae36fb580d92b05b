"""The `thumbnail` extra: a small WebP of the whole frame, made at decode, null for rows without an image."""

from __future__ import annotations

import io

import pyarrow as pa
from PIL import Image

from clipline.operators.decode import DecodeImages
from clipline.operators.pdq import PdqHash
from clipline.operators.thumbnail import FrameThumbnail
from clipline.pipelines.stages import run_stages
from clipline.schemas.config import JobConfig
from tests.operators.images import asymmetric, encode


def decode_with_thumbnails(rows: list[dict]) -> pa.Table:
    batch = pa.Table.from_pylist(rows, schema=pa.schema([("image", pa.binary()), ("text", pa.string())]))
    return DecodeImages(32, 10_000_000, 10_000_000, extras=[FrameThumbnail()])(batch)


def test_a_wide_photo_becomes_a_160px_webp_of_the_whole_frame():
    wide = asymmetric((1200, 600))
    out = decode_with_thumbnails([{"image": encode(wide, "JPEG"), "text": None}])
    data = out.column("thumbnail")[0].as_py()
    with Image.open(io.BytesIO(data)) as thumbnail:
        assert thumbnail.format == "WEBP" and thumbnail.size == (160, 80)  # whole frame, not the centre crop
        left, right = thumbnail.convert("RGB").getpixel((5, 40)), thumbnail.convert("RGB").getpixel((154, 40))
    assert left != right  # the asymmetric picture's two halves are both there
    assert len(data) < 8_000


def test_rows_without_a_decoded_image_get_a_null_thumbnail():
    out = decode_with_thumbnails([{"image": None, "text": "a caption"}, {"image": b"not an image", "text": None}])
    assert out.column("thumbnail").to_pylist() == [None, None]
    assert out.column("status").to_pylist() == ["ok", "failed"]


def test_sink_thumbnails_false_leaves_the_extra_out(tmp_path):
    def decode_extras(thumbnails: bool) -> list:
        config = JobConfig(source={"paths": ["x.parquet"]}, sink={"uri": str(tmp_path), "thumbnails": thumbnails})
        decode = next(stage for stage in run_stages(config, None) if stage.name == "decode")
        return [type(extra) for extra in decode.extras]

    assert decode_extras(True) == [PdqHash, FrameThumbnail]
    assert decode_extras(False) == [PdqHash]
