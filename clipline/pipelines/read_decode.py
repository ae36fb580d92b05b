"""The CPU stages Ray Data runs as tasks: read one row group, then the per-row stages, in blocks.

Kept apart from the plan so a decode worker imports only what its stages need (Pillow, pyarrow,
fsspec): importing the plan module would pull torch, open_clip and LanceDB into every decode
worker, seconds of CPU that a small machine spends before its first image.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pyarrow as pa

from clipline.operators.base import Stage, WorkerState


class ReadAndDecode:
    """Read each task's row group, then run the following stages on it in slices, each slice its own block.

    Read and decode live in one UDF called with one task at a time. As two `map_batches`,
    Ray Data fuses them and bundles as many read tasks as the decode batch size counts *rows*
    (64 tasks = every row group of a small input) into one task, so the encoder waited for the
    whole input to be decoded. Here the first slice reaches the encoder after one slice's decode,
    and decoding the rest overlaps encoding.
    """

    def __init__(self, read: Stage, stages: Sequence[Stage], rows_per_block: int) -> None:
        self.read = read
        self.stages = list(stages)
        self.rows_per_block = rows_per_block
        self.ready = False

    def __call__(self, tasks: pa.Table) -> Iterator[pa.Table]:
        if not self.ready:
            state = WorkerState()
            for stage in (self.read, *self.stages):
                stage.setup(state)
            self.ready = True
        for index in range(tasks.num_rows):
            rows = self.read(tasks.slice(index, 1))
            for start in range(0, rows.num_rows, self.rows_per_block):
                block = rows.slice(start, self.rows_per_block)
                for stage in self.stages:
                    block = stage(block)
                yield block
