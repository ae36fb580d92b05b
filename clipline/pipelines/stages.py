"""The run's stages, listed once: read → decode → encode → classify → dedup buckets.

The Ray plan (`plan.py`), the in-process test tables (`tests/tables.py`) and the throughput
benchmark all take their stages from `run_stages`, so a test table or a benchmark is built by
exactly the operators a run uses, configured the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from clipline.models.loader import image_size_for
from clipline.models.prompt_cache import PromptCache
from clipline.operators.base import Resources, Stage
from clipline.operators.buckets import AssignBuckets
from clipline.operators.classify import ClassifyPolicy
from clipline.operators.decode import DecodeImages
from clipline.operators.encode import EncodeClip, torch_threads_for
from clipline.operators.pdq import PdqHash
from clipline.operators.read import ReadRowGroups
from clipline.operators.thumbnail import FrameThumbnail
from clipline.schemas.config import JobConfig, ResourcesConfig
from clipline.schemas.policy import Policy
from clipline.table.store import Sidecars


@dataclass(frozen=True)
class EncoderPlan:
    """How many encoder actors, and what each one reserves."""

    actors: int
    cpus: float
    gpus: float
    threads: int

    @classmethod
    def without_cluster(cls, resources: ResourcesConfig) -> EncoderPlan:
        """One encoder as configured, for stages run in-process (tests, benchmarks' bare loops)."""
        threads = resources.torch_threads or torch_threads_for(resources.encoder_cpus)
        return cls(actors=1, cpus=resources.encoder_cpus, gpus=resources.encoder_gpus or 0.0, threads=threads)


def jpeg_on_encoder(resources: ResourcesConfig, encoders: EncoderPlan) -> bool:
    """`resources.jpeg_decode`: JPEGs decode in the encoder when asked, or by default when it has a GPU.

    Per-image extras do not change this: the encoder runs them on the frames it makes itself.
    """
    return resources.jpeg_decode == "encoder" or (resources.jpeg_decode == "auto" and encoders.gpus > 0)


def run_stages(
    config: JobConfig,
    policy: Policy | None,
    encoders: EncoderPlan | None = None,
    centroids_uri: str | None = None,
) -> list[Stage]:
    """The stages of a run in order; stateless ones run as Ray tasks, the model stages in one actor pool.

    `centroids_uri`: the table's dedup centroids, when it has some; rows then get their buckets
    in the encoder actor (one matmul per batch) instead of in the tail.
    """
    source, resources = config.source, config.resources
    encoders = encoders or EncoderPlan.without_cluster(resources)
    decode_resources = Resources(cpus=resources.decode_cpus)
    model_resources = Resources(
        cpus=encoders.cpus,
        gpus=encoders.gpus,
        memory_gb=resources.encoder_memory_gb,
        batch_size=resources.batch_size,
        stateful=True,
    )
    # One list for both stages: decode fills the extras' columns for the images it decodes, the
    # encoder for the JPEGs passed through to it.
    extras = [PdqHash(), *([FrameThumbnail()] if config.sink.thumbnails else [])]
    stages: list[Stage] = [
        ReadRowGroups(source.columns, source.keep_columns, config.storage, decode_resources),
        DecodeImages(
            image_size_for(config.model.arch),
            source.max_image_pixels,
            source.max_image_bytes,
            config.storage,
            decode_resources,
            max_aspect=source.max_image_aspect,
            uri_prefixes=source.uri_prefixes(),
            extras=extras,
            jpeg_to_encoder=jpeg_on_encoder(resources, encoders),
        ),
        EncodeClip(
            config.model,
            cpus=encoders.threads,
            storage=config.storage,
            resources=model_resources,
            max_pixels=source.max_image_pixels,
            extras=extras,
        ),
    ]
    if policy is not None:
        cache = PromptCache(Sidecars(config.sink.uri).prompt_banks, config.storage)
        stages.append(ClassifyPolicy(policy, cache=cache, resources=model_resources, storage=config.storage))
    if centroids_uri is not None:
        stages.append(AssignBuckets(centroids_uri, config.storage, resources=model_resources))
    return stages
