"""The ledger of processed input files, and claims that keep concurrent runs off the same file.

Scheduled runs point at a prefix that keeps growing; the ledger (a LanceDB table next to the
output table) records each committed file with its size and version (ETag or mtime), so a rerun
processes only new or changed files. Two runs started at once coordinate through claim objects
created with an exclusive create (`xb`: O_EXCL locally, If-None-Match on S3), which exactly one
creator wins. A run records the ledger only after its rows are committed, and releases its
claims only after that, so a file is never committed by two runs.

A claim carries the time it was last renewed. While a run is alive its `ClaimHeartbeat` renews
every claim it holds each TTL/3, so a long backfill keeps its files; only a claim whose holder
stopped renewing for a whole TTL (a crashed run) is taken over. `--retry-failed` re-reads rows by
position, so it first checks that each file is still the version the ledger recorded
(`claim_for_retry`), then claims the files like any run.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import fsspec
import lancedb
import pyarrow as pa

from clipline.operators.read import InputFile
from clipline.schemas.storage import StorageConfig
from clipline.table.store import Sidecars, connect, open_or_create_lance_table

LEDGER_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("size", pa.int64()),
        pa.field("version", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("rows", pa.int64()),
        pa.field("committed_at", pa.timestamp("us", tz="UTC")),
    ]
)


def ledger_table_name(table: str) -> str:
    return f"{table}_ledger"


def file_key(file: InputFile) -> str:
    """A claim names one version of one file: a changed file is new work."""
    return hashlib.sha256(f"{file.path}|{file.version}".encode()).hexdigest()


@dataclass(frozen=True)
class Selection:
    """Which planned files this run processes, and why the others are left out."""

    todo: list[InputFile]
    already_committed: list[InputFile]
    claimed_elsewhere: list[InputFile]


class InputChanged(ValueError):
    """Files to retry are not the versions whose rows the table holds: positions would be wrong."""


class ClaimLost(RuntimeError):
    """Another run took over a claim this run still needed (its heartbeat was not renewing it)."""


class Ledger:
    """Reads and writes the ledger table; creates, renews and releases claim objects."""

    def __init__(
        self,
        db_uri: str,
        table: str,
        run_id: str,
        storage: StorageConfig,
        claim_ttl_s: float,
    ) -> None:
        self.db_uri = db_uri.rstrip("/")
        self.table_name = ledger_table_name(table)
        self.claims_dir = Sidecars(self.db_uri).claims(table)
        self.run_id = run_id
        self.storage = storage
        self.claim_ttl_s = claim_ttl_s
        self.table: lancedb.table.Table | None = None
        self.fs, self.claims_root = fsspec.core.url_to_fs(self.claims_dir, **storage.fsspec_options(self.db_uri))
        self.held: dict[str, InputFile] = {}  # claims this run holds, by file key
        self._claims_lock = threading.Lock()  # renewal never rewrites a claim release just removed

    def setup(self) -> None:
        self.table = open_or_create_lance_table(connect(self.db_uri, self.storage), self.table_name, LEDGER_SCHEMA)
        self.fs.makedirs(self.claims_root, exist_ok=True)

    def committed_versions(self) -> set[tuple[str, str]]:
        """(path, version) pairs already in the table."""
        self.table.checkout_latest()
        rows = self.table.search().select(["path", "version"]).to_arrow()
        return set(zip(rows.column("path").to_pylist(), rows.column("version").to_pylist(), strict=True))

    def select(self, files: list[InputFile], full: bool) -> Selection:
        """Claim every file this run should process; `full` ignores the ledger, never the claims."""
        committed = set() if full else self.committed_versions()
        done = [file for file in files if (file.path, file.version) in committed]
        candidates = [file for file in files if (file.path, file.version) not in committed]
        claimed = [file for file in candidates if self._claim(file)]
        if not full:
            # A run that committed between our ledger read and our claim released its claim only
            # after recording: a fresh read now sees it.
            committed_now = self.committed_versions()
            late = [file for file in claimed if (file.path, file.version) in committed_now]
            self.release(late)
            done += late
            claimed = [file for file in claimed if file not in late]
        elsewhere = [file for file in candidates if file not in claimed and file not in done]
        return Selection(todo=claimed, already_committed=done, claimed_elsewhere=elsewhere)

    def claim_for_retry(self, files: list[InputFile]) -> Selection:
        """`--retry-failed`: refuse files changed since they were recorded, then claim the rest.

        The ledger's record is not consulted for what to skip (these files are committed; some of
        their rows failed), but claims are: a file another run holds is left to it.
        """
        self.check_unchanged(files)
        return self.select(files, full=True)

    def check_unchanged(self, files: list[InputFile]) -> None:
        """Raise InputChanged naming every file whose size or version differs from its latest record."""
        self.table.checkout_latest()
        rows = self.table.search().select(["path", "size", "version", "committed_at"]).limit(None).to_arrow()
        recorded: dict[str, tuple[int, str]] = {}
        for row in sorted(rows.to_pylist(), key=lambda row: row["committed_at"]):
            recorded[row["path"]] = (row["size"], row["version"])
        problems = []
        for file in files:
            if file.path not in recorded:
                problems.append(f"{file.path}: no recorded version in {self.table_name}")
            elif recorded[file.path] != (file.size, file.version):
                size, version = recorded[file.path]
                now = f"now size {file.size}, version {file.version}"
                problems.append(f"{file.path}: recorded size {size}, version {version}; {now}")
        if problems:
            raise InputChanged(
                f"{len(problems)} input file(s) changed since their rows were written, so failed rows cannot be "
                "found again by position; run without --retry-failed to process them as new files:\n  "
                + "\n  ".join(problems)
            )

    def heartbeat(self, interval_s: float | None = None) -> ClaimHeartbeat:
        """A started heartbeat renewing this run's claims every TTL/3 (or `interval_s`); use `with`."""
        return ClaimHeartbeat(self, interval_s or self.claim_ttl_s / 3).start()

    def renew(self) -> list[InputFile]:
        """Refresh the time on every claim this run holds; returns the files whose claim was taken over."""
        lost = []
        with self._claims_lock:
            for key, file in list(self.held.items()):
                existing = self._claims_of(file)
                newest = self._read_claim(existing[-1]) if existing else {}
                if newest.get("run_id") != self.run_id:
                    lost.append(file)
                    del self.held[key]
                    continue
                self.fs.pipe_file(existing[-1], self._claim_body(file))
        return lost

    def record(self, files: list[InputFile], rows_per_file: dict[str, int]) -> None:
        """Append the committed files (one ledger commit), then release their claims."""
        if files:
            now = datetime.now(UTC)
            records = [
                {
                    "path": file.path,
                    "size": file.size,
                    "version": file.version,
                    "run_id": self.run_id,
                    "rows": rows_per_file.get(file.path, 0),
                    "committed_at": now,
                }
                for file in files
            ]
            self.table.add(pa.Table.from_pylist(records, schema=LEDGER_SCHEMA))
        self.release(files)

    def release(self, files: list[InputFile]) -> None:
        """Remove this run's claims (after its ledger record, or when the run gives up)."""
        with self._claims_lock:
            for file in files:
                self.held.pop(file_key(file), None)
                for path in self._claims_of(file):
                    if self._read_claim(path).get("run_id") == self.run_id:
                        self.fs.rm(path)

    def _claims_of(self, file: InputFile) -> list[str]:
        """Claim objects of one file version, oldest generation first."""
        paths = self.fs.glob(f"{self.claims_root}/{file_key(file)}.*.json")
        return sorted(paths, key=lambda path: int(path.rsplit(".", 2)[-2]))

    def _claim(self, file: InputFile) -> bool:
        """Exclusively create the next claim generation when there is none or the newest is stale.

        Taking over a crashed run's claim creates generation n+1 rather than deleting generation
        n, so two runs taking over at once still race on one exclusive create, which one wins.
        """
        existing = self._claims_of(file)
        if existing:
            newest = self._read_claim(existing[-1])
            if time.time() - newest.get("at", 0.0) <= self.claim_ttl_s:
                return False
        generation = int(existing[-1].rsplit(".", 2)[-2]) + 1 if existing else 0
        try:
            with self.fs.open(f"{self.claims_root}/{file_key(file)}.{generation}.json", "xb") as handle:
                handle.write(self._claim_body(file))
        except FileExistsError:
            return False
        with self._claims_lock:
            self.held[file_key(file)] = file
        return True

    def _claim_body(self, file: InputFile) -> bytes:
        body = {"run_id": self.run_id, "path": file.path, "version": file.version, "at": time.time()}
        return json.dumps(body).encode()

    def _read_claim(self, path: str) -> dict:
        """A claim's content; one caught between its exclusive create and its write is brand new."""
        try:
            return json.loads(self.fs.cat_file(path))
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError:
            return {"at": time.time()}


class ClaimHeartbeat:
    """Renews a ledger's claims from a daemon thread while the run is alive; stops on `with` exit.

    A storage error in one beat is kept and retried at the next; a claim found taken over is
    dropped from the ledger's held set and reported by `check()`, which a run calls before it
    commits so that it never commits a file another run now owns.
    """

    def __init__(self, ledger: Ledger, interval_s: float) -> None:
        self.ledger = ledger
        self.interval_s = interval_s
        self.lost: list[InputFile] = []
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"claims-{ledger.run_id}", daemon=True)

    def start(self) -> ClaimHeartbeat:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.lost.extend(self.ledger.renew())
                self.error = None
            except Exception as exc:  # a transient storage error: the claims have TTL - interval left
                self.error = exc

    def check(self) -> None:
        """Raise ClaimLost naming the files another run took over."""
        if self.lost:
            paths = ", ".join(file.path for file in self.lost)
            raise ClaimLost(f"claims taken over by another run (renewal was late): {paths}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> ClaimHeartbeat:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
