"""Lance datasets as the run's tail uses them: fragments written by workers, read back by row address.

LanceDB writes a table as one process; a run writes from many. Lance's distributed write is
the primitive: each worker writes its rows as fragments (data files plus ~500 bytes of JSON
metadata, nothing committed), and one process commits all of them in one operation. Fragments
travel between processes as JSON, so the driver only ever holds metadata.

Rows are named by their row address (`fragment id << 32 | offset`), which is stable within one
version of a dataset: the tail's phases read a committed staging dataset, compute small
per-row changes keyed by address, and apply them while writing the final rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import lance
import pyarrow as pa
from lance.fragment import FragmentMetadata, write_fragments

ROW_ADDRESS = "_rowaddr"
# Rows per Lance data file group: small groups keep a point read (one row of an image) cheap.
ROWS_PER_GROUP = 1024


def fragment_json(fragment: FragmentMetadata) -> str:
    return json.dumps(fragment.to_json(), separators=(",", ":"))


def fragment_of(address: int) -> int:
    return address >> 32


@dataclass(frozen=True)
class LanceLocation:
    """Where a dataset lives and how to reach it; picklable, so tasks open it themselves."""

    uri: str
    storage_options: dict[str, str] | None = None

    def open(self, version: int | None = None) -> lance.LanceDataset:
        return lance.dataset(self.uri, version=version, storage_options=self.storage_options)

    def exists(self) -> bool:
        try:
            self.open()
        except (ValueError, FileNotFoundError, OSError):
            return False
        return True

    def count(self, filter: str, version: int | None = None) -> int:
        """Rows matching `filter`. A filter reads the columns it names (an embedding's nulls are
        in its data), so the driver asks a task for this rather than scanning the table itself."""
        return self.open(version).count_rows(filter)

    def write(self, rows: pa.Table, schema: pa.Schema) -> list[str]:
        """Write rows as new fragments of this dataset (uncommitted); returns their JSON metadata."""
        fragments = write_fragments(
            rows.cast(schema),
            self.uri,
            schema=schema,
            max_rows_per_group=ROWS_PER_GROUP,
            storage_options=self.storage_options,
        )
        return [fragment_json(fragment) for fragment in fragments]

    def create(self, schema: pa.Schema, fragments: Iterable[str]) -> lance.LanceDataset:
        """Commit fragments written by `write` as the whole content of this dataset (one commit)."""
        operation = lance.LanceOperation.Overwrite(schema, [FragmentMetadata.from_json(f) for f in fragments])
        return lance.LanceDataset.commit(self.uri, operation, storage_options=self.storage_options)

    def scan(
        self,
        columns: list[str],
        fragment_ids: Iterable[int] | None = None,
        filter: str | None = None,
        version: int | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Batches of `columns` plus each row's address, from some fragments (default: all)."""
        dataset = self.open(version)
        fragments = None if fragment_ids is None else [dataset.get_fragment(i) for i in fragment_ids]
        scanner = dataset.scanner(columns=columns, filter=filter, fragments=fragments, with_row_address=True)
        yield from scanner.to_batches()

    def read(
        self,
        columns: list[str],
        fragment_ids: Iterable[int] | None = None,
        filter: str | None = None,
        version: int | None = None,
    ) -> pa.Table:
        batches = list(self.scan(columns, fragment_ids, filter, version))
        if batches:
            return pa.Table.from_batches(batches)
        schema = self.open(version).schema
        return pa.schema([schema.field(name) for name in columns] + [(ROW_ADDRESS, pa.uint64())]).empty_table()


def fragment_ids(location: LanceLocation) -> list[int]:
    return [fragment.fragment_id for fragment in location.open().get_fragments()]


def split_evenly(items: list, parts: int) -> list[list]:
    """`items` in at most `parts` contiguous, nearly equal, non-empty groups."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    groups, start = [], 0
    for index in range(parts):
        end = start + size + (index < extra)
        groups.append(items[start:end])
        start = end
    return [group for group in groups if group]
