"""The materialised-model cache: a second build comes from it, gives the same model, and never a wrong one."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from clipline.models.loader import build_from_cache, load_clip, materialised_path, weights_argument
from clipline.models.zero_shot import encode_pixels, encode_texts
from clipline.schemas.config import ModelConfig

TEXTS = ["a red star", "a photo of a blue circle"]


def embeddings(bundle) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.random.default_rng(0).integers(0, 256, (3, bundle.image_size, bundle.image_size, 3), dtype=np.uint8)
    return encode_texts(bundle, TEXTS), encode_pixels(bundle, pixels)


@pytest.mark.parametrize("pretrained", [None, "none"], ids=["bundled", "random-init"])
def test_second_build_comes_from_the_cache_and_is_the_same_model(tmp_path, pretrained):
    config = ModelConfig(pretrained=pretrained, cache_dir=str(tmp_path))
    first = load_clip(config)
    second = load_clip(config)
    assert (first.built_from, second.built_from) == ("open_clip", "cache")
    assert materialised_path(config, weights_argument(config)).is_file()
    for built, cached in zip(embeddings(first), embeddings(second), strict=True):
        assert np.allclose(built, cached, atol=1e-6)
    assert second.model.visual.preprocess_cfg == first.model.visual.preprocess_cfg
    assert torch.equal(second.model.attn_mask, first.model.attn_mask)  # a non-persistent buffer, not in state_dict
    assert not second.model.training and second.logit_scale == first.logit_scale


def test_other_weights_get_another_cache_entry(tmp_path):
    bundled, random_init = ModelConfig(cache_dir=str(tmp_path)), ModelConfig(pretrained="none", cache_dir=str(tmp_path))
    assert materialised_path(bundled, weights_argument(bundled)) != materialised_path(
        random_init, weights_argument(random_init)
    )
    checkpoint = tmp_path / "weights.pt"
    torch.save({"state_dict": load_clip(bundled).model.state_dict()}, checkpoint)
    config = ModelConfig(checkpoint=str(checkpoint), cache_dir=str(tmp_path))
    before = materialised_path(config, weights_argument(config))
    os.utime(checkpoint, ns=(1, 1))  # the file changed: its cached model must not be used
    assert materialised_path(config, weights_argument(config)) != before


def test_a_damaged_cache_file_is_rebuilt_not_trusted(tmp_path):
    config = ModelConfig(cache_dir=str(tmp_path))
    path = materialised_path(config, weights_argument(config))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a safetensors file")
    assert load_clip(config).built_from == "open_clip"
    assert load_clip(config).built_from == "cache"


def test_a_cache_missing_a_tensor_is_refused(tmp_path):
    """A file that leaves any tensor of the model on the meta device would give garbage or crash mid-run."""
    from safetensors.torch import load_file, save_file

    config = ModelConfig(cache_dir=str(tmp_path))
    load_clip(config)
    path = materialised_path(config, weights_argument(config))
    tensors = load_file(path)
    del tensors["attn_mask"]
    save_file(tensors, path, metadata={"preprocess_cfg": "{}"})
    assert build_from_cache(config.arch, path) is None
