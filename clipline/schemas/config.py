"""Job configuration: everything a run needs, validated before any cluster work starts.

A scheduled `ray job submit` that fails after the cluster spun up wastes money and hides the
real mistake in worker logs, so every field is checked here, unknown keys are rejected, and
errors name the dotted path of the offending field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from clipline.schemas.base import ConfigError, StrictModel, format_validation_error, read_yaml
from clipline.schemas.storage import StorageConfig
from clipline.schemas.uri_prefixes import directory_of_source, parse_prefix

TINY_ARCH = "clipline-tiny"
RANDOM_WEIGHTS = "none"
# A run id names staging tables, claims and manifest files: one path segment, no tricks.
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ColumnsConfig(StrictModel):
    """Names of the input parquet columns; any of them may be absent from a given file."""

    id: str = "id"
    image: str = "image"
    image_uri: str = "image_uri"
    text: str = "text"


class SourceConfig(StrictModel):
    """Where input parquet lives and how rows are read from it."""

    paths: list[str] = Field(min_length=1, description="Parquet files or directories, local or s3://")
    columns: ColumnsConfig = ColumnsConfig()
    keep_columns: list[str] = Field(
        default_factory=list, description="Extra input columns copied into the row's `metadata` JSON"
    )
    max_image_pixels: int = Field(
        default=64_000_000, gt=0, description="Images declaring more pixels are refused before decode"
    )
    max_image_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    max_image_aspect: float = Field(
        default=20.0,
        ge=1.0,
        description="Long side over short side beyond which an image is refused (`image_bad_aspect`): "
        "the centre crop would keep under 1/20 of it",
    )
    allowed_uri_prefixes: list[str] | None = Field(
        default=None,
        description="Where `image_uri` may point (local directories, s3://bucket/prefix/, http(s)://host/path/); "
        "null = the directories of `paths`; [] = no `image_uri` is read",
    )

    @field_validator("paths", mode="before")
    @classmethod
    def _one_path_is_a_list(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _prefixes_parse(self) -> SourceConfig:
        """The prefixes in force, configured or derived from `paths`, must each be a safe prefix."""
        for prefix in self.uri_prefixes():
            try:
                parse_prefix(prefix)
            except ValueError as exc:
                derived = "" if self.allowed_uri_prefixes is not None else " (derived from source.paths; set it)"
                raise ValueError(f"source.allowed_uri_prefixes{derived}: {exc}") from None
        return self

    def uri_prefixes(self) -> list[str]:
        """The prefixes in force: as configured, else each source directory (a file's parent)."""
        if self.allowed_uri_prefixes is not None:
            return list(self.allowed_uri_prefixes)
        return list(dict.fromkeys(directory_of_source(path) for path in self.paths))


class ModelConfig(StrictModel):
    """Which open_clip model to load and from where.

    Exactly one weight source: a hub `pretrained` tag, a `checkpoint` file (local or s3://), or
    `pretrained: none` for random weights (benchmarks). The bundled tiny model needs neither.
    """

    arch: str = TINY_ARCH
    pretrained: str | None = None
    checkpoint: str | None = None
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    cache_dir: str | None = None

    @model_validator(mode="after")
    def _one_weight_source(self) -> ModelConfig:
        if self.pretrained and self.checkpoint:
            raise ValueError("set model.pretrained or model.checkpoint, not both")
        if self.arch != TINY_ARCH and not (self.pretrained or self.checkpoint):
            raise ValueError(
                f"model.pretrained: arch {self.arch!r} needs a pretrained tag, a checkpoint, "
                f"or pretrained: {RANDOM_WEIGHTS!r} for random weights"
            )
        return self

    @property
    def weights_label(self) -> str:
        """What lands in the table's `pretrained` column: where the weights came from."""
        if self.checkpoint:
            return self.checkpoint
        return self.pretrained or "bundled"


class ResourcesConfig(StrictModel):
    """How the work is spread over the cluster.

    `encoders: null` sizes the actor pool from the cluster, always leaving CPUs for the read and
    decode tasks: an actor pool holding every CPU starves them and the run never progresses.
    """

    batch_size: int = Field(default=64, gt=0, description="Rows per encoder batch")
    decode_batch_size: int = Field(default=64, gt=0)
    encoders: int | None = Field(default=None, gt=0, description="Encoder actors; null = from cluster")
    encoder_cpus: float = Field(default=1.0, gt=0)
    torch_threads: int | None = Field(
        default=None,
        gt=0,
        description="Intra-op threads per encoder; null = the cluster's CPUs shared among CPU encoders",
    )
    encoder_gpus: float | None = Field(default=None, ge=0, description="GPUs per encoder; null = 1 if any")
    decode_cpus: float = Field(default=1.0, gt=0)
    encoder_memory_gb: float = Field(
        default=1.0,
        gt=0,
        description="RAM reserved per encoder for its model, so actors are never packed beyond memory",
    )
    jpeg_decode: Literal["auto", "tasks", "encoder"] = Field(
        default="auto",
        description=(
            "Where JPEGs become pixels: `tasks` = Pillow in the CPU decode tasks; `encoder` = torchvision's "
            "decode_jpeg inside the encoder actor, on its GPU if it has one, so only bytes cross the object "
            "store; `auto` = `encoder` when the encoders have GPUs. Other formats always decode in the tasks."
        ),
    )


class SinkConfig(StrictModel):
    """The LanceDB database and table every row lands in."""

    uri: str
    table: str = "media"
    commit_rows: int = Field(
        default=20_000, gt=0, description="Rows per fragment the workers write (staging, then the table)"
    )
    maintain_after_run: bool = Field(default=False, description="Refresh indexes and compact after the commit")
    claim_ttl_hours: float = Field(
        default=6.0, gt=0, description="After this long, a crashed run's claim on an input file is taken over"
    )
    update_existing_ids: bool = Field(
        default=False,
        description="A given id already in the table from another source replaces that row (else: duplicate_id)",
    )
    thumbnails: bool = Field(
        default=True, description="Keep a small WebP of each image in the `thumbnail` column (a few KB a row)"
    )


class DedupConfig(StrictModel):
    """Tiered dedup: exact by content hash, perceptual by PDQ hash, near by image-embedding cosine
    (within the run and against the table)."""

    enabled: bool = True
    near_threshold: float = Field(
        default=0.95, gt=0.0, le=1.0, description="Cosine at or above which images are near duplicates"
    )
    pdq_distance: int = Field(
        default=16,
        ge=0,
        le=64,
        description="PDQ Hamming distance at or below which images are duplicates (re-encoded copies)",
    )


class JobConfig(StrictModel):
    """A whole run: source → model → policy → sink."""

    source: SourceConfig
    model: ModelConfig = ModelConfig()
    policy: str | None = Field(default=None, description="Policy YAML; null = embed only, no scores or decisions")
    sink: SinkConfig
    resources: ResourcesConfig = ResourcesConfig()
    storage: StorageConfig = StorageConfig()
    dedup: DedupConfig = DedupConfig()
    run_id: str | None = Field(default=None, description="Letters, digits, `.`, `_`, `-`; null = generated")

    @field_validator("run_id")
    @classmethod
    def _run_id_is_one_safe_name(cls, value: str | None) -> str | None:
        if value is not None and not RUN_ID_PATTERN.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a safe run id: 1-128 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        return value


def _resolve_local(value: str, base: Path) -> str:
    """Make a relative local path relative to the config file, leaving URLs alone."""
    if "://" in value or Path(value).is_absolute():
        return value
    return str((base / value).resolve())


def resolve_relative_paths(data: dict, base: Path) -> dict:
    """Paths in a job YAML are relative to the YAML itself, so a config can travel with its data."""
    data = dict(data)
    if isinstance(data.get("policy"), str):
        data["policy"] = _resolve_local(data["policy"], base)
    source = data.get("source")
    if isinstance(source, dict):
        paths = source.get("paths")
        if isinstance(paths, str):
            paths = [paths]
        if isinstance(paths, list):
            source = {**source, "paths": [_resolve_local(p, base) for p in paths]}
        prefixes = source.get("allowed_uri_prefixes")
        if isinstance(prefixes, list):
            source = {**source, "allowed_uri_prefixes": [_resolve_local(p, base) for p in prefixes]}
        data["source"] = source
    sink = data.get("sink")
    if isinstance(sink, dict) and isinstance(sink.get("uri"), str):
        data["sink"] = {**sink, "uri": _resolve_local(sink["uri"], base)}
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("checkpoint"), str):
        data["model"] = {**model, "checkpoint": _resolve_local(model["checkpoint"], base)}
    return data


def load_job_config(path: str | Path) -> JobConfig:
    """Parse and validate a job YAML; raises ConfigError naming each bad field."""
    path = Path(path)
    data = resolve_relative_paths(read_yaml(path), path.parent.resolve())
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"job config {path}")) from exc
