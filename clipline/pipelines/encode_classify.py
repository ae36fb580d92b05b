"""The actor Ray Data runs in the encoder pool: the model stages, set up once, applied in order.

Kept apart from the plan so an encoder worker imports the model code but not LanceDB, the ledger
or the report renderer, which only the driver uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from clipline.operators.base import Stage, WorkerState


class EncodeClassifyActor:
    """One actor = one model in memory: every stage is set up once, sharing the loaded model."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = list(stages)
        state = WorkerState()
        for stage in self.stages:
            stage.setup(state)

    def __call__(self, batch: pa.Table) -> pa.Table:
        for stage in self.stages:
            batch = stage(batch)
        return batch
