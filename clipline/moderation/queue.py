"""The review queue as people work it in `clipline serve`: which rows, in what order, leased to whom.

The queue is every `ok` row the model sent to `review` (optionally `block` too) that no reviewer
has decided yet, ordered by one of:

- `score`: the highest category score among the row's reasons first (likely violations first);
- `margin`: the smallest distance to a threshold first (the model's least certain calls);
- `recency`: the most recently processed first.

Two reviewers must never spend time on the same row, so a page of the queue is leased: each row
on a reviewer's page has a lease object under `Sidecars.leases(table)`, created with an
exclusive create (O_EXCL locally, If-None-Match on S3), which exactly one of two reviewers asking
at once wins, across any number of server processes. A lease lasts `ttl_s` and is renewed
whenever its reviewer loads the page again; deciding a row releases it; a reviewer who walks away
loses the page when the leases expire. Taking over an expired lease creates the next generation
of the object rather than replacing it, so two takers still race on one exclusive create.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

import fsspec

from clipline.table.store import ClipTable

QUEUE_COLUMNS = ["id", "reasons", "processed_at"]
DEFAULT_LEASE_S = 15 * 60


class QueueOrder(StrEnum):
    SCORE = "score"
    MARGIN = "margin"
    RECENCY = "recency"


def queue_condition(include_block: bool = False, where: str | None = None) -> str:
    """Rows a reviewer should look at: scored, flagged by the model, not decided by a person."""
    decisions = "('review', 'block')" if include_block else "('review')"
    condition = f"status = 'ok' AND decision IN {decisions} AND override_decision IS NULL"
    return condition + (f" AND ({where})" if where else "")


def _top_score(row: dict) -> float:
    return max((reason["score"] for reason in row["reasons"] or []), default=0.0)


def _nearest_margin(row: dict) -> float:
    return min((abs(reason["margin"]) for reason in row["reasons"] or []), default=float("inf"))


def _processed(row: dict) -> float:
    return row["processed_at"].timestamp() if row["processed_at"] else 0.0


SORT_KEYS: dict[QueueOrder, Callable[[dict], tuple]] = {
    QueueOrder.SCORE: lambda row: (-_top_score(row), row["id"]),
    QueueOrder.MARGIN: lambda row: (_nearest_margin(row), row["id"]),
    QueueOrder.RECENCY: lambda row: (-_processed(row), row["id"]),
}


def queue_ids(
    table: ClipTable, order: QueueOrder = QueueOrder.SCORE, include_block: bool = False, where: str | None = None
) -> list[str]:
    """Ids of the whole queue, in `order` (a scan of three light columns of the flagged rows)."""
    table.lance.checkout_latest()
    query = table.lance.search().where(queue_condition(include_block, where)).select(QUEUE_COLUMNS).limit(None)
    rows = query.to_arrow().to_pylist()
    return [row["id"] for row in sorted(rows, key=SORT_KEYS[QueueOrder(order)])]


def lease_key(row_id: str) -> str:
    """A file name for a row id (ids come from users: any characters, any length)."""
    return hashlib.sha256(row_id.encode()).hexdigest()[:40]


@dataclass(frozen=True)
class Lease:
    row_id: str
    reviewer: str
    expires: float
    path: str
    generation: int


class Leases:
    """Row leases of one table's review queue (see the module docstring)."""

    def __init__(self, table: ClipTable, ttl_s: float = DEFAULT_LEASE_S) -> None:
        uri = table.sidecars.leases(table.name)
        self.fs, self.root = fsspec.core.url_to_fs(uri, **table.storage.fsspec_options(table.db_uri))
        self.ttl_s = ttl_s

    def current(self) -> dict[str, Lease]:
        """The newest lease of every row that has one, by row id (expired ones included)."""
        self.fs.invalidate_cache(self.root)
        try:
            names = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return {}
        newest: dict[str, tuple[int, str]] = {}
        for name in names:
            key, generation, suffix = name.rsplit("/", 1)[-1].rsplit(".", 2)
            if suffix == "json" and generation.isdigit() and int(generation) >= newest.get(key, (-1, ""))[0]:
                newest[key] = (int(generation), name)
        leases = {}
        for generation, path in newest.values():
            lease = self._read(path, generation)
            if lease is not None:
                leases[lease.row_id] = lease
        return leases

    def _read(self, path: str, generation: int) -> Lease | None:
        try:
            body = json.loads(self.fs.cat_file(path))
        except FileNotFoundError:  # released meanwhile
            return None
        except json.JSONDecodeError:  # caught between its exclusive create and its write: brand new
            return Lease("", "", float("inf"), path, generation)
        return Lease(body["id"], body["reviewer"], body["expires"], path, generation)

    def _body(self, row_id: str, reviewer: str) -> bytes:
        return json.dumps({"id": row_id, "reviewer": reviewer, "expires": time.time() + self.ttl_s}).encode()

    def take(self, reviewer: str, row_id: str, current: Lease | None) -> bool:
        """Lease the row to `reviewer` (renew it if theirs); False when another reviewer holds it.

        `current` is the row's newest lease from `current()`, or None when it had none.
        """
        if current is not None and current.reviewer == reviewer:
            self.fs.pipe_file(current.path, self._body(row_id, reviewer))
            return True
        if current is not None and current.expires > time.time():
            return False
        generation = current.generation + 1 if current is not None else 0
        self.fs.makedirs(self.root, exist_ok=True)
        try:
            with self.fs.open(f"{self.root}/{lease_key(row_id)}.{generation}.json", "xb") as handle:
                handle.write(self._body(row_id, reviewer))
            return True
        except FileExistsError:
            return False

    def release(self, reviewer: str, row_ids: Iterable[str]) -> None:
        """Drop the reviewer's leases on these rows (every generation: older ones were expired)."""
        held = self.current()
        keys = {lease_key(row_id) for row_id in row_ids if row_id in held and held[row_id].reviewer == reviewer}
        if not keys:
            return
        by_key = defaultdict(list)
        for name in self.fs.ls(self.root, detail=False):
            by_key[name.rsplit("/", 1)[-1].split(".", 1)[0]].append(name)
        for key in keys:
            for path in by_key.get(key, []):
                self.fs.rm(path)


def lease_page(
    table: ClipTable,
    leases: Leases,
    reviewer: str,
    size: int,
    order: QueueOrder = QueueOrder.SCORE,
    include_block: bool = False,
    skipped: Iterable[str] = (),
) -> list[str]:
    """The reviewer's page: the queue rows they already hold, then free rows leased to them now.

    The page stays put while it is worked (rows held are kept first, renewed), rows another
    reviewer holds are passed over, and so are `skipped` rows (the reviewer set them aside).
    Leases on rows that left the queue (decided by anyone) or the page are released.
    """
    set_aside = set(skipped)
    queue = [row_id for row_id in queue_ids(table, order, include_block) if row_id not in set_aside]
    held = leases.current()
    mine = {row_id for row_id in queue if row_id in held and held[row_id].reviewer == reviewer}
    page: set[str] = set()
    for row_id in sorted(queue, key=lambda row_id: row_id not in mine):  # stable: queue order within each
        if len(page) == size:
            break
        if leases.take(reviewer, row_id, held.get(row_id)):
            page.add(row_id)
    stale = [row_id for row_id, lease in held.items() if lease.reviewer == reviewer and row_id not in page]
    leases.release(reviewer, stale)
    return [row_id for row_id in queue if row_id in page]
