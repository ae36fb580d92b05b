"""`resources.jpeg_decode` picks where JPEGs are decoded: in the encoder by default only when it has a GPU."""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa
import pytest

from clipline.operators.decode import DecodeImages
from clipline.operators.encode import EncodeClip
from clipline.pipelines.stages import EncoderPlan, run_stages
from clipline.schemas.config import JobConfig

CPU_ENCODER = EncoderPlan(actors=1, cpus=1.0, gpus=0.0, threads=2)
GPU_ENCODER = EncoderPlan(actors=1, cpus=1.0, gpus=1.0, threads=1)


@pytest.mark.parametrize(
    ("choice", "encoders", "in_encoder"),
    [
        ("auto", GPU_ENCODER, True),
        ("auto", CPU_ENCODER, False),
        ("encoder", CPU_ENCODER, True),
        ("tasks", GPU_ENCODER, False),
    ],
)
def test_config_and_encoder_gpus_decide_where_jpegs_decode(tmp_path, choice, encoders, in_encoder):
    config = JobConfig(
        source={"paths": ["in.parquet"], "max_image_pixels": 1234},
        sink={"uri": str(tmp_path)},
        resources={"jpeg_decode": choice},
    )
    stages = run_stages(config, None, encoders)
    decode = next(stage for stage in stages if isinstance(stage, DecodeImages))
    encode = next(stage for stage in stages if isinstance(stage, EncodeClip))
    assert decode.jpeg_to_encoder == in_encoder
    assert encode.max_pixels == 1234  # the pixel limit of the encoder's Pillow fallback


def test_per_image_extras_keep_every_decode_in_the_tasks():
    """Extras work on the whole frame, which only a decode in the task has."""

    class Width:
        columns: ClassVar[dict] = {"width": pa.int32()}

        def __call__(self, frame):
            return {"width": frame.width}

    assert not DecodeImages(64, 10**6, 10**6, extras=[Width()], jpeg_to_encoder=True).jpeg_to_encoder
