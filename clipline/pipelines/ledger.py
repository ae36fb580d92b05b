"""The ledger of processed input files, and claims that keep concurrent runs off the same file.

Scheduled runs point at a prefix that keeps growing; the ledger (a LanceDB table next to the
output table) records each committed file with its size and version (ETag or mtime), so a rerun
processes only new or changed files. Two runs started at once coordinate through claim objects
created with an exclusive create (`xb`: O_EXCL locally, If-None-Match on S3), which exactly one
creator wins. A run records the ledger only after its rows are committed, and releases its
claims only after that, so a file is never committed by two runs.
"""

from __future__ import annotations

import hashlib
import json
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


class Ledger:
    """Reads and writes the ledger table; creates and releases claim objects."""

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
        for file in files:
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
        body = json.dumps({"run_id": self.run_id, "path": file.path, "version": file.version, "at": time.time()})
        try:
            with self.fs.open(f"{self.claims_root}/{file_key(file)}.{generation}.json", "xb") as handle:
                handle.write(body.encode())
            return True
        except FileExistsError:
            return False

    def _read_claim(self, path: str) -> dict:
        """A claim's content; one caught between its exclusive create and its write is brand new."""
        try:
            return json.loads(self.fs.cat_file(path))
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError:
            return {"at": time.time()}
