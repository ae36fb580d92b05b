"""Every example config in the repository parses, and its policy parses: docs that cannot rot."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipline.models.loader import check_weights_source
from clipline.schemas.config import load_job_config
from clipline.schemas.policy import load_policy

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_job_configs_validate(path):
    config = load_job_config(path)
    policy = load_policy(config.policy)
    assert policy.categories
    check_weights_source(config.model)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "policies").glob("*.yaml")), ids=lambda p: p.name)
def test_policies_validate(path):
    assert load_policy(path).content_hash
