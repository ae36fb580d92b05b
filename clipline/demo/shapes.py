"""The procedural world that the bundled ``clipline-tiny`` CLIP model knows.

Why this exists: clipline ships a tiny open_clip model so that tests, CI and
demos run offline with *real* embeddings (no model hub access).  A model
trained on random noise would make zero-shot classification meaningless, so
the tiny model is trained on this generator: coloured shapes on varied
backgrounds, paired with natural-language captions.  Tests then render
held-out images from the same world and check that zero-shot classification
over :data:`TEMPLATES` actually works.

Everything here is deterministic given a :class:`numpy.random.Generator`
(or a seed for :func:`sample`), depends only on numpy and Pillow, and renders
correctly at any size from 64 px up to a few hundred pixels (shapes are
drawn as supersampled vector masks, so they stay crisp when large and
anti-aliased when small).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "COLOURS",
    "SHAPES",
    "TEMPLATES",
    "Sample",
    "attribute_caption",
    "caption",
    "render",
    "sample",
    "sample_labels",
    "sample_rng",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart", "ring")
"""Shape class names.  Chosen to stay distinguishable under any rotation
(no ``diamond``: a rotated square *is* a diamond)."""

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
"""Colour class names; each maps to a saturated (or extreme) base RGB value."""

TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a drawing of a {}.",
    "an image of a {}.",
    "a picture of a {}.",
    "a rendering of a {}.",
    "a {}.",
)
"""Zero-shot prompt templates (one ``{}`` each) used for prompt ensembling."""

# Base RGB per colour name.  Render jitters these a little, but never so far
# that a human would name the colour differently.
_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "green": (35, 165, 55),
    "blue": (35, 75, 220),
    "yellow": (240, 215, 35),
    "purple": (135, 45, 180),
    "orange": (245, 130, 20),
    "white": (248, 248, 248),
    "black": (15, 15, 15),
}

# Words used to describe backgrounds in captions.  Deliberately *not* colour
# class names, so captions never attach a class colour to the background.
_BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "plain": ("plain", "grey", "simple", "flat"),
    "gradient": ("gradient", "shaded", "smooth"),
    "noise": ("noisy", "grainy", "speckled"),
    "stripes": ("striped", "patterned", "textured"),
    "checker": ("checkered", "tiled", "textured"),
}
_BACKGROUND_KINDS: tuple[str, ...] = tuple(_BACKGROUND_WORDS)

_MIN_BG_DISTANCE = 120.0  # min RGB distance between shape colour and any background tone
_POLY_POINTS = 96  # vertices used for curved outlines


@dataclass(frozen=True)
class Sample:
    """One generated image–caption pair plus its ground-truth labels."""

    image: Image.Image
    caption: str
    shape: str
    colour: str


# --------------------------------------------------------------------------- geometry
# Each outline is a list of (x, y) points in unit coordinates: centred on the
# origin and fitting inside the unit circle, so scale/rotation are uniform.

Outline = list[tuple[float, float]]


def _circle(radius: float = 1.0) -> Outline:
    return [
        (radius * math.cos(t), radius * math.sin(t))
        for t in np.linspace(0.0, 2.0 * math.pi, _POLY_POINTS, endpoint=False)
    ]


def _regular(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> Outline:
    return [
        (radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _star(points: int = 5, inner: float = 0.42) -> Outline:
    out: Outline = []
    for k in range(2 * points):
        r = 1.0 if k % 2 == 0 else inner
        t = -math.pi / 2 + math.pi * k / points
        out.append((r * math.cos(t), r * math.sin(t)))
    return out


def _cross(arm: float = 0.33) -> Outline:
    a, b = arm, 0.95
    return [
        (-a, -b),
        (a, -b),
        (a, -a),
        (b, -a),
        (b, a),
        (a, a),
        (a, b),
        (-a, b),
        (-a, a),
        (-b, a),
        (-b, -a),
        (-a, -a),
    ]


def _heart() -> Outline:
    ts = np.linspace(0.0, 2.0 * math.pi, _POLY_POINTS, endpoint=False)
    xs = 16 * np.sin(ts) ** 3
    ys = -(13 * np.cos(ts) - 5 * np.cos(2 * ts) - 2 * np.cos(3 * ts) - np.cos(4 * ts))
    ys = ys + 2.5  # roughly centre vertically
    scale = 1.0 / float(np.max(np.hypot(xs, ys)))
    return [(float(x * scale), float(y * scale)) for x, y in zip(xs, ys, strict=True)]


def _outlines(shape: str) -> tuple[Outline, Outline | None]:
    """Return (filled outline, optional hole outline) for a shape name."""
    builders: dict[str, Callable[[], Outline]] = {
        "circle": lambda: _circle(0.9),
        "square": lambda: _regular(4, 1.0, phase=math.pi / 4),
        "triangle": lambda: _regular(3, 1.0),
        "star": _star,
        "cross": _cross,
        "heart": _heart,
        "ring": lambda: _circle(0.95),
    }
    if shape not in builders:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    hole = _circle(0.55) if shape == "ring" else None
    return builders[shape](), hole


def _transform(outline: Outline, cx: float, cy: float, radius: float, angle: float) -> Outline:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + radius * (x * c - y * s), cy + radius * (x * s + y * c)) for x, y in outline]


def _shape_mask(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """Anti-aliased 'L' mask of one randomly placed, scaled and rotated shape.

    Drawn at 4x (or 2x for large images) and box-downsampled, which gives smooth
    edges at 64 px and crisp ones at 512 px.
    """
    ss = 4 if size <= 192 else 2
    big = size * ss
    radius = rng.uniform(0.2, 0.42) * big
    margin = radius + 0.03 * big
    cx = rng.uniform(margin, big - margin)
    cy = rng.uniform(margin, big - margin)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    outer, hole = _outlines(shape)
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    draw.polygon(_transform(outer, cx, cy, radius, angle), fill=255)
    if hole is not None:
        draw.polygon(_transform(hole, cx, cy, radius, angle), fill=0)
    return mask.resize((size, size), Image.Resampling.BOX)


# --------------------------------------------------------------------------- colour
def _shape_rgb(colour: str, rng: np.random.Generator) -> np.ndarray:
    """Base colour with small jitter, staying recognisably the named colour."""
    if colour not in _RGB:
        raise ValueError(f"unknown colour {colour!r}; expected one of {COLOURS}")
    base = np.asarray(_RGB[colour], dtype=np.float32)
    jitter = rng.uniform(-14.0, 14.0, size=3) + rng.uniform(-10.0, 10.0)
    return np.clip(base + jitter, 0, 255)


def _background_tone(shape_rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A low-saturation tone far (in RGB) from the shape colour.

    Low saturation keeps backgrounds from looking like any colour class, and
    the distance check guarantees the shape never blends into its background.
    """
    for _ in range(64):
        grey = rng.uniform(35.0, 215.0)
        tone = np.clip(grey + rng.uniform(-22.0, 22.0, size=3), 0, 255)
        if float(np.linalg.norm(tone - shape_rgb)) >= _MIN_BG_DISTANCE:
            return tone
    # Fallback: mid grey or its opposite extreme, whichever is further away.
    candidates = [np.full(3, 128.0), np.full(3, 60.0), np.full(3, 200.0)]
    return max(candidates, key=lambda t: float(np.linalg.norm(t - shape_rgb)))


def _background(kind: str, shape_rgb: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """float32 (size, size, 3) background of the given kind."""
    a = _background_tone(shape_rgb, rng)
    if kind == "plain":
        return np.broadcast_to(a, (size, size, 3)).astype(np.float32)
    b = _background_tone(shape_rgb, rng)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    if kind == "gradient":
        theta = rng.uniform(0.0, 2.0 * math.pi)
        t = (xx - 0.5) * math.cos(theta) + (yy - 0.5) * math.sin(theta) + 0.5
        t = np.clip(t, 0.0, 1.0)[..., None]
        return (a * (1 - t) + b * t).astype(np.float32)
    if kind == "noise":
        # Smooth blobs (upsampled low-res noise) plus fine grain.
        low = rng.uniform(0.0, 1.0, size=(rng.integers(3, 9),) * 2).astype(np.float32)
        blob = np.asarray(Image.fromarray(low, mode="F").resize((size, size), Image.Resampling.BICUBIC))
        t = np.clip(blob, 0.0, 1.0)[..., None]
        grain = rng.normal(0.0, 10.0, size=(size, size, 1)).astype(np.float32)
        return np.clip(a * (1 - t) + b * t + grain, 0, 255).astype(np.float32)
    # Textures: stripes or checkerboard, period relative to image size.
    period = rng.uniform(0.06, 0.2)
    if kind == "stripes":
        theta = rng.uniform(0.0, math.pi)
        t = ((xx * math.cos(theta) + yy * math.sin(theta)) / period) % 1.0 < 0.5
    else:  # checker
        t = ((np.floor(xx / period) + np.floor(yy / period)) % 2) == 0
    return np.where(t[..., None], a, b).astype(np.float32)


def _add_distractors(canvas: Image.Image, shape_rgb: np.ndarray, rng: np.random.Generator) -> None:
    """Draw a few thin neutral lines / dots (never in a class colour) in place."""
    size = canvas.width
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 5))):
        tone = tuple(int(v) for v in _background_tone(shape_rgb, rng))
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size, size=4))
        width = max(1, round(size * rng.uniform(0.005, 0.02)))
        if rng.random() < 0.6:
            draw.line([(x0, y0), (x1, y1)], fill=tone, width=width)
        else:
            r = size * rng.uniform(0.01, 0.03)
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=tone)


def render(shape: str, colour: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """Render one ``colour`` ``shape`` on a random background as an RGB image.

    Position, scale, rotation, background kind/tones, shading and distractors
    are all drawn from ``rng``; the background is never close to the shape
    colour.  Works for any ``size`` >= 16 (64-512 px is the intended range).
    """
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    shape_rgb = _shape_rgb(colour, rng)
    kind = _BACKGROUND_KINDS[int(rng.integers(len(_BACKGROUND_KINDS)))]
    bg = _background(kind, shape_rgb, size, rng)
    canvas = Image.fromarray(bg.astype(np.uint8), mode="RGB")
    if rng.random() < 0.5:
        _add_distractors(canvas, shape_rgb, rng)
    mask = _shape_mask(shape, size, rng)
    # Mild shading across the shape so fills are not perfectly flat.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    theta = rng.uniform(0.0, 2.0 * math.pi)
    shade = 1.0 + rng.uniform(0.0, 0.12) * ((xx - 0.5) * math.cos(theta) + (yy - 0.5) * math.sin(theta))
    fill = np.clip(shape_rgb[None, None, :] * shade[..., None], 0, 255).astype(np.uint8)
    image = Image.composite(Image.fromarray(fill, mode="RGB"), canvas, mask)
    if rng.random() < 0.3:
        arr = np.asarray(image, dtype=np.float32)
        arr = arr + rng.normal(0.0, rng.uniform(2.0, 8.0), size=arr.shape)
        image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")
    if rng.random() < 0.15:
        image = image.filter(ImageFilter.GaussianBlur(radius=size * rng.uniform(0.002, 0.008)))
    return image


# --------------------------------------------------------------------------- captions
def _background_word(rng: np.random.Generator) -> str:
    kind = _BACKGROUND_KINDS[int(rng.integers(len(_BACKGROUND_KINDS)))]
    words = _BACKGROUND_WORDS[kind]
    return words[int(rng.integers(len(words)))]


def _template(rng: np.random.Generator) -> str:
    return TEMPLATES[int(rng.integers(len(TEMPLATES)))]


def caption(shape: str, colour: str, rng: np.random.Generator) -> str:
    """A varied natural-language caption naming both ``colour`` and ``shape``.

    E.g. "a red star", "red star", "a photo of a red star.", "a photo of a
    red star on a grey background", "a star that is red".  Background words
    are never colour class names, so the only colour named is the shape's.
    They are also *not grounded*: ``caption`` does not know which background
    ``render`` drew, so they act as caption noise the model learns to ignore
    (don't expect retrieval by background to work).
    """
    thing = f"{colour} {shape}"
    article = "an" if colour[0] in "aeiou" else "a"
    bg = _background_word(rng)
    forms = (
        f"{article} {thing}",
        thing,
        _template(rng).format(thing),
        f"a photo of {article} {thing} on a {bg} background",
        f"{article} {thing} on a {bg} background",
        f"a {shape} that is {colour}",
        f"{article} {colour} coloured {shape}",
        f"a picture of a {shape} in {colour}",
    )
    weights = np.array([0.16, 0.1, 0.26, 0.1, 0.1, 0.1, 0.09, 0.09])
    return forms[int(rng.choice(len(forms), p=weights / weights.sum()))]


def attribute_caption(shape: str, colour: str, rng: np.random.Generator) -> str:
    """A caption naming only one attribute (the shape *or* the colour).

    Used sparingly in training so that single-family zero-shot prompts such as
    "a photo of a star." or "a photo of a red." are in-domain for the text tower.
    """
    if rng.random() < 0.5:
        return _template(rng).format(shape) if rng.random() < 0.8 else f"a {shape}"
    return _template(rng).format(colour) if rng.random() < 0.8 else f"something {colour}"


# --------------------------------------------------------------------------- sampling
def sample_rng(seed: int, index: int) -> np.random.Generator:
    """Independent generator for item ``index`` of the stream ``seed``.

    Per-item streams make generation order-independent, so item ``i`` is the
    same whether produced serially, in parallel or as part of a larger ``n``.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def sample_labels(rng: np.random.Generator) -> tuple[str, str]:
    """Uniformly random (shape, colour) pair."""
    return SHAPES[int(rng.integers(len(SHAPES)))], COLOURS[int(rng.integers(len(COLOURS)))]


def sample(n: int, seed: int, size: int = 64) -> list[Sample]:
    """``n`` random image–caption pairs, fully determined by ``seed``."""
    out: list[Sample] = []
    for i in range(n):
        rng = sample_rng(seed, i)
        shape, colour = sample_labels(rng)
        image = render(shape, colour, rng, size=size)
        out.append(Sample(image=image, caption=caption(shape, colour, rng), shape=shape, colour=colour))
    return out
