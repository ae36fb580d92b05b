"""What the web app does, without HTTP: search, the leased review queue, decisions, run history.

One `Service` per server process holds the open table and the table's own model, loaded once at
start; every page and every `/api/` route calls into it, so the HTML pages and the JSON API can
never disagree. Decisions go through `moderation.review.record_decisions`, the same function as
`clipline review apply`.
"""

from __future__ import annotations

import base64
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipline.moderation.queue import DEFAULT_LEASE_S, Leases, QueueOrder, lease_page
from clipline.moderation.review import ReviewerDecision, record_decisions, undo_batch
from clipline.reports.manifest import ManifestStore
from clipline.reports.thumbnails import load_thumbnails
from clipline.schemas.storage import StorageConfig
from clipline.serve.filters import FilterError, SearchFilters
from clipline.table.embedding import embed_image, embed_text, query_model
from clipline.table.maintain import ProbeSettings, probe_settings
from clipline.table.search import row_vector, search_vector
from clipline.table.store import ClipTable

CARD_COLUMNS = [
    "id",
    "source",
    "text",
    "image_uri",
    "decision",
    "labels",
    "status",
    "reasons",
    "error_code",
    "error_message",
    "override_decision",
    "override_by",
    "override_at",
    "dup_of",
    "run_id",
    "processed_at",
    "thumbnail",
]
REFRESH_S = 1.0  # how stale a page may be: the table handle re-reads the latest version at most this often
MAX_K = 200


@dataclass(frozen=True)
class SearchQuery:
    """One search: at most one of text, image bytes or a row id to look like (none: filtered browse)."""

    text: str | None = None
    image: bytes | None = None
    like: str | None = None
    filters: SearchFilters = field(default_factory=SearchFilters)
    k: int = 24


@dataclass
class TableShape:
    """What the filters need to know about the table, re-read when its version changes."""

    version: int
    categories: list[str]
    score_positions: int
    settings: ProbeSettings
    columns: list[str]  # the card columns the table has (one older than the thumbnail column has none)


def scores_shape(table: ClipTable) -> tuple[list[str], int]:
    """Every category in `scores` and the longest list: one scan of that column."""
    categories: set[str] = set()
    longest = 0
    for batch in table.lance.search().select(["scores"]).limit(None).to_batches():
        column = batch.column(0)
        if len(column) and column.null_count < len(column):
            longest = max(longest, pc.max(pc.list_value_length(column)).as_py() or 0)
            categories.update(pc.unique(pc.list_flatten(column).field("category")).to_pylist())
    return sorted(category for category in categories if category), longest


def thumbnail_uri(data: bytes) -> str:
    kind = "webp" if data[8:12] == b"WEBP" else "jpeg"
    return f"data:image/{kind};base64,{base64.b64encode(data).decode()}"


class Service:
    """The open table, its model, the review leases and the run records of one `clipline serve`."""

    def __init__(
        self, db_uri: str, table: str, storage: StorageConfig | None = None, lease_s: float = DEFAULT_LEASE_S
    ) -> None:
        self.storage = storage or StorageConfig()
        self.table = ClipTable.open(db_uri, table, self.storage)
        self.bundle = query_model(self.table.model())
        embed_text(self.bundle, "warm up")  # the first call pays the tokenizer's and kernels' lazy set-up
        self.leases = Leases(self.table, lease_s)
        self.manifests = ManifestStore(db_uri, table, self.storage)
        self.skipped: dict[str, set[str]] = defaultdict(set)
        self._lock = threading.Lock()
        self._checked = 0.0
        self.shape = self._read_shape()

    # ------------------------------------------------------------------ table freshness

    def _read_shape(self) -> TableShape:
        categories, positions = scores_shape(self.table)
        names = set(self.table.lance.schema.names)
        columns = [name for name in CARD_COLUMNS if name in names]
        return TableShape(self.table.lance.version, categories, positions, probe_settings(self.table.lance), columns)

    def fresh(self) -> TableShape:
        """See other processes' commits (runs, other servers) within REFRESH_S; re-read the shape on change."""
        with self._lock:
            if time.monotonic() - self._checked >= REFRESH_S:
                self.table.lance.checkout_latest()
                self._checked = time.monotonic()
                if self.table.lance.version != self.shape.version:
                    self.shape = self._read_shape()
            return self.shape

    # ------------------------------------------------------------------ search

    def query_vector(self, query: SearchQuery) -> np.ndarray | None:
        if query.text is not None:
            return embed_text(self.bundle, query.text)
        if query.image is not None:
            return embed_image(self.bundle, query.image)
        if query.like is not None:
            return row_vector(self.table.lance, query.like)
        return None

    def search(self, query: SearchQuery) -> list[dict]:
        """Result rows best first, each with `score` (cosine; None for a browse without a query)."""
        shape = self.fresh()
        k = max(1, min(query.k, MAX_K))
        where = query.filters.sql(shape.score_positions)
        vector = self.query_vector(query)
        try:
            if vector is None:
                scan = self.table.lance.search().select(shape.columns).limit(k)
                rows = (scan.where(where) if where else scan).to_arrow()
                rows = rows.append_column("score", pa.nulls(rows.num_rows, pa.float32()))
            else:
                rows = search_vector(
                    self.table.lance,
                    vector,
                    k,
                    where,
                    columns=shape.columns,
                    exclude_id=query.like,
                    settings=shape.settings,
                )
        except (ValueError, RuntimeError, OSError) as exc:  # LanceDB's word for a `where` it cannot run
            raise FilterError(f"cannot search with this filter ({where}): {exc}") from exc
        return rows.to_pylist()

    def with_thumbnails(self, rows: list[dict]) -> list[dict]:
        """Rows with `thumbnail_uri` (a data URI): the stored thumbnail, else one re-read from the input.

        Only rows that have an image and no stored thumbnail (written before the column existed,
        or with `sink.thumbnails: false`) are re-read; text-only rows say so instead.
        """
        bare = [row["id"] for row in rows if not row.get("thumbnail") and row.get("status") == "ok"]
        has_image = {"id": "id", "has_image": "image_embedding IS NOT NULL"}
        found = {
            row["id"]: row["has_image"]
            for part in self.table.rows_where_in("id", bare, has_image)
            for row in part.to_pylist()
        }
        reread = [row for row in rows if found.get(row["id"])]
        fallback = load_thumbnails(reread, storage=self.storage) if reread else {}
        for row in rows:
            data = row.pop("thumbnail", None) or getattr(fallback.get(row["id"]), "jpeg", None)
            row["thumbnail_uri"] = thumbnail_uri(data) if data else None
            if data:
                row["thumbnail_missing"] = None
            elif row["id"] in fallback:
                row["thumbnail_missing"] = fallback[row["id"]].missing
            else:
                row["thumbnail_missing"] = "text only" if row.get("text") else "no image"
        return rows

    def thumbnail(self, row_id: str) -> bytes | None:
        if "thumbnail" not in self.fresh().columns:
            return None
        rows = self.table.rows_by_ids([row_id], ["id", "thumbnail"]).to_pylist()
        return rows[0]["thumbnail"] if rows else None

    # ------------------------------------------------------------------ review

    def queue(self, reviewer: str, order: QueueOrder, include_block: bool, size: int) -> list[dict]:
        """The reviewer's leased page of the queue, as rows for cards."""
        shape = self.fresh()
        ids = lease_page(self.table, self.leases, reviewer, size, order, include_block, skipped=self.skipped[reviewer])
        found = {row["id"]: row for row in self.table.rows_by_ids(ids, shape.columns).to_pylist()}
        return [found[row_id] for row_id in ids if row_id in found]

    def decide(self, reviewer: str, decisions: list[tuple[str, str, str | None]], source: str) -> dict:
        """Record (id, decision, note) triples by `reviewer`: one commit, one audit record; `skip` sets aside.

        Skipped rows are released for other reviewers and left out of this reviewer's next pages.
        """
        skipped = [row_id for row_id, decision, _ in decisions if decision == "skip"]
        chosen = [
            ReviewerDecision(row_id, decision, reviewer, note)
            for row_id, decision, note in decisions
            if decision != "skip"
        ]
        summary = record_decisions(self.table, chosen, source) if chosen else {"applied": 0, "batch": None}
        self.skipped[reviewer].update(skipped)
        self.leases.release(reviewer, [*skipped, *(decision.id for decision in chosen)])
        return {**summary, "skipped": len(skipped)}

    def undo(self, reviewer: str, batch: str) -> dict:
        return undo_batch(self.table, batch, reviewer)

    # ------------------------------------------------------------------ runs

    def runs(self, limit: int = 50) -> list[dict]:
        """The latest recorded runs, newest first, as their manifests."""
        manifests = [self.manifests.read(run_id) for run_id in reversed(self.manifests.run_ids()[-limit:])]
        return [manifest for manifest in manifests if manifest is not None]

    def run_report(self, run_id: str) -> bytes | None:
        return self.manifests.read_report(run_id)
