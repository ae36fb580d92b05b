"""The production loader: bundled tiny CLIP, a local checkpoint file, and hub-tag validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipline.models.loader import TINY_WEIGHTS, check_weights_source, image_size_for, load_clip, weights_argument
from clipline.models.zero_shot import encode_texts
from clipline.schemas.config import ModelConfig

MAX_WEIGHTS_BYTES = 10 * 1024 * 1024


def test_bundled_weights_are_small_and_load_as_an_open_clip_model():
    assert TINY_WEIGHTS.stat().st_size <= MAX_WEIGHTS_BYTES
    bundle = load_clip(ModelConfig())
    assert bundle.arch == "clipline-tiny" and bundle.pretrained == "bundled"
    assert bundle.image_size == image_size_for("clipline-tiny") == 64
    assert bundle.logit_scale > 1.0
    assert not bundle.model.training
    vectors = encode_texts(bundle, ["a red star", "a blue circle"])
    assert vectors.shape == (2, bundle.embed_dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_local_checkpoint_file_loads_the_same_weights(tmp_path):
    bundled = load_clip(ModelConfig())
    checkpoint = tmp_path / "tiny-copy.pt"
    torch.save({"state_dict": bundled.model.state_dict()}, checkpoint)
    loaded = load_clip(ModelConfig(checkpoint=str(checkpoint)))
    assert loaded.pretrained == str(checkpoint)
    texts = ["a green triangle", "a photo of a star."]
    assert np.allclose(encode_texts(loaded, texts), encode_texts(bundled, texts), atol=1e-5)


def test_hub_tags_are_passed_through_and_checked_offline():
    config = ModelConfig(arch="ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert weights_argument(config) == "laion2b_s34b_b79k"
    check_weights_source(config)
    with pytest.raises(ValueError, match="model.pretrained: 'laion5b' is not a tag of ViT-B-32"):
        check_weights_source(ModelConfig(arch="ViT-B-32", pretrained="laion5b"))
    assert weights_argument(ModelConfig(arch="ViT-B-32", pretrained="none")) is None


def test_unknown_arch_and_missing_checkpoint_are_named(tmp_path):
    with pytest.raises(ValueError, match="model.arch"):
        check_weights_source(ModelConfig(arch="ViT-Z-99", pretrained="none"))
    with pytest.raises(ValueError, match="model.checkpoint"):
        check_weights_source(ModelConfig(checkpoint=str(tmp_path / "missing.pt")))


def test_random_weights_are_the_same_in_every_load():
    """Two actors given `pretrained: none` must build one model, or their embeddings would not compare."""
    torch.manual_seed(123)
    before = torch.rand(1)
    first = load_clip(ModelConfig(pretrained="none")).model.state_dict()
    second = load_clip(ModelConfig(pretrained="none")).model.state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)  # the caller's random stream is left as it was
    bundled = load_clip(ModelConfig()).model.state_dict()
    assert not torch.equal(first["text_projection"], bundled["text_projection"])
