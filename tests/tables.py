"""Build real clipline tables in-process (no Ray) for tests of verbs that read tables.

The operators are the production ones, chained the way the Ray plan chains them; only the
distribution across processes is left out, which these tests do not exercise.
"""

from __future__ import annotations

from functools import cache

import pyarrow as pa

from clipline.models.loader import image_size_for
from clipline.operators.classify import ClassifyPolicy
from clipline.operators.decode import DecodeImages
from clipline.operators.encode import EncodeClip
from clipline.operators.sink import LanceSink
from clipline.schemas.config import ModelConfig
from clipline.schemas.policy import Policy, load_policy

TINY = ModelConfig()
DEMO_POLICY_PATH = "clipline/models/tiny/demo_policy.yaml"


@cache
def encoder(model: ModelConfig = TINY) -> EncodeClip:
    """One loaded model per test process."""
    operator = EncodeClip(model)
    operator.setup()
    return operator


def demo_policy() -> Policy:
    return load_policy(DEMO_POLICY_PATH)


def ingest(
    db_uri: str,
    rows: list[dict],
    policy: Policy | None = None,
    table: str = "media",
    run_id: str = "test-run",
    model: ModelConfig = TINY,
) -> LanceSink:
    """Decode, encode, classify and commit `rows` (dicts with id/image/image_uri/text) as one run."""
    batch = pa.Table.from_pylist(
        [{"source": f"test.parquet#{index}", **row} for index, row in enumerate(rows)],
        schema=pa.schema(
            [
                ("source", pa.string()),
                ("id", pa.string()),
                ("image", pa.binary()),
                ("image_uri", pa.string()),
                ("text", pa.string()),
            ]
        ),
    )
    encode = encoder(model)
    classify = ClassifyPolicy(policy or demo_policy())
    classify.setup(encode.bundle)
    decoded = DecodeImages(image_size_for(model.arch), max_pixels=10**8, max_bytes=10**8)(batch)
    sink = LanceSink(db_uri, table, encode.bundle.embed_dim, model, run_id)
    sink.setup()
    sink.stage(classify(encode(decoded)))
    sink.commit()
    return sink
