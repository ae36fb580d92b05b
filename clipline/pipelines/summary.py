"""What a run did, as plain data: the run summary, the tally behind it, and the run options.

Kept free of Ray, torch and LanceDB so that the report code, the CLI and the web app can read a
summary without importing the run (and so the run never imports the reports: `jobs/run.py` writes
the run's manifest and report after `run_job` returns).
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from clipline.schemas.table import Status


@dataclass(frozen=True)
class RunOptions:
    """How to run a job: where, and which rows."""

    address: str | None = None
    full: bool = False
    retry_failed: bool = False


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


@dataclass
class RunSummary:
    """What a run did, in numbers a person reads at the end of the run."""

    run_id: str
    table_uri: str
    table: str
    rows_in: int = 0
    rows_written: int = 0
    rows_replaced: int = 0  # rows that replaced a stored row with their id (reruns, retries, updates)
    ids_updated: int = 0  # of those, given ids taken over from another source (sink.update_existing_ids)
    ok: int = 0
    failed: int = 0
    failed_by_code: dict[str, int] = field(default_factory=dict)
    decisions: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    flagged: dict[str, dict[str, int]] = field(default_factory=dict)
    files_total: int = 0
    files_processed: list[str] = field(default_factory=list)
    files_skipped: list[str] = field(default_factory=list)
    files_claimed_elsewhere: list[str] = field(default_factory=list)
    table_rows: int = 0
    table_version_before: int = 0
    table_version_after: int = 0
    wall_s: float = 0.0
    dedup: dict = field(default_factory=dict)
    maintenance: dict = field(default_factory=dict)
    stages: list[dict] = field(default_factory=list)  # per Ray Data operator: wall time, rows, rows/s
    tail: dict = field(default_factory=dict)  # the tail's phases (seconds) and what the driver received
    startup: dict = field(default_factory=dict)  # planning, encoder imports, model build, first batch (startup.py)
    manifest_uri: str | None = None
    report_uri: str | None = None

    @property
    def rows_per_s(self) -> float:
        return self.rows_written / self.wall_s if self.wall_s else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "rows_per_s": round(self.rows_per_s, 2)}

    def format(self) -> str:
        """The plain-text table printed at the end of a run."""
        failed_codes = ", ".join(f"{k}: {v}" for k, v in sorted(self.failed_by_code.items()))
        lines = [
            f"run {self.run_id}",
            f"  input files    {self.files_total} ({len(self.files_processed)} processed, "
            f"{len(self.files_skipped)} already in the table, {len(self.files_claimed_elsewhere)} "
            "claimed by a concurrent run)",
            f"  rows in        {self.rows_in}",
            f"  ok             {self.ok}",
            f"  failed         {self.failed}" + (f"  ({failed_codes})" if self.failed else ""),
            "  decisions      " + ", ".join(f"{k}: {v}" for k, v in sorted(self.decisions.items())),
        ]
        for category, actions in self.flagged.items():
            counts = ", ".join(f"{action}: {count}" for action, count in sorted(actions.items()))
            lines.append(f"    {category:<12} {counts}")
        if self.dedup.get("duplicates"):
            dedup = self.dedup
            lines.append(
                f"  duplicates     {dedup['duplicates']} (exact {dedup['exact']}, near {dedup['near']}; "
                f"of earlier rows {dedup['of_table']}, within the run {dedup['of_run']})"
            )
        if self.labels:
            lines.append("  labels         " + ", ".join(f"{k}: {v}" for k, v in sorted(self.labels.items())))
        lines += [
            f"  wall time      {self.wall_s:.1f} s ({self.rows_per_s:.1f} rows/s)",
            f"  table          {self.table_uri} :: {self.table} "
            f"({self.table_rows} rows, version {self.table_version_before} → {self.table_version_after})",
        ]
        if self.report_uri:
            lines.append(f"  report         {self.report_uri}")
        return "\n".join(lines)


class Tally:
    """Counts per status, error code, decision and label, accumulated batch by batch."""

    def __init__(self) -> None:
        self.counters: dict[str, Counter] = {name: Counter() for name in ("status", "error_code", "decision")}
        self.labels: Counter = Counter()
        self.flagged: Counter = Counter()

    def add(self, batch: pa.Table) -> None:
        for name, counter in self.counters.items():
            for item in pc.value_counts(batch.column(name)).to_pylist():
                if item["values"] is not None:
                    counter[item["values"]] += item["counts"]
        self.labels.update(pc.list_flatten(batch.column("labels")).to_pylist())
        reasons = pc.list_flatten(batch.column("reasons"))
        self.flagged.update(
            zip(
                pc.struct_field(reasons, "category").to_pylist(),
                pc.struct_field(reasons, "action").to_pylist(),
                strict=True,
            )
        )

    def to_dict(self) -> dict:
        """JSON-ready counts: what a finalize task sends the driver instead of its rows."""
        return {
            "counters": {name: dict(counter) for name, counter in self.counters.items()},
            "labels": dict(self.labels),
            "flagged": [[category, action, count] for (category, action), count in self.flagged.items()],
        }

    def merge(self, data: dict) -> None:
        """Add another tally's `to_dict()`."""
        for name, counts in data["counters"].items():
            self.counters[name].update(counts)
        self.labels.update(data["labels"])
        self.flagged.update({(category, action): count for category, action, count in data["flagged"]})

    def fill(self, summary: RunSummary) -> None:
        summary.ok = self.counters["status"][Status.OK]
        summary.failed = self.counters["status"][Status.FAILED]
        summary.failed_by_code = dict(self.counters["error_code"])
        summary.decisions = dict(self.counters["decision"])
        summary.labels = dict(self.labels)
        for (category, action), count in sorted(self.flagged.items()):
            summary.flagged.setdefault(category, {})[action] = count


def stage_stats(stats: Any) -> list[dict]:
    """Per-operator wall time and throughput from Ray Data, source first.

    `stats` is what `Dataset.get_stats_summary()` returns after the dataset was iterated (a
    `DatasetStatsSummary`), or the iterated `Dataset` itself, or None. Read by attribute so this
    module needs no Ray import: `operators_stats` (this dataset's operators) and `parents`
    (upstream ones), each with `operator_name`, `time_total_s` (first task start to last task
    end), `output_num_rows.sum` and `wall_time.sum` / `cpu_time.sum` (summed over tasks).
    Fused operators (read → decode) appear as one stage, as Ray Data ran them.
    """
    if stats is None:
        return []
    if hasattr(stats, "get_stats_summary"):
        stats = stats.get_stats_summary()
    ordered: list[Any] = []

    def walk(summary: Any) -> None:
        for parent in getattr(summary, "parents", None) or []:
            walk(parent)
        ordered.extend(getattr(summary, "operators_stats", None) or [])

    walk(stats)
    stages = []
    for operator in ordered:
        rows = int(operator.output_num_rows.sum) if operator.output_num_rows else 0
        wall = float(operator.time_total_s or 0.0)
        stages.append(
            {
                "name": str(operator.operator_name),
                "wall_s": round(wall, 3),
                "rows": rows,
                "rows_per_s": round(rows / wall, 2) if wall else 0.0,
                "task_s": round(float(operator.wall_time.sum), 3) if operator.wall_time else 0.0,
                "cpu_s": round(float(operator.cpu_time.sum), 3) if operator.cpu_time else 0.0,
            }
        )
    return stages
