"""Text features computed only up to the last end-of-text token equal open_clip's own, padded to 77."""

from __future__ import annotations

import pytest
import torch

from clipline.models.loader import load_clip
from clipline.models.zero_shot import encode_text_tokens
from clipline.schemas.config import ModelConfig

TEXTS = ["a red star", "a photo of a small blue circle on a patterned background, drawn by hand", "x"]


@pytest.mark.parametrize(
    "config", [ModelConfig(), ModelConfig(arch="ViT-B-32", pretrained="none")], ids=["tiny", "vit-b-32"]
)
@torch.inference_mode()
def test_trimmed_text_features_equal_the_full_context_ones(config):
    bundle = load_clip(config, device="cpu")
    tokens = bundle.tokenizer(TEXTS)
    lengths = []
    hook = bundle.model.transformer.register_forward_hook(lambda module, args, out: lengths.append(args[0].shape[1]))
    trimmed = encode_text_tokens(bundle.model, tokens)
    hook.remove()
    assert lengths == [int(tokens.argmax(dim=-1).max()) + 1] and lengths[0] < tokens.shape[1]  # padding skipped
    assert torch.allclose(trimmed, bundle.model.encode_text(tokens), atol=1e-5)
    # one text at a time (a query) trims further and still agrees
    assert torch.allclose(encode_text_tokens(bundle.model, tokens[2:]), bundle.model.encode_text(tokens[2:]), atol=1e-5)
