"""Embedding helpers shared by the encoder, the classifier, search and the tests.

`prompt_weights` is open_clip's zero-shot classifier recipe as one pure function: every prompt is
expanded through every template, encoded, normalised, averaged and re-normalised (prompt
ensembling, CLIP paper §3.1.4). It runs once per actor; scoring is then a single matmul.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import open_clip
import torch
from open_clip.transformer import text_global_pool
from PIL import Image

from clipline.models.loader import ClipBundle

TEXT_BATCH = 256
# Text is cut to context_length x this many characters before tokenizing: an English BPE token is
# 4-5 characters, so the cut never reaches the tokens a context holds, while a caption of several
# MB no longer runs through the tokenizer's text cleaning and BPE whole (~3 s per MB). The stored
# text stays whole; a text longer than the cut is flagged as truncated.
MAX_CHARS_PER_TOKEN = 32


def tokenizer_input(bundle: ClipBundle, text: str) -> str:
    """The part of `text` the tokenizer sees: enough for a full context, never megabytes."""
    return text[: bundle.context_length * MAX_CHARS_PER_TOKEN]


TRIMMABLE_POOLS = ("argmax", "eos")


def _normalise(features: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(features.float(), dim=-1)


def _pooled_positions(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Where each text's features are pooled from: its end-of-text token."""
    if model.text_pool_type == "argmax":
        return tokens.argmax(dim=-1)
    return (tokens == model.text_eos_id).int().argmax(dim=-1)


def encode_text_tokens(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text(tokens)`, run only up to the last end-of-text token of the batch.

    The tokenizer pads every text to the context length (77), but CLIP's text tower is causal and
    pools at the end-of-text token, so the padding after it never reaches the result: dropping it
    gives the same features (to float rounding) for a fraction of the work. A short query is ~10
    tokens: on a CPU, ViT-B-32's text tower answers it several times faster. Models whose text
    tower is not a causal transformer pooled at end-of-text (HF text towers, `last`/`first`
    pooling) run as they are.
    """
    trimmable = (
        isinstance(model, open_clip.CLIP)
        and getattr(model, "attn_mask", None) is not None
        and model.text_pool_type in TRIMMABLE_POOLS
        and (model.text_pool_type != "eos" or getattr(model, "text_eos_id", None) is not None)
    )
    if not trimmable:
        return model.encode_text(tokens)
    length = int(_pooled_positions(model, tokens).max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is None:
        return x
    return model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection


@torch.inference_mode()
def encode_texts(bundle: ClipBundle, texts: Sequence[str]) -> np.ndarray:
    """L2-normalised text embeddings, (len(texts), D) float32; over-long texts are truncated."""
    if not texts:
        return np.zeros((0, bundle.embed_dim), dtype=np.float32)
    chunks = []
    for start in range(0, len(texts), TEXT_BATCH):
        cut = [tokenizer_input(bundle, text) for text in texts[start : start + TEXT_BATCH]]
        tokens = bundle.tokenizer(cut).to(bundle.device)
        with bundle.autocast():
            chunks.append(_normalise(encode_text_tokens(bundle.model, tokens)))
    return torch.cat(chunks).cpu().numpy()


def over_context(bundle: ClipBundle, texts: Sequence[str]) -> np.ndarray:
    """Which texts lose tokens: longer than the cut, or over the context once tokenized (start and
    end tokens take two of the context slots).

    Tokenizers without a plain `encode` (hub tokenizers) report only the cut rather than guess.
    """
    encode = getattr(bundle.tokenizer, "encode", None)
    limit = bundle.context_length - 2

    def truncated(text: str) -> bool:
        cut = tokenizer_input(bundle, text)
        return len(cut) < len(text) or (encode is not None and len(encode(cut)) > limit)

    return np.array([truncated(text) for text in texts], dtype=bool)


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
