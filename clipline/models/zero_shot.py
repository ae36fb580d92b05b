"""Embedding helpers shared by the encoder, the classifier, search and the tests.

`prompt_weights` is open_clip's zero-shot classifier recipe as one pure function: every prompt is
expanded through every template, encoded, normalised, averaged and re-normalised (prompt
ensembling, CLIP paper §3.1.4). It runs once per actor; scoring is then a single matmul.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from clipline.models.loader import ClipBundle

TEXT_BATCH = 256


def _normalise(features: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(features.float(), dim=-1)


@torch.inference_mode()
def encode_texts(bundle: ClipBundle, texts: Sequence[str]) -> np.ndarray:
    """L2-normalised text embeddings, (len(texts), D) float32; over-long texts are truncated."""
    if not texts:
        return np.zeros((0, bundle.embed_dim), dtype=np.float32)
    chunks = []
    for start in range(0, len(texts), TEXT_BATCH):
        tokens = bundle.tokenizer(list(texts[start : start + TEXT_BATCH])).to(bundle.device)
        with bundle.autocast():
            chunks.append(_normalise(bundle.model.encode_text(tokens)))
    return torch.cat(chunks).cpu().numpy()


def over_context(bundle: ClipBundle, texts: Sequence[str]) -> np.ndarray:
    """Which texts the tokenizer will truncate (start and end tokens take two of the context slots).

    Tokenizers without a plain `encode` (hub tokenizers) report nothing rather than guess.
    """
    encode = getattr(bundle.tokenizer, "encode", None)
    if encode is None:
        return np.zeros(len(texts), dtype=bool)
    return np.array([len(encode(text)) > bundle.context_length - 2 for text in texts], dtype=bool)


def pixels_to_device(bundle: ClipBundle, pixels: np.ndarray) -> torch.Tensor:
    """A uint8 (N, H, W, 3) array → a uint8 (N, 3, H, W) tensor on the model's device."""
    batch = torch.from_numpy(np.array(pixels, copy=True))
    if bundle.device.type == "cuda":  # page-locked, so the copy to the GPU is one DMA, not staged
        batch = batch.pin_memory()
    return batch.to(bundle.device, non_blocking=True).permute(0, 3, 1, 2)


@torch.inference_mode()
def encode_pixels(bundle: ClipBundle, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
    """Embed uint8 pixels already resized and cropped to the model's input size.

    `pixels` is a (N, H, W, 3) array from the decode tasks, or a (N, 3, H, W) tensor already on
    the model's device (JPEGs decoded there). Shipping uint8 through Ray's object store is 4x
    smaller than float32; the normalisation that open_clip's transform would do happens here, on
    the encoder's device.
    """
    if len(pixels) == 0:
        return np.zeros((0, bundle.embed_dim), dtype=np.float32)
    batch = pixels if isinstance(pixels, torch.Tensor) else pixels_to_device(bundle, pixels)
    batch = batch.float().div_(255.0)
    mean = torch.tensor(bundle.mean, device=bundle.device).view(1, 3, 1, 1)
    std = torch.tensor(bundle.std, device=bundle.device).view(1, 3, 1, 1)
    batch = (batch - mean) / std
    with bundle.autocast():
        features = bundle.model.encode_image(batch)
    return _normalise(features).cpu().numpy()


@torch.inference_mode()
def encode_images(bundle: ClipBundle, images: Sequence[Image.Image]) -> np.ndarray:
    """Embed PIL images through open_clip's own eval transform (the reference path)."""
    if not images:
        return np.zeros((0, bundle.embed_dim), dtype=np.float32)
    batch = torch.stack([bundle.preprocess(image) for image in images]).to(bundle.device)
    with bundle.autocast():
        features = bundle.model.encode_image(batch)
    return _normalise(features).cpu().numpy()


def prompt_weights(bundle: ClipBundle, prompts: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """One L2-normalised row per prompt, averaged over all templates (prompt ensembling)."""
    expanded = [template.format(prompt) for prompt in prompts for template in templates]
    embeddings = encode_texts(bundle, expanded).reshape(len(prompts), len(templates), -1)
    mean = embeddings.mean(axis=1)
    return (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)
