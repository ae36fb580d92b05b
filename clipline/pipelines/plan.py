"""The Ray Data plan of a run: join or start Ray, size the encoder pool, chain the stages.

The plan is lazy: nothing runs until the run iterates the dataset. Stateless stages (read,
decode) run as Ray tasks, one per parquet row group; the stages that load a model (encode,
classify) run together in one actor pool, so the model is loaded once per actor and shared.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import pyarrow as pa
import ray

from clipline.operators.base import Stage
from clipline.operators.encode import torch_threads_for
from clipline.pipelines.encode_classify import EncodeClassifyActor
from clipline.pipelines.read_decode import ReadAndDecode
from clipline.pipelines.sink import StagingSink
from clipline.pipelines.stages import EncoderPlan
from clipline.schemas.base import ConfigError
from clipline.schemas.config import ResourcesConfig


def ensure_ray(address: str | None) -> None:
    """Join the given cluster (or RAY_ADDRESS, as inside `ray job submit`), else start a local one.

    A local Ray started here serves only this process, so it listens on loopback, not on the
    machine's network interfaces; `address="local"` keeps Ray from attaching to whatever cluster
    `ray start` last recorded on this machine.
    """
    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)
    else:
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False)


def plan_encoders(resources: ResourcesConfig, cluster: dict[str, float]) -> EncoderPlan:
    """Size the actor pool from the cluster, always leaving CPUs for read/decode tasks.

    On a 2-CPU machine this gives one 1-CPU encoder and one CPU for decoding; an actor pool
    that reserved both CPUs would wait forever for blocks that no read task can produce.
    """
    cpus_total = float(cluster.get("CPU", 0))
    gpus_total = float(cluster.get("GPU", 0))
    gpus = resources.encoder_gpus if resources.encoder_gpus is not None else (1.0 if gpus_total else 0.0)
    spare_cpus = cpus_total - resources.decode_cpus
    if resources.encoders is not None:
        actors = resources.encoders
    elif gpus:
        actors = max(1, int(gpus_total // gpus))
    else:
        actors = max(1, math.floor(spare_cpus / resources.encoder_cpus))
    if actors * resources.encoder_cpus > spare_cpus:
        raise ConfigError(
            f"resources.encoders: {actors} encoder(s) x {resources.encoder_cpus} CPU leave no CPU for "
            f"read/decode tasks ({resources.decode_cpus} CPU) on a cluster of {cpus_total:g} CPUs"
        )
    if gpus > gpus_total:
        raise ConfigError(f"resources.encoder_gpus: {gpus} GPU per encoder, cluster has {gpus_total:g}")
    threads = resources.torch_threads or encoder_threads(resources.encoder_cpus, gpus, cpus_total, actors)
    return EncoderPlan(actors=actors, cpus=resources.encoder_cpus, gpus=gpus, threads=threads)


def encoder_threads(encoder_cpus: float, gpus: float, cpus_total: float, actors: int) -> int:
    """Torch threads per encoder: CPU encoders share every core, the decode CPUs' included.

    The decode CPUs are reserved so that reads always get scheduled, but decoding is a small
    share of the work (about a tenth of ViT-B-32's per-image CPU time), so threads limited to
    the encoder's own reservation would leave those cores idle most of the run: on 2 CPUs, half
    the machine. A GPU encoder's threads only feed the GPU and keep to their reservation.
    """
    reserved = torch_threads_for(encoder_cpus)
    if gpus:
        return reserved
    return max(reserved, int(cpus_total // actors))


# A writer task mostly waits on storage: a fraction of a CPU, so it never holds back the decode
# tasks that feed the encoders.
SINK_CPUS = 0.25


def build_dataset(
    tasks: pa.Table,
    stages: Sequence[Stage],
    encoders: EncoderPlan,
    rows_per_block: int,
    sink: StagingSink,
    rows_per_fragment: int,
) -> ray.data.Dataset:
    """The lazy plan over read tasks (one row per parquet row group): task stages, the actor pool,
    then writer tasks that stage the rows as Lance fragments and yield only metadata."""
    read, *rest = stages
    cpu_stages = [stage for stage in rest if not stage.resources.stateful]
    model_stages = [stage for stage in rest if stage.resources.stateful]
    if rest != [*cpu_stages, *model_stages]:
        raise ValueError(f"stateless stages must come before the model stages: {[stage.name for stage in stages]}")
    model = model_stages[0].resources
    blocks = [tasks.slice(i, 1) for i in range(tasks.num_rows)]
    return (
        ray.data.from_arrow(blocks)
        .map_batches(
            ReadAndDecode(read, cpu_stages, rows_per_block),
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=read.resources.cpus,
        )
        .map_batches(
            EncodeClassifyActor,
            fn_constructor_kwargs={"stages": model_stages},
            compute=ray.data.ActorPoolStrategy(size=encoders.actors),
            batch_size=model.batch_size,
            batch_format="pyarrow",
            num_cpus=model.cpus,
            num_gpus=model.gpus,
            # The memory reservation also differs from the decode tasks' resources, which keeps
            # Ray Data from fusing decode into the actor: fused, decode and encode would take
            # turns on one CPU instead of overlapping on two.
            memory=(model.memory_gb or 0) * 1024**3,
            udf_modifying_row_count=False,
        )
        # Writers spread over the nodes: each writes the rows it is given, so writing scales out too.
        .map_batches(
            sink,
            batch_size=rows_per_fragment,
            batch_format="pyarrow",
            num_cpus=SINK_CPUS,
            scheduling_strategy="SPREAD",
        )
    )
