"""Policy semantics beyond thresholds: rules that tighten, linear heads, hashing, prompt ensembling.

Rules and heads are checked on hand-made scores and embeddings (no model); prompt ensembling is
checked with the bundled tiny CLIP on rendered shapes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from clipline.operators.classify import PromptBank, decide, thresholds
from clipline.schemas.base import ConfigError
from clipline.schemas.policy import HEADS_FORMAT, Policy, load_policy, write_policy

ROOT = Path(__file__).parents[2]
MODERATION_POLICY = ROOT / "configs" / "policies" / "moderation-v1.yaml"

BASE = {
    "name": "p",
    "version": "1",
    "categories": [
        {"name": "sexual", "positive": ["s"], "negative": ["n"], "review_threshold": 0.5, "block_threshold": 0.8},
        {"name": "violence", "positive": ["v"], "negative": ["n"], "review_threshold": 0.6, "block_threshold": 0.9},
        {"name": "weapons", "positive": ["w"], "negative": ["n"], "review_threshold": 0.5},
        {"name": "minor", "kind": "topic", "positive": ["child"], "negative": ["adult"], "review_threshold": 0.7},
    ],
}
RULE = {"when": "minor", "at": 0.5, "tighten": {"sexual": 0.4, "*": 0.1}}


def policy(**changes) -> Policy:
    return Policy.model_validate({**BASE, **changes})


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# --------------------------------------------------------------------------- rules


def test_rule_tightens_named_and_all_other_moderation_categories_when_it_fires():
    tightened = policy(rules=[RULE])
    # minor fires at 0.5 (≥ at), the rest are raw scores
    limits = thresholds(tightened, np.array([0.3, 0.1, 0.1, 0.5], dtype=np.float32))
    assert limits[0] == pytest.approx((0.1, 0.4))  # sexual: its own delta 0.4 (the larger one wins, not 0.5)
    assert limits[1] == pytest.approx((0.5, 0.8))  # violence: "*" 0.1
    assert limits[2] == (pytest.approx(0.4), None)  # weapons: review only, still no block
    assert limits[3] == (0.7, None)  # the topic category itself is never tightened by "*"
    quiet = thresholds(tightened, np.array([0.3, 0.1, 0.1, 0.49], dtype=np.float32))
    assert quiet == [(0.5, 0.8), (0.6, 0.9), (0.5, None), (0.7, None)]


def test_decide_uses_tightened_thresholds_and_reports_them():
    tightened = policy(rules=[RULE])
    scores = np.array([0.45, 0.55, 0.1, 0.9], dtype=np.float32)
    decision, labels, reasons = decide(tightened, scores)
    assert decision == "block"  # sexual 0.45 ≥ 0.8 − 0.4
    assert labels == ["sexual", "violence", "minor"]
    by_category = {reason["category"]: reason for reason in reasons}
    assert by_category["sexual"]["action"] == "block"
    assert by_category["sexual"]["threshold"] == pytest.approx(0.4)
    assert by_category["sexual"]["margin"] == pytest.approx(0.05, abs=1e-6)
    assert by_category["violence"]["action"] == "review" and by_category["violence"]["threshold"] == pytest.approx(0.5)
    # without the rule the same scores only label the minor
    assert decide(policy(), scores)[0] == "allow"


def test_several_rules_take_the_largest_delta_and_never_chain():
    rules = [
        {"when": "minor", "at": 0.5, "tighten": {"sexual": 0.2}},
        {"when": "violence", "at": 0.5, "tighten": {"sexual": 0.3, "weapons": 0.45}},
        {"when": "weapons", "at": 0.1, "tighten": {"violence": 0.5}},  # fires only on the raw weapons score
    ]
    limits = thresholds(policy(rules=rules), np.array([0.0, 0.6, 0.05, 0.9], dtype=np.float32))
    assert limits[0] == pytest.approx((0.2, 0.5))
    assert limits[2] == (pytest.approx(0.05), None)
    assert limits[1] == pytest.approx((0.6, 0.9))  # weapons' lowered threshold does not make its rule fire


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"when": "nope", "at": 0.5, "tighten": {"sexual": 0.1}}, "rules.0.when"),
        ({"when": "minor", "at": 0.5, "tighten": {"minor": 0.1}}, "not a moderation category"),
        ({"when": "minor", "at": 0.5, "tighten": {"nope": 0.1}}, "not a moderation category"),
        ({"when": "minor", "at": 0.5, "tighten": {"sexual": 0}}, "must be in"),
        ({"when": "minor", "at": 1.5, "tighten": {"sexual": 0.1}}, "rules.0.at"),
        ({"when": "minor", "at": 0.5, "tighten": {}}, "rules.0.tighten"),
    ],
)
def test_bad_rules_fail_with_the_field(tmp_path, rule, message):
    with pytest.raises(ConfigError, match=message):
        load_policy(write_yaml(tmp_path / "p.yaml", {**BASE, "rules": [rule]}))


# --------------------------------------------------------------------------- hashing and writing


def test_policies_without_extensions_hash_as_before():
    """Rows scored before rules, heads and hash lists existed keep a matching policy_hash."""
    plain = policy()
    legacy = plain.model_dump(mode="json")
    del legacy["rules"]
    del legacy["hash_lists"]
    for category in legacy["categories"]:
        del category["head"]
    expected = hashlib.sha256(json.dumps(legacy, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert plain.content_hash == expected
    assert policy(rules=[RULE]).content_hash != expected


def write_heads(path: Path, weights: dict[str, list[float]], model: str = "clipline-tiny/bundled") -> Path:
    heads = {name: {"weights": w, "bias": -0.5} for name, w in weights.items()}
    path.write_text(json.dumps({"format": HEADS_FORMAT, "model": model, "embedding_dim": 4, "heads": heads}))
    return path


def with_head(head: str) -> dict:
    categories = [dict(category) for category in BASE["categories"]]
    categories[2]["head"] = head
    return {**BASE, "categories": categories, "rules": [RULE]}


def test_head_paths_are_relative_to_the_policy_and_the_hash_follows_weights_not_paths(tmp_path):
    (tmp_path / "a" / "heads").mkdir(parents=True)
    write_heads(tmp_path / "a" / "heads" / "h.json", {"weapons": [1.0, 0.0, 0.0, 0.0]})
    first = load_policy(write_yaml(tmp_path / "a" / "p.yaml", with_head("heads/h.json")))
    assert first.head_for("weapons").weights == [1.0, 0.0, 0.0, 0.0]
    assert first.head_for("sexual") is None

    (tmp_path / "b").mkdir()
    write_heads(tmp_path / "b" / "other-name.json", {"weapons": [1.0, 0.0, 0.0, 0.0]})
    moved = load_policy(write_yaml(tmp_path / "b" / "p.yaml", with_head("other-name.json")))
    assert moved.content_hash == first.content_hash

    write_heads(tmp_path / "b" / "other-name.json", {"weapons": [0.0, 1.0, 0.0, 0.0]})
    retrained = load_policy(tmp_path / "b" / "p.yaml")
    assert retrained.content_hash != first.content_hash


def test_write_policy_round_trips_rules_heads_and_hash(tmp_path):
    write_heads(tmp_path / "h.json", {"weapons": [1.0, 0.0, 0.0, 0.0]})
    original = load_policy(write_yaml(tmp_path / "p.yaml", with_head("h.json")))
    written = write_policy(original, tmp_path / "out" / "deep" / "p2.yaml", header="line one\nline two")
    text = written.read_text()
    assert text.startswith("# line one\n# line two\n")
    assert "head: ../../h.json" in text
    assert load_policy(written).content_hash == original.content_hash
    plain = write_policy(policy(), tmp_path / "plain.yaml")
    assert "rules" not in plain.read_text() and "head" not in plain.read_text()
    assert load_policy(plain).content_hash == policy().content_hash


def test_head_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="heads file not found"):
        load_policy(write_yaml(tmp_path / "p.yaml", with_head("missing.json")))
    write_heads(tmp_path / "h.json", {"violence": [1.0, 0.0, 0.0, 0.0]})
    with pytest.raises(ConfigError, match="has no head for it"):
        load_policy(write_yaml(tmp_path / "p.yaml", with_head("h.json")))
    (tmp_path / "junk.json").write_text('{"format": "something else"}')
    with pytest.raises(ConfigError, match="not a clipline heads file"):
        load_policy(write_yaml(tmp_path / "p.yaml", with_head("junk.json")))


def test_a_head_replaces_the_prompts_score_and_refuses_another_model(tmp_path):
    write_heads(tmp_path / "h.json", {"weapons": [4.0, 0.0, 0.0, 0.0]})
    headed = load_policy(write_yaml(tmp_path / "p.yaml", with_head("h.json")))
    bank = PromptBank(
        weights=np.eye(4, dtype=np.float32)[[0, 1, 2, 1, 3, 1]],
        bounds=((0, 2, 1), (2, 4, 1), (4, 4, 0), (4, 6, 1)),
        logit_scale=100.0,
        heads=((2, np.array([4.0, 0, 0, 0], dtype=np.float32), -0.5),),
    )
    scores = bank.score(np.eye(4, dtype=np.float32))
    assert scores[:, 2] == pytest.approx(1 / (1 + np.exp(-(np.array([4.0, 0, 0, 0]) - 0.5))), abs=1e-6)
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-6)
    headed.check_heads("clipline-tiny/bundled", 4)
    with pytest.raises(ConfigError, match="retrain it"):
        headed.check_heads("ViT-B-32/laion2b_s34b_b79k", 4)
    with pytest.raises(ConfigError, match="4-d"):
        headed.check_heads("clipline-tiny/bundled", 128)


# --------------------------------------------------------------------------- the bundled production policy


def test_production_policy_covers_the_taxonomy_and_has_a_special_care_rule():
    production = load_policy(MODERATION_POLICY)
    moderation = {c.name for c in production.categories if c.kind == "moderation"}
    topics = {c.name for c in production.categories if c.kind == "topic"}
    assert {
        "sexual_explicit",
        "nudity",
        "suggestive",
        "violence",
        "gore",
        "weapons",
        "drugs",
        "hate_symbols",
        "self_harm",
    } <= moderation
    assert {"people", "minor", "animals", "food", "document", "screenshot", "illustration", "anime"} <= topics
    assert all(c.positive and c.negative for c in production.categories)
    assert len(production.templates) >= 6
    (rule,) = production.rules
    scores = np.zeros(len(production.categories), dtype=np.float32)
    scores[production.category_index["minor"]] = 0.9
    limits = thresholds(production, scores)
    nudity = production.categories[production.category_index["nudity"]]
    assert limits[production.category_index["nudity"]][1] < nudity.block_threshold
    assert rule.when == "minor"


# --------------------------------------------------------------------------- prompt ensembling (tiny CLIP)


@pytest.fixture(scope="module")
def bundle():
    from tests.tables import bundle

    return bundle()


def test_ensembling_averages_template_embeddings_and_renormalises(bundle):
    from clipline.models.zero_shot import encode_texts, prompt_weights

    templates = ["a photo of a {}.", "a drawing of a {}.", "a {}."]
    ensembled = prompt_weights(bundle, ["star", "circle"], templates)
    singles = np.stack([encode_texts(bundle, [t.format(p) for t in templates]) for p in ("star", "circle")])
    mean = singles.mean(axis=1)
    assert np.allclose(ensembled, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5)
    assert np.allclose(np.linalg.norm(ensembled, axis=1), 1.0, atol=1e-5)


def test_ensembling_changes_scores_and_ranks_the_concept_at_least_as_well(bundle):
    """One template vs six on the same images: scores move, and the ensemble separates star from
    non-star at least as well (CLIP paper §3.1.4: ensembling is a free gain)."""
    from clipline.demo.shapes import SHAPES, TEMPLATES, render
    from clipline.models.zero_shot import encode_images
    from clipline.moderation.calibrate import PRCurve

    rng = np.random.default_rng(77)
    images, truth = [], []
    for index in range(84):
        shape = SHAPES[index % len(SHAPES)]
        images.append(render(shape, "red" if index % 2 else "blue", rng, size=int(rng.integers(64, 129))))
        truth.append(int(shape == "star"))
    embeddings = encode_images(bundle, images)
    star = {
        "name": "star",
        "positive": ["star"],
        "negative": [s for s in SHAPES if s != "star"],
        "review_threshold": 0.5,
    }

    def star_scores(templates: list[str]) -> np.ndarray:
        one = Policy.model_validate({"name": "e", "version": "1", "templates": templates, "categories": [star]})
        return PromptBank.build(bundle, one).score(embeddings)[:, 0]

    single, ensemble = star_scores([TEMPLATES[0]]), star_scores(list(TEMPLATES))
    assert np.abs(single - ensemble).max() > 1e-3
    truth = np.array(truth)
    ap_single = PRCurve.of(single.astype(np.float64), truth).average_precision()
    ap_ensemble = PRCurve.of(ensemble.astype(np.float64), truth).average_precision()
    assert ap_ensemble >= ap_single - 0.02
    assert ap_ensemble > 0.9
