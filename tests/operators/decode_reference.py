"""The whole-image decode as it was before decoding was bounded, frozen here as the reference.

The bounded decode must give ordinary images the same bytes as this: the pixels open_clip's eval
transform sees and the whole frame the per-image extras see. Not used by the product.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageOps

SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
FRAME_MAX_SIDE = 500
FRAME_MIN_SIDE = 64
WHITE = (255, 255, 255)


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        scale = 257.0 if values.max(initial=0) > 255 else 1.0
        image = Image.fromarray(np.clip(values / scale, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def fit_square(image: Image.Image, size: int) -> np.ndarray:
    width, height = image.size
    short, long = sorted((width, height))
    scaled_long = int(size * long / short)
    new_size = (size, scaled_long) if width <= height else (scaled_long, size)
    resized = image.resize(new_size, Image.Resampling.BICUBIC)
    left = round((new_size[0] - size) / 2.0)
    top = round((new_size[1] - size) / 2.0)
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)


def whole_frame(rgb: Image.Image) -> Image.Image:
    factor = math.ceil(max(rgb.size) / FRAME_MAX_SIDE)
    factor = min(factor, max(1, min(rgb.size) // FRAME_MIN_SIDE))
    return rgb.reduce(factor) if factor > 1 else rgb


def reference_frame(data: bytes, size: int) -> tuple[np.ndarray, Image.Image]:
    """(pixels, frame) exactly as the whole-image decode computed them."""
    image = Image.open(io.BytesIO(data))
    image.load()
    rgb = to_rgb(ImageOps.exif_transpose(image))
    return fit_square(rgb, size), whole_frame(rgb)


def reference_horizontal_first(data: bytes, size: int) -> np.ndarray:
    """The reference pixels with the resize's horizontal pass forced first (how strips must run)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    rgb = to_rgb(ImageOps.exif_transpose(image))
    width, height = rgb.size
    short, long = sorted((width, height))
    scaled_long = int(size * long / short)
    scaled_w, scaled_h = (size, scaled_long) if width <= height else (scaled_long, size)
    wide = rgb.resize((scaled_w, height), Image.Resampling.BICUBIC)
    full = wide.resize((scaled_w, scaled_h), Image.Resampling.BICUBIC)
    left, top = round((scaled_w - size) / 2.0), round((scaled_h - size) / 2.0)
    return np.asarray(full.crop((left, top, left + size, top + size)))
