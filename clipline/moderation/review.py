"""Human review: export the review queue for reviewers, apply their decisions back to the table.

The queue is a CSV, because reviewers work in spreadsheets and review tools that all read CSV.
It is also the decisions template: it carries empty `override_decision` and `override_note`
columns, and `review apply` reads the same file back (rows left blank are skipped), so nobody has
to retype ids.

Thumbnails: the table stores no image bytes. A row with an `image_uri` gets that URI as its
thumbnail (the reviewer's tool can open it); a row whose bytes were inline in the input parquet
gets a small JPEG, re-read from the row's `source` (`file#row`) and written into a folder next to
the CSV. When the input has moved, the thumbnail stays empty and the export says how many.

Overrides: `review apply` writes `override_decision`, `override_by`, `override_at` and
`override_note`, and sets `decision` (the effective decision) to the reviewer's, in one commit.
Runs and rescores never write the override columns and re-apply them to `decision`, so an
override wins until a reviewer clears it (`override_decision: clear`), which restores the model's
decision from the row's reasons.

Cells come from uploads (captions, ids, URIs), and a spreadsheet runs a cell starting with `=`,
`+`, `-`, `@`, tab or carriage return as a formula: every such cell is written with a `'` before
it (as is a cell starting with `'`, so the marker can be told apart), and `review apply` takes
the marker off ids again, whether the reviewer's tool kept it or not.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import json
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from clipline.operators.decode import DecodeLimits, RowFailure, thumbnail_jpeg
from clipline.schemas.storage import StorageConfig
from clipline.schemas.table import Decision, Status
from clipline.table.store import ClipTable

QUEUE_WHERE = "status = 'ok' AND decision = 'review' AND override_decision IS NULL"
CLEAR = "clear"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
TEXT_MARKER = "'"
QUEUE_FIELDS = [
    "id",
    "decision",
    "reasons",
    "scores",
    "labels",
    "thumbnail",
    "image_uri",
    "source",
    "text",
    "policy_version",
    "override_decision",
    "override_note",
]


class ReviewError(ValueError):
    """The decisions file or the export request cannot be used as given."""


# --------------------------------------------------------------------------- export


def csv_cell(value: str) -> str:
    """The cell a spreadsheet shows as text: a leading formula character (or marker) gets the marker."""
    return TEXT_MARKER + value if value.startswith((*FORMULA_STARTS, TEXT_MARKER)) else value


def id_from_cell(value: str) -> str:
    """Undo `csv_cell` on an id read back from a decisions file."""
    unmarked = value[len(TEXT_MARKER) :]
    return unmarked if value.startswith(TEXT_MARKER) and unmarked.startswith((*FORMULA_STARTS, TEXT_MARKER)) else value


def _reasons_text(reasons: list[dict] | None) -> str:
    return "; ".join(
        f"{r['category']}:{r['action']} {r['score']:.3f} (threshold {r['threshold']:.3f}, margin {r['margin']:+.3f})"
        for r in reasons or []
    )


def _priority(row: dict) -> float:
    """Most likely violations first: the highest score among the reasons."""
    return max((reason["score"] for reason in row["reasons"] or []), default=0.0)


class ThumbnailWriter:
    """Small JPEGs re-read from the input parquet rows named by `source` (`file#row`)."""

    def __init__(self, folder: Path, image_column: str, storage: StorageConfig) -> None:
        self.folder = folder
        self.image_column = image_column
        self.storage = storage
        self.failures: Counter = Counter()

    def write_all(self, rows: list[dict]) -> dict[str, str]:
        """Thumbnail path (relative to the CSV) by id, for the rows whose bytes could be read."""
        by_file: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for row in rows:
            path, _, index = (row["source"] or "").rpartition("#")
            if not path or not index.isdigit():
                self.failures["no source"] += 1
                continue
            by_file[path].append((int(index), row["id"]))
        written = {}
        for path, wanted in by_file.items():
            try:
                images = self._read_rows(path, [index for index, _ in wanted])
            except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
                self.failures[f"{path}: {type(exc).__name__}: {exc}"[:200]] += len(wanted)
                continue
            for index, row_id in wanted:
                name = self._save(row_id, images.get(index))
                if name:
                    written[row_id] = f"{self.folder.name}/{name}"
        return written

    def _read_rows(self, path: str, indexes: list[int]) -> dict[int, bytes | None]:
        """Image bytes of these row numbers, reading only the row groups that hold them."""
        with fsspec.open(path, "rb", **self.storage.fsspec_options(path)) as handle:
            parquet = pq.ParquetFile(handle)
            if self.image_column not in parquet.schema_arrow.names:
                raise KeyError(f"no column {self.image_column!r} (use --image-column)")
            starts, total = [], 0
            for group in range(parquet.num_row_groups):
                starts.append(total)
                total += parquet.metadata.row_group(group).num_rows
            found = {}
            groups = defaultdict(list)
            for index in indexes:
                if index < total:
                    groups[bisect.bisect_right(starts, index) - 1].append(index)
            for group, members in groups.items():
                column = parquet.read_row_group(group, columns=[self.image_column]).column(0)
                for index in members:
                    found[index] = column[index - starts[group]].as_py()
            return found

    def _save(self, row_id: str, data: bytes | None) -> str | None:
        if not data:
            self.failures["no image bytes in the source row"] += 1
            return None
        try:
            jpeg = thumbnail_jpeg(data, DecodeLimits())  # the bounded decode the pipeline uses
        except RowFailure as failure:
            self.failures[f"undecodable image: {failure.code}"] += 1
            return None
        name = hashlib.sha256(row_id.encode()).hexdigest()[:20] + ".jpg"
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / name).write_bytes(jpeg)
        return name


def export_queue(
    uri: str,
    table_name: str,
    out_csv: str | Path,
    where: str | None = None,
    limit: int | None = None,
    thumbnails: bool = True,
    image_column: str = "image",
    storage: StorageConfig | None = None,
) -> dict:
    """Write the review queue (rows in review without a reviewer decision) as CSV; returns a summary."""
    storage = storage or StorageConfig()
    table = ClipTable.open(uri, table_name, storage).lance
    condition = QUEUE_WHERE + (f" AND ({where})" if where else "")
    columns = {name: name for name in ("id", "decision", "reasons", "scores", "labels", "image_uri", "source")}
    columns.update(text="text", policy_version="policy_version", has_image="image_embedding IS NOT NULL")
    try:
        rows = table.search().where(condition).select(columns).limit(None).to_arrow().to_pylist()
    except (ValueError, RuntimeError, OSError) as exc:
        raise ReviewError(f"cannot query {table_name!r} with --where {where!r}: {exc}") from exc
    rows.sort(key=lambda row: (-_priority(row), row["id"]))
    if limit is not None:
        rows = rows[:limit]
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    writer = ThumbnailWriter(out_csv.parent / f"{out_csv.stem}-thumbs", image_column, storage)
    inline = [row for row in rows if row["has_image"] and not row["image_uri"]]
    written = writer.write_all(inline) if thumbnails else {}
    with out_csv.open("w", newline="") as handle:
        output = csv.DictWriter(handle, fieldnames=QUEUE_FIELDS)
        output.writeheader()
        for row in rows:
            cells = {
                "id": row["id"],
                "decision": row["decision"],
                "reasons": _reasons_text(row["reasons"]),
                "scores": json.dumps({s["category"]: round(s["score"], 4) for s in row["scores"] or []}),
                "labels": ",".join(row["labels"] or []),
                "thumbnail": row["image_uri"] or written.get(row["id"], ""),
                "image_uri": row["image_uri"] or "",
                "source": row["source"] or "",
                "text": row["text"] or "",
                "policy_version": row["policy_version"] or "",
                "override_decision": "",
                "override_note": "",
            }
            output.writerow({name: csv_cell(value) for name, value in cells.items()})
    return {
        "path": str(out_csv),
        "rows": len(rows),
        "thumbnails_written": len(written),
        "thumbnails_from_uri": sum(1 for row in rows if row["image_uri"]),
        "thumbnail_failures": dict(writer.failures),
    }


# --------------------------------------------------------------------------- apply


def model_decision(reasons: list[dict] | None) -> str:
    """The model's own decision, recovered from its reasons (what a cleared override falls back to)."""
    actions = {reason["action"] for reason in reasons or []}
    return "block" if "block" in actions else ("review" if "review" in actions else "allow")


def read_decisions(path: str | Path, reviewer: str | None) -> dict[str, dict]:
    """Reviewer decisions by id from a CSV with `id`, `override_decision` and optional
    `override_by` / `override_note`; blank decisions are skipped (not reviewed yet)."""
    path = Path(path)
    if not path.is_file():
        raise ReviewError(f"decisions file not found: {path}")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        missing = [name for name in ("id", "override_decision") if name not in fields]
        if missing:
            raise ReviewError(f"{path}: missing column(s) {missing} (has {fields})")
        problems, decisions = [], {}
        for line, row in enumerate(reader, start=2):
            value = (row["override_decision"] or "").strip().lower()
            row_id = id_from_cell((row["id"] or "").strip())
            if not value:
                continue
            who = (row.get("override_by") or "").strip() or reviewer
            if not row_id:
                problems.append(f"line {line}: empty id")
            elif value not in (*Decision, CLEAR):
                problems.append(f"line {line}: override_decision {value!r} is not one of {[*Decision, CLEAR]}")
            elif not who:
                problems.append(f"line {line}: no reviewer (give --reviewer or an override_by column)")
            elif row_id in decisions and decisions[row_id]["decision"] != value:
                problems.append(f"line {line}: id {row_id!r} has two different decisions")
            else:
                note = (row.get("override_note") or "").strip() or None
                decisions[row_id] = {"decision": value, "by": who, "note": note}
    if problems:
        raise ReviewError(f"{path}: nothing applied:\n  " + "\n  ".join(problems[:20]))
    return decisions


def apply_decisions(
    uri: str,
    table_name: str,
    decisions_path: str | Path,
    reviewer: str | None = None,
    storage: StorageConfig | None = None,
) -> dict:
    """Write reviewer decisions into the table in one commit; all or nothing."""
    storage = storage or StorageConfig()
    decisions = read_decisions(decisions_path, reviewer)
    table = ClipTable.open(uri, table_name, storage)
    summary = {"applied": 0, "cleared": 0, "by_decision": {}, "table_version": table.version}
    if not decisions:
        return summary
    stored = {row["id"]: row for row in table.rows_by_ids(decisions, ["id", "status", "reasons"]).to_pylist()}
    unknown = sorted(set(decisions) - set(stored))
    failed = sorted(row_id for row_id, row in stored.items() if row["status"] != Status.OK)
    if unknown or failed:
        lines = []
        if unknown:
            lines.append(f"{len(unknown)} id(s) not in table {table_name!r}: {unknown[:10]}")
        if failed:
            lines.append(f"{len(failed)} id(s) are failed rows (nothing was scored to review): {failed[:10]}")
        raise ReviewError(f"{decisions_path}: nothing applied:\n  " + "\n  ".join(lines))
    now = datetime.now(UTC)
    ids = sorted(decisions)
    records = []
    for row_id in ids:
        item = decisions[row_id]
        if item["decision"] == CLEAR:
            records.append(
                {
                    "id": row_id,
                    "decision": model_decision(stored[row_id]["reasons"]),
                    "override_decision": None,
                    "override_by": None,
                    "override_at": None,
                    "override_note": None,
                }
            )
        else:
            records.append(
                {
                    "id": row_id,
                    "decision": item["decision"],
                    "override_decision": item["decision"],
                    "override_by": item["by"],
                    "override_at": now,
                    "override_note": item["note"],
                }
            )
    names = ["id", "decision", "override_decision", "override_by", "override_at", "override_note"]
    schema = pa.schema([table.lance.schema.field(name) for name in names])
    table.merge(pa.Table.from_pylist(records, schema=schema), insert_new=False, few=True)
    counts = Counter(item["decision"] for item in decisions.values())
    summary.update(
        applied=sum(count for value, count in counts.items() if value != CLEAR),
        cleared=counts.get(CLEAR, 0),
        by_decision={value: count for value, count in sorted(counts.items()) if value != CLEAR},
        table_version=table.version,
    )
    return summary
