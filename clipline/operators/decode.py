"""Decode image bytes into model-ready uint8 pixels, one outcome per row, never an exception.

Runs in CPU tasks ahead of the encoder actors. The resize and centre crop reproduce open_clip's
eval transform (shortest side to the model size, bicubic, centre crop) so the encoder only has
to normalise; pixels travel as uint8 bytes, a quarter of float32's size in the object store.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import fsspec
import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps, UnidentifiedImageError

from clipline.operators.base import STATELESS, Resources, WorkerState
from clipline.operators.columns import column_or_nulls, set_column
from clipline.schemas.storage import StorageConfig
from clipline.schemas.table import ErrorCode, Status

SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
# The whole-frame copy per-image extras work from (thumbnails, perceptual hashes): long side at
# most this, by an integer box reduction. 500 rather than 512: hashing a row width that is a
# multiple of 256 px runs 1.3-3x slower (cache aliasing), measured with PDQ.
FRAME_MAX_SIDE = 500
FRAME_MIN_SIDE = 64
EXIF_ORIENTATION = 0x0112
JPEG_END = b"\xff\xd9"
WHITE = (255, 255, 255)
_USERINFO = re.compile(r"//[^/@]+@")


class RowFailure(Exception):
    """A per-row failure with the error code that lands in the table."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def redact_uri(uri: str) -> str:
    """Drop `user:password@` from a URI before it reaches an error message or a log."""
    return _USERINFO.sub("//", uri)


def to_rgb(image: Image.Image) -> Image.Image:
    """Make any Pillow mode RGB the way a viewer would show it.

    Transparency is composited on white (dropping alpha would turn transparent areas black),
    16-bit greyscale is scaled rather than clipped, and CMYK/1-bit/palette go through Pillow.
    """
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
    """torchvision `Resize(size)` (bicubic, shortest side) then `CenterCrop(size)`, as uint8 HWC."""
    width, height = image.size
    short, long = sorted((width, height))
    scaled_long = int(size * long / short)
    new_size = (size, scaled_long) if width <= height else (scaled_long, size)
    resized = image.resize(new_size, Image.Resampling.BICUBIC)
    left = round((new_size[0] - size) / 2.0)
    top = round((new_size[1] - size) / 2.0)
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Open lazily and check the declared size before any pixel is decoded (bomb guard)."""
    if not data:
        raise RowFailure(ErrorCode.IMAGE_DECODE_FAILED, "image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RowFailure(ErrorCode.IMAGE_TOO_LARGE, f"declared size too large: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise RowFailure(ErrorCode.IMAGE_DECODE_FAILED, "not a recognised image format") from exc
    except Exception as exc:  # a header cut short or corrupt fails inside open() already
        raise RowFailure(ErrorCode.IMAGE_DECODE_FAILED, f"{type(exc).__name__}: {exc}") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise RowFailure(
            ErrorCode.IMAGE_TOO_LARGE,
            f"declared size {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}",
        )
    return image


@dataclass(frozen=True)
class DecodedImage:
    """One decoded image: the model's input, and a small copy of the whole frame for per-image extras."""

    pixels: np.ndarray  # (size, size, 3) uint8: shortest side resized to the model size, centre-cropped
    frame: Image.Image  # RGB, the whole picture (not the crop), long side <= FRAME_MAX_SIDE


class FrameExtra(Protocol):
    """Something computed per image from its whole decoded frame: a thumbnail, a perceptual hash.

    `columns` names the columns it adds and their types; rows without an image get nulls there.
    """

    columns: dict[str, pa.DataType]

    def __call__(self, frame: Image.Image) -> dict[str, object]: ...


def whole_frame(rgb: Image.Image) -> Image.Image:
    """The frame reduced by a whole factor so its long side is at most FRAME_MAX_SIDE (box filter)."""
    factor = math.ceil(max(rgb.size) / FRAME_MAX_SIDE)
    factor = min(factor, max(1, min(rgb.size) // FRAME_MIN_SIDE))
    return rgb.reduce(factor) if factor > 1 else rgb


def decode_frame(data: bytes, size: int, max_pixels: int) -> DecodedImage:
    """Bytes → the model's pixels and the whole frame, EXIF orientation applied; raises RowFailure."""
    image = _open_checked(data, max_pixels)
    try:
        image.load()
        rgb = to_rgb(ImageOps.exif_transpose(image))
        return DecodedImage(pixels=fit_square(rgb, size), frame=whole_frame(rgb))
    except RowFailure:
        raise
    except Exception as exc:  # Pillow raises many types for corrupt data; all mean the same here.
        raise RowFailure(ErrorCode.IMAGE_DECODE_FAILED, f"{type(exc).__name__}: {exc}") from exc


def jpeg_for_encoder(data: bytes, max_pixels: int) -> bool:
    """Check the header as for any image (raises RowFailure), then say whether the encoder may decode it.

    Only JPEGs whose device decode reproduces this module's: RGB or greyscale, upright (torchvision
    applies EXIF orientation on the CPU only), and complete (ending in the end-of-image marker: a
    truncated file fails here, while a device decoder might fill the rest in grey).
    """
    image = _open_checked(data, max_pixels)
    return (
        image.format == "JPEG"
        and image.mode in ("RGB", "L")
        and image.getexif().get(EXIF_ORIENTATION, 1) == 1
        and data.endswith(JPEG_END)
    )


def decode_image(data: bytes, size: int, max_pixels: int) -> np.ndarray:
    """Bytes → (size, size, 3) uint8, as the model sees them (query images, tests)."""
    return decode_frame(data, size, max_pixels).pixels


def fetch_bytes(uri: str, max_bytes: int, storage: StorageConfig) -> bytes:
    """Read an `image_uri` object (local path or any fsspec URL), size-checked first."""
    shown = redact_uri(uri)
    try:
        fs, path = fsspec.core.url_to_fs(uri, **storage.fsspec_options(uri))
        size = fs.size(path)
        if size is not None and size > max_bytes:
            raise RowFailure(ErrorCode.IMAGE_TOO_LARGE, f"{shown} is {size} bytes, over {max_bytes}")
        return fs.cat_file(path)
    except RowFailure:
        raise
    except FileNotFoundError as exc:
        raise RowFailure(ErrorCode.URI_NOT_FOUND, f"{shown} does not exist") from exc
    except Exception as exc:  # unknown scheme, permissions, network: the row fails, the batch goes on
        raise RowFailure(ErrorCode.URI_UNREADABLE, f"cannot read {shown}: {type(exc).__name__}") from exc


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def default_id(given: str | None, content_sha256: str | None, source: str | None) -> str:
    """The input id if any, else the content hash (DESIGN §3), else a hash of where the row came from.

    The last case covers rows with no content at all: they still need a stable id to land as
    `failed` rows, and `file#row` is stable across reruns of the same file.
    """
    return given or content_sha256 or sha256_hex(f"source:{source}".encode())


class DecodeImages:
    """Input rows in; `id`, `content_sha256`, `pixels`, `status`, `error_*` out; `image` dropped.

    `extras` add their columns from each decoded image's whole frame (nulls for rows without one).
    With `jpeg_to_encoder`, JPEGs the encoder can decode on its device (see `jpeg_for_encoder`)
    pass through as bytes in an added `jpeg` column, header-checked but not decoded; extras need
    the frame, so with extras every image is decoded here.
    """

    name = "decode"

    def __init__(
        self,
        image_size: int,
        max_pixels: int,
        max_bytes: int,
        storage: StorageConfig | None = None,
        resources: Resources = STATELESS,
        extras: Sequence[FrameExtra] = (),
        jpeg_to_encoder: bool = False,
    ) -> None:
        self.image_size = image_size
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.storage = storage or StorageConfig()
        self.resources = resources
        self.extras = list(extras)
        self.jpeg_to_encoder = jpeg_to_encoder and not self.extras

    def setup(self, state: WorkerState) -> None:
        """Nothing to load: decoding is stateless."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        images = column_or_nulls(batch, "image", pa.binary()).to_pylist()
        uris = column_or_nulls(batch, "image_uri", pa.string()).to_pylist()
        texts = column_or_nulls(batch, "text", pa.string()).to_pylist()
        given_ids = column_or_nulls(batch, "id", pa.string()).to_pylist()
        sources = column_or_nulls(batch, "source", pa.string()).to_pylist()
        outcomes = [self._row(*row) for row in zip(images, uris, texts, strict=True)]
        pixel_width = self.image_size * self.image_size * 3
        columns = {
            "id": [
                default_id(given, outcome[0], source)
                for given, outcome, source in zip(given_ids, outcomes, sources, strict=True)
            ],
            "content_sha256": [outcome[0] for outcome in outcomes],
            "pixels": pa.array([outcome[1] for outcome in outcomes], pa.binary(pixel_width)),
            "status": [Status.FAILED if outcome[2] else Status.OK for outcome in outcomes],
            "error_code": [outcome[2] for outcome in outcomes],
            "error_message": [outcome[3] for outcome in outcomes],
        }
        if self.jpeg_to_encoder:
            columns["jpeg"] = pa.array([outcome[5] for outcome in outcomes], pa.binary())
        if "image" in batch.column_names:
            batch = batch.drop_columns(["image"])
        for name, values in columns.items():
            batch = set_column(batch, name, pa.array(values, pa.string()) if isinstance(values, list) else values)
        frames = [outcome[4] for outcome in outcomes]
        for extra in self.extras:
            values = [extra(frame) if frame is not None else {} for frame in frames]
            for name, type_ in extra.columns.items():
                batch = set_column(batch, name, pa.array([value.get(name) for value in values], type_))
        return batch

    def _row(
        self, image: bytes | None, uri: str | None, text: str | None
    ) -> tuple[str | None, bytes | None, str | None, str | None, Image.Image | None, bytes | None]:
        """(content sha256, pixels, error code, error message, whole frame, JPEG for the encoder) for one row."""
        data = image
        try:
            if data is None and uri:
                data = fetch_bytes(uri, self.max_bytes, self.storage)
            if data is None:
                if not text:
                    raise RowFailure(ErrorCode.MISSING_CONTENT, "row has no image, no image_uri and no text")
                return sha256_hex(text.encode()), None, None, None, None, None
            digest = sha256_hex(data)
            if len(data) > self.max_bytes:
                raise RowFailure(ErrorCode.IMAGE_TOO_LARGE, f"image is {len(data)} bytes, over {self.max_bytes}")
            if self.jpeg_to_encoder and jpeg_for_encoder(data, self.max_pixels):
                return digest, None, None, None, None, data
            decoded = decode_frame(data, self.image_size, self.max_pixels)
            return digest, decoded.pixels.tobytes(), None, None, decoded.frame, None
        except RowFailure as failure:
            digest = sha256_hex(data) if data else (sha256_hex(text.encode()) if text else None)
            return digest, None, failure.code.value, failure.message, None, None
