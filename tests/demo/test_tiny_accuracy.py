"""The shipped clipline-tiny weights really classify the shapes world zero-shot.

Loads the bundled model through the production loader (the same code path
the pipeline uses) and checks >= 90% zero-shot accuracy per concept family
on held-out images: a seed never used in training, rendered larger than the
model's 64 px input and partly JPEG-encoded, so the production
resize/crop/normalise transform and lossy decoding are exercised too.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from clipline.demo import shapes
from clipline.models.loader import ClipBundle, load_clip
from clipline.models.zero_shot import encode_images, prompt_weights
from clipline.schemas.config import ModelConfig

HELD_OUT_SEED = 424_242  # training uses seeds 0 and 1_000_003 (see train_tiny.py)
N_PER_FAMILY = 210  # divisible by 7 shapes; colours cycle over 8 (26-27 each)
MIN_ACCURACY = 0.90


@pytest.fixture(scope="module")
def bundle() -> ClipBundle:
    return load_clip(ModelConfig(arch="clipline-tiny"), device="cpu")


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _held_out(family: str) -> tuple[list[Image.Image], list[str]]:
    """Class-balanced images for one family; the other attribute is random."""
    classes = shapes.SHAPES if family == "shape" else shapes.COLOURS
    rng = np.random.default_rng([HELD_OUT_SEED, 0 if family == "shape" else 1])
    images, truth = [], []
    for i in range(N_PER_FAMILY):
        target = classes[i % len(classes)]
        shape = target if family == "shape" else shapes.SHAPES[int(rng.integers(len(shapes.SHAPES)))]
        colour = target if family == "colour" else shapes.COLOURS[int(rng.integers(len(shapes.COLOURS)))]
        image = shapes.render(shape, colour, rng, size=int(rng.integers(96, 161)))
        if rng.random() < 0.5:
            image = _jpeg(image, int(rng.integers(70, 91)))
        images.append(image)
        truth.append(target)
    return images, truth


@pytest.mark.parametrize("family", ["shape", "colour"])
def test_zero_shot_accuracy(bundle: ClipBundle, family: str) -> None:
    classes = list(shapes.SHAPES if family == "shape" else shapes.COLOURS)
    images, truth = _held_out(family)
    weights = prompt_weights(bundle, classes, list(shapes.TEMPLATES))
    features = encode_images(bundle, images)
    assert weights.shape == (len(classes), bundle.embed_dim)
    assert features.shape == (len(images), bundle.embed_dim)
    pred = (features @ weights.T).argmax(1)
    accuracy = float(np.mean([classes[p] == t for p, t in zip(pred, truth, strict=True)]))
    per_class = {
        c: float(np.mean([classes[p] == t for p, t in zip(pred, truth, strict=True) if t == c])) for c in classes
    }
    assert accuracy >= MIN_ACCURACY, f"{family} zero-shot accuracy {accuracy:.3f}; per class {per_class}"


def test_bundle_shape(bundle: ClipBundle) -> None:
    assert bundle.arch == "clipline-tiny"
    assert bundle.image_size == 64
    assert bundle.logit_scale > 10.0  # trained, not the 1/0.07 init
    assert not bundle.model.training
