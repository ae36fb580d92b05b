"""Load any open_clip model from a hub tag, a checkpoint file (local or s3://) or the bundled tiny CLIP.

All three paths go through `open_clip.create_model`, so the production code path is the one the
tests exercise: the tiny model differs only in where its config and weights live.

Building a model that way costs seconds per actor (random initialisation of every layer, then
the checkpoint read and copied over it: about 3 s of CPU for ViT-B-32), paid again by every actor
of every run. So the first build also writes the finished tensors to a safetensors file in the
cache directory, keyed by everything that decides them (architecture config, weights source,
open_clip and torch versions); later builds lay out the modules on the meta device, which costs
no memory and no initialisation, and assign the cached tensors to them, memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import fsspec
import open_clip
import torch
from open_clip.model import set_model_preprocess_cfg
from open_clip.transform import PreprocessCfg, image_transform_v2
from safetensors import safe_open
from safetensors.torch import save_file

from clipline.operators.failures import redact_uri
from clipline.schemas.config import RANDOM_WEIGHTS, TINY_ARCH, ModelConfig
from clipline.schemas.storage import StorageConfig

# The bundled tiny CLIP's files live with the demo that trained them (`clipline/demo/tiny/`); this
# is a data directory, not an import: loading it needs nothing from the demo's code.
TINY_DIR = Path(__file__).resolve().parent.parent / "demo" / "tiny"
TINY_WEIGHTS = TINY_DIR / f"{TINY_ARCH}.safetensors"
RANDOM_INIT_SEED = 0
DEFAULT_CACHE = Path(os.environ.get("CLIPLINE_CACHE", Path.home() / ".cache" / "clipline"))
# Bumped when what a materialised file holds changes, so old files are never read as new ones.
MATERIALISED_FORMAT = 1
log = logging.getLogger(__name__)


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
    built_from: str = "open_clip"  # or "cache": the materialised tensors of an earlier build

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


def cache_root(config: ModelConfig) -> Path:
    return Path(config.cache_dir) if config.cache_dir else DEFAULT_CACHE


def weights_argument(config: ModelConfig, storage: StorageConfig | None = None) -> str | None:
    """What to pass as open_clip's `pretrained`: a hub tag, a local file path, or None (random)."""
    if config.checkpoint:
        return str(fetch_checkpoint(config.checkpoint, cache_root(config), storage or StorageConfig()))
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


def weights_identity(weights: str | None) -> str | dict:
    """What names the weights: the random seed, a hub tag, or a local file as it is now.

    A file is named by path, size and modification time rather than a hash of its content:
    hashing a checkpoint of gigabytes would cost what the cache saves.
    """
    if weights is None:
        return f"random-init-seed-{RANDOM_INIT_SEED}"
    path = Path(weights)
    if path.is_file():
        stat = path.stat()
        return {"file": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {"tag": weights}


def materialised_path(config: ModelConfig, weights: str | None) -> Path | None:
    """Where the built model's tensors are cached; None for hub-configured archs, which the cache does not key."""
    if ":" in config.arch:  # hf-hub:/local-dir: configs come from outside the registry
        return None
    key = {
        "format": MATERIALISED_FORMAT,
        "arch": config.arch,
        "model_cfg": model_config_dict(config.arch),
        "weights": weights_identity(weights),
        "open_clip": open_clip.__version__,
        "torch": torch.__version__.split("+")[0],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root(config) / "materialised" / f"{config.arch}-{digest}.safetensors"


@contextmanager
def quiet_open_clip() -> Iterator[None]:
    """Drop open_clip's "initialized randomly" warning while laying out a model whose weights come next."""
    root = logging.getLogger()
    hide = logging.Filter("open_clip-silenced")  # matches no logger name: every record is dropped
    root.addFilter(hide)
    try:
        yield
    finally:
        root.removeFilter(hide)


def tensors_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by name, non-persistent buffers (such as the causal mask) included."""
    return {name: tensor.detach() for name, tensor in [*model.named_parameters(), *model.named_buffers()]}


def save_materialised(model: torch.nn.Module, path: Path) -> None:
    """Write the model's tensors and preprocessing config; a failure only costs the next actor a full build."""
    tensors = {name: tensor.cpu().contiguous() for name, tensor in tensors_of(model).items()}
    metadata = {"preprocess_cfg": json.dumps(model.visual.preprocess_cfg)}
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, partial, metadata=metadata)
        partial.replace(path)  # atomic: concurrent actors each write their own file, the last one wins
    except (OSError, RuntimeError, ValueError) as exc:  # read-only cache, full disk, shared tensors
        partial.unlink(missing_ok=True)
        log.warning("model cache not written to %s: %s", path, exc)


def assign_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Put each named tensor in place of the module's meta placeholder; every placeholder must be filled."""
    wanted = tensors_of(model)
    if wanted.keys() != tensors.keys():
        raise ValueError(f"cached tensors differ from the model's: {sorted(wanted.keys() ^ tensors.keys())[:5]}")
    for name, tensor in tensors.items():
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        if attr in owner._parameters:
            owner._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=wanted[name].requires_grad)
        else:
            owner._buffers[attr] = tensor
    left = [
        f"{module_name}.{attr}"
        for module_name, module in model.named_modules()
        for attr, value in vars(module).items()
        if isinstance(value, torch.Tensor) and value.is_meta
    ]
    if left or any(tensor.is_meta for tensor in tensors_of(model).values()):
        raise ValueError(f"tensors not held by the cache: {left[:5]}")


def build_from_cache(arch: str, path: Path) -> torch.nn.Module | None:
    """The model laid out on the meta device (no memory, no initialisation), then given the cached tensors."""
    if not path.is_file():
        return None
    try:
        with safe_open(path, framework="pt") as cached:
            tensors = {name: cached.get_tensor(name) for name in cached.keys()}  # noqa: SIM118 (not iterable)
            # JSON turned open_clip's tuples (mean, std, size) into lists; give them back as tuples.
            preprocess_cfg = {
                key: tuple(value) if isinstance(value, list) else value
                for key, value in json.loads(cached.metadata()["preprocess_cfg"]).items()
            }
        with torch.device("meta"), quiet_open_clip():
            model = open_clip.create_model(arch, pretrained=None, device="meta")
        assign_tensors(model, tensors)
    except Exception as exc:  # a stale or damaged file: build the model the slow way and rewrite it
        log.warning("model cache %s not used: %s: %s", path, type(exc).__name__, exc)
        return None
    set_model_preprocess_cfg(model, preprocess_cfg)
    return model


def build_with_open_clip(config: ModelConfig, weights: str | None) -> torch.nn.Module:
    """open_clip's own build: initialise, then load the weights (seeded when there are none)."""
    # Random weights (`pretrained: none`) come from a fixed seed: every actor of a run, and every
    # run, must build the same model, or embeddings from two actors would not be comparable.
    with torch.random.fork_rng(devices=[], enabled=weights is None):
        if weights is None:
            torch.manual_seed(RANDOM_INIT_SEED)
        return open_clip.create_model(config.arch, pretrained=weights, cache_dir=config.cache_dir)


def build_model(config: ModelConfig, weights: str | None) -> tuple[torch.nn.Module, str]:
    """The model on the CPU, from the cache when an earlier build left it there; and which way it was built."""
    cached = materialised_path(config, weights)
    model = build_from_cache(config.arch, cached) if cached else None
    if model is not None:
        return model, "cache"
    model = build_with_open_clip(config, weights)
    if cached:
        save_materialised(model, cached)
    return model, "open_clip"


def load_clip(config: ModelConfig, device: str | None = None, storage: StorageConfig | None = None) -> ClipBundle:
    """Build the model once (per actor) in eval mode with its eval transform and tokenizer."""
    model_config_dict(config.arch)
    target = pick_device(device)
    model, built_from = build_model(config, weights_argument(config, storage))
    model = model.to(target).eval()
    visual_cfg = model.visual.preprocess_cfg
    return ClipBundle(
        config=config,
        model=model,
        preprocess=image_transform_v2(PreprocessCfg(**visual_cfg), is_train=False),
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
        built_from=built_from,
    )
