"""Building blocks shared by every config and policy model: strictness and readable errors."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class StrictModel(BaseModel):
    """Base for config sections: a misspelt key is an error, not a silently ignored setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the YAML."""


def format_validation_error(error: ValidationError, where: str) -> str:
    """Turn pydantic's error list into lines that start with the dotted field path."""
    lines = [f"invalid {where}:"]
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  {field}: {message}")
    return "\n".join(lines)


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, failing with the file name when it is missing or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return data
