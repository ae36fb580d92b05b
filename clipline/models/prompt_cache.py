"""Prompt embeddings stored next to the table, so a policy's prompts are encoded once, not every run.

A 200-prompt policy with three templates is 600 texts through the text tower: on a CPU that is
longer than embedding hundreds of images, and every encoder actor of every scheduled run would
pay it again. The cache key covers everything the embeddings depend on: the text tower's weights
(hashed, so a retrained checkpoint under the same name never hits an old entry), the autocast
precision, the prompts and the templates. A missing, unreadable or corrupt entry is recomputed;
a cache that cannot be written costs time, never a row.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
import warnings
from collections.abc import Sequence

import fsspec
import numpy as np
import torch

from clipline.models.loader import ClipBundle
from clipline.models.zero_shot import prompt_weights
from clipline.schemas.storage import StorageConfig


def text_tower_digest(bundle: ClipBundle) -> str:
    """sha256 of every parameter outside the image tower, logit scale included (~0.15 s for ViT-B-32)."""
    hasher = hashlib.sha256(f"{bundle.arch}|{bundle.autocast_dtype}".encode())
    for name, tensor in bundle.model.state_dict().items():
        if name.startswith("visual."):
            continue
        hasher.update(name.encode())
        hasher.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return hasher.hexdigest()


class PromptCache:
    """`prompt_weights`, read from `<uri>/<key>.npy` when it was computed before.

    `uri` is a table database's prompt-bank folder (`Sidecars.prompt_banks`), so every run,
    rescore and calibration on that database shares the cache.
    """

    def __init__(self, uri: str, storage: StorageConfig | None = None) -> None:
        self.uri = uri.rstrip("/")
        self.storage = storage or StorageConfig()
        self.hits = 0
        self.misses = 0
        self._digests: dict[int, str] = {}

    def __getstate__(self) -> dict:
        """Ship only the location to workers; each worker hashes its own model."""
        return {**self.__dict__, "_digests": {}}

    def prompt_weights(self, bundle: ClipBundle, prompts: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        """Same result as `zero_shot.prompt_weights`, computed at most once per key."""
        path = f"{self.uri}/{self.key(bundle, prompts, templates)}.npy"
        fs, local = fsspec.core.url_to_fs(path, **self.storage.fsspec_options(path))
        cached = self._read(fs, local, (len(prompts), bundle.embed_dim))
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        weights = prompt_weights(bundle, prompts, templates)
        self._write(fs, local, weights)
        return weights

    def key(self, bundle: ClipBundle, prompts: Sequence[str], templates: Sequence[str]) -> str:
        digest = self._digests.get(id(bundle.model))
        if digest is None:
            digest = self._digests[id(bundle.model)] = text_tower_digest(bundle)
        texts = json.dumps({"model": digest, "prompts": list(prompts), "templates": list(templates)})
        return hashlib.sha256(texts.encode()).hexdigest()

    @staticmethod
    def _read(fs: fsspec.AbstractFileSystem, path: str, shape: tuple[int, int]) -> np.ndarray | None:
        try:
            weights = np.load(io.BytesIO(fs.cat_file(path)), allow_pickle=False)
        except FileNotFoundError:
            return None
        except Exception as exc:  # a torn or foreign file is a miss, recomputed and overwritten
            warnings.warn(f"prompt cache entry {path} unreadable ({type(exc).__name__}); recomputing", stacklevel=3)
            return None
        if weights.shape != shape or weights.dtype != np.float32:
            return None
        return weights

    @staticmethod
    def _write(fs: fsspec.AbstractFileSystem, path: str, weights: np.ndarray) -> None:
        """Write beside, then move into place, so a concurrent reader never sees half a file."""
        buffer = io.BytesIO()
        np.save(buffer, weights, allow_pickle=False)
        partial = f"{path}.{uuid.uuid4().hex}.partial"
        try:
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            fs.pipe_file(partial, buffer.getvalue())
            fs.mv(partial, path)
        except Exception as exc:
            warnings.warn(f"prompt cache entry {path} not written ({type(exc).__name__}: {exc})", stacklevel=3)
