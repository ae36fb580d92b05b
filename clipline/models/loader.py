"""Load any open_clip model from a hub tag, a checkpoint file (local or s3://) or the bundled tiny CLIP.

All three paths end in `open_clip.create_model_and_transforms`, so the production code path is
the one the tests exercise: the tiny model differs only in where its config and weights live.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import fsspec
import open_clip
import torch

from clipline.operators.failures import redact_uri
from clipline.schemas.config import RANDOM_WEIGHTS, TINY_ARCH, ModelConfig
from clipline.schemas.storage import StorageConfig

# The bundled tiny CLIP's files live with the demo that trained them (`clipline/demo/tiny/`); this
# is a data directory, not an import: loading it needs nothing from the demo's code.
TINY_DIR = Path(__file__).resolve().parent.parent / "demo" / "tiny"
TINY_WEIGHTS = TINY_DIR / f"{TINY_ARCH}.safetensors"
RANDOM_INIT_SEED = 0
DEFAULT_CACHE = Path(os.environ.get("CLIPLINE_CACHE", Path.home() / ".cache" / "clipline"))


@dataclass(frozen=True)
class ClipBundle:
    """A loaded model with everything needed to feed it: preprocessing, tokenizer, dimensions."""

    config: ModelConfig
    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    arch: str
    pretrained: str
    embed_dim: int
    image_size: int
    context_length: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    logit_scale: float
    device: torch.device
    autocast_dtype: torch.dtype | None

    def autocast(self) -> torch.autocast:
        """bf16 autocast on GPU; a disabled context on CPU, where fp32 is faster and exact."""
        enabled = self.autocast_dtype is not None
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=enabled)


@cache
def register_tiny_config() -> None:
    """Make `clipline-tiny` a named open_clip architecture, exactly like the built-in ones."""
    open_clip.add_model_config(TINY_DIR / f"{TINY_ARCH}.json")


def model_config_dict(arch: str) -> dict:
    """The open_clip config of an architecture, read without building the model."""
    register_tiny_config()
    config = open_clip.get_model_config(arch)
    if config is None:
        known = ", ".join(sorted(open_clip.list_models())[:8])
        raise ValueError(f"model.arch: unknown open_clip architecture {arch!r} (known: {known}, ...)")
    return config


def image_size_for(arch: str) -> int:
    """Input resolution of an architecture, so decode tasks can resize before the model loads."""
    size = model_config_dict(arch)["vision_cfg"]["image_size"]
    return int(size[0] if isinstance(size, list | tuple) else size)


def check_weights_source(config: ModelConfig, storage: StorageConfig | None = None) -> None:
    """Catch a misspelt hub tag or a missing checkpoint on the driver, before any actor loads.

    The hub itself is not contacted: open_clip's pretrained registry is local data. A remote
    checkpoint is looked up (one HEAD), so a wrong key fails here rather than in every actor.
    """
    model_config_dict(config.arch)
    if config.pretrained and config.pretrained != RANDOM_WEIGHTS and not config.arch.startswith("hf-hub:"):
        tags = open_clip.list_pretrained_tags_by_model(config.arch)
        if config.pretrained not in tags:
            raise ValueError(f"model.pretrained: {config.pretrained!r} is not a tag of {config.arch} (tags: {tags})")
    if config.checkpoint and not checkpoint_exists(config.checkpoint, storage or StorageConfig()):
        raise ValueError(f"model.checkpoint: no such file {redact_uri(config.checkpoint)}")


def checkpoint_exists(uri: str, storage: StorageConfig) -> bool:
    """Is there a file at `uri` (local path, file:// or any fsspec URL)? Storage errors say so by name."""
    if "://" not in uri or uri.startswith("file://"):
        return Path(uri.removeprefix("file://")).is_file()
    try:
        fs, path = fsspec.core.url_to_fs(uri, **storage.fsspec_options(uri))
        return fs.isfile(path)
    except Exception as exc:  # unreachable endpoint, refused credentials: name the field, not a key
        raise ValueError(f"model.checkpoint: cannot check {redact_uri(uri)}: {type(exc).__name__}") from exc


def fetch_checkpoint(uri: str, cache_dir: Path, storage: StorageConfig) -> Path:
    """Return a local path for a checkpoint, downloading remote ones once into the cache.

    The cache key hashes the URI, so two checkpoints with the same file name never collide.
    Several actors on one node may download the same checkpoint at once: each writes its own
    uniquely named temporary file and renames it over the target (atomic on one filesystem), so
    a reader only ever sees no file or a whole one, never another process's partial write.
    """
    if "://" not in uri or uri.startswith("file://"):
        path = Path(uri.removeprefix("file://"))
        if not path.is_file():
            raise FileNotFoundError(f"model.checkpoint: no such file {path}")
        return path
    target = cached_checkpoint(uri, cache_dir)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        download_atomically(uri, target, storage)
    return target


def cached_checkpoint(uri: str, cache_dir: Path) -> Path:
    """Where a remote checkpoint lives once downloaded: keyed by a hash of its URI."""
    return cache_dir / "checkpoints" / f"{hashlib.sha256(uri.encode()).hexdigest()[:16]}-{Path(uri).name}"


def download_atomically(uri: str, target: Path, storage: StorageConfig) -> None:
    """Copy `uri` to a temporary file of this process next to `target`, then rename it into place."""
    handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    try:
        with fsspec.open(uri, "rb", **storage.fsspec_options(uri)) as src, os.fdopen(handle, "wb") as dst:
            while chunk := src.read(8 * 1024 * 1024):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def weights_argument(config: ModelConfig, storage: StorageConfig | None = None) -> str | None:
    """What to pass as open_clip's `pretrained`: a hub tag, a local file path, or None (random)."""
    if config.checkpoint:
        cache_dir = Path(config.cache_dir) if config.cache_dir else DEFAULT_CACHE
        return str(fetch_checkpoint(config.checkpoint, cache_dir, storage or StorageConfig()))
    if config.pretrained == RANDOM_WEIGHTS:
        return None
    if config.pretrained:
        return config.pretrained
    return str(TINY_WEIGHTS)


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when this process was given a GPU, else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype_for(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def load_clip(config: ModelConfig, device: str | None = None, storage: StorageConfig | None = None) -> ClipBundle:
    """Build the model once (per actor) in eval mode with its eval transform and tokenizer."""
    model_config_dict(config.arch)
    target = pick_device(device)
    weights = weights_argument(config, storage)
    # Random weights (`pretrained: none`) come from a fixed seed: every actor of a run, and every
    # run, must build the same model, or embeddings from two actors would not be comparable.
    with torch.random.fork_rng(devices=[], enabled=weights is None):
        if weights is None:
            torch.manual_seed(RANDOM_INIT_SEED)
        model, _, preprocess = open_clip.create_model_and_transforms(
            config.arch, pretrained=weights, device=target, cache_dir=config.cache_dir
        )
    model.eval()
    visual_cfg = getattr(model.visual, "preprocess_cfg", {})
    return ClipBundle(
        config=config,
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(config.arch),
        arch=config.arch,
        pretrained=config.weights_label,
        embed_dim=int(model_config_dict(config.arch)["embed_dim"]),
        image_size=image_size_for(config.arch),
        context_length=int(getattr(model, "context_length", 77)),
        mean=tuple(visual_cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(visual_cfg.get("std", open_clip.OPENAI_DATASET_STD)),
        logit_scale=float(model.logit_scale.exp().item()),
        device=target,
        autocast_dtype=autocast_dtype_for(config.precision, target),
    )
