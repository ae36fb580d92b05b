"""Hamming helpers: hash conversions, distances, and the exactness of the multi-index search.

Every index result is checked against a brute-force scan, including the tight pigeonhole cases
where exactly one chunk is within its probe radius.
"""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest

from clipline.operators.hamming import (
    DIHEDRAL,
    Chunking,
    MultiIndex,
    band_keys,
    brute_force,
    column_words,
    cross_distances,
    dihedral_words,
    distances,
    hamming,
    hex_to_words,
    pairs_within,
    words_to_hex,
)

A = "f8f8f0cce0f4e84d0e370a22028f67f0b36e2ed596623e1d33e6339c4e9c9b22"
B = "0dad2599b1a1bd1853625f6553da32a1e63b7280c2374b4866b366c91bc9ce77"


def flip(words: np.ndarray, bits) -> np.ndarray:
    """Copy of one (4,) hash with the given bit positions (0 = MSB of word 0) flipped."""
    out = words.copy()
    for bit in bits:
        out[bit // 64] ^= np.uint64(1) << np.uint64(63 - bit % 64)
    return out


def random_words(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**64, size=(n, 4), dtype=np.uint64)


def as_set(result) -> set[tuple[int, int, int]]:
    return set(zip(*(column.tolist() for column in result), strict=True))


def popcount_reference(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


# --------------------------------------------------------------------------- conversions, distances
def test_hex_round_trip_and_bit_order() -> None:
    words = hex_to_words([A, B.upper()])
    assert words.dtype == np.uint64 and words.shape == (2, 4)
    assert words[0, 0] == int(A[:16], 16)  # word 0 = the first 16 hex digits
    assert words_to_hex(words) == [A, B]  # lower case out
    assert words_to_hex(flip(words[0], [0])[None, :])[0][0] == f"{int(A[0], 16) ^ 8:x}"  # bit 0 = MSB


@pytest.mark.parametrize("bad", [A[:-1], A + "0", A[:-1] + "g", None, ""])
def test_hex_to_words_names_the_bad_hash(bad) -> None:
    with pytest.raises(ValueError, match="hash 1:"):
        hex_to_words([A, bad, B])


def test_column_words_skips_nulls() -> None:
    words, present = column_words(pa.chunked_array([[A, None], [B]]))
    assert present.tolist() == [True, False, True]
    assert words_to_hex(words) == [A, B]


def test_distances_agree_with_integer_popcount() -> None:
    hashes = words_to_hex(random_words(30, seed=2))
    words = hex_to_words(hashes)
    expected = [[popcount_reference(a, b) for b in hashes[:7]] for a in hashes]
    assert cross_distances(words, words[:7]).tolist() == expected
    assert distances(words, words[3]).tolist() == [row[3] for row in expected]
    assert hamming(hashes[0], hashes[5]) == expected[0][5]
    assert hamming("0" * 64, "f" * 64) == 256


# --------------------------------------------------------------------------- exactness of the index
@pytest.mark.parametrize("chunks", [12, 13, 14, 16])
@pytest.mark.parametrize("permute", [True, False])
def test_search_equals_brute_force(chunks: int, permute: bool) -> None:
    rng = np.random.default_rng(chunks)
    words = random_words(20_000, seed=chunks)
    near = [
        flip(words[rng.integers(len(words))], rng.choice(256, d, replace=False)) for d in range(41) for _ in range(4)
    ]
    queries = np.array(near + list(random_words(40, seed=99)))
    index = MultiIndex(words, chunks=chunks, permute=permute)
    for radius in (0, 1, chunks - 1, chunks, 31, 32):
        got = index.search(queries, radius)
        assert as_set(got) == as_set(brute_force(words, queries, radius)), radius
        assert len(got[0]) == len(as_set(got))  # each pair once
        order = np.lexsort((got[1], got[2], got[0]))
        assert np.array_equal(order, np.arange(len(order)))  # sorted by query, distance, entry


@pytest.mark.parametrize("chunks", [13, 16])
def test_pigeonhole_worst_case(chunks: int) -> None:
    """31 flips spread so that exactly one chunk is within its probe radius must be found; 32
    flips with every chunk beyond its radius must not be (at 31), but must be at 32."""
    words = random_words(1000, seed=1)
    index = MultiIndex(words, chunks=chunks)
    radii = index.radii(31)
    assert sum(r + 1 for r in radii) == 32  # the refined pigeonhole is tight at 31
    base = words[123]
    beyond = [list(bits[: r + 1]) for bits, r in zip(index.chunking.bits, radii, strict=True)]
    far = flip(base, itertools.chain.from_iterable(beyond))
    assert distances(words[123:124], far).tolist() == [32]
    assert 123 not in index.search(far[None, :], 31)[1].tolist()
    assert 123 in index.search(far[None, :], 32)[1].tolist()
    for c in range(chunks):  # one flip fewer in chunk c: only chunk c is within its radius, 31 in all
        spread = [bits if k != c else bits[:-1] for k, bits in enumerate(beyond)]
        near = flip(base, itertools.chain.from_iterable(spread))
        assert (0, 123, 31) in as_set(index.search(near[None, :], 31)), c


def test_skewed_clusters_equal_brute_force() -> None:
    """Many entries sharing chunk values (near-duplicate clusters, like real hash lists)."""
    rng = np.random.default_rng(5)
    bases = random_words(20, seed=5)
    words = np.array([flip(bases[i % 20], rng.choice(256, rng.integers(0, 48), replace=False)) for i in range(6000)])
    queries = np.array([flip(bases[i % 20], rng.choice(256, rng.integers(0, 40), replace=False)) for i in range(200)])
    got = MultiIndex(words).search(queries, 31)
    assert len(got[0]) > 10_000  # clusters: many hits per query
    assert as_set(got) == as_set(brute_force(words, queries, 31))


def test_batches_do_not_change_results() -> None:
    words = random_words(5000, seed=3)
    rng = np.random.default_rng(3)
    queries = np.array([flip(words[i], rng.choice(256, 20, replace=False)) for i in range(300)])
    index = MultiIndex(words)
    one, many = index.search(queries, 31, batch=1), index.search(queries, 31, batch=1000)
    assert all(np.array_equal(a, b) for a, b in zip(one, many, strict=True))
    assert as_set(one) >= {(i, i, 20) for i in range(300)}


def test_distance_256_is_not_zero() -> None:
    """All 256 bits differ: must not wrap around to 0 in the verification's popcount."""
    words = np.concatenate([hex_to_words(["0" * 64]), random_words(10_000, seed=4)])
    index = MultiIndex(words, chunks=32)  # 8-bit chunks: fewer probes at 256 than entries
    queries = hex_to_words(["f" * 64])
    assert len(index.search(queries, 31)[0]) == 0
    index.candidates_examined = 0
    got = index.search(queries, 256)
    assert index.candidates_examined != len(words)  # went through the index, not the scan
    assert len(got[0]) == len(words)
    assert (0, 0, 256) in as_set(got)


def test_large_radius_falls_back_to_a_scan() -> None:
    words, queries = random_words(300, seed=6), random_words(5, seed=7)
    assert as_set(MultiIndex(words).search(queries, 120)) == as_set(brute_force(words, queries, 120))


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        MultiIndex(np.zeros((3, 3), np.uint64))
    with pytest.raises(ValueError):
        MultiIndex(random_words(10, 0), chunks=8)  # 32-bit tables
    with pytest.raises(ValueError):
        MultiIndex(random_words(10, 0)).search(random_words(1, 1), -1)


@pytest.mark.parametrize("chunks", [9, 13, 16])
def test_chunks_partition_the_bits_as_documented(chunks: int) -> None:
    """The pigeonhole needs each bit in exactly one chunk, and chunk values read those bits."""
    chunking = Chunking.split(chunks)
    assert sorted(np.concatenate(chunking.bits).tolist()) == list(range(256))
    words = random_words(50, seed=8)
    bits = np.unpackbits(words.astype(">u8").view(np.uint8).reshape(-1, 32), axis=1)
    values = chunking.values(words)
    for c, positions in enumerate(chunking.bits):
        weights = np.uint64(1) << np.arange(len(positions), dtype=np.uint64)[::-1]
        assert np.array_equal(values[:, c], (bits[:, positions].astype(np.uint64) * weights).sum(axis=1)), c


def test_chunk_count_follows_set_size() -> None:
    assert len(MultiIndex(random_words(1000, seed=0)).chunking.widths) == 16
    assert len(MultiIndex(random_words(300_001, seed=0)).chunking.widths) == 13


# --------------------------------------------------------------------------- self-join and band keys
def test_pairs_within_is_the_self_join() -> None:
    rng = np.random.default_rng(11)
    bases = random_words(50, seed=11)
    words = np.array([flip(bases[i % 50], rng.choice(256, rng.integers(0, 12), replace=False)) for i in range(400)])
    i, j, d = pairs_within(words, 10)
    full = cross_distances(words, words)
    expected = {(a, b, int(full[a, b])) for a, b in zip(*np.nonzero(full <= 10), strict=True) if a < b}
    assert set(zip(i.tolist(), j.tolist(), d.tolist(), strict=True)) == expected
    assert len(expected) > 400  # the clusters make real pairs, so the check has teeth


@pytest.mark.parametrize("max_distance", [0, 4, 10, 31])
def test_band_keys_always_share_a_key_within_the_distance(max_distance: int) -> None:
    """Worst case: the flips spread one per chunk over max_distance chunks still leave one chunk equal."""
    base = random_words(1, seed=12)[0]
    chunks = Chunking.split(max(8, max_distance + 1))
    spread = [bits[0] for bits in chunks.bits[:max_distance]]
    near = flip(base, spread)
    assert distances(near[None, :], base).tolist() == [max_distance]
    keys = band_keys(np.stack([base, near]), max_distance)
    assert keys.shape == (2, len(chunks.widths))
    assert len(set(keys[0].tolist()) & set(keys[1].tolist())) == len(chunks.widths) - max_distance
    assert (keys >> np.uint64(32)).tolist()[0] == list(range(len(chunks.widths)))  # no cross-chunk collisions
    with pytest.raises(ValueError):
        band_keys(near[None, :], 32)


# --------------------------------------------------------------------------- rotations and mirrors
def test_dihedral_variants_are_a_group_of_isometries() -> None:
    words = random_words(40, seed=14)
    variants = dihedral_words(words)
    assert variants.shape == (8, 40, 4)
    assert np.array_equal(variants[0], words)
    mirror = DIHEDRAL.index("flip_left_right")
    assert np.array_equal(dihedral_words(variants[mirror])[mirror], words)  # a mirror twice is nothing
    rot90, rot270 = DIHEDRAL.index("rotate_90"), DIHEDRAL.index("rotate_270")
    assert np.array_equal(dihedral_words(variants[rot90])[rot270], words)
    assert len({words_to_hex(v[:1])[0] for v in variants}) == 8
    for variant in variants:  # each is a permutation plus XOR: distances between hashes are kept
        assert np.array_equal(cross_distances(variant, variant), cross_distances(words, words))
