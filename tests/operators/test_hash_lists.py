"""Hash-list matching in the classifier: nearest entry, quality gate, block beats any score, reasons.

Embeddings and prompt bank are the hand-made ones of test_classify (no model); the PDQ hashes are
hand-made too, with known bit distances to the list entries.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from clipline.operators.classify import ClassifyPolicy
from clipline.operators.columns import embedding_array
from clipline.operators.hamming import DIHEDRAL, dihedral_words, hex_to_words, words_to_hex
from clipline.operators.hash_lists import HashList, PolicyHashLists
from clipline.schemas.base import ConfigError
from clipline.schemas.policy import Policy
from tests.operators.test_classify import BANK, DIM, POLICY, unit

A = "f8f8f0cce0f4e84d0e370a22028f67f0b36e2ed596623e1d33e6339c4e9c9b22"
B = "73ccafbd55d256d84bb07a1b528835294a913d75be58c88e6263fac2af7c3a5e"  # random: unrelated to A
C = "ed732b09c06f063701ecce74375dc56227214fea48309c6d29995aa361fb809c"


def flipped(digest: str, bits: range | list[int]) -> str:
    """`digest` with the given bit positions (0 = the first hex digit's most significant bit) inverted."""
    value = int(digest, 16)
    for bit in bits:
        value ^= 1 << (255 - bit)
    return f"{value:064x}"


def policy_with(tmp_path, *lists: dict) -> Policy:
    for spec in lists:
        (tmp_path / f"{spec['name']}.csv").write_text(spec.pop("content"))
        spec["uri"] = str(tmp_path / f"{spec['name']}.csv")
    return Policy.model_validate({**POLICY.model_dump(mode="json"), "hash_lists": list(lists)})


def rows(*specs: tuple[str, np.ndarray, str | None, int | None, str]) -> pa.Table:
    """(id, image embedding, pdq_hash, pdq_quality, status) per row."""
    return pa.table(
        {
            "id": [spec[0] for spec in specs],
            "status": [spec[4] for spec in specs],
            "image_embedding": embedding_array(np.stack([spec[1] for spec in specs]), np.ones(len(specs), bool), DIM),
            "text_embedding": embedding_array(np.zeros((0, DIM), np.float32), np.zeros(len(specs), bool), DIM),
            "pdq_hash": pa.array([spec[2] for spec in specs], pa.string()),
            "pdq_quality": pa.array([spec[3] for spec in specs], pa.int32()),
        }
    )


PLAIN = unit(0, 1, 0, 0)  # scores allow
STAR = unit(1, 0, 0, 0)  # scores block on `star`


# --------------------------------------------------------------------------- one list
def test_nearest_entry_within_the_distance_ties_to_the_earlier_entry() -> None:
    near5, near3 = flipped(A, range(5)), flipped(A, range(100, 103))
    hash_list = HashList(hex_to_words([near5, near3, A, A, B]), ["five", "three", "exact", "exact-again", "b"])
    queries = hex_to_words([A, near5, flipped(A, range(200, 240)), flipped(A, range(128, 192, 2))])
    found = hash_list.nearest(queries, 31)
    assert (found[0].distance, found[0].label, found[0].entry) == (0, "exact", A)  # first of the tie
    assert (found[1].distance, found[1].label) == (0, "five")
    assert found[2] is None  # 40 bits from A
    assert found[3] is None  # 32 bits: one past the distance
    assert hash_list.nearest(queries[3:], 32)[0].distance == 32


def test_dihedral_finds_a_mirrored_copy_the_plain_search_misses() -> None:
    mirror = DIHEDRAL.index("flip_left_right")
    mirrored = words_to_hex(dihedral_words(hex_to_words([A]))[mirror])[0]  # what a mirror of A's image hashes to
    hash_list = HashList(hex_to_words([A, B]), ["a", "b"])
    query = hex_to_words([flipped(mirrored, range(10))])
    assert hash_list.nearest(query, 31) == [None]
    [found] = hash_list.nearest(query, 31, dihedral=True)
    assert (found.entry, found.label, found.distance) == (A, "a", 10)


# --------------------------------------------------------------------------- in the classifier
def test_a_block_list_wins_over_the_clip_scores_and_says_why(tmp_path) -> None:
    policy = policy_with(tmp_path, {"name": "known", "action": "block", "content": f"hash,label\n{A},csam-v3\n{B},\n"})
    classify = ClassifyPolicy(policy, BANK, hash_lists=PolicyHashLists.load(policy))
    batch = rows(
        ("match", PLAIN, flipped(A, range(12)), 90, "ok"),
        ("low-quality", PLAIN, A, 49, "ok"),  # under min_quality 50: not matched
        ("far", PLAIN, flipped(A, range(40)), 90, "ok"),
        ("no-hash", PLAIN, None, None, "ok"),  # a text-only row
        ("failed", PLAIN, A, 100, "failed"),
        ("unlabelled", STAR, B, 100, "ok"),
    )
    out = {row["id"]: row for row in classify(batch).to_pylist()}
    match = out["match"]
    assert match["decision"] == "block"
    reason = match["reasons"][0]
    assert (reason["category"], reason["action"]) == ("hash:known", "block")
    assert reason["score"] == pytest.approx(1 - 12 / 256)
    assert reason["threshold"] == pytest.approx(1 - 31 / 256)
    assert reason["margin"] == pytest.approx(19 / 256)
    assert match["hash_matches"] == [{"list": "known", "entry": A, "label": "csam-v3", "distance": 12}]
    assert match["scores"] is not None and match["labels"] == []  # CLIP's results are still there
    for unmatched in ("low-quality", "far", "no-hash"):
        assert (out[unmatched]["decision"], out[unmatched]["hash_matches"]) == ("allow", None), unmatched
    assert out["failed"]["decision"] is None and out["failed"]["hash_matches"] is None
    both = out["unlabelled"]
    assert [r["category"] for r in both["reasons"]] == ["hash:known", "star"]
    assert both["hash_matches"][0]["label"] == ""
    assert match["policy_hash"] == policy.content_hash != POLICY.content_hash


def test_a_review_list_never_lowers_a_block_and_block_beats_review(tmp_path) -> None:
    policy = policy_with(
        tmp_path,
        {"name": "watch", "action": "review", "content": f"{A},watch\n{C},watch\n"},
        {"name": "banned", "action": "block", "content": f"{C},banned\n", "max_distance": 10},
    )
    classify = ClassifyPolicy(policy, BANK, hash_lists=PolicyHashLists.load(policy))
    out = {
        row["id"]: row
        for row in classify(
            rows(
                ("review-only", PLAIN, A, 100, "ok"),
                ("clip-block", STAR, A, 100, "ok"),
                ("on-both", PLAIN, flipped(C, range(8)), 100, "ok"),
                ("near-both", PLAIN, flipped(C, range(20)), 100, "ok"),  # within 31 of watch, not 10 of banned
            )
        ).to_pylist()
    }
    assert out["review-only"]["decision"] == "review"
    assert out["clip-block"]["decision"] == "block"
    assert [r["category"] for r in out["clip-block"]["reasons"]] == ["hash:watch", "star"]
    assert out["on-both"]["decision"] == "block"
    assert [m["list"] for m in out["on-both"]["hash_matches"]] == ["watch", "banned"]
    assert out["near-both"]["decision"] == "review"


def test_rows_without_a_match_score_exactly_as_without_lists(tmp_path) -> None:
    policy = policy_with(tmp_path, {"name": "known", "action": "block", "content": f"{A}\n"})
    batch = rows(("plain", PLAIN, B, 100, "ok"), ("star", STAR, C, 100, "ok"))
    with_lists = ClassifyPolicy(policy, BANK, hash_lists=PolicyHashLists.load(policy))(batch)
    without = ClassifyPolicy(POLICY, BANK)(batch)
    for column in ("scores", "labels", "decision", "reasons"):
        assert with_lists.column(column).to_pylist() == without.column(column).to_pylist(), column


def test_lists_must_be_loaded_before_scoring_and_a_changed_list_is_refused(tmp_path) -> None:
    policy = policy_with(tmp_path, {"name": "known", "action": "block", "content": f"{A}\n"})
    with pytest.raises(RuntimeError, match="setup"):
        ClassifyPolicy(policy, BANK)(rows(("plain", PLAIN, A, 100, "ok")))
    (tmp_path / "known.csv").write_text(f"{A}\n{B}\n")
    with pytest.raises(ConfigError, match="changed after the policy was checked"):
        PolicyHashLists.load(policy)
