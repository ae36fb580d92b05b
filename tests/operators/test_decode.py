"""Decoder alone (no Ray): every image mode made RGB correctly, every failure a row status."""

from __future__ import annotations

import numpy as np
import open_clip
import pyarrow as pa
import pytest
import torch
from PIL import Image

from clipline.operators.decode import DecodeImages, RowFailure, decode_image, fit_square, redact_uri
from clipline.schemas.table import ErrorCode
from tests.operators.images import RED, asymmetric, encode, png_with_declared_size, with_exif_orientation

SIZE = 32
LIMIT = 10_000_000


def centre(pixels: np.ndarray) -> np.ndarray:
    return pixels[SIZE // 2, SIZE // 2].astype(int)


def solid(mode: str, colour, size=(40, 40)) -> Image.Image:
    return Image.new(mode, size, colour)


def test_fit_square_matches_open_clip_eval_transform():
    image = asymmetric((300, 200))
    transform = open_clip.image_transform(SIZE, is_train=False)
    reference = transform(image)
    ours = torch.tensor(fit_square(image, SIZE)).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)
    assert torch.allclose((ours - mean) / std, reference, atol=1e-5)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_rgb_containers(fmt):
    pixels = decode_image(encode(solid("RGB", RED), fmt), SIZE, LIMIT)
    assert pixels.shape == (SIZE, SIZE, 3)
    assert pixels.dtype == np.uint8
    assert np.abs(centre(pixels) - np.array(RED)).max() <= 12


def test_greyscale_and_one_bit_become_grey_rgb():
    grey = decode_image(encode(solid("L", 90), "PNG"), SIZE, LIMIT)
    assert tuple(centre(grey)) == (90, 90, 90)
    one_bit = decode_image(encode(solid("1", 1), "PNG"), SIZE, LIMIT)
    assert tuple(centre(one_bit)) == (255, 255, 255)


def test_sixteen_bit_png_is_scaled_not_clipped():
    array = np.full((40, 40), 32896, dtype=np.uint16)  # 128 * 257
    image = Image.fromarray(array)
    assert image.mode.startswith("I")
    pixels = decode_image(encode(image, "PNG"), SIZE, LIMIT)
    assert tuple(centre(pixels)) == (128, 128, 128)


def test_cmyk_jpeg_converts_to_rgb():
    pixels = decode_image(encode(solid("CMYK", (0, 255, 255, 0)), "JPEG", quality=95), SIZE, LIMIT)
    red, green, blue = centre(pixels)
    assert red > 200 and green < 60 and blue < 60


def test_alpha_is_composited_on_white():
    image = solid("RGBA", (0, 0, 0, 0))
    image.paste((*RED, 255), (0, 0, 20, 40))
    pixels = decode_image(encode(image, "PNG"), 40, LIMIT)
    assert tuple(pixels[20, 35]) == (255, 255, 255)
    assert tuple(pixels[20, 5]) == RED


def test_palette_with_transparency_is_composited_on_white():
    image = Image.new("P", (40, 40), 0)
    image.putpalette([0, 0, 0, *RED] + [0] * 762)
    image.paste(1, (0, 0, 20, 40))
    pixels = decode_image(encode(image, "PNG", transparency=0), 40, LIMIT)
    assert tuple(pixels[20, 35]) == (255, 255, 255)
    assert tuple(pixels[20, 5]) == RED


def test_animated_gif_uses_first_frame():
    frames = [solid("RGB", RED), solid("RGB", (20, 20, 220))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    red, _, blue = centre(decode_image(data, SIZE, LIMIT))
    assert red > 180 and blue < 80


def test_exif_orientation_is_applied():
    image = asymmetric((120, 80))
    rotated_by_exif = decode_image(with_exif_orientation(image, 6), 64, LIMIT)
    physically_rotated = decode_image(encode(image.transpose(Image.Transpose.ROTATE_270), "PNG"), 64, LIMIT)
    unrotated = decode_image(encode(image, "PNG"), 64, LIMIT)
    assert np.array_equal(rotated_by_exif, physically_rotated)
    assert not np.array_equal(rotated_by_exif, unrotated)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", ErrorCode.IMAGE_DECODE_FAILED),
        (b"<html><body>not an image</body></html>", ErrorCode.IMAGE_DECODE_FAILED),
        (encode(asymmetric(), "JPEG")[:200], ErrorCode.IMAGE_DECODE_FAILED),
        (encode(asymmetric(), "PNG")[:150], ErrorCode.IMAGE_DECODE_FAILED),
        (png_with_declared_size(5000, 5000), ErrorCode.IMAGE_TOO_LARGE),
        (png_with_declared_size(100_000, 100_000), ErrorCode.IMAGE_TOO_LARGE),
    ],
)
def test_failures_raise_row_failure_with_code(data, code):
    with pytest.raises(RowFailure) as caught:
        decode_image(data, SIZE, LIMIT)
    assert caught.value.code == code
    assert caught.value.message


def test_redact_uri_drops_credentials():
    assert redact_uri("https://user:secret@host/a.png") == "https://host/a.png"
    assert redact_uri("s3://bucket/key.png") == "s3://bucket/key.png"


def test_operator_gives_every_row_an_outcome(tmp_path):
    on_disk = tmp_path / "good.png"
    asymmetric().save(on_disk)
    good = encode(asymmetric(), "JPEG")
    batch = pa.table(
        {
            "id": ["given", None, None, None, None, None, None, None, None],
            "image": [good, None, None, b"garbage", None, None, None, None, None],
            "image_uri": [
                None,
                str(on_disk),
                None,
                None,
                str(tmp_path / "missing.png"),
                "nosuch://x/y.png",
                None,
                None,
                "/etc/hostname",
            ],
            "text": ["a caption", None, "only text", None, None, None, "", " \t\n ", None],
            "source": [f"f.parquet#{i}" for i in range(9)],
        }
    )
    out = DecodeImages(image_size=SIZE, max_pixels=LIMIT, max_bytes=10**7, uri_prefixes=[str(tmp_path)])(batch)
    assert out.num_rows == batch.num_rows
    assert "image" not in out.column_names
    rows = out.to_pylist()
    assert [row["status"] for row in rows] == ["ok"] * 3 + ["failed"] * 6
    assert [row["error_code"] for row in rows[3:]] == [
        "image_decode_failed",
        "uri_not_found",
        "uri_not_allowed",
        "missing_content",
        "missing_content",
        "uri_not_allowed",
    ]
    assert rows[0]["id"] == "given"
    assert rows[1]["id"] == rows[1]["content_sha256"]
    assert len({row["id"] for row in rows}) == 9
    assert len(rows[0]["pixels"]) == SIZE * SIZE * 3
    assert rows[2]["pixels"] is None and rows[3]["pixels"] is None
    assert rows[4]["error_message"].endswith("does not exist")


def test_image_uri_is_refused_without_allowed_prefixes(tmp_path):
    on_disk = tmp_path / "good.png"
    asymmetric().save(on_disk)
    batch = pa.table({"image_uri": [str(on_disk)], "source": ["f.parquet#0"]})
    row = DecodeImages(image_size=SIZE, max_pixels=LIMIT, max_bytes=10**7)(batch).to_pylist()[0]
    assert (row["status"], row["error_code"], row["content_sha256"]) == ("failed", "uri_not_allowed", None)
