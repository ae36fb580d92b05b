"""Property tests: no byte string escapes the decoder as an exception; every policy validates or fails clearly."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipline.operators.decode import DecodeImages
from clipline.schemas.base import ConfigError
from clipline.schemas.policy import Policy, load_policy
from clipline.schemas.table import ErrorCode

MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBP", b"BM", b"II*\x00"]
DECODER = DecodeImages(image_size=32, max_pixels=4_000_000, max_bytes=1_000_000)
CODES = {code.value for code in ErrorCode}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(MAGIC), st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise(prefix, body):
    out = DECODER(pa.table({"image": [prefix + body], "source": ["p#0"]})).to_pylist()[0]
    assert out["status"] in {"ok", "failed"}
    if out["status"] == "failed":
        assert out["error_code"] in CODES and out["error_message"]
    else:
        assert len(out["pixels"]) == 32 * 32 * 3


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=12))
json_like = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
category = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.sampled_from(["star", "Bad Name", "x1", ""]), json_like),
        "kind": st.sampled_from(["moderation", "topic", "other"]),
        "positive": st.one_of(st.lists(st.sampled_from(["star", "cross", "{}"]), max_size=3), json_like),
        "negative": st.one_of(st.lists(st.sampled_from(["circle", "star"]), max_size=3), json_like),
        "templates": st.one_of(st.lists(st.sampled_from(["a {}.", "no slot", "{} {}"]), max_size=2), json_like),
        "review_threshold": st.one_of(st.floats(-1, 2), json_like),
        "block_threshold": st.one_of(st.none(), st.floats(-1, 2)),
        "unknown_field": json_like,
    },
)
policy = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.text(max_size=8), json_like),
        "version": st.one_of(st.integers(), st.text(max_size=4), json_like),
        "templates": st.one_of(st.lists(st.sampled_from(["a {}.", "bad"]), max_size=2), json_like),
        "categories": st.one_of(st.lists(category, max_size=3), json_like),
    },
)


@settings(max_examples=400, deadline=None)
@given(policy)
def test_arbitrary_policies_validate_or_fail_with_a_field(data):
    try:
        parsed = Policy.model_validate(data)
    except ValueError as error:  # pydantic's ValidationError is a ValueError
        assert str(error)
        return
    assert parsed.categories and all(category.positive and category.negative for category in parsed.categories)
    assert len(parsed.content_hash) == 64


def test_load_policy_wraps_errors_with_the_file_and_field(tmp_path):
    path = tmp_path / "p.yaml"
    category = "{name: star, positive: [star], negative: [circle], review_threshold: 2}"
    path.write_text(f"name: p\nversion: 1\ncategories:\n  - {category}\n")
    with pytest.raises(ConfigError, match=r"categories\.0\.review_threshold"):
        load_policy(path)
