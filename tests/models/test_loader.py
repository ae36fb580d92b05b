"""The production loader: bundled tiny CLIP, checkpoint files (local, and s3:// fetched concurrently), hub tags."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor

import boto3
import numpy as np
import pytest
import torch
from safetensors import safe_open

from clipline.models.loader import (
    TINY_WEIGHTS,
    cached_checkpoint,
    check_weights_source,
    fetch_checkpoint,
    image_size_for,
    load_clip,
    weights_argument,
)
from clipline.models.zero_shot import encode_texts
from clipline.schemas.config import ModelConfig
from clipline.schemas.storage import StorageConfig

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


def test_concurrent_downloads_of_one_checkpoint_never_give_a_corrupt_file(s3_endpoint, s3_bucket, tmp_path):
    """Several actors on one node fetch the same remote checkpoint at once into one cache.

    Each reads back what it would load; a torn or interleaved file fails the header or the hash.
    """
    boto3.client("s3", endpoint_url=s3_endpoint).upload_file(str(TINY_WEIGHTS), s3_bucket, "models/tiny.safetensors")
    uri = f"s3://{s3_bucket}/models/tiny.safetensors"
    storage = StorageConfig(endpoint_url=s3_endpoint, region="us-east-1")
    expected = hashlib.sha256(TINY_WEIGHTS.read_bytes()).hexdigest()
    barrier = threading.Barrier(4)

    def fetch_and_read_back() -> tuple[str, int]:
        barrier.wait()
        path = fetch_checkpoint(uri, tmp_path, storage)
        with safe_open(str(path), framework="pt") as weights:
            names = list(weights.keys())
        return hashlib.sha256(path.read_bytes()).hexdigest(), len(names)

    with ThreadPoolExecutor(4) as pool:
        outcomes = [future.result() for future in [pool.submit(fetch_and_read_back) for _ in range(4)]]
    assert {digest for digest, _ in outcomes} == {expected} and min(count for _, count in outcomes) > 0
    assert list((tmp_path / "checkpoints").iterdir()) == [cached_checkpoint(uri, tmp_path)]  # no partial left


def test_remote_checkpoint_is_checked_on_the_driver(s3_endpoint, s3_bucket):
    storage = StorageConfig(endpoint_url=s3_endpoint, region="us-east-1")
    boto3.client("s3", endpoint_url=s3_endpoint).upload_file(str(TINY_WEIGHTS), s3_bucket, "models/tiny.safetensors")
    check_weights_source(ModelConfig(checkpoint=f"s3://{s3_bucket}/models/tiny.safetensors"), storage)
    with pytest.raises(ValueError, match=f"model.checkpoint: no such file s3://{s3_bucket}/models/nope.pt"):
        check_weights_source(ModelConfig(checkpoint=f"s3://{s3_bucket}/models/nope.pt"), storage)
