"""Which input rows came out of the plan: per file, the set of row numbers, as ranges.

Every output row names its input as `source` = `file#row`. The writers report, per block, the
row numbers they wrote as sorted ranges (a block covers a contiguous slice of one row group, so
that is one or two ranges, a few bytes); the driver merges them and compares the *set* with
what the run planned. A sum would pass a lost row plus a re-emitted one; the set does not.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

Ranges = list[tuple[int, int]]  # half-open [start, end), sorted, non-overlapping


class RowsLost(RuntimeError):
    """Rows missing from, or repeated in, what the plan wrote: the run must not look successful."""


def split_source(source: str) -> tuple[str, int]:
    path, _, row = source.rpartition("#")
    return path, int(row)


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> tuple[Ranges, int]:
    """Ranges sorted and merged, and how many rows were covered more than once (overlaps)."""
    merged: Ranges = []
    repeated = 0
    for start, end in sorted(ranges):
        if merged and start < merged[-1][1]:
            repeated += min(end, merged[-1][1]) - start
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        elif merged and start == merged[-1][1]:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged, repeated


def to_ranges(rows: Iterable[int]) -> Ranges:
    """Row numbers (each once) as merged ranges."""
    return merge_ranges((row, row + 1) for row in rows)[0]


def source_ranges(sources: Iterable[str]) -> dict[str, list[list[int]]]:
    """{file: [[start, end], ...]} of the rows in one block, as JSON-ready lists; repeats kept as ranges."""
    by_file: dict[str, list[int]] = defaultdict(list)
    for source in sources:
        path, row = split_source(source)
        by_file[path].append(row)
    blocks = {}
    for path, rows in by_file.items():
        counts = Counter(rows)
        # a row repeated inside one block is kept as extra one-row ranges, so the driver sees it
        extra = [(row, row + 1) for row, count in counts.items() for _ in range(count - 1)]
        blocks[path] = [list(pair) for pair in to_ranges(counts) + extra]
    return blocks


class RowAccount:
    """What the writers reported, merged; `check` compares it with what the run planned."""

    def __init__(self) -> None:
        self.reported: dict[str, list[tuple[int, int]]] = defaultdict(list)

    def add(self, block: dict[str, list[list[int]]]) -> None:
        for path, ranges in block.items():
            self.reported[path].extend((start, end) for start, end in ranges)

    def rows(self) -> int:
        return sum(end - start for ranges in self.reported.values() for start, end in ranges)

    def per_file(self) -> dict[str, int]:
        return {path: sum(end - start for start, end in ranges) for path, ranges in self.reported.items()}

    def check(self, expected: dict[str, Ranges]) -> None:
        """Raise RowsLost unless every expected row was written exactly once and nothing else was."""
        problems = []
        for path in sorted(set(expected) | set(self.reported)):
            written, repeated = merge_ranges(self.reported.get(path, []))
            wanted, _ = merge_ranges(expected.get(path, []))
            if repeated:
                problems.append(f"{path}: {repeated} row(s) written more than once")
            if written != wanted:
                missing = _count(wanted) - _count(_intersect(wanted, written))
                unexpected = _count(written) - _count(_intersect(wanted, written))
                problems.append(f"{path}: {missing} row(s) missing, {unexpected} row(s) not planned")
        if problems:
            raise RowsLost("rows lost or repeated between the input and the table: " + "; ".join(problems[:10]))


def _count(ranges: Ranges) -> int:
    return sum(end - start for start, end in ranges)


def _intersect(a: Ranges, b: Ranges) -> Ranges:
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out
