"""Matching rows' PDQ hashes against a policy's known-bad hash lists.

Each list is read once per worker (`PolicyHashLists.load`, from `ClassifyPolicy.setup`, or once by
`clipline rescore`), checked against the sha256 the policy was loaded with, and indexed
(`hamming.MultiIndex`: 1M entries take ~124 MiB and ~1.4 s to build). A row matches a list when
it is `ok`, its `pdq_quality` is at least the list's `min_quality`, and its `pdq_hash` is within
the list's `max_distance` of an entry; the nearest entry wins (ties: the earlier in the file).
With `dihedral`, the 8 rotations and mirrors of the row's hash are searched too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipline.operators.columns import column_or_nulls, ok_mask
from clipline.operators.hamming import BITS, MultiIndex, dihedral_words, hex_to_words, words_to_hex
from clipline.schemas.hash_lists import HashListEntries, HashListSpec
from clipline.schemas.policy import Policy
from clipline.schemas.storage import StorageConfig


@dataclass(frozen=True)
class ListMatch:
    """A row's nearest entry in one list."""

    distance: int
    entry: str  # the entry's hash, 64 hex digits
    label: str


class HashList:
    """A list's entries as (n, 4) words with their index; each distinct label is stored once."""

    def __init__(self, words: np.ndarray, labels: Sequence[str]) -> None:
        if len(words) != len(labels):
            raise ValueError("one label per hash")
        table: dict[str, int] = {}
        self.label_ids = np.array([table.setdefault(label, len(table)) for label in labels], dtype=np.uint32)
        self.label_table = list(table)
        self.index = MultiIndex(words)

    @classmethod
    def from_entries(cls, entries: HashListEntries) -> HashList:
        return cls(hex_to_words(entries.hashes), entries.labels)

    def __len__(self) -> int:
        return len(self.index)

    def nearest(self, queries: np.ndarray, max_distance: int, dihedral: bool = False) -> list[ListMatch | None]:
        """For each (4,) query hash, its nearest entry within max_distance, or None."""
        n = len(queries)
        searched = dihedral_words(queries).reshape(-1, 4) if dihedral else queries
        found, entries, dists = self.index.search(searched, max_distance)
        rows = found % n if n else found  # variant k of row i was searched as k * n + i
        order = np.lexsort((entries, dists, rows))
        rows, entries, dists = rows[order], entries[order], dists[order]
        first = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else rows
        out: list[ListMatch | None] = [None] * n
        hexes = words_to_hex(self.index.words[entries[first]])
        for position, at in enumerate(first.tolist()):
            label = self.label_table[int(self.label_ids[entries[at]])]
            out[int(rows[at])] = ListMatch(int(dists[at]), hexes[position], label)
        return out


def hash_reason(spec: HashListSpec, distance: int) -> dict:
    """A match as a row reason: score 1 - d/256 against the threshold 1 - max_distance/256."""
    score = 1.0 - distance / BITS
    threshold = 1.0 - spec.max_distance / BITS
    return {
        "category": spec.category,
        "action": spec.action,
        "score": score,
        "threshold": threshold,
        "margin": score - threshold,
    }


@dataclass
class RowMatches:
    """What the lists say about one row that matched at least one: its reasons and `hash_matches` entries."""

    reasons: list[dict]
    matches: list[dict]

    @property
    def action(self) -> str:
        """The most severe action of the lists that matched: "block" beats "review"."""
        return "block" if any(reason["action"] == "block" for reason in self.reasons) else "review"


class PolicyHashLists:
    """A policy's lists, loaded and indexed, matched a batch at a time."""

    def __init__(self, lists: Sequence[tuple[HashListSpec, HashList]]) -> None:
        self.lists = list(lists)

    @classmethod
    def load(cls, policy: Policy, storage: StorageConfig | None = None) -> PolicyHashLists:
        """Read every list of the policy (refused if it changed since the policy was loaded) and index it."""
        storage = storage or StorageConfig()
        return cls([(spec, HashList.from_entries(spec.read(storage))) for spec in policy.hash_lists])

    def match(self, batch: pa.Table) -> list[RowMatches | None]:
        """Per row of `batch` (which needs `status`, `pdq_hash`, `pdq_quality`): its matches, or None."""
        out: list[RowMatches | None] = [None] * batch.num_rows
        if not self.lists:
            return out
        hashes = column_or_nulls(batch, "pdq_hash", pa.string())
        quality = column_or_nulls(batch, "pdq_quality", pa.int32()).fill_null(-1).to_numpy(zero_copy_only=False)
        hashed = ok_mask(batch) & np.asarray(pc.is_valid(hashes), dtype=bool)
        for spec, hash_list in self.lists:
            rows = np.flatnonzero(hashed & (quality >= spec.min_quality))
            if not len(rows):
                continue
            queries = hex_to_words(hashes.take(pa.array(rows)).to_pylist())
            for row, found in zip(
                rows.tolist(), hash_list.nearest(queries, spec.max_distance, spec.dihedral), strict=True
            ):
                if found is None:
                    continue
                if out[row] is None:
                    out[row] = RowMatches([], [])
                out[row].reasons.append(hash_reason(spec, found.distance))
                out[row].matches.append(
                    {"list": spec.name, "entry": found.entry, "label": found.label, "distance": found.distance}
                )
        return out
