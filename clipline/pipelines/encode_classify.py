"""The actor Ray Data runs in the encoder pool: the model stages, set up once, applied in order.

Kept apart from the plan so an encoder worker imports the model code but not LanceDB, the ledger
or the report renderer, which only the driver uses.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pyarrow as pa

from clipline.operators.base import Stage, WorkerState
from clipline.pipelines.startup import EncoderStartup, Stamp, process_started_at

# Ray imports this module when it begins creating an actor, before it unpickles the stages (whose
# modules import torch and open_clip): the start of the actor's own imports.
ACTOR_MODULE_IMPORTED = Stamp.now()


class EncodeClassifyActor:
    """One actor = one model in memory: every stage is set up once, sharing the loaded model.

    Its first output batch carries the actor's start-up timings (`pipelines/startup.py`).
    """

    def __init__(self, stages: Sequence[Stage]) -> None:
        init = Stamp.now()
        self.stages = list(stages)
        state = WorkerState()
        for stage in self.stages:
            stage.setup(state)
        self.startup: EncoderStartup | None = EncoderStartup(
            pid=os.getpid(),
            process_started_at=process_started_at(),
            actor_started=ACTOR_MODULE_IMPORTED,
            init=init,
            ready=Stamp.now(),
            model_source=state.clip.built_from if state.clip is not None else None,
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = Stamp.now()
        for stage in self.stages:
            batch = stage(batch)
        if self.startup is None:
            return batch
        report, self.startup = self.startup, None
        report.first_batch_in, report.first_batch_out = started, Stamp.now()
        return report.attach(batch)
