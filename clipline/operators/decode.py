"""Decode image bytes into model-ready uint8 pixels, one outcome per row, never an exception.

Runs in CPU tasks ahead of the encoder actors. The resize and centre crop reproduce open_clip's
eval transform (shortest side to the model size, bicubic, centre crop) so the encoder only has
to normalise; pixels travel as uint8 bytes, a quarter of float32's size in the object store.

An upload is written by a stranger, so decoding one row has a fixed memory ceiling whatever its
header says (`DecodeLimits`): before any pixel is decoded, an image is refused if it declares more
than `max_pixels`, a shape beyond `max_aspect` (`image_bad_aspect`), a format outside the
allowlist, or a layout whose decoder would hold more than `decode_budget` bytes (estimated from
the header per format). Large JPEGs are decoded at 1/2, 1/4 or 1/8 scale by libjpeg, large PNGs
in strips (`png_strips.py`), and everything after decoding runs strip by strip (`resample.py`),
so the ceiling is the budget plus a few strips.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import struct
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, UnidentifiedImageError

from clipline.operators.base import STATELESS, Resources, WorkerState
from clipline.operators.columns import column_or_nulls, is_blank, set_column
from clipline.operators.failures import RowFailure, redact_uri
from clipline.operators.png_strips import fit_png_in_strips, png_layout
from clipline.operators.resample import Plan, fit_and_frame, fit_square, orientation_of
from clipline.operators.uri_policy import UriPolicy, UriReader
from clipline.schemas.storage import StorageConfig
from clipline.schemas.table import ErrorCode, Status

# RowFailure, redact_uri and fit_square are re-exported: callers import them from the decode step.
__all__ = ["DecodeImages", "DecodeLimits", "DecodedImage", "FrameExtra", "RowFailure", "decode_frame", "decode_image"]
__all__ += ["default_id", "fit_square", "redact_uri", "set_extra_columns", "sha256_hex"]

MiB = 1024 * 1024
DEFAULT_MAX_PIXELS = 64_000_000
# Banners reach 8-11:1 and long screenshots ~18.5:1; beyond 20:1 the centre crop keeps under 5 %.
DEFAULT_MAX_ASPECT = 20.0
# Camera formats and the web's: no EPS (Ghostscript), PSD, ICO, ... whose decoders are not budgeted.
DEFAULT_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")  # JPEG covers MPO (camera multi-picture)
THUMBNAIL_PX = 160
EXIF_ORIENTATION = 0x0112
JPEG_END = b"\xff\xd9"


@dataclass(frozen=True)
class DecodeLimits:
    """What one row may cost. Peak memory stays under `decode_budget` plus ~40 MB of strips."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect: float = DEFAULT_MAX_ASPECT
    decode_budget: int = 192 * MiB
    # JPEGs whose full decode would exceed this are decoded smaller by libjpeg, never below
    # `draft_gap` x the model size on the short side (a 3x downscale still leaves bicubic its detail).
    draft_min_bytes: int = 64 * MiB
    draft_gap: float = 3.0
    png_stream_min_bytes: int = 32 * MiB
    max_jpeg_scans: int = 100  # each scan of a progressive JPEG is a pass over every coefficient
    formats: tuple[str, ...] | None = DEFAULT_FORMATS


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


def set_extra_columns(batch: pa.Table, extras: Sequence[FrameExtra], frames: Mapping[int, Image.Image]) -> pa.Table:
    """Each extra's columns, computed for the rows in `frames` (row index → whole frame).

    Other rows keep the values they have (null when the column is new): decode fills the rows it
    decoded, the encoder the rows whose JPEGs it decoded, and rows without an image stay null.
    """
    computed = {row: [extra(frame) for extra in extras] for row, frame in frames.items()}
    chosen = np.zeros(batch.num_rows, dtype=bool)
    chosen[list(computed)] = True
    for position, extra in enumerate(extras):
        for name, type_ in extra.columns.items():
            values = [None] * batch.num_rows
            for row, outputs in computed.items():
                values[row] = outputs[position].get(name)
            merged = pc.if_else(pa.array(chosen), pa.array(values, type_), column_or_nulls(batch, name, type_))
            batch = set_column(batch, name, merged)
    return batch


# ------------------------------------------------------------------------------------------ refusals


def check_shape(size: tuple[int, int], limits: DecodeLimits) -> None:
    """Declared pixels and aspect ratio, before anything is decoded."""
    width, height = size
    if width * height > limits.max_pixels:
        raise RowFailure(
            ErrorCode.IMAGE_TOO_LARGE,
            f"declared size {width}x{height} = {width * height} pixels exceeds the limit of {limits.max_pixels}",
        )
    if width < 1 or height < 1:
        raise RowFailure(ErrorCode.IMAGE_DECODE_FAILED, f"declared size {width}x{height} is empty")
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect:
        raise RowFailure(
            ErrorCode.IMAGE_BAD_ASPECT,
            f"{width}x{height}: aspect ratio {ratio:.1f}:1 exceeds the limit of {limits.max_aspect:g}:1",
        )


def open_checked(data: bytes, limits: DecodeLimits) -> Image.Image:
    """Open lazily (header only) and refuse by declared size, shape and format."""
    if not data:
        raise RowFailure(ErrorCode.IMAGE_DECODE_FAILED, "image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=limits.formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RowFailure(ErrorCode.IMAGE_TOO_LARGE, f"declared size too large: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise RowFailure(ErrorCode.IMAGE_DECODE_FAILED, "not a recognised image format") from exc
    except Exception as exc:  # a header cut short or corrupt fails inside open() already
        raise RowFailure(ErrorCode.IMAGE_DECODE_FAILED, f"{type(exc).__name__}: {exc}") from exc
    check_shape(image.size, limits)
    return image


# ------------------------------------------------------------------ decoder cost, from the header


def bytes_per_pixel(mode: str) -> int:
    """Bytes Pillow keeps per pixel for `mode` (RGB is stored as 4)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def jpeg_scan_count(data: bytes) -> int:
    """Start-of-scan markers in the main JPEG stream (more than one: libjpeg buffers all coefficients)."""
    pos, scans, size = 2, 0, len(data)
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            found = _MARKER.search(data, pos)
            if not found:
                break
            pos = found.start()
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # end of image
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if marker != 0xDA:
            pos += 2 + length
            continue
        scans += 1
        found = _MARKER.search(data, pos + 2 + length)
        if not found:
            break
        pos = found.start()
    return scans


def jpeg_coefficient_bytes(image: Image.Image) -> int:
    """libjpeg's whole-image coefficient buffer (int16 per coefficient) at the declared resolution."""
    layers = getattr(image, "layer", None) or []
    if not layers:
        return 0
    width, height = image.size
    hmax = max(layer[1] for layer in layers) or 1
    vmax = max(layer[2] for layer in layers) or 1
    blocks = sum(math.ceil(width / (8 * hmax)) * h * math.ceil(height / (8 * vmax)) * v for _, h, v, _ in layers)
    return blocks * 64 * 2


def _tiff_chunk_bytes(image: Image.Image) -> int:
    """libtiff reads one strip or tile at a time: its decoded size."""
    tags = getattr(image, "tag_v2", {})
    width, height = image.size
    samples = int(tags.get(277, 1) or 1)
    bits = tags.get(258, (8,))
    bits = int(bits[0] if isinstance(bits, tuple) else bits) or 8
    if 322 in tags and 323 in tags:
        return int(tags[322]) * int(tags[323]) * samples * bits // 8
    rows = int(tags.get(278, height) or height)
    return min(rows, height) * math.ceil(width * samples * bits / 8)


def decoder_bytes(image: Image.Image) -> int:
    """Bytes the decoder holds for this (possibly drafted) non-JPEG image, measured per format.

    Peak RSS of `load()` over the decoded frame, Pillow 13: PNG, GIF, TIFF in strips 1x (+ one
    strip); BMP RLE 3x (bytearray + bytes copy + image); WebP 4x (libwebp's canvas, the frame
    bytes, their copy, the image).
    """
    width, height = image.size
    frame = width * height * bytes_per_pixel(image.mode)
    if image.format == "WEBP":
        return 4 * width * height * 4
    if image.tile and image.tile[0][0] == "bmp_rle":
        return 3 * frame
    if image.format == "TIFF":
        return frame + _tiff_chunk_bytes(image)
    return frame


def prepare_jpeg(image: Image.Image, data: bytes, size: int, limits: DecodeLimits) -> int:
    """Refuse too many scans, draft a large JPEG down, and return the bytes its decode will hold.

    A progressive or multi-scan JPEG also holds the full-resolution coefficient buffer, drafted
    or not, which is why it is measured before the draft.
    """
    scans = jpeg_scan_count(data)
    if scans > limits.max_jpeg_scans:
        message = f"JPEG with {scans} scans, over the limit of {limits.max_jpeg_scans}"
        raise RowFailure(ErrorCode.IMAGE_TOO_LARGE, message)
    multi_scan = bool(image.info.get("progressive")) or scans > 1
    coefficients = jpeg_coefficient_bytes(image) if multi_scan else 0
    width, height = image.size
    if width * height * bytes_per_pixel(image.mode) > limits.draft_min_bytes:
        room = min(width, height) // math.ceil(limits.draft_gap * size)
        scale = next((s for s in (8, 4, 2) if room >= s), 1)
        if scale > 1:
            image.draft(None, (max(1, width // scale), max(1, height // scale)))
    return image.size[0] * image.size[1] * bytes_per_pixel(image.mode) + coefficients


def check_decoder_budget(image: Image.Image, data: bytes, size: int, limits: DecodeLimits) -> None:
    """Refuse an image whose decoder would hold more than the budget (a large JPEG is drafted first)."""
    jpeg = image.format in ("JPEG", "MPO")
    cost = prepare_jpeg(image, data, size, limits) if jpeg else decoder_bytes(image)
    if cost > limits.decode_budget:
        raise RowFailure(
            ErrorCode.IMAGE_TOO_LARGE,
            f"{image.format} {image.mode} {image.size[0]}x{image.size[1]} needs about {cost // MiB} MiB "
            f"to decode, over the budget of {limits.decode_budget // MiB} MiB",
        )


# ----------------------------------------------------------------------------------------- decode


def _png_in_strips(image: Image.Image, data: bytes, size: int, limits: DecodeLimits) -> DecodedImage | None:
    """Large PNGs decode strip by strip; None when this one is small or cannot be (Pillow decodes it).

    Strips run the resize's horizontal pass first; a shape Pillow resizes vertical first decodes
    whole while that fits the budget, so its pixels stay exactly the whole-image ones.
    """
    frame_bytes = image.size[0] * image.size[1] * bytes_per_pixel(image.mode)
    if image.format != "PNG" or frame_bytes <= limits.png_stream_min_bytes:
        return None
    if Plan.make(*image.size, size).vertical_first and frame_bytes <= limits.decode_budget:
        return None
    layout = png_layout(data)
    if layout is None or not layout.streamable() or (layout.width, layout.height) != image.size:
        return None
    fitted = fit_png_in_strips(layout, size)
    return DecodedImage(*fitted) if fitted is not None else None


def _decode(image: Image.Image, data: bytes, size: int, limits: DecodeLimits) -> DecodedImage:
    streamed = _png_in_strips(image, data, size, limits)
    if streamed is not None:
        return streamed
    check_decoder_budget(image, data, size, limits)
    planned = image.size
    image.load()
    if image.size != planned:  # a format that grows its canvas while loading
        check_shape(image.size, limits)
    return DecodedImage(*fit_and_frame(image, size, orientation_of(image)))


def decode_frame(data: bytes, size: int, max_pixels: int, limits: DecodeLimits | None = None) -> DecodedImage:
    """Bytes → the model's pixels and the whole frame, EXIF orientation applied; raises RowFailure."""
    limits = replace(limits or DecodeLimits(), max_pixels=max_pixels)
    image = open_checked(data, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _decode(image, data, size, limits)
    except RowFailure:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RowFailure(ErrorCode.IMAGE_TOO_LARGE, f"declared size too large: {exc}") from exc
    except MemoryError as exc:
        raise RowFailure(ErrorCode.IMAGE_TOO_LARGE, "out of memory while decoding") from exc
    except Exception as exc:  # Pillow raises many types for corrupt data; all mean the same here.
        raise RowFailure(ErrorCode.IMAGE_DECODE_FAILED, f"{type(exc).__name__}: {exc}") from exc


def jpeg_for_encoder(data: bytes, size: int, limits: DecodeLimits) -> bool:
    """Check the header as for any image (raises RowFailure), then say whether the encoder may decode it.

    Only JPEGs whose device decode reproduces this module's: RGB or greyscale, upright (torchvision
    applies EXIF orientation on the CPU only), and complete (ending in the end-of-image marker: a
    truncated file fails here, while a device decoder might fill the rest in grey). Those passed on
    are first refused as decoding them here would be (too many scans, a decoder over the budget), so
    a hostile JPEG gets the same error in both places and never reaches the device.
    """
    image = open_checked(data, limits)
    passes = (
        image.format == "JPEG"
        and image.mode in ("RGB", "L")
        and image.getexif().get(EXIF_ORIENTATION, 1) == 1
        and data.endswith(JPEG_END)
    )
    if passes:
        check_decoder_budget(image, data, size, limits)
    return passes


def decode_image(data: bytes, size: int, max_pixels: int, limits: DecodeLimits | None = None) -> np.ndarray:
    """Bytes → (size, size, 3) uint8, as the model sees them (query images, tests)."""
    return decode_frame(data, size, max_pixels, limits).pixels


def thumbnail_jpeg(data: bytes, limits: DecodeLimits, size: int = THUMBNAIL_PX) -> bytes:
    """A JPEG of the whole picture, at most `size` px a side, through the bounded decode (reports, review)."""
    image = decode_frame(data, size, limits.max_pixels, limits).frame
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------- operator


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

    `image_uri` values are read only under `uri_prefixes` (none by default), with the byte cap.
    `extras` add their columns from each decoded image's whole frame (nulls for rows without one).
    With `jpeg_to_encoder`, JPEGs the encoder can decode on its device (see `jpeg_for_encoder`)
    pass through as bytes in an added `jpeg` column, header-checked but not decoded; their extras'
    columns stay null here and the encoder fills them from the frame it makes on its device
    (`EncodeClip(extras=...)`, given the same extras).
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
        max_aspect: float = DEFAULT_MAX_ASPECT,
        uri_prefixes: Sequence[str] = (),
        jpeg_to_encoder: bool = False,
    ) -> None:
        self.image_size = image_size
        self.max_bytes = max_bytes
        self.limits = DecodeLimits(max_pixels=max_pixels, max_aspect=max_aspect)
        self.reader = UriReader(UriPolicy.from_prefixes(list(uri_prefixes)), max_bytes, storage)
        self.resources = resources
        self.extras = list(extras)
        self.jpeg_to_encoder = jpeg_to_encoder

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
        frames = {row: outcome[4] for row, outcome in enumerate(outcomes) if outcome[4] is not None}
        return set_extra_columns(batch, self.extras, frames)

    def _row(
        self, image: bytes | None, uri: str | None, text: str | None
    ) -> tuple[str | None, bytes | None, str | None, str | None, Image.Image | None, bytes | None]:
        """(content sha256, pixels, error code, error message, whole frame, JPEG for the encoder) for one row."""
        data = image
        try:
            if data is None and uri:
                data = self.reader.read(uri)
            if data is None:
                if is_blank(text):
                    raise RowFailure(ErrorCode.MISSING_CONTENT, "row has no image, no image_uri and no non-blank text")
                return sha256_hex(text.encode()), None, None, None, None, None
            digest = sha256_hex(data)
            if len(data) > self.max_bytes:
                raise RowFailure(ErrorCode.IMAGE_TOO_LARGE, f"image is {len(data)} bytes, over {self.max_bytes}")
            if self.jpeg_to_encoder and jpeg_for_encoder(data, self.image_size, self.limits):
                return digest, None, None, None, None, data
            decoded = decode_frame(data, self.image_size, self.limits.max_pixels, self.limits)
            return digest, decoded.pixels.tobytes(), None, None, decoded.frame, None
        except RowFailure as failure:
            digest = sha256_hex(data) if data else (sha256_hex(text.encode()) if text else None)
            return digest, None, failure.code.value, failure.message, None, None
