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


@pytest.mark.parametrize("run_id", ["../other", "a/b", "", " x", "x\n", ".hidden", "-flag", "x" * 129, "semi;colon"])
def test_unsafe_run_ids_are_refused_naming_the_field(tmp_path, run_id):
    with pytest.raises(ConfigError) as caught:
        load_job_config(write(tmp_path, "job.yaml", {**GOOD_JOB, "run_id": run_id}))
    assert "run_id" in str(caught.value) and "safe run id" in str(caught.value)


def test_generated_and_plain_run_ids_are_accepted(tmp_path):
    for run_id in ("20261122T102652Z-ff4ee257", "nightly.2026-11-22_a"):
        assert load_job_config(write(tmp_path, "job.yaml", {**GOOD_JOB, "run_id": run_id})).run_id == run_id


def test_allowed_uri_prefixes_default_to_the_source_directories(tmp_path):
    source = {"paths": ["in/a.parquet", "more", "s3://bucket/x/y.parquet", "s3://bucket/dir", "s3://other/p/"]}
    config = load_job_config(write(tmp_path, "job.yaml", {**GOOD_JOB, "source": source}))
    assert config.source.allowed_uri_prefixes is None
    assert config.source.uri_prefixes() == [
        str(tmp_path / "in"),
        str(tmp_path / "more"),
        "s3://bucket/x/",
        "s3://bucket/dir/",
        "s3://other/p/",
    ]


def test_allowed_uri_prefixes_as_configured_relative_to_the_yaml(tmp_path):
    source = {"paths": ["in/a.parquet"], "allowed_uri_prefixes": ["images", "s3://media/up/", "https://cdn.example/p/"]}
    config = load_job_config(write(tmp_path, "job.yaml", {**GOOD_JOB, "source": source}))
    assert config.source.uri_prefixes() == [str(tmp_path / "images"), "s3://media/up/", "https://cdn.example/p/"]
    none = load_job_config(write(tmp_path, "job.yaml", {**GOOD_JOB, "source": {**source, "allowed_uri_prefixes": []}}))
    assert none.source.uri_prefixes() == []


@pytest.mark.parametrize(
    "prefix", ["/", "/proc", "/dev/shm", "/data/../etc", "s3://bucket/no-slash", "ftp://host/x/", "http://u:p@h/x/"]
)
def test_bad_allowed_uri_prefixes_name_the_field(tmp_path, prefix):
    source = {"paths": ["in/a.parquet"], "allowed_uri_prefixes": [prefix]}
    with pytest.raises(ConfigError) as caught:
        load_job_config(write(tmp_path, "job.yaml", {**GOOD_JOB, "source": source}))
    assert "source.allowed_uri_prefixes" in str(caught.value)


def test_max_image_aspect_is_checked(tmp_path):
    assert load_job_config(write(tmp_path, "job.yaml", GOOD_JOB)).source.max_image_aspect == 20.0
    with pytest.raises(ConfigError, match="source.max_image_aspect"):
        load_job_config(write(tmp_path, "job.yaml", {**GOOD_JOB, "source": {"paths": ["a"], "max_image_aspect": 0.5}}))


def test_a_source_at_the_root_cannot_allow_the_whole_machine(tmp_path):
    with pytest.raises(ConfigError, match="derived from source.paths"):
        load_job_config(write(tmp_path, "job.yaml", {**GOOD_JOB, "source": {"paths": ["/input.parquet"]}}))
    source = {"paths": ["/input.parquet"], "allowed_uri_prefixes": []}
    assert load_job_config(write(tmp_path, "job.yaml", {**GOOD_JOB, "source": source})).source.uri_prefixes() == []
