"""The audit log of human review: one JSON record per committed batch of reviewer decisions.

The table's override columns say who decided what about a row last; the log says everything that
happened, in order: every batch (from `review apply`, the web queue, the API, an undo) with its
reviewers, its source, the table version it produced, and each row's review state before it, which
is what an undo restores. Records live under `Sidecars.review_log(table)`, one object each, created
exclusively (nothing is ever overwritten or appended to, so it works the same on S3). Record names
start with the UTC time, so a listing is in commit order.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import fsspec

from clipline.table.store import ClipTable


def new_batch_id(at: datetime) -> str:
    return f"{at:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}"


def json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def new_log_record(source: str, reviewers: list[str], at: datetime, undoes: str | None = None) -> dict:
    """A batch's record, before its rows and the table version it produced are known."""
    return {"batch": new_batch_id(at), "at": at.isoformat(), "source": source, "reviewers": reviewers, "undoes": undoes}


class ReviewLog:
    """The review-log records of one table."""

    def __init__(self, table: ClipTable) -> None:
        uri = table.sidecars.review_log(table.name)
        self.fs, self.root = fsspec.core.url_to_fs(uri, **table.storage.fsspec_options(table.db_uri))

    def _path(self, batch: str) -> str:
        if not batch or "/" in batch or batch.startswith("."):
            raise ValueError(f"batch id {batch!r} cannot name a record")
        return f"{self.root}/{batch}.json"

    def write(self, record: dict) -> None:
        self.fs.makedirs(self.root, exist_ok=True)
        with self.fs.open(self._path(record["batch"]), "xb") as handle:
            handle.write(json.dumps(record, indent=1).encode())

    def read(self, batch: str) -> dict | None:
        try:
            return json.loads(self.fs.cat_file(self._path(batch)))
        except FileNotFoundError:
            return None

    def batches(self) -> list[str]:
        """Batch ids, oldest first."""
        self.fs.invalidate_cache(self.root)
        try:
            names = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        return sorted(name.rsplit("/", 1)[-1].removesuffix(".json") for name in names if name.endswith(".json"))
