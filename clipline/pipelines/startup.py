"""Where a run's start-up goes: the driver's planning, then each encoder's process, imports, model and first batch.

On a small input a run is dominated by what it pays once, before its first image is encoded, and
most of that happens inside the encoder actors, out of the driver's sight. Each actor stamps
wall-clock times as it starts and sends them with its first output batch, in the batch's Arrow
schema metadata: the timings travel with the rows, so measuring start-up adds no actor, no queue
and no round trip to the start-up it measures. The driver lays them on the run's own timeline,
in seconds since `run_job` began.

Kept free of Ray and torch: the encoder actor imports it before its model code, and the summary
it fills is read by reports.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa

STARTUP_METADATA_KEY = b"clipline.encoder_startup"


def process_started_at(pid: int | None = None) -> float | None:
    """When this OS process started, in epoch seconds (Linux /proc; None elsewhere).

    /proc gives the start in clock ticks since boot; the boot clock turns that into an age, so
    the result is as precise as a tick (10 ms), not the whole second of /proc/stat's boot time.
    """
    try:
        fields = Path(f"/proc/{pid or os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, AttributeError):
        return None
    return time.time() - age


@dataclass(frozen=True)
class Stamp:
    """A moment inside a process: wall clock (epoch seconds) and the CPU time the process had used by then.

    On a shared machine wall-clock pieces stretch with the load; CPU seconds say what the piece
    itself costs.
    """

    wall: float
    cpu: float

    @classmethod
    def now(cls) -> Stamp:
        return cls(time.time(), time.process_time())


@dataclass
class EncoderStartup:
    """One encoder actor's start, as stamps taken inside the actor."""

    pid: int
    process_started_at: float | None  # epoch seconds
    actor_started: Stamp  # the actor's module was imported: the worker began creating the actor
    init: Stamp  # the constructor runs: its stages' code (torch, open_clip) has been imported
    ready: Stamp  # every stage set up: the model is built
    model_source: str | None = None  # how the model was built: "cache" or "open_clip"
    first_batch_in: Stamp | None = None
    first_batch_out: Stamp | None = None

    def attach(self, batch: pa.Table) -> pa.Table:
        """The batch with these timings in its schema metadata (the rows are untouched)."""
        metadata = {**(batch.schema.metadata or {}), STARTUP_METADATA_KEY: json.dumps(asdict(self)).encode()}
        return batch.replace_schema_metadata(metadata)

    @classmethod
    def read(cls, batch: pa.Table) -> EncoderStartup | None:
        return cls.from_json((batch.schema.metadata or {}).get(STARTUP_METADATA_KEY))

    @classmethod
    def from_json(cls, raw: str | bytes | None) -> EncoderStartup | None:
        """The timings as `attach` wrote them (the writer tasks forward them to the driver as text)."""
        if not raw:
            return None
        fields = json.loads(raw)
        stamps = {name: Stamp(**value) for name, value in fields.items() if isinstance(value, dict)}
        return cls(**{**fields, **stamps})

    def offsets(self, origin: float) -> dict[str, float | int | str | None]:
        """Wall and CPU seconds of each piece; process start and first encoded batch as seconds after `origin`."""
        pieces = {
            "imports": (self.actor_started, self.init),
            "model_build": (self.init, self.ready),
            "waited_for_first_block": (self.ready, self.first_batch_in),
            "first_batch": (self.first_batch_in, self.first_batch_out),
        }
        timeline: dict[str, float | int | str | None] = {
            "pid": self.pid,
            "model_source": self.model_source,
            "process_started_s": _round(self.process_started_at - origin if self.process_started_at else None),
            "actor_started_s": _round(self.actor_started.wall - origin),
            "worker_boot_cpu_s": _round(self.actor_started.cpu),  # the process's CPU before the actor began
        }
        for name, (start, end) in pieces.items():
            timeline[f"{name}_s"] = _round(end.wall - start.wall if end else None)
            if name != "waited_for_first_block":
                timeline[f"{name}_cpu_s"] = _round(end.cpu - start.cpu if end else None)
        timeline["first_batch_encoded_s"] = _round(self.first_batch_out.wall - origin if self.first_batch_out else None)
        return timeline


def _round(seconds: float | None) -> float | None:
    return round(seconds, 3) if seconds is not None else None


class StartupWatch:
    """Driver side: notes when planning ended and the first batch arrived, and collects each encoder's report.

    `record` is the run summary's `startup` dict, holding `run_started_at` (epoch seconds); the
    watch fills in the rest as seconds since then.
    """

    def __init__(self, record: dict) -> None:
        self.record = record
        self.origin = float(record["run_started_at"])
        self.record["planned_s"] = round(time.time() - self.origin, 3)
        self.encoders: dict[int, EncoderStartup] = {}

    def batches(self, batches: Iterator[pa.Table]) -> Iterator[pa.Table]:
        """Pass the batches through, reading start-up reports off them on the way."""
        for batch in batches:
            self.note(EncoderStartup.read(batch))
            yield batch

    def note(self, report: EncoderStartup | None) -> None:
        """Something arrived at the driver, maybe with an encoder's start-up report."""
        self.record.setdefault("first_batch_at_driver_s", round(time.time() - self.origin, 3))
        if report is not None and report.pid not in self.encoders:
            self.encoders[report.pid] = report
            self._summarise()

    def _summarise(self) -> None:
        encoders = [report.offsets(self.origin) for report in self.encoders.values()]
        self.record["encoders"] = encoders
        encoded = [encoder["first_batch_encoded_s"] for encoder in encoders if encoder["first_batch_encoded_s"]]
        if encoded:
            self.record["first_batch_encoded_s"] = min(encoded)
