"""open_clip's eval transform and the whole-frame copy, computed strip by strip in bounded memory.

The output is what the old whole-image code gave — `Resize(size)` (bicubic, shortest side) then
`CenterCrop(size)` of the image made RGB the way a viewer shows it, and the frame reduced by a
whole factor to a long side of at most FRAME_MAX_SIDE — but no step holds more than a strip of
the image besides the decoded image itself:

* Pillow's resize is two separable passes rounded to uint8 in between, and each output line of
  the first pass depends only on its own source line. So running the first pass strip by strip
  and keeping only the columns (or rows) the centre crop reads is bit-identical to resizing the
  whole image, as long as the passes run in the order the installed Pillow runs them (Pillow 13
  goes vertical first when the height shrinks more than twice as much as the width; probed at
  import). An extreme shape no longer inflates: a 30000x1 image used to be scaled to 6.7 M x 224.
* Colour conversion happens per strip: 16-bit values are scaled with integer maths (no float64
  copy of the image), transparency is composited on white, grey sources stay one band until the
  end (each band is resampled alone, so L-then-RGB equals RGB-then-resample).
* The frame's box reduction is local to each factor x factor block, so reducing strips and
  pasting the results equals reducing the whole image; strips may arrive in any order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image

# The whole-frame copy per-image extras work from (thumbnails, perceptual hashes): long side at
# most this, by an integer box reduction. 500 rather than 512: hashing a row width that is a
# multiple of 256 px runs 1.3-3x slower (cache aliasing), measured with PDQ.
FRAME_MAX_SIDE = 500
FRAME_MIN_SIDE = 64
STRIP_BYTES = 4 * 1024 * 1024
EXACT_MAX_RATIO = 64  # resized long side up to 64 x size: reproduce the whole-image resize bit for bit
BICUBIC = Image.Resampling.BICUBIC
BICUBIC_SUPPORT = 2.0
WHITE = (255, 255, 255)
SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
GREY_MODES = {"1", "L", "F"} | SIXTEEN_BIT_MODES
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
ORIENTATION_TAG = ExifTags.Base.Orientation
TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SWAPS_AXES = {5, 6, 7, 8}


def _detect_vertical_first() -> bool:
    """Does the installed Pillow run the vertical pass first when the height shrinks much more?

    Pillow 13 does (`(in_h - out_h) > 2 * (in_w - out_w)`, Resample.c); earlier versions always
    ran the horizontal pass first. The two orders round differently, so reproducing a whole-image
    resize bit for bit means following the installed Pillow. Probed once on a 20x100 image.
    """
    rng = np.random.default_rng(7)
    probe = Image.fromarray(rng.integers(0, 256, (100, 20, 3), dtype=np.uint8))
    one = np.asarray(probe.resize((10, 10), BICUBIC))
    vertical = np.asarray(probe.resize((20, 10), BICUBIC).resize((10, 10), BICUBIC))
    horizontal = np.asarray(probe.resize((10, 100), BICUBIC).resize((10, 10), BICUBIC))
    return bool(np.array_equal(one, vertical) and not np.array_equal(one, horizontal))


PILLOW_VERTICAL_FIRST = _detect_vertical_first()


def pillow_runs_vertical_first(in_size: tuple[int, int], out_size: tuple[int, int]) -> bool:
    if not PILLOW_VERTICAL_FIRST:
        return False
    shrink_x, shrink_y = in_size[0] - out_size[0], in_size[1] - out_size[1]
    needs_both = in_size[0] != out_size[0] and in_size[1] != out_size[1]
    return needs_both and shrink_y > 0 and shrink_y > 2 * shrink_x


def _support(box: tuple[float, float], scale: float, limit: int) -> tuple[int, int]:
    """Source pixels a bicubic resample of `box` reads (Pillow: support x max(scale, 1)), padded by 2."""
    reach = BICUBIC_SUPPORT * max(scale, 1.0)
    return max(0, math.floor(box[0] - reach) - 2), min(limit, math.ceil(box[1] + reach) + 2)


@dataclass(frozen=True)
class Plan:
    """Where the output square comes from in the (oriented) image of `width` x `height`.

    The whole-image transform resized to (scaled_w, scaled_h) and cropped at (left, top). Exact
    mode (resized long side up to EXACT_MAX_RATIO x size) repeats those two passes on only the
    lines the crop reads, in the installed Pillow's order. Beyond that (shapes only reachable with
    a raised `max_image_aspect`) the crop box is resampled directly in source coordinates: the same
    maths up to Pillow's float32 box arithmetic.
    """

    width: int
    height: int
    size: int
    scaled_w: int
    scaled_h: int
    left: int
    top: int
    exact: bool
    vertical_first: bool
    cols: tuple[int, int]  # source columns the output reads (bicubic support, padded)
    rows: tuple[int, int]  # source rows the output reads
    box_x: tuple[float, float]  # source x range of the output square
    box_y: tuple[float, float]

    @classmethod
    def make(cls, width: int, height: int, size: int, allow_vertical_first: bool = True) -> Plan:
        """`allow_vertical_first=False` for images that only arrive in row strips (PNG in strips)."""
        short, long = sorted((width, height))
        scaled_long = int(size * long / short)
        scaled_w, scaled_h = (size, scaled_long) if width <= height else (scaled_long, size)
        left, top = round((scaled_w - size) / 2.0), round((scaled_h - size) / 2.0)
        scale_x, scale_y = width / scaled_w, height / scaled_h
        box_x = (left * scale_x, (left + size) * scale_x)
        box_y = (top * scale_y, (top + size) * scale_y)
        exact = max(scaled_w, scaled_h) <= EXACT_MAX_RATIO * size
        vertical_first = (
            allow_vertical_first and exact and pillow_runs_vertical_first((width, height), (scaled_w, scaled_h))
        )
        cols, rows = _support(box_x, scale_x, width), _support(box_y, scale_y, height)
        if exact and not vertical_first:  # both passes over whole lines, as on the whole image
            cols, rows = (0, width), (0, height)
        return cls(width, height, size, scaled_w, scaled_h, left, top, exact, vertical_first, cols, rows, box_x, box_y)


def sixteen_bit_scale(maximum: int) -> int:
    """Values are 16-bit if any exceeds 255, then divided by 257; else they already are 8-bit."""
    return 257 if maximum > 255 else 1


def strip_to_rgb(image: Image.Image, scale: int = 1, grey: bool = False) -> Image.Image:
    """Make a strip RGB the way a viewer shows it (or "L" for a grey source, when `grey`).

    16-bit values are divided by `scale` (decided on the whole image) with integer maths, which
    truncates exactly like `(values / 257).astype(uint8)`; signed 32-bit "I" clips negatives to 0.
    Transparency is composited on white (dropping alpha would turn transparent areas black);
    CMYK, 1-bit and palettes go through Pillow.
    """
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        if values.dtype.kind == "u":  # uint16 of either byte order: // 257 is at most 255
            out = (values // scale if scale > 1 else np.minimum(values, 255)).astype(np.uint8)
        else:  # "I" (int32)
            clipped = np.clip(values, 0, None)
            out = np.minimum(clipped // scale if scale > 1 else clipped, 255).astype(np.uint8)
        image = Image.fromarray(out)
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
    if grey:
        return image if image.mode == "L" else image.convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def whole_image_scale(image: Image.Image) -> int:
    """The 16-bit divisor of a loaded image, from its maximum (read in strips where Pillow cannot)."""
    if image.mode not in SIXTEEN_BIT_MODES:
        return 1
    try:
        maximum = image.getextrema()[1]
    except ValueError:  # Pillow has no getextrema for I;16B/I;16N
        step = max(1, STRIP_BYTES // (2 * image.width))
        maximum = max(
            int(np.asarray(image.crop((0, row, image.width, min(image.height, row + step)))).max(initial=0))
            for row in range(0, image.height, step)
        )
    return sixteen_bit_scale(max(0, int(maximum)))


def to_rgb(image: Image.Image) -> Image.Image:
    """A whole (small) image made RGB: `strip_to_rgb` with the image's own 16-bit scale."""
    return strip_to_rgb(image, whole_image_scale(image))


def frame_factor(width: int, height: int) -> int:
    """The whole-frame reduction: long side to FRAME_MAX_SIDE, never the short side below FRAME_MIN_SIDE."""
    factor = math.ceil(max(width, height) / FRAME_MAX_SIDE)
    return max(1, min(factor, max(1, min(width, height) // FRAME_MIN_SIDE)))


class FrameReducer:
    """The whole frame, box-reduced from oriented full-width row strips arriving in any order."""

    def __init__(self, width: int, height: int, mode: str) -> None:
        self.factor = frame_factor(width, height)
        self.height = height
        self.frame = Image.new(mode, (math.ceil(width / self.factor), math.ceil(height / self.factor)))
        self.partial: dict[int, list[tuple[int, Image.Image]]] = {}

    def add(self, strip: Image.Image, top: int) -> None:
        """`strip` holds oriented rows [top, top + strip.height), every column."""
        factor, bottom = self.factor, top + strip.height
        first_full = math.ceil(top / factor)
        end_full = self.height if bottom == self.height else bottom - bottom % factor
        if first_full * factor < end_full:
            rows = strip.crop((0, first_full * factor - top, strip.width, end_full - top))
            self.frame.paste(rows.reduce(factor) if factor > 1 else rows, (0, first_full))
        head_end = min(first_full * factor, bottom)
        for start, end in ((top, head_end), (max(end_full, head_end), bottom)):
            if start < end:
                self._add_partial(strip.crop((0, start - top, strip.width, end - top)), start)

    def _add_partial(self, rows: Image.Image, start: int) -> None:
        """Keep part of a block until the block is complete, then reduce it."""
        factor = self.factor
        block = start // factor
        pieces = self.partial.setdefault(block, [])
        pieces.append((start - block * factor, rows))
        block_height = min(factor, self.height - block * factor)
        if sum(piece.height for _, piece in pieces) < block_height:
            return
        whole = Image.new(rows.mode, (rows.width, block_height))
        for offset, piece in self.partial.pop(block):
            whole.paste(piece, (0, offset))
        self.frame.paste(whole.reduce(factor), (0, block))

    def result(self) -> Image.Image:
        return self.frame if self.frame.mode == "RGB" else self.frame.convert("RGB")


class RowStrips:
    """Horizontal pass first: converted full-width row strips of the oriented image, any order.

    Each strip's rows inside `plan.rows` are resampled horizontally into `size` columns (exact
    mode: to `scaled_w`, then cropped); `finish` runs one vertical pass to make the square.
    """

    def __init__(self, plan: Plan, mode: str) -> None:
        self.plan = plan
        self.intermediate = Image.new(mode, (plan.size, plan.rows[1] - plan.rows[0]))

    def add(self, strip: Image.Image, top: int) -> None:
        plan = self.plan
        first, last = max(top, plan.rows[0]), min(top + strip.height, plan.rows[1])
        if first >= last:
            return
        if plan.exact:
            part = strip.resize((plan.scaled_w, strip.height), BICUBIC)
            part = part.crop((plan.left, first - top, plan.left + plan.size, last - top))
        else:
            columns = strip.crop((plan.cols[0], first - top, plan.cols[1], last - top))
            box = (plan.box_x[0] - plan.cols[0], 0, plan.box_x[1] - plan.cols[0], columns.height)
            part = columns.resize((plan.size, columns.height), BICUBIC, box=box)
        self.intermediate.paste(part, (0, first - plan.rows[0]))

    def finish(self) -> np.ndarray:
        plan = self.plan
        if plan.exact:
            tall = self.intermediate.resize((plan.size, plan.scaled_h), BICUBIC)
            square = tall.crop((0, plan.top, plan.size, plan.top + plan.size))
        else:
            box = (0, plan.box_y[0] - plan.rows[0], plan.size, plan.box_y[1] - plan.rows[0])
            square = self.intermediate.resize((plan.size, plan.size), BICUBIC, box=box)
        return np.asarray(square.convert("RGB"), dtype=np.uint8)


class ColumnStrips:
    """Vertical pass first (exact mode only): converted column strips of the oriented image.

    Each strip (rows `plan.rows`, placed in a full-height canvas so the vertical coefficients are
    the whole image's) is resampled vertically and cropped to the output rows; `finish` runs one
    horizontal pass over the full width.
    """

    def __init__(self, plan: Plan, mode: str) -> None:
        self.plan = plan
        self.mode = mode
        self.intermediate = Image.new(mode, (plan.width, plan.size))

    def strip_width(self) -> int:
        return max(1, STRIP_BYTES // (4 * max(self.plan.height, self.plan.scaled_h) * 2))

    def add(self, strip: Image.Image, left: int) -> None:
        """`strip`: oriented columns [left, left + strip.width), rows plan.rows."""
        plan = self.plan
        canvas = Image.new(self.mode, (strip.width, plan.height))
        canvas.paste(strip, (0, plan.rows[0]))
        tall = canvas.resize((strip.width, plan.scaled_h), BICUBIC)
        self.intermediate.paste(tall.crop((0, plan.top, strip.width, plan.top + plan.size)), (left, 0))

    def finish(self) -> np.ndarray:
        plan = self.plan
        wide = self.intermediate.resize((plan.scaled_w, plan.size), BICUBIC)
        square = wide.crop((plan.left, 0, plan.left + plan.size, plan.size))
        return np.asarray(square.convert("RGB"), dtype=np.uint8)


def rows_per_strip(plan: Plan) -> int:
    """Strip height keeping a converted strip and its horizontal resample near STRIP_BYTES."""
    widest = max(plan.width, plan.scaled_w if plan.exact else plan.size)
    return max(1, STRIP_BYTES // (4 * widest * 3))


def source_rect(rect: tuple[int, int, int, int], orientation: int, width: int, height: int) -> tuple:
    """The rectangle of the stored image (`width` x `height`) that becomes `rect` once oriented.

    Pixel maps (oriented (x, y) ← stored): 2 FLIP_LR (W-1-x, y); 3 ROT180 (W-1-x, H-1-y);
    4 FLIP_TB (x, H-1-y); 5 TRANSPOSE (y, x); 6 ROT270 (y, H-1-x); 7 TRANSVERSE (W-1-y, H-1-x);
    8 ROT90 (W-1-y, x).
    """
    x0, y0, x1, y1 = rect
    return {
        2: (width - x1, y0, width - x0, y1),
        3: (width - x1, height - y1, width - x0, height - y0),
        4: (x0, height - y1, x1, height - y0),
        5: (y0, x0, y1, x1),
        6: (y0, height - x1, y1, height - x0),
        7: (width - y1, height - x1, width - y0, height - x0),
        8: (width - y1, x0, width - y0, x1),
    }.get(orientation, rect)


def orientation_of(image: Image.Image) -> int:
    """EXIF orientation as `ImageOps.exif_transpose` reads it (EXIF, else XMP), 1 if none."""
    value = image.getexif().get(ORIENTATION_TAG, 1)
    return value if value in TRANSPOSE_FOR_ORIENTATION else 1


class Oriented:
    """A loaded image seen through its EXIF orientation, read a rectangle at a time."""

    def __init__(self, image: Image.Image, orientation: int) -> None:
        self.image = image
        self.orientation = orientation
        stored_w, stored_h = image.size
        self.width, self.height = (stored_h, stored_w) if orientation in SWAPS_AXES else (stored_w, stored_h)

    def crop(self, rect: tuple[int, int, int, int]) -> Image.Image:
        strip = self.image.crop(source_rect(rect, self.orientation, *self.image.size))
        method = TRANSPOSE_FOR_ORIENTATION.get(self.orientation)
        return strip.transpose(method) if method is not None else strip

    def row_strips(self, step: int) -> Iterator[tuple[int, Image.Image]]:
        for top in range(0, self.height, step):
            yield top, self.crop((0, top, self.width, min(self.height, top + step)))


def fit_and_frame(image: Image.Image, size: int, orientation: int = 1) -> tuple[np.ndarray, Image.Image]:
    """A loaded image → (open_clip's eval pixels, the whole RGB frame), strip by strip."""
    view = Oriented(image, orientation)
    plan = Plan.make(view.width, view.height, size)
    scale, grey = whole_image_scale(image), image.mode in GREY_MODES
    mode = "L" if grey else "RGB"
    frame = FrameReducer(view.width, view.height, mode)
    rows = None if plan.vertical_first else RowStrips(plan, mode)
    for top, strip in view.row_strips(rows_per_strip(plan)):
        converted = strip_to_rgb(strip, scale, grey)
        frame.add(converted, top)
        if rows is not None:
            rows.add(converted, top)
    if rows is not None:
        return rows.finish(), frame.result()
    columns = ColumnStrips(plan, mode)
    step = columns.strip_width()
    for left in range(plan.cols[0], plan.cols[1], step):
        right = min(plan.cols[1], left + step)
        columns.add(strip_to_rgb(view.crop((left, plan.rows[0], right, plan.rows[1])), scale, grey), left)
    return columns.finish(), frame.result()


def fit_square(image: Image.Image, size: int) -> np.ndarray:
    """torchvision `Resize(size)` (bicubic, shortest side) then `CenterCrop(size)`, as uint8 HWC."""
    return fit_and_frame(image, size)[0]
