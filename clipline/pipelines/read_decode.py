"""The CPU stage Ray Data runs as tasks: read one row group, decode it, in blocks.

Kept apart from `embed` so a decode worker imports only Pillow, pyarrow and fsspec: importing
the plan module would pull torch, open_clip and LanceDB into every decode worker, seconds of CPU
that a small machine spends before its first image.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from clipline.operators.decode import DecodeImages
from clipline.operators.read import ReadRowGroups


class ReadAndDecode:
    """Read each task's row group, then decode it in slices, each slice its own output block.

    Read and decode live in one UDF called with one task at a time. As two `map_batches`,
    Ray Data fuses them and bundles as many read tasks as the decode batch size counts *rows*
    (64 tasks = every row group of a small input) into one task, so the encoder waited for the
    whole input to be decoded. Here the first slice reaches the encoder after one slice's decode,
    and decoding the rest overlaps encoding.
    """

    def __init__(self, reader: ReadRowGroups, decoder: DecodeImages, rows_per_block: int) -> None:
        self.reader = reader
        self.decoder = decoder
        self.rows_per_block = rows_per_block

    def __call__(self, tasks: pa.Table) -> Iterator[pa.Table]:
        for index in range(tasks.num_rows):
            rows = self.reader(tasks.slice(index, 1))
            for start in range(0, rows.num_rows, self.rows_per_block):
                yield self.decoder(rows.slice(start, self.rows_per_block))
