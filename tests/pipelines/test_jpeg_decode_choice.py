"""`resources.jpeg_decode` picks where JPEGs are decoded: by default in the encoder only when it has a GPU."""

from __future__ import annotations

import pyarrow as pa
import pytest

from clipline.operators.decode import DecodeImages
from clipline.operators.encode import EncodeClip
from clipline.operators.pdq import PdqHash
from clipline.operators.thumbnail import FrameThumbnail
from clipline.pipelines.stages import EncoderPlan, run_stages
from clipline.schemas.config import JobConfig
from tests.operators.images import encode
from tests.operators.test_device_decode import photo
from tests.tables import demo_policy, worker_state

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


def encoder_decode_config(sink_uri: str) -> JobConfig:
    """A default configuration (extras on) with JPEGs decoded in the encoder."""
    return JobConfig(source={"paths": ["in.parquet"]}, sink={"uri": sink_uri}, resources={"jpeg_decode": "encoder"})


def test_one_list_of_extras_goes_to_decode_and_encode(tmp_path):
    """Decode fills the extras for what it decodes, the encoder for the JPEGs passed to it: the same extras."""
    stages = run_stages(encoder_decode_config(str(tmp_path)), None, CPU_ENCODER)
    decode = next(stage for stage in stages if isinstance(stage, DecodeImages))
    encode = next(stage for stage in stages if isinstance(stage, EncodeClip))
    assert [type(extra) for extra in decode.extras] == [PdqHash, FrameThumbnail]
    assert encode.extras == decode.extras and decode.jpeg_to_encoder


def test_a_default_run_decoding_in_the_encoder_passes_jpegs_through_and_keeps_their_extras(tmp_path):
    """The run's own stages, applied in-process as `tests/tables.py` applies them."""
    config = encoder_decode_config(str(tmp_path))
    _, *stages = run_stages(config, demo_policy())  # rows come in memory: no read stage
    images = [encode(photo(30, (640, 480)), "JPEG"), encode(photo(31, (300, 200)).convert("L"), "JPEG")]
    batch = pa.table({"image": pa.array([*images, encode(photo(32, (90, 60)), "PNG")]), "text": [None, "a cat", None]})
    outputs = {}
    for stage in stages:
        stage.setup(worker_state(config.model))
        batch = outputs[stage.name] = stage(batch)
    assert outputs["decode"].column("jpeg").to_pylist() == [*images, None]
    assert outputs["decode"].column("pdq_hash").is_null().to_pylist() == [True, True, False]
    assert "jpeg" not in batch.column_names
    assert batch.column("status").to_pylist() == ["ok"] * 3
    for column in ("pdq_hash", "pdq_quality", "thumbnail", "image_embedding"):
        assert batch.column(column).null_count == 0, column
