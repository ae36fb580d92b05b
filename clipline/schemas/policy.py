"""Moderation policy: zero-shot categories as configuration, not code.

Each category is a set of positive prompts competing with negative (neutral) prompts, expanded
through templates (prompt ensembling, as in the CLIP paper). A category's score is the softmax
probability mass on its positive prompts. Thresholds turn scores into labels and decisions:
`review_threshold` labels the row (and sends moderation categories to review),
`block_threshold` blocks. Topic categories only tag rows; they never change the decision.

Three extensions, all optional so a policy without them hashes exactly as before:

- `rules`: when one category fires, others get stricter (the Stable-Diffusion safety checker's
  "special care" concepts). `{when: minor, at: 0.5, tighten: {nudity: 0.3, "*": 0.1}}` lowers the
  review and block thresholds of `nudity` by 0.3 and of every other moderation category by 0.1 on
  rows whose `minor` score is ≥ 0.5. Deltas, not factors: a delta is read directly against the
  score scale the thresholds are written in. Rules see the raw scores only, so they never chain.
- `head`: a category may be scored by a trained linear head (`clipline train-head`) instead of its
  prompts. `head: heads.json` names a heads file (relative to the policy YAML); the key is the
  category's name. The weights are loaded when the policy is loaded, so the policy object carries
  them to every worker, and the content hash covers the weights, not the file's path.
- `hash_lists`: known-bad PDQ hash lists (`schemas/hash_lists.py`). A row whose hash is within a
  list's `max_distance` gets the list's `action`, whatever its CLIP scores say. Lists are read and
  checked when the policy is loaded; the content hash covers each list's sha256, not its path.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import cached_property
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from clipline.schemas.base import ConfigError, StrictModel, format_validation_error, read_yaml
from clipline.schemas.hash_lists import HashListSpec
from clipline.schemas.storage import StorageConfig

DEFAULT_TEMPLATES = ("a photo of {}.", "an image of {}.", "a picture of {}.")
CATEGORY_NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
ALL_MODERATION = "*"
HEADS_FORMAT = "clipline-heads/1"


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
    head: str | None = Field(default=None, min_length=1, description="heads JSON file; the key is the category name")

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


class Rule(StrictModel):
    """When `when` scores ≥ `at`, lower the thresholds of the `tighten` categories by their delta.

    `"*"` in `tighten` means every moderation category except `when` itself. Where several fired
    rules name one category, the largest delta applies (deltas never add up, so a row can't be
    tightened to a zero threshold by accident).
    """

    when: str
    at: float = Field(ge=0.0, le=1.0)
    tighten: dict[str, float] = Field(min_length=1)

    @field_validator("tighten")
    @classmethod
    def _deltas_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        for target, delta in value.items():
            if not 0.0 < delta <= 1.0:
                raise ValueError(f"tighten.{target}: delta {delta} must be in (0, 1]")
        return value


class LinearHead(StrictModel):
    """A logistic-regression head on the embedding: score = sigmoid(embedding · weights + bias)."""

    weights: list[float] = Field(min_length=1)
    bias: float
    model: str = Field(description="arch/weights of the model whose embeddings it was trained on")

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps([self.weights, self.bias, self.model]).encode()).hexdigest()


def read_heads(path: str | Path) -> dict[str, LinearHead]:
    """Heads by category name from a heads JSON file (as `clipline train-head` writes it)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"heads file not found: {path}")
    try:
        data = json.loads(path.read_text())
        if data.get("format") != HEADS_FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {HEADS_FORMAT!r}")
        model = data["model"]
        return {
            name: LinearHead(weights=head["weights"], bias=head["bias"], model=model)
            for name, head in data["heads"].items()
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"heads file {path} is not a clipline heads file: {exc}") from exc


class Policy(StrictModel):
    """A versioned set of categories; its content hash lands on every row it scored."""

    name: str
    version: str
    templates: list[str] = Field(default_factory=lambda: list(DEFAULT_TEMPLATES), min_length=1)
    categories: list[Category] = Field(min_length=1)
    rules: list[Rule] = Field(default_factory=list)
    hash_lists: list[HashListSpec] = Field(default_factory=list)
    _heads: dict[str, LinearHead] = PrivateAttr(default_factory=dict)

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
        for what, names in (
            ("category", [category.name for category in self.categories]),
            ("hash list", [spec.name for spec in self.hash_lists]),
        ):
            duplicates = sorted({name for name in names if names.count(name) > 1})
            if duplicates:
                raise ValueError(f"duplicate {what} names: {duplicates}")
        return self

    @model_validator(mode="after")
    def _rules_name_categories(self) -> Policy:
        kinds = {category.name: category.kind for category in self.categories}
        for index, rule in enumerate(self.rules):
            if rule.when not in kinds:
                raise ValueError(f"rules.{index}.when: no category {rule.when!r}")
            for target in rule.tighten:
                if target != ALL_MODERATION and kinds.get(target) != "moderation":
                    raise ValueError(
                        f"rules.{index}.tighten: {target!r} is not a moderation category of this policy "
                        f"(or {ALL_MODERATION!r} for all of them)"
                    )
        return self

    @model_validator(mode="after")
    def _load_heads(self) -> Policy:
        files: dict[str, dict[str, LinearHead]] = {}
        for category in self.categories:
            if category.head is None:
                continue
            if category.head not in files:
                files[category.head] = read_heads(category.head)
            head = files[category.head].get(category.name)
            if head is None:
                raise ValueError(f"category {category.name!r}: heads file {category.head} has no head for it")
            self._heads[category.name] = head
        return self

    def head_for(self, name: str) -> LinearHead | None:
        """The trained head a category is scored with, or None when it uses its prompts."""
        return self._heads.get(name)

    def check_heads(self, model: str, dim: int) -> None:
        """Refuse heads trained on another model's embeddings: their scores would be noise."""
        for name, head in self._heads.items():
            if head.model != model or len(head.weights) != dim:
                raise ConfigError(
                    f"category {name!r}: its head was trained on {head.model} ({len(head.weights)}-d embeddings), "
                    f"the table holds {model} ({dim}-d); retrain it with `clipline train-head`"
                )

    @cached_property
    def category_index(self) -> dict[str, int]:
        return {category.name: index for index, category in enumerate(self.categories)}

    def templates_for(self, category: Category) -> list[str]:
        """A category's own templates win over the policy-wide ones."""
        return category.templates or self.templates

    def canonical(self) -> dict:
        """The content that decides scores. Unused extensions are left out (a policy without rules,
        heads or hash lists hashes as it did before they existed); a head is its weights' digest and
        a hash list its settings and its file's sha256, not their paths."""
        data = self.model_dump(mode="json")
        if not data["rules"]:
            del data["rules"]
        if self.hash_lists:
            data["hash_lists"] = [spec.canonical() for spec in self.hash_lists]
        else:
            del data["hash_lists"]
        for category in data["categories"]:
            if category["head"] is None:
                del category["head"]
            else:
                category["head"] = self._heads[category["name"]].digest
        return data

    @cached_property
    def content_hash(self) -> str:
        """sha256 of the canonical JSON form: two policies score alike iff their hashes match."""
        canonical = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def category_names(self) -> list[str]:
        return [category.name for category in self.categories]


def _local_path(value: object, base: Path) -> object:
    """A relative local path made absolute against `base`; URIs and anything else left alone."""
    if isinstance(value, str) and value and "://" not in value and not Path(value).is_absolute():
        return str((base / value).resolve())
    return value


def _resolve_paths(data: dict, base: Path) -> dict:
    """Head and hash-list paths in a policy YAML are relative to the YAML, so a policy travels with its files."""
    resolved = dict(data)
    for key, path_key in (("categories", "head"), ("hash_lists", "uri")):
        items = data.get(key)
        if isinstance(items, list):
            resolved[key] = [
                {**item, path_key: _local_path(item[path_key], base)}
                if isinstance(item, dict) and path_key in item
                else item
                for item in items
            ]
    return resolved


def load_policy(path: str | Path, storage: StorageConfig | None = None) -> Policy:
    """Parse and validate a policy YAML, reading its heads and hash lists (s3:// lists with `storage`);
    raises ConfigError naming each bad field, and a bad hash list's file and lines."""
    data = _resolve_paths(read_yaml(path), Path(path).parent.resolve())
    try:
        return Policy.model_validate(data, context={"storage": storage or StorageConfig()})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"policy {path}")) from exc


def write_policy(policy: Policy, path: str | Path, header: str = "") -> Path:
    """Write a policy as YAML that `load_policy` reads back to the same content hash.

    Head and local hash-list paths are written relative to the new file, so the YAML and its files
    move together.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = policy.model_dump(mode="json", exclude_none=True)
    for key in ("rules", "hash_lists"):
        if not data[key]:
            del data[key]
    for category in data["categories"]:
        if "head" in category:
            category["head"] = os.path.relpath(Path(category["head"]).resolve(), path.parent.resolve())
    for spec in data.get("hash_lists", []):
        if "://" not in spec["uri"]:
            spec["uri"] = os.path.relpath(Path(spec["uri"]).resolve(), path.parent.resolve())
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    path.write_text(comment + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120))
    return path
