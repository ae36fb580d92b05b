"""PDQ hashes: the reference's bits in the canonical hex order, from the whole frame, one per ok image row."""

from __future__ import annotations

import io

import numpy as np
import pdqhash
import pyarrow as pa
import pytest
from PIL import Image

from clipline.operators.decode import DecodeImages, fit_square
from clipline.operators.hamming import DIHEDRAL, dihedral_words, hamming, hex_to_words, words_to_hex
from clipline.operators.pdq import MIN_QUALITY, PdqHash, hashable, pdq_of_frame, pdq_of_image
from tests.operators.images import encode

# Hash of `pinned_image()`, identical (distance 0) to ThreatExchange's pure-Python PDQ reference
# (pdq/python/pdqhashing) on the same pixels: it pins the C++ binding, the luma weights and the
# canonical hex bit order together.
PINNED = "9e34f6b17031838e81ce0c6b4e6961711bcf8b8e7c767e3693b1a0951c8eb696"


def pinned_image(width: int = 160, height: int = 120) -> Image.Image:
    """Deterministic test picture (no RNG): colour gradients, a sine texture, a disc and a bar."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    red, green = 255 * x / (width - 1), 255 * y / (height - 1)
    blue = 128 + 100 * np.sin(x / 9.0) * np.cos(y / 13.0)
    disc = (x - 0.35 * width) ** 2 + (y - 0.55 * height) ** 2 < (0.2 * height) ** 2
    bar = (np.abs(x - 0.75 * width) < 0.06 * width) & (y > 0.15 * height)
    pixels = np.stack([red, green, blue], axis=-1)
    pixels[disc] = (250, 240, 20)
    pixels[bar] = (20, 20, 30)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def jpeg_copy(image: Image.Image, quality: int) -> Image.Image:
    return Image.open(io.BytesIO(encode(image, "JPEG", quality=quality))).convert("RGB")


def test_pinned_hash_matches_the_reference() -> None:
    assert pdq_of_frame(pinned_image()) == (PINNED, 100)


def test_hash_is_64_lower_case_hex_digits() -> None:
    digest, _ = pdq_of_image(pinned_image(900, 700))
    assert len(digest) == 64 and digest == digest.lower()
    assert words_to_hex(hex_to_words([digest])) == [digest]


def test_grey_frame_hashes_like_rgb_with_equal_channels() -> None:
    grey = pinned_image().convert("L")
    assert pdq_of_frame(grey) == pdq_of_frame(grey.convert("RGB"))


def test_large_image_is_hashed_from_its_reduced_whole_frame() -> None:
    """The pipeline hashes the frame reduced to <= 500 px: close to the full-size hash, and fast."""
    big = pinned_image().resize((1600, 1200), Image.Resampling.BICUBIC)
    full = np.packbits(pdqhash.compute(np.asarray(big))[0].astype(np.uint8)).tobytes().hex()
    reduced, _ = pdq_of_image(big)
    assert reduced == pdq_of_frame(big.reduce(4))[0]
    assert hamming(full, reduced) <= 16
    assert hamming(reduced, PINNED) <= 31


def test_jpeg_copy_matches_and_an_unrelated_image_does_not() -> None:
    image = pinned_image()
    assert hamming(PINNED, pdq_of_image(jpeg_copy(image, 60))[0]) <= 16
    unrelated = Image.fromarray(np.roll(np.asarray(image)[::-1], 50, axis=1))
    assert hamming(PINNED, pdq_of_image(unrelated)[0]) > 64


def test_a_banner_is_hashed_from_a_frame_no_larger_than_500_px_a_side() -> None:
    """Decode keeps a banner's length (its short side stays >= 64 px); PDQ of 64 x 40,000 pixels
    would cost 100x a normal frame, so each side is reduced on its own (PDQ ignores aspect anyway)."""
    rng = np.random.default_rng(3)
    banner = Image.fromarray(rng.integers(0, 256, (64, 40_000, 3), dtype=np.uint8))
    assert hashable(banner).size == (500, 64)
    assert pdq_of_frame(banner) == pdq_of_frame(banner.reduce((80, 1)))
    ordinary = pinned_image(500, 375)
    assert hashable(ordinary) is ordinary


def test_featureless_and_tiny_images_have_low_quality() -> None:
    assert pdq_of_frame(Image.new("RGB", (100, 100), (90, 90, 90)))[1] < MIN_QUALITY
    assert pdq_of_frame(Image.new("RGB", (4, 4))) == ("0" * 64, 0)


# --------------------------------------------------------------------------- symmetries from the bits
@pytest.mark.parametrize("name", DIHEDRAL)
def test_bit_symmetries_track_the_references_pixel_symmetries(name: str) -> None:
    """`dihedral_words` derives the 8 variants from the hash alone; pdqhash derives them from the
    pixels' DCT. Same order, a few bits apart, and each is nearest to the transposed image's hash."""
    image = pinned_image()
    from_pixels = [
        np.packbits(v.astype(np.uint8)).tobytes().hex() for v in pdqhash.compute_dihedral(np.asarray(image))[0]
    ]
    from_bits = words_to_hex(dihedral_words(hex_to_words([PINNED]))[:, 0])
    k = DIHEDRAL.index(name)
    assert hamming(from_bits[k], from_pixels[k]) <= 16
    if name != "original":
        transposed, _ = pdq_of_frame(image.transpose(getattr(Image.Transpose, name.upper())))
        assert min(range(8), key=lambda i: hamming(from_bits[i], transposed)) == k
        assert hamming(from_bits[k], transposed) <= 31
        assert hamming(PINNED, transposed) > 64  # the plain hash alone never matches it


# --------------------------------------------------------------------------- in the decode stage
def test_decode_adds_a_hash_to_every_ok_image_row_only() -> None:
    wide = pinned_image(640, 300)
    batch = pa.table(
        {
            "image": [encode(wide, "PNG"), None, b"not an image", None],
            "text": [None, "a caption only", None, None],
        }
    )
    out = DecodeImages(224, 10**8, 10**8, extras=[PdqHash()])(batch)
    assert out.schema.field("pdq_hash").type == pa.string()
    assert out.schema.field("pdq_quality").type == pa.int32()
    assert out.column("status").to_pylist() == ["ok", "ok", "failed", "failed"]
    expected, quality = pdq_of_image(wide)
    assert out.column("pdq_hash").to_pylist() == [expected, None, None, None]
    assert out.column("pdq_quality").to_pylist() == [quality, None, None, None]
    crop = Image.fromarray(fit_square(wide, 224))  # what the model sees: a centre crop, not the picture
    assert hamming(expected, pdq_of_frame(crop)[0]) > 31
