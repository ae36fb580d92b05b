"""The prompt cache returns what encoding would, and keys on everything the embeddings depend on."""

from __future__ import annotations

import numpy as np
import pytest

from clipline.models import prompt_cache
from clipline.models.loader import load_clip
from clipline.models.prompt_cache import PromptCache
from clipline.models.zero_shot import prompt_weights
from clipline.schemas.config import ModelConfig
from clipline.table.store import Sidecars

PROMPTS = ["a red star", "a blue circle", "a green square"]
TEMPLATES = ["a photo of {}.", "a drawing of {}."]


@pytest.fixture(scope="module")
def tiny():
    return load_clip(ModelConfig())


@pytest.fixture
def encodings(monkeypatch):
    """Counts real encodings (the function still runs)."""
    calls = []

    def counting(bundle, prompts, templates):
        calls.append(list(prompts))
        return prompt_weights(bundle, prompts, templates)

    monkeypatch.setattr(prompt_cache, "prompt_weights", counting)
    return calls


def test_second_lookup_reads_the_stored_embeddings(tmp_path, tiny, encodings):
    expected = prompt_weights(tiny, PROMPTS, TEMPLATES)
    first = PromptCache(Sidecars(str(tmp_path)).prompt_banks).prompt_weights(tiny, PROMPTS, TEMPLATES)
    again = PromptCache(Sidecars(str(tmp_path)).prompt_banks)  # a new actor, same table
    second = again.prompt_weights(tiny, PROMPTS, TEMPLATES)
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(second, expected)
    assert len(encodings) == 1 and (again.hits, again.misses) == (1, 0)
    assert [p.suffix for p in (tmp_path / "_clipline" / "prompt_banks").iterdir()] == [".npy"]


def test_other_prompts_templates_or_weights_miss(tmp_path, tiny, encodings):
    cache = PromptCache(str(tmp_path))
    cache.prompt_weights(tiny, PROMPTS, TEMPLATES)
    cache.prompt_weights(tiny, [*PROMPTS, "a cat"], TEMPLATES)
    cache.prompt_weights(tiny, PROMPTS, TEMPLATES[:1])
    random_weights = load_clip(ModelConfig(pretrained="none"))
    other = cache.prompt_weights(random_weights, PROMPTS, TEMPLATES)
    np.testing.assert_allclose(other, prompt_weights(random_weights, PROMPTS, TEMPLATES), atol=1e-6)
    assert len(encodings) == 4 and cache.misses == 4
    assert len(list(tmp_path.glob("*.npy"))) == 4


def test_corrupt_or_wrong_shape_entry_is_recomputed(tmp_path, tiny, encodings):
    cache = PromptCache(str(tmp_path))
    path = tmp_path / f"{cache.key(tiny, PROMPTS, TEMPLATES)}.npy"
    path.write_bytes(b"torn write")
    with pytest.warns(UserWarning, match="unreadable"):
        recomputed = cache.prompt_weights(tiny, PROMPTS, TEMPLATES)
    np.testing.assert_array_equal(np.load(path), recomputed)
    np.save(path, np.zeros((2, 3), dtype=np.float32))
    np.testing.assert_array_equal(cache.prompt_weights(tiny, PROMPTS, TEMPLATES), recomputed)
    assert len(encodings) == 2 and not list(tmp_path.glob("*.partial"))


def test_unwritable_cache_warns_and_still_returns_embeddings(tmp_path, tiny):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = PromptCache(str(blocker / "banks"))
    with pytest.warns(UserWarning) as warned:
        weights = cache.prompt_weights(tiny, PROMPTS, TEMPLATES)
    assert any("not written" in str(warning.message) for warning in warned)
    np.testing.assert_array_equal(weights, prompt_weights(tiny, PROMPTS, TEMPLATES))
