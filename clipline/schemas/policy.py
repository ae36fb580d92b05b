"""Moderation policy: zero-shot categories as configuration, not code.

Each category is a set of positive prompts competing with negative (neutral) prompts, expanded
through templates (prompt ensembling, as in the CLIP paper). A category's score is the softmax
probability mass on its positive prompts. Thresholds turn scores into labels and decisions:
`review_threshold` labels the row (and sends moderation categories to review),
`block_threshold` blocks. Topic categories only tag rows; they never change the decision.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from clipline.schemas.base import ConfigError, StrictModel, format_validation_error, read_yaml

DEFAULT_TEMPLATES = ("a photo of {}.", "an image of {}.", "a picture of {}.")
CATEGORY_NAME_PATTERN = r"^[a-z][a-z0-9_]*$"


def _check_templates(templates: list[str]) -> list[str]:
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"template {template!r} must contain exactly one '{{}}'")
    return templates


class Category(StrictModel):
    """One zero-shot classifier: positive prompts against negative prompts."""

    name: str = Field(pattern=CATEGORY_NAME_PATTERN)
    kind: Literal["moderation", "topic"] = "moderation"
    positive: list[str] = Field(min_length=1)
    negative: list[str] = Field(min_length=1)
    templates: list[str] | None = Field(default=None, min_length=1)
    review_threshold: float = Field(ge=0.0, le=1.0)
    block_threshold: float | None = Field(default=None, ge=0.0, le=1.0)

    @field_validator("templates")
    @classmethod
    def _templates_have_slot(cls, value: list[str] | None) -> list[str] | None:
        return value if value is None else _check_templates(value)

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> Category:
        if self.block_threshold is not None:
            if self.kind == "topic":
                raise ValueError(f"category {self.name!r}: topic categories tag rows and cannot block")
            if self.block_threshold < self.review_threshold:
                raise ValueError(f"category {self.name!r}: block_threshold must be ≥ review_threshold")
        overlap = set(self.positive) & set(self.negative)
        if overlap:
            raise ValueError(f"category {self.name!r}: prompts both positive and negative: {sorted(overlap)}")
        return self


class Policy(StrictModel):
    """A versioned set of categories; its content hash lands on every row it scored."""

    name: str
    version: str
    templates: list[str] = Field(default_factory=lambda: list(DEFAULT_TEMPLATES), min_length=1)
    categories: list[Category] = Field(min_length=1)

    @field_validator("templates")
    @classmethod
    def _templates_have_slot(cls, value: list[str]) -> list[str]:
        return _check_templates(value)

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int | float) else value

    @model_validator(mode="after")
    def _unique_names(self) -> Policy:
        names = [category.name for category in self.categories]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate category names: {duplicates}")
        return self

    def templates_for(self, category: Category) -> list[str]:
        """A category's own templates win over the policy-wide ones."""
        return category.templates or self.templates

    @cached_property
    def content_hash(self) -> str:
        """sha256 of the canonical JSON form: two policies score alike iff their hashes match."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def category_names(self) -> list[str]:
        return [category.name for category in self.categories]


def load_policy(path: str | Path) -> Policy:
    """Parse and validate a policy YAML; raises ConfigError naming each bad field."""
    try:
        return Policy.model_validate(read_yaml(path))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"policy {path}")) from exc
