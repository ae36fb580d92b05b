"""Which edited copies of listed images match at the default distance (31 bits), and false matches.

Shapes-world images at 256 px with PDQ quality >= 50, hashed as the pipeline hashes them. The rates
asserted here are the ones the README states (measured in full by `python -m benchmarks.pdq`):
re-encodes and half-size copies match; crops match only when light (about 1 % of one side, or
0.5 % of each); a 5 % crop does not; a mirror never matches the plain hash, and matches about 2
times in 3 with dihedral matching (computed from the hash bits).
"""

from __future__ import annotations

import pytest

from benchmarks.pdq import EDITS, false_matches, hashable_shapes, listed_matches

LISTED = 60


@pytest.fixture(scope="module")
def originals():
    return hashable_shapes(LISTED)


@pytest.mark.parametrize(
    ("edit", "at_least"),
    [("jpeg_q60", 0.95), ("resize_50pct", 0.95), ("crop_1pct_one_side", 0.9), ("crop_0.5pct_each_side", 0.9)],
)
def test_reencoded_resized_and_lightly_cropped_copies_match(originals, edit: str, at_least: float) -> None:
    copies = [EDITS[edit](image) for image in originals]
    result = listed_matches(originals, copies, dihedral=False)
    assert result["matched"] >= at_least
    assert result["matched_another_entry"] == 0


@pytest.mark.parametrize("edit", ["crop_5pct_each_side", "crop_5pct_one_side"])
def test_a_five_percent_crop_does_not_match(originals, edit: str) -> None:
    """PDQ's documented limit, kept visible: a 5 % crop moves the hash ~60 bits."""
    result = listed_matches(originals, [EDITS[edit](image) for image in originals], dihedral=False)
    assert result["matched"] <= 0.05


def test_a_mirror_matches_only_with_dihedral_matching(originals) -> None:
    mirrors = [EDITS["mirror"](image) for image in originals]
    assert listed_matches(originals, mirrors, dihedral=False)["matched"] == 0
    dihedral = listed_matches(originals, mirrors, dihedral=True)
    assert dihedral["matched"] >= 0.5
    assert dihedral["matched_another_entry"] == 0


@pytest.mark.slow
def test_a_thousand_unrelated_images_match_nothing_at_31_bits() -> None:
    result = false_matches(1000)
    assert result["pairs"] == 499_500
    assert result["plain_within_31"] == 0
    assert result["plain_closest_bits"] > 31
    # dihedral matching compares 8 variants per pair: a few look-alikes under rotation may appear
    assert result["dihedral_within_31"] / result["pairs"] <= 1e-5
