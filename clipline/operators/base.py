"""The stage contract every per-batch operator follows.

A stage is one transform of an Arrow batch into an Arrow batch with the same rows (never fewer:
a row that fails is kept with its status and error code). It declares its name and what it asks
of the cluster; `setup()` loads what it needs once per worker; `__call__` runs per batch. A run
is a list of stages (`pipelines/stages.py`), and the plan decides from each stage's resources
whether it runs as Ray tasks (stateless stages) or in an actor pool (stages that load a model).

Stages that run in the same worker share a `WorkerState`: the encoder loads the CLIP model into
it once, and the classifier scores with that same model instead of loading its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import pyarrow as pa

if TYPE_CHECKING:  # the model types pull torch; stages that need no model must not import it
    from clipline.models.loader import ClipBundle


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage reserves, and how many rows it takes per call.

    `stateful` stages load something costly in `setup()` (a model) and run in an actor pool
    that keeps it loaded; stateless stages run as plain Ray tasks.
    """

    cpus: float = 1.0
    gpus: float = 0.0
    memory_gb: float | None = None
    batch_size: int | None = None
    stateful: bool = False


# Defaults for stages built outside a run (tests, tools): one CPU, as a task or in an actor.
STATELESS = Resources()
STATEFUL = Resources(stateful=True)


@dataclass
class WorkerState:
    """What stages in one worker load once and share (today: the CLIP model)."""

    clip: ClipBundle | None = None


@runtime_checkable
class Stage(Protocol):
    """name, resources, setup once per worker, then one call per batch."""

    name: str

    @property
    def resources(self) -> Resources: ...

    def setup(self, state: WorkerState) -> None: ...

    def __call__(self, batch: pa.Table) -> pa.Table: ...
