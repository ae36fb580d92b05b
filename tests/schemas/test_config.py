"""Job config and policy validation: errors name the field, before any cluster work."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clipline.schemas.base import ConfigError
from clipline.schemas.config import JobConfig, ModelConfig, load_job_config
from clipline.schemas.policy import Policy, load_policy

GOOD_JOB = {
    "source": {"paths": ["data/input.parquet"]},
    "policy": "policy.yaml",
    "sink": {"uri": "db"},
}
GOOD_POLICY = {
    "name": "p",
    "version": 3,
    "categories": [
        {"name": "star", "positive": ["star"], "negative": ["circle"], "review_threshold": 0.5, "block_threshold": 0.8},
        {"name": "red", "kind": "topic", "positive": ["red"], "negative": ["blue"], "review_threshold": 0.6},
    ],
}


def write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    config = load_job_config(write(tmp_path, "job.yaml", GOOD_JOB))
    assert config.source.paths == [str(tmp_path / "data" / "input.parquet")]
    assert config.policy == str(tmp_path / "policy.yaml")
    assert config.sink.uri == str(tmp_path / "db")
    assert config.sink.table == "media"


def test_s3_paths_are_left_alone(tmp_path):
    data = {**GOOD_JOB, "source": {"paths": "s3://bucket/in/"}, "sink": {"uri": "s3://bucket/db"}}
    config = load_job_config(write(tmp_path, "job.yaml", data))
    assert config.source.paths == ["s3://bucket/in/"]
    assert config.sink.uri == "s3://bucket/db"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"sink": {"uri": "db", "tabel": "x"}}, "sink.tabel"),
        ({"sink": {}}, "sink.uri"),
        ({"resources": {"batch_size": 0}}, "resources.batch_size"),
        ({"model": {"arch": "ViT-B-32"}}, "model.pretrained"),
        ({"source": {"paths": []}}, "source.paths"),
        ({"resources": {"jpeg_decode": "gpu"}}, "resources.jpeg_decode"),
    ],
)
def test_bad_fields_are_named(tmp_path, change, field):
    with pytest.raises(ConfigError) as caught:
        load_job_config(write(tmp_path, "job.yaml", {**GOOD_JOB, **change}))
    assert field in str(caught.value)


def test_missing_file_and_non_mapping_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_job_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_job_config(tmp_path / "list.yaml")


def test_model_weight_sources():
    assert ModelConfig().weights_label == "bundled"
    assert ModelConfig(arch="ViT-B-32", pretrained="laion2b_s34b_b79k").weights_label == "laion2b_s34b_b79k"
    assert ModelConfig(arch="ViT-B-32", checkpoint="s3://b/ck.pt").weights_label == "s3://b/ck.pt"
    with pytest.raises(ValueError, match="not both"):
        ModelConfig(arch="ViT-B-32", pretrained="x", checkpoint="y")


def test_job_config_is_frozen():
    config = JobConfig.model_validate({**GOOD_JOB})
    with pytest.raises(ValueError):
        config.policy = "other"


def test_policy_parses_and_hash_tracks_content(tmp_path):
    policy = load_policy(write(tmp_path, "p.yaml", GOOD_POLICY))
    assert policy.version == "3"
    assert policy.category_names == ["star", "red"]
    assert policy.templates_for(policy.categories[0]) == policy.templates
    changed = {**GOOD_POLICY, "categories": [{**GOOD_POLICY["categories"][0], "review_threshold": 0.4}]}
    assert Policy.model_validate(changed).content_hash != policy.content_hash
    assert Policy.model_validate(GOOD_POLICY).content_hash == policy.content_hash


@pytest.mark.parametrize(
    ("category_change", "message"),
    [
        ({"block_threshold": 0.3}, "block_threshold must be"),
        ({"templates": ["no slot"]}, "exactly one"),
        ({"negative": ["star"]}, "both positive and negative"),
        ({"name": "Bad Name"}, "categories.0.name"),
        ({"kind": "topic"}, "cannot block"),
        ({"review_threshold": 1.5}, "categories.0.review_threshold"),
    ],
)
def test_bad_policies_fail_with_the_field(tmp_path, category_change, message):
    bad = {**GOOD_POLICY, "categories": [{**GOOD_POLICY["categories"][0], **category_change}]}
    with pytest.raises(ConfigError, match=message):
        load_policy(write(tmp_path, "p.yaml", bad))


def test_duplicate_category_names_are_refused(tmp_path):
    bad = {**GOOD_POLICY, "categories": [GOOD_POLICY["categories"][0]] * 2}
    with pytest.raises(ConfigError, match="duplicate category names"):
        load_policy(write(tmp_path, "p.yaml", bad))
