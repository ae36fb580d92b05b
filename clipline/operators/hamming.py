"""Hamming distances between 256-bit perceptual hashes (PDQ), vectorised in numpy, exact.

The one place that knows how a hash is laid out and how to find near hashes fast. Hash-list
matching (`hash_lists.py`), `clipline search --pdq`, rescore and the PDQ tier of dedup all call it.

Hashes travel as 64 hex digits (the canonical form the PDQ references, ThreatExchange and shared
lists print; bit 0 is the most significant bit of the first digit) and are computed on as
(n, 4) uint64 "words", word 0 being the first 16 digits. The API:

- `hex_to_words`, `words_to_hex`, `column_words` (an Arrow string column with nulls): conversions.
- `hamming(a, b)` for two hex strings; `distances(words, query)` for one query against n hashes;
  `cross_distances(a, b)` for every pair of two small sets (a dedup bucket): brute force, exact.
- `MultiIndex(words).search(queries, max_distance)`: every (query, entry, distance) within the
  distance, exactly, fast for large sets (1M entries: ~10k queries per CPU-second at distance 31).
- `pairs_within(words, max_distance)`: the self-join, every pair i < j within the distance.
- `band_keys(words, max_distance)`: per hash, m > max_distance keys such that two hashes within
  the distance always share one (pigeonhole). Group rows by key on a cluster, then compare only
  inside groups with `cross_distances`: a distributed self-join for small distances.
- `dihedral_words(words)`: the 8 rotations/mirrors of each hash, computed from its bits alone.

The index (multi-index hashing). The 256 bits are dealt into m disjoint chunks. If two hashes
differ in at most r bits, then with a = r // m and b = r % m (refined pigeonhole), at least one of
any b + 1 chosen chunks differs in at most a bits, or one of the other m - b - 1 chunks in at most
a - 1 bits (otherwise the total would be >= (b + 1)(a + 1) + (m - b - 1) a = r + 1). Probing, per
chunk, every value within that chunk's radius of the query's chunk value therefore finds every
entry within r. Each chunk has a direct-address table (CSR: offsets[value] .. offsets[value + 1]
index the entry ids sorted by that chunk), so a probe is two array reads. Candidates are verified
with popcount over the 4 words, which removes every false positive: recall is 1.0 by construction.

Chunking at r = 31: up to SMALL_LIST entries 16 chunks of 16 bits, radius 1 everywhere (272 probes
per query, 4 MiB of tables); above, 13 chunks (9 x 20 + 4 x 19 bits), radius 2 on 6 chunks and 1
on 7 (1,409 probes, ~1,400 candidates per query at 1M entries, 44 MiB of tables; 124 MiB in all at
1M). Real PDQ hashes are not uniform (neighbouring DCT coefficients are correlated), so bits are
dealt into chunks by a fixed pseudo-random permutation: it cut candidates per query by 18-29 % on
real-hash-derived data. Any partition keeps the pigeonhole argument, so results do not change.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from math import comb

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BITS = 256
HEX_DIGITS = BITS // 4
SMALL_LIST = 300_000  # up to here 16 x 16-bit chunks are as fast or faster; above, 13 chunks
_PERMUTATION_SEED = 0x9D0  # fixed, so an index's layout is deterministic
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_EMPTY = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32))


# --------------------------------------------------------------------------- hashes <-> words
def hex_to_words(hashes: Sequence[str]) -> np.ndarray:
    """64-hex-digit strings (either case) -> (n, 4) uint64. Raises ValueError naming the first bad one."""
    if not len(hashes):
        return np.zeros((0, 4), dtype=np.uint64)
    try:
        if any(len(h) != HEX_DIGITS for h in hashes):
            raise ValueError
        raw = bytes.fromhex("".join(hashes))  # one C call; the slow path below only names the culprit
    except (ValueError, TypeError):
        index = next(i for i, h in enumerate(hashes) if not isinstance(h, str) or not _HEX64.fullmatch(h))
        raise ValueError(f"hash {index}: expected {HEX_DIGITS} hex digits, got {hashes[index]!r}") from None
    return np.frombuffer(raw, dtype=">u8").reshape(-1, 4).astype(np.uint64)


def words_to_hex(words: np.ndarray) -> list[str]:
    """(n, 4) uint64 -> 64-hex-digit lower-case strings."""
    raw = np.ascontiguousarray(words, dtype=np.uint64).astype(">u8").tobytes().hex()
    return [raw[i : i + HEX_DIGITS] for i in range(0, len(raw), HEX_DIGITS)]


def column_words(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A string column of hex hashes (nulls allowed) -> ((k, 4) words of the non-null rows, (n,) mask of them)."""
    present = pc.is_valid(column)
    return hex_to_words(column.filter(present).to_pylist()), np.asarray(present, dtype=bool)


# --------------------------------------------------------------------------- distances
def _popcount_rows(xor: np.ndarray) -> np.ndarray:
    """(n, 4) uint64 -> (n,) int32 bit counts. Column adds: far faster than sum(axis=1) on uint8."""
    ones = np.bitwise_count(xor)
    total = ones[:, 0].astype(np.int32)
    for word in range(1, 4):
        total += ones[:, word]
    return total


def distances(words: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Hamming distance of every row of (n, 4) `words` to one (4,) `query` (or row-wise to (n, 4))."""
    return _popcount_rows(np.bitwise_xor(words, query))


def cross_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) distances between every row of `a` and every row of `b`: for small sets (a dedup bucket).

    Word by word into a uint16 total: four times faster than one (n * m, 4) XOR array, whose
    size also made it the largest allocation of a bucket's comparison.
    """
    total = np.zeros((len(a), len(b)), dtype=np.uint16)
    for word in range(4):
        total += np.bitwise_count(np.bitwise_xor(a[:, word, None], b[None, :, word]))
    return total


def hamming(a: str, b: str) -> int:
    """Hamming distance between two 64-hex-digit hashes."""
    words = hex_to_words([a, b])
    return int(distances(words[:1], words[1])[0])


def brute_force(words: np.ndarray, queries: np.ndarray, max_distance: int) -> tuple[np.ndarray, ...]:
    """Every (query index, entry index, distance) within max_distance by scanning: the reference."""
    found_q, found_e, found_d = [], [], []
    for index, query in enumerate(queries):
        dist = distances(words, query)
        hit = np.flatnonzero(dist <= max_distance)
        found_q.append(np.full(len(hit), index, dtype=np.int64))
        found_e.append(hit.astype(np.int64))
        found_d.append(dist[hit])
    if not found_q:
        return _EMPTY
    return np.concatenate(found_q), np.concatenate(found_e), np.concatenate(found_d).astype(np.int32)


# --------------------------------------------------------------------------- chunks
@dataclass(frozen=True)
class Chunking:
    """How the 256 bits are dealt into m chunks of (nearly) equal width, and each hash's chunk values."""

    widths: tuple[int, ...]
    bits: tuple[np.ndarray, ...]  # bit positions of each chunk, ascending (bit 0 = the hash's MSB)

    @classmethod
    def split(cls, chunks: int, permute: bool = True) -> Chunking:
        if not 8 <= chunks <= BITS:
            raise ValueError(f"chunks must be in 8..{BITS} (chunk width <= 32 bits), got {chunks}")
        base, extra = divmod(BITS, chunks)
        widths = [base + 1] * extra + [base] * (chunks - extra)
        order = np.random.default_rng(_PERMUTATION_SEED).permutation(BITS) if permute else np.arange(BITS)
        starts = np.cumsum([0, *widths[:-1]])
        return cls(tuple(widths), tuple(np.sort(order[s : s + w]) for s, w in zip(starts, widths, strict=True)))

    def values(self, words: np.ndarray, block: int = 8192) -> np.ndarray:
        """(n, 4) uint64 -> (n, m) uint32: chunk c's bits, in ascending position, read as an unsigned integer."""
        m = len(self.widths)
        source = np.concatenate(self.bits)
        # each chunk's bits go right-aligned into its own 32-bit column, then pack
        target = np.concatenate([c * 32 + 32 - w + np.arange(w) for c, w in enumerate(self.widths)])
        out = np.empty((len(words), m), dtype=np.uint32)
        for start in range(0, len(words), block):
            part = np.ascontiguousarray(words[start : start + block]).astype(">u8").view(np.uint8).reshape(-1, 32)
            bits = np.unpackbits(part, axis=1)
            padded = np.zeros((len(part), m * 32), dtype=np.uint8)
            padded[:, target] = bits[:, source]
            out[start : start + block] = np.packbits(padded, axis=1).view(">u4")
        return out


def band_keys(words: np.ndarray, max_distance: int) -> np.ndarray:
    """(n, m) uint64 keys, chunk index in the high half, m = max(8, max_distance + 1): two hashes
    within `max_distance` share at least one key (they differ in fewer bits than there are chunks,
    so one chunk is identical).

    For a distributed near-duplicate self-join at a small distance (a dedup tier): explode the
    keys, group rows by key, compare only inside groups (`cross_distances`), and deduplicate the
    pairs (a pair may meet in several groups). Featureless images (PDQ quality < 50) share hashes
    and would make huge groups: leave them out first.
    """
    if not 0 <= max_distance < 32:
        raise ValueError(f"band_keys is for small distances, 0..31, got {max_distance}")
    chunks = max(8, max_distance + 1)
    values = Chunking.split(chunks).values(words).astype(np.uint64)
    return values | (np.arange(chunks, dtype=np.uint64) << np.uint64(32))


# --------------------------------------------------------------------------- the index
@cache
def _probe_masks(width: int, radius: int) -> np.ndarray:
    """Every `width`-bit XOR mask with at most `radius` bits set, as uint32 (0 first); built once per
    (width, radius): rebuilding it per batch was a sixth of the search time."""
    masks = [0]
    for k in range(1, radius + 1):
        masks.extend(sum(1 << bit for bit in bits) for bits in itertools.combinations(range(width), k))
    shared = np.array(masks, dtype=np.uint32)
    shared.flags.writeable = False  # one array for every caller
    return shared


def _stable_argsort(values: np.ndarray, width: int) -> np.ndarray:
    """Stable argsort of < 2**32 keys as LSD radix passes of 16 bits (numpy radix-sorts only 16-bit
    keys; for 1M 20-bit keys ~4x faster than its timsort). Ids in a bucket stay in list order."""
    order = np.argsort((values & 0xFFFF).astype(np.uint16), kind="stable")
    if width > 16:
        order = order[np.argsort((values >> 16).astype(np.uint16)[order], kind="stable")]
    return order


class MultiIndex:
    """Exact Hamming range search over (n, 4) uint64 hashes; immutable once built.

    `chunks`: how many chunks the 256 bits are split into (default 16 up to SMALL_LIST entries,
    else 13); `permute`: deal bits into chunks pseudo-randomly rather than in order.
    """

    def __init__(self, words: np.ndarray, chunks: int | None = None, permute: bool = True) -> None:
        words = np.ascontiguousarray(words, dtype=np.uint64)
        if words.ndim != 2 or words.shape[1] != 4:
            raise ValueError(f"expected (n, 4) uint64 hashes, got {words.shape}")
        if len(words) >= 2**32:
            raise ValueError("at most 2**32 - 1 entries")
        self.words = words
        self.chunking = Chunking.split(chunks or (16 if len(words) <= SMALL_LIST else 13), permute)
        if max(self.chunking.widths) > 24:
            raise ValueError(f"{len(self.chunking.widths)} chunks means direct-address tables over 2**24 entries")
        values = self.chunking.values(words)
        self.ids = np.empty((len(self.chunking.widths), len(words)), dtype=np.uint32)
        self.offsets: list[np.ndarray] = []
        for c, width in enumerate(self.chunking.widths):
            self.ids[c] = _stable_argsort(values[:, c], width)
            offsets = np.zeros((1 << width) + 1, dtype=np.uint32)
            np.cumsum(np.bincount(values[:, c], minlength=1 << width), out=offsets[1:])
            self.offsets.append(offsets)
        self.candidates_examined = 0  # running total, for benchmarks

    def __len__(self) -> int:
        return len(self.words)

    @property
    def nbytes(self) -> int:
        return self.words.nbytes + self.ids.nbytes + sum(offsets.nbytes for offsets in self.offsets)

    def radii(self, max_distance: int) -> list[int]:
        """Per-chunk probe radius for `max_distance` (the refined pigeonhole; -1 = skip the chunk)."""
        widths = self.chunking.widths
        a, b = divmod(max_distance, len(widths))
        radii = [a] * len(widths)
        if b + 1 < len(widths):
            # m - b - 1 chunks may use radius a - 1: those whose radius-a ring costs most
            # (expected candidates comb(w, a) / 2**w per entry)
            costly = sorted(range(len(widths)), key=lambda c: comb(widths[c], a) / 2 ** widths[c], reverse=True)
            for c in costly[: len(widths) - b - 1]:
                radii[c] = a - 1
        return radii

    def search(
        self, queries: np.ndarray, max_distance: int, batch: int = 128
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (query index, entry index, distance) with distance <= max_distance, each once,
        sorted by query, then distance, then entry index."""
        if not 0 <= max_distance <= BITS:
            raise ValueError(f"max_distance must be in 0..{BITS}, got {max_distance}")
        queries = np.ascontiguousarray(queries, dtype=np.uint64)
        radii = self.radii(max_distance)
        probes = sum(comb(w, k) for w, r in zip(self.chunking.widths, radii, strict=True) for k in range(r + 1))
        if probes >= len(self.words):  # a large radius or a tiny set: scanning everything is cheaper
            self.candidates_examined += len(queries) * len(self.words)
            q, e, d = brute_force(self.words, queries, max_distance)
        else:
            parts = [
                self._search_batch(queries[s : s + batch], radii, max_distance, s)
                for s in range(0, len(queries), batch)
            ]
            q, e, d = (np.concatenate(column) for column in zip(*parts, strict=True)) if parts else _EMPTY
        order = np.lexsort((e, d, q))
        return q[order], e[order], d[order]

    def _search_batch(
        self, queries: np.ndarray, radii: list[int], max_distance: int, first: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(self.words)
        if n == 0 or len(queries) == 0:
            return _EMPTY
        start, count = self._probe_ranges(self.chunking.values(queries), radii)
        per_query = count.sum(axis=1)
        start, count = start.reshape(-1), count.reshape(-1)
        total = int(per_query.sum())
        self.candidates_examined += total
        if total == 0:
            return _EMPTY
        # ragged expansion: positions start_k .. start_k + count_k - 1 for every probe k
        positions = np.arange(total, dtype=np.int64) + np.repeat(start - (np.cumsum(count) - count), count)
        entry = np.take(self.ids.reshape(-1), positions)
        xor = np.take(self.words, entry, axis=0)
        np.bitwise_xor(xor, np.repeat(queries, per_query, axis=0), out=xor)
        dist = _popcount_rows(xor)
        keep = np.flatnonzero(dist <= max_distance)
        if len(keep) == 0:
            return _EMPTY
        entry = entry[keep].astype(np.int64)
        query = np.repeat(np.arange(len(queries), dtype=np.int64), per_query)[keep]
        # an entry near a query can be found through several chunks: keep each pair once
        _, once = np.unique(query * n + entry, return_index=True)
        return query[once] + first, entry[once], dist[keep][once]

    def _probe_ranges(self, values: np.ndarray, radii: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(queries, probes) start positions into the flattened id array and run lengths, query-major,
        so that candidates come out grouped by query. Empty probes stay in: filtering costs more."""
        n = len(self.words)
        starts, counts = [], []
        for c, (width, radius) in enumerate(zip(self.chunking.widths, radii, strict=True)):
            if radius < 0:
                continue
            keys = values[:, c, None] ^ _probe_masks(width, radius)[None, :]
            low = self.offsets[c][keys].astype(np.int64)
            starts.append(low + c * n)
            counts.append(self.offsets[c][keys + 1] - low)
        return np.concatenate(starts, axis=1), np.concatenate(counts, axis=1)


def pairs_within(words: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i, j, distance) with i < j and distance <= max_distance among (n, 4) hashes:
    the near-duplicate self-join of one set, exact, sorted by i then distance then j."""
    q, e, d = MultiIndex(words).search(words, max_distance)
    keep = q < e
    return q[keep], e[keep], d[keep]


# --------------------------------------------------------------------------- rotations and mirrors
# PDQ's 256 bits are a 16 x 16 grid (bit k = row k // 16, column k % 16) of DCT coefficients against
# their median. Mirroring an image negates the coefficients of odd horizontal frequency; flipping it
# top to bottom, those of odd vertical frequency; transposing it transposes the grid. Coefficients
# sit near a median close to 0, so negation mostly inverts their bit: each image symmetry is, to a
# few bits, a fixed permutation plus XOR of the hash itself, computable without the image. Measured
# against pdqhash's own dihedral hashes (from pixels): 6-9 bits apart on average.
DIHEDRAL: tuple[str, ...] = (
    "original",
    "rotate_90",  # Pillow's Image.Transpose.ROTATE_90 (counter-clockwise)
    "rotate_180",
    "rotate_270",
    "flip_top_bottom",
    "flip_left_right",  # the horizontal mirror
    "transpose",
    "transverse",
)
# (transpose the grid?, invert odd rows?, invert odd columns?) per DIHEDRAL name
_SYMMETRIES = ((0, 0, 0), (1, 1, 0), (0, 1, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 0, 0), (1, 1, 1))


def _symmetry(transpose: int, odd_rows: int, odd_columns: int) -> tuple[np.ndarray, np.ndarray]:
    row, column = np.divmod(np.arange(BITS), 16)
    source = column * 16 + row if transpose else np.arange(BITS)
    invert = ((odd_rows * row + odd_columns * column) % 2).astype(np.uint8)
    return source, invert


def dihedral_words(words: np.ndarray) -> np.ndarray:
    """(n, 4) -> (8, n, 4): variant k is (close to) the hash of the image under DIHEDRAL[k]."""
    bits = np.unpackbits(np.ascontiguousarray(words, dtype=np.uint64).astype(">u8").view(np.uint8), axis=1)
    out = np.empty((len(_SYMMETRIES), len(words), 4), dtype=np.uint64)
    for k, symmetry in enumerate(_SYMMETRIES):
        source, invert = _symmetry(*symmetry)
        packed = np.ascontiguousarray(np.packbits(bits[:, source] ^ invert, axis=1))
        out[k] = packed.view(">u8").astype(np.uint64)
    return out
