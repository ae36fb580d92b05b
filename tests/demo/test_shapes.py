"""Tests for the procedural shapes world used to train and test clipline-tiny."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clipline.demo import shapes


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def test_vocabulary_sizes() -> None:
    assert len(shapes.SHAPES) >= 6
    assert len(shapes.COLOURS) >= 6
    assert len(set(shapes.SHAPES)) == len(shapes.SHAPES)
    assert len(set(shapes.COLOURS)) == len(shapes.COLOURS)
    assert shapes.TEMPLATES
    assert all(t.count("{}") == 1 for t in shapes.TEMPLATES)


def test_sample_is_deterministic_for_a_seed() -> None:
    a = shapes.sample(6, seed=123)
    b = shapes.sample(6, seed=123)
    assert [(s.shape, s.colour, s.caption) for s in a] == [(s.shape, s.colour, s.caption) for s in b]
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(_pixels(x.image), _pixels(y.image))


def test_different_seeds_differ() -> None:
    a = shapes.sample(6, seed=1)
    b = shapes.sample(6, seed=2)
    assert any(not np.array_equal(_pixels(x.image), _pixels(y.image)) for x, y in zip(a, b, strict=True))


def test_sample_prefix_is_stable() -> None:
    """Item i does not depend on n (per-item random streams)."""
    short = shapes.sample(3, seed=9)
    long = shapes.sample(5, seed=9)
    for x, y in zip(short, long[:3], strict=True):
        assert x.caption == y.caption
        assert np.array_equal(_pixels(x.image), _pixels(y.image))


def test_sample_is_frozen() -> None:
    s = shapes.sample(1, seed=0)[0]
    with pytest.raises(AttributeError):
        s.shape = "circle"  # type: ignore[misc]


@pytest.mark.parametrize("size", [64, 97, 160, 512])
def test_render_mode_and_size(size: int) -> None:
    rng = np.random.default_rng(0)
    for shape in shapes.SHAPES:
        image = shapes.render(shape, shapes.COLOURS[0], rng, size=size)
        assert image.mode == "RGB"
        assert image.size == (size, size)


def test_render_default_size_is_64() -> None:
    image = shapes.render("star", "red", np.random.default_rng(0))
    assert image.size == (64, 64)


def test_sample_honours_size() -> None:
    assert all(s.image.size == (96, 96) and s.image.mode == "RGB" for s in shapes.sample(4, seed=3, size=96))


def test_render_draws_the_colour() -> None:
    """A visible fraction of pixels is close to the requested colour."""
    for colour in shapes.COLOURS:
        image = shapes.render("square", colour, np.random.default_rng(7), size=128)
        base = np.asarray(shapes._RGB[colour], dtype=np.float32)
        dist = np.linalg.norm(_pixels(image).astype(np.float32) - base, axis=-1)
        assert (dist < 60).mean() > 0.02, colour


def test_render_rejects_unknown_names() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        shapes.render("dodecahedron", "red", rng)
    with pytest.raises(ValueError):
        shapes.render("star", "mauve", rng)


def test_caption_mentions_shape_and_colour() -> None:
    rng = np.random.default_rng(0)
    for shape in shapes.SHAPES:
        for colour in shapes.COLOURS:
            for _ in range(5):
                text = shapes.caption(shape, colour, rng)
                assert shape in text and colour in text, text


def test_captions_vary() -> None:
    rng = np.random.default_rng(0)
    assert len({shapes.caption("star", "red", rng) for _ in range(50)}) >= 5


def test_sample_captions_match_labels() -> None:
    for s in shapes.sample(20, seed=5):
        assert s.shape in s.caption and s.colour in s.caption
        assert s.shape in shapes.SHAPES and s.colour in shapes.COLOURS
