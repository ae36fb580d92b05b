"""PDQ perceptual hashes of decoded images: `pdq_hash` (64 hex digits) and `pdq_quality` (0-100).

PDQ is Meta's open perceptual hash, the format trust-and-safety hash lists are shared in. It is
computed by `pdqhash`, Python bindings around Meta's reference C++ code (identical hashes to the
reference implementations on the same pixels). The hex form is the canonical one those references
and shared lists print, so a row's hash compares directly with a list entry (`hamming.py`).

What is hashed: the decoder's whole frame (`DecodedImage.frame`), never the model's centre crop.
PDQ reduces any input to 64 x 64 luma, so the input size barely changes the hash but dominates
the cost (~10 ns per pixel, 1.3-3x more when a row is a multiple of 256 px): the frame, box-reduced
to a long side of at most 500 px, costs 1-3 ms, and its hash is ~9 bits (p95 19) from the
full-size image's on real photos, well inside the usual match distance of 31. Hashing the 224 px
centre crop instead would put the hash ~95 bits away: a list entry would never match.

A banner keeps its length in the whole frame (decode never reduces the short side below 64 px), and
PDQ on a 64 x 400,000 frame takes ~10 s and ~590 MB. PDQ squashes every picture to 64 x 64 whatever
its aspect ratio, so each side is reduced on its own to at most 500 px first: any frame costs what
a 500 x 500 one does, and ordinary frames (long side already <= 500) are hashed as they are.

Quality below MIN_QUALITY means a flat or featureless image: PDQ hashes of such images are alike
whatever the content, so matching and dedup skip them. Images under 5 px a side hash to zeros
with quality 0.
"""

from __future__ import annotations

import math

import numpy as np
import pdqhash
import pyarrow as pa
from PIL import Image, ImageOps

from clipline.operators.resample import FRAME_MAX_SIDE, frame_factor, to_rgb

MIN_QUALITY = 50
PDQ_COLUMNS: dict[str, pa.DataType] = {"pdq_hash": pa.string(), "pdq_quality": pa.int32()}


def hashable(frame: Image.Image) -> Image.Image:
    """The frame with each side box-reduced on its own to at most FRAME_MAX_SIDE, in RGB."""
    factors = (math.ceil(frame.width / FRAME_MAX_SIDE), math.ceil(frame.height / FRAME_MAX_SIDE))
    if factors != (1, 1):
        frame = frame.reduce(factors)
    return frame if frame.mode == "RGB" else frame.convert("RGB")


def pdq_of_frame(frame: Image.Image) -> tuple[str, int]:
    """(hash as 64 hex digits, quality) of a decoded frame (see `hashable` for what is hashed)."""
    rgb = np.asarray(hashable(frame), dtype=np.uint8)
    bits, quality = pdqhash.compute(rgb)
    return np.packbits(bits.astype(np.uint8)).tobytes().hex(), int(quality)


def pdq_of_image(image: Image.Image) -> tuple[str, int]:
    """PDQ of any Pillow image exactly as the pipeline hashes it (EXIF orientation, RGB and the
    whole-frame reduction as decode does them): for hashing list images and queries outside a run."""
    rgb = to_rgb(ImageOps.exif_transpose(image))
    factor = frame_factor(*rgb.size)
    return pdq_of_frame(rgb.reduce(factor) if factor > 1 else rgb)


class PdqHash:
    """The decode stage's PDQ extra: `pdq_hash` and `pdq_quality` for every decoded image."""

    columns = PDQ_COLUMNS

    def __call__(self, frame: Image.Image) -> dict[str, object]:
        digest, quality = pdq_of_frame(frame)
        return {"pdq_hash": digest, "pdq_quality": quality}
