"""Encoder alone (no Ray): the uint8 pixel path equals open_clip's own preprocessing path."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from clipline.models.zero_shot import MAX_CHARS_PER_TOKEN, encode_images, encode_texts, over_context
from clipline.operators.base import WorkerState
from clipline.operators.decode import DecodeImages
from clipline.operators.encode import EncodeClip, torch_threads_for
from clipline.schemas.config import ModelConfig
from tests.operators.images import asymmetric, encode


@pytest.fixture(scope="module")
def encoder() -> EncodeClip:
    torch.manual_seed(0)
    operator = EncodeClip(ModelConfig(pretrained="none"), cpus=1)
    operator.setup(WorkerState())
    return operator


def decoded_batch(images, texts) -> pa.Table:
    batch = pa.table(
        {
            "image": [encode(image, "PNG") if image else None for image in images],
            "text": texts,
            "source": [f"f#{i}" for i in range(len(texts))],
        }
    )
    return DecodeImages(image_size=64, max_pixels=10**8, max_bytes=10**8)(batch)


def test_threads_follow_reserved_cpus():
    assert torch_threads_for(0.5) == 1
    assert torch_threads_for(1) == 1
    assert torch_threads_for(4) == 4


def test_pixel_path_matches_open_clip_preprocess(encoder):
    images = [asymmetric((200, 120)), asymmetric((90, 150)).rotate(30)]
    out = encoder(decoded_batch(images, [None, None]))
    ours = np.array(out.column("image_embedding").to_pylist(), dtype=np.float32)
    reference = encode_images(encoder.bundle, images)
    cosines = (ours * reference).sum(axis=1)
    assert (cosines > 0.999).all(), cosines


def test_embeddings_are_normalised_and_placed_per_row(encoder):
    images = [asymmetric(), None, asymmetric((64, 64)), None]
    texts = ["a red star", "text only", None, ""]
    out = encoder(decoded_batch(images, texts))
    assert out.num_rows == 4
    assert "pixels" not in out.column_names
    image_vectors = out.column("image_embedding").to_pylist()
    text_vectors = out.column("text_embedding").to_pylist()
    assert [v is not None for v in image_vectors] == [True, False, True, False]
    assert [v is not None for v in text_vectors] == [True, True, False, False]
    for vector in [v for v in image_vectors + text_vectors if v is not None]:
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-4)
    scores = out.column("clip_score").to_pylist()
    assert scores[1:] == [None, None, None]
    assert scores[0] == pytest.approx(float(np.dot(image_vectors[0], text_vectors[0])), abs=1e-5)


def test_failed_rows_are_not_encoded(encoder):
    batch = decoded_batch([None], [None])
    out = encoder(batch)
    assert out.column("status").to_pylist() == ["failed"]
    assert out.column("image_embedding").null_count == 1
    assert out.column("text_embedding").null_count == 1


def test_text_over_the_context_length_is_flagged_not_failed(encoder):
    long_text = " ".join(["a red star on a blue background"] * 20)
    out = encoder(decoded_batch([None, None], [long_text, "a red star"]))
    assert out.column("flags").to_pylist() == [["text_truncated"], None]
    assert out.column("status").to_pylist() == ["ok", "ok"]
    assert out.column("text_embedding").null_count == 0


def test_blank_captions_are_not_embedded(encoder):
    out = encoder(decoded_batch([asymmetric(), None], [" \t\n", "\u2003 "]))
    assert out.column("status").to_pylist() == ["ok", "failed"]
    assert out.column("error_code").to_pylist() == [None, "missing_content"]
    assert out.column("image_embedding").null_count == 1
    assert out.column("text_embedding").null_count == 2
    assert out.column("clip_score").to_pylist() == [None, None]


def test_a_caption_of_megabytes_is_cut_before_tokenizing_and_stored_whole(encoder):
    bundle = encoder.bundle
    cut_at = bundle.context_length * MAX_CHARS_PER_TOKEN
    huge = "a red star on a blue background " * (4 * 1024 * 1024 // 32)  # 4 MB
    seen: list[int] = []
    original = bundle.tokenizer

    def measuring_tokenizer(texts, *args, **kwargs):
        seen.extend(len(text) for text in texts)
        return original(texts, *args, **kwargs)

    object.__setattr__(bundle, "tokenizer", measuring_tokenizer)
    try:
        out = encoder(decoded_batch([None], [huge]))
    finally:
        object.__setattr__(bundle, "tokenizer", original)
    assert seen and max(seen) <= cut_at
    assert out.column("flags").to_pylist() == [["text_truncated"]]
    assert out.column("text").to_pylist() == [huge]  # the stored text stays whole
    whole = encode_texts(bundle, [huge[:cut_at]])[0]
    assert np.allclose(out.column("text_embedding").to_pylist()[0], whole, atol=1e-6)
    assert over_context(bundle, [huge, huge[: cut_at // 4], "a star"]).tolist() == [True, True, False]
