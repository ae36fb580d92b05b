"""Decode a large PNG in horizontal strips, so the full image never exists in memory.

A 7999x8000 RGBA PNG compresses to ~260 KB and decodes to 256 MB in one piece. Here its IDAT
stream is inflated a few rows at a time and each run of rows is handed to Pillow's own PNG
decoder as a small PNG of its own (the previous reconstructed row goes first, unfiltered, so the
filters that refer to the row above reconstruct exactly as they would inside the whole image).
The strips feed the same row-strip resampler and frame reducer as any other image.

Eligible: non-interlaced, not animated, 8-bit (any colour type) or 16-bit grey / grey+alpha,
stored upright or flipped (EXIF orientations 1-4; a 90° turn needs every stored row for one
output strip). Anything else decodes whole, within the decode budget, or is refused.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from clipline.operators.failures import RowFailure
from clipline.operators.resample import (
    GREY_MODES,
    SIXTEEN_BIT_MODES,
    FrameReducer,
    Plan,
    RowStrips,
    orientation_of,
    rows_per_strip,
    sixteen_bit_scale,
    strip_to_rgb,
)
from clipline.schemas.table import ErrorCode

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# (depth, colour type) → colour type of the 8-bit stand-in with the same bytes per pixel
STREAMABLE = {(8, 0): 0, (8, 2): 2, (8, 3): 3, (8, 4): 4, (8, 6): 6, (16, 0): 4, (16, 4): 6}
DECODE_CHUNKS = (b"PLTE", b"tRNS")
KEPT_CHUNKS = (b"PLTE", b"tRNS", b"eXIf", b"tEXt", b"zTXt", b"iTXt")  # what decides mode, palette, orientation
ANIMATION_CHUNKS = (b"acTL", b"fcTL", b"fdAT")
STREAMED_ORIENTATIONS = (1, 2, 3, 4)


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


@dataclass
class PngLayout:
    """What the chunk walk learned: header fields, the ancillary chunks kept, the IDAT pieces."""

    width: int
    height: int
    depth: int
    colour: int
    interlace: int
    chunks_before: list[tuple[bytes, bytes]]
    chunks_after: list[tuple[bytes, bytes]]
    idat: list[memoryview]
    animated: bool

    @property
    def stride(self) -> int:
        """Bytes per filtered row: the filter byte and the packed samples."""
        return 1 + (self.width * CHANNELS[self.colour] * self.depth + 7) // 8

    def streamable(self) -> bool:
        return not self.animated and not self.interlace and (self.depth, self.colour) in STREAMABLE


def png_layout(data: bytes) -> PngLayout | None:
    """Walk the chunks; None when this is not a well-formed single-image PNG (Pillow decides then)."""
    if not data.startswith(SIGNATURE):
        return None
    view, pos = memoryview(data), len(SIGNATURE)
    header, before, after, idat = None, [], [], []
    animated, state = False, "before"
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        body_start, body_end = pos + 8, pos + 8 + length
        if body_end + 4 > len(data):
            return None
        pos = body_end + 4
        if kind == b"IHDR" and length == 13:
            header = struct.unpack_from(">IIBBBBB", data, body_start)
        elif kind == b"IDAT":
            if state == "after":
                return None  # IDAT chunks must be consecutive
            state = "in"
            idat.append(view[body_start:body_end])
        elif kind == b"IEND":
            break
        else:
            animated = animated or kind in ANIMATION_CHUNKS
            state = "after" if state == "in" else state
            if kind in KEPT_CHUNKS:
                (before if state == "before" else after).append((kind, bytes(view[body_start:body_end])))
    if header is None or not idat or header[3] not in CHANNELS:
        return None
    width, height, depth, colour, _, _, interlace = header
    return PngLayout(width, height, depth, colour, interlace, before, after, idat, animated)


def filtered_rows(layout: PngLayout, rows_per_step: int) -> Iterator[tuple[int, bytes]]:
    """(first row, filtered rows) of a non-interlaced PNG, `rows_per_step` rows at a time."""
    stride, height = layout.stride, layout.height
    inflater, pending, row = zlib.decompressobj(), bytearray(), 0
    for piece in layout.idat:
        data: bytes | memoryview = piece
        while data and row < height:
            want = min(height - row, rows_per_step) * stride - len(pending)
            pending += inflater.decompress(data, max(want, 1))
            data = inflater.unconsumed_tail
            while row < height and len(pending) >= min(height - row, rows_per_step) * stride:
                count = min(height - row, rows_per_step)
                yield row, bytes(pending[: count * stride])
                del pending[: count * stride]
                row += count
        if row >= height:
            return
    pending += inflater.flush()
    while row < height and len(pending) >= stride:
        count = min(height - row, rows_per_step, len(pending) // stride)
        yield row, bytes(pending[: count * stride])
        del pending[: count * stride]
        row += count
    if row < height:
        raise RowFailure(ErrorCode.IMAGE_DECODE_FAILED, f"OSError: image file is truncated ({row} of {height} rows)")


def header_image(layout: PngLayout) -> Image.Image:
    """A 1x1 PNG with the same ancillary chunks: Pillow's view of mode, palette, EXIF and XMP."""
    bytes_per_pixel = max(1, CHANNELS[layout.colour] * layout.depth // 8)
    header = struct.pack(">IIBBBBB", 1, 1, layout.depth, layout.colour, 0, 0, 0)
    parts = [SIGNATURE, chunk(b"IHDR", header)]
    parts += [chunk(kind, body) for kind, body in layout.chunks_before]
    parts.append(chunk(b"IDAT", zlib.compress(b"\x00" * (1 + bytes_per_pixel))))
    parts += [chunk(kind, body) for kind, body in layout.chunks_after]
    parts.append(chunk(b"IEND", b""))
    image = Image.open(io.BytesIO(b"".join(parts)), formats=("PNG",))
    image.load()
    return image


def stored_zlib(payload: list[bytes]) -> tuple[list[bytes | memoryview], int]:
    """A zlib stream of stored (uncompressed) deflate blocks around `payload`: pieces, total length.

    Twice as fast as zlib.compress(level=0), and nothing is copied until the final join.
    """
    pieces: list[bytes | memoryview] = [b"\x78\x01"]
    adler, total, sent = 1, sum(len(part) for part in payload), 0
    for part in payload:
        adler = zlib.adler32(part, adler)
        view = memoryview(part)
        for start in range(0, len(view), 65535):
            block = view[start : start + 65535]
            sent += len(block)
            pieces.append(struct.pack("<BHH", 1 if sent == total else 0, len(block), 0xFFFF ^ len(block)))
            pieces.append(block)
    if total == 0:
        pieces.append(b"\x01\x00\x00\xff\xff")
    pieces.append(struct.pack(">I", adler & 0xFFFFFFFF))
    return pieces, sum(len(piece) for piece in pieces)


class StripDecoder:
    """Decodes runs of filtered rows with Pillow's PNG decoder, carrying the previous row along.

    Each run becomes IHDR(width, rows + 1), PLTE/tRNS, and one IDAT of stored deflate blocks
    holding [the previous reconstructed row, filter 0] + [the run's filtered rows]. 16-bit grey
    and grey+alpha are decoded as 8-bit grey+alpha and RGBA (same bytes per pixel) and rebuilt.
    """

    def __init__(self, layout: PngLayout) -> None:
        self.layout = layout
        self.stand_in = STREAMABLE[(layout.depth, layout.colour)]
        self.sixteen = layout.depth == 16
        palette = [chunk(kind, body) for kind, body in layout.chunks_before if kind in DECODE_CHUNKS]
        self.chunks = b"" if self.sixteen else b"".join(palette)
        self.previous: bytes | None = None

    def decode(self, filtered: bytes, count: int) -> Image.Image:
        """The `count` rows of this run, as Pillow would have decoded them inside the whole image."""
        layout = self.layout
        first = 0 if self.previous is None else 1
        payload = [filtered] if self.previous is None else [b"\x00" + self.previous, filtered]
        rows = count + first
        pieces, length = stored_zlib(payload)
        crc = zlib.crc32(b"IDAT")
        for piece in pieces:
            crc = zlib.crc32(piece, crc)
        header = struct.pack(">IIBBBBB", layout.width, rows, 8, self.stand_in, 0, 0, 0)
        idat = [struct.pack(">I", length), b"IDAT", *pieces, struct.pack(">I", crc & 0xFFFFFFFF)]
        png = b"".join([SIGNATURE, chunk(b"IHDR", header), self.chunks, *idat, chunk(b"IEND", b"")])
        strip = Image.open(io.BytesIO(png), formats=("PNG",))
        strip.load()
        self.previous = strip.crop((0, rows - 1, layout.width, rows)).tobytes()
        if not self.sixteen:
            return strip.crop((0, first, layout.width, rows)) if first else strip
        planes = np.asarray(strip)[first:]  # (rows, width, 2 or 4) uint8: big-endian byte pairs
        if layout.colour == 0:  # 16-bit grey → Pillow "I;16"
            values = planes[..., 0].astype(np.uint16) << 8
            values |= planes[..., 1]
            return Image.fromarray(values)
        grey, alpha = planes[..., 0], planes[..., 2]  # 16-bit grey+alpha → "RGBA" from the high bytes
        return Image.fromarray(np.stack([grey, grey, grey, alpha], axis=-1))


def fit_png_in_strips(layout: PngLayout, size: int) -> tuple[np.ndarray, Image.Image] | None:
    """(model pixels, whole RGB frame) decoded strip by strip; None when the orientation turns it."""
    header = header_image(layout)
    orientation = orientation_of(header)
    if orientation not in STREAMED_ORIENTATIONS:
        return None
    width, height = layout.width, layout.height
    plan = Plan.make(width, height, size, allow_vertical_first=False)
    sixteen, grey = header.mode in SIXTEEN_BIT_MODES, header.mode in GREY_MODES
    mode = "L" if grey else "RGB"
    # 16-bit values are scaled by 257 only if one exceeds 255, known at the end: keep both.
    outputs = {scale: (RowStrips(plan, mode), FrameReducer(width, height, mode)) for scale in (1, 257)[: 1 + sixteen]}
    flip_x, flip_y = orientation in (2, 3), orientation in (3, 4)
    decoder, maximum = StripDecoder(layout), 0
    for row, filtered in filtered_rows(layout, rows_per_strip(plan)):
        count = len(filtered) // layout.stride
        strip = decoder.decode(filtered, count)
        if sixteen:
            maximum = max(maximum, int(np.asarray(strip).max(initial=0)))
        if flip_y:
            strip = strip.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        if flip_x:
            strip = strip.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        top = height - (row + count) if flip_y else row
        for scale, (rows, frame) in outputs.items():
            converted = strip_to_rgb(strip, scale, grey)
            rows.add(converted, top)
            frame.add(converted, top)
    rows, frame = outputs[sixteen_bit_scale(maximum) if sixteen else 1]
    return rows.finish(), frame.result()
