"""Build real clipline tables in-process (no Ray) for tests of verbs that read tables.

The stages are the run's own (`run_stages`), applied in the order the Ray plan applies them,
and the rows are committed by the run's own tail (staging, dedup, one merge); only the
distribution across processes is left out, which these tests do not exercise.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pyarrow as pa

from clipline.models.loader import ClipBundle
from clipline.operators.base import WorkerState
from clipline.operators.encode import EncodeClip
from clipline.pipelines.run import commit, open_sink
from clipline.pipelines.stages import run_stages
from clipline.pipelines.summary import RunSummary
from clipline.schemas.config import DedupConfig, JobConfig, ModelConfig
from clipline.schemas.policy import Policy, load_policy

TINY = ModelConfig()
DEDUP = DedupConfig()
DEMO_POLICY_PATH = "clipline/demo/tiny/demo_policy.yaml"
ROW_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("id", pa.string()),
        ("image", pa.binary()),
        ("image_uri", pa.string()),
        ("text", pa.string()),
    ]
)


@cache
def worker_state(model: ModelConfig = TINY) -> WorkerState:
    """One loaded model per test process, shared by every stage chain built here."""
    state = WorkerState()
    EncodeClip(model).setup(state)
    return state


def bundle(model: ModelConfig = TINY) -> ClipBundle:
    return worker_state(model).clip


def demo_policy() -> Policy:
    return load_policy(DEMO_POLICY_PATH)


def job_config(
    db_uri: str, table: str, run_id: str, model: ModelConfig, dedup: DedupConfig, uri_prefixes: list[str]
) -> JobConfig:
    source = {"paths": ["test.parquet"], "max_image_pixels": 10**8, "max_image_bytes": 10**8}
    return JobConfig(
        source={**source, "allowed_uri_prefixes": uri_prefixes},
        model=model,
        sink={"uri": db_uri, "table": table},
        dedup=dedup,
        run_id=run_id,
    )


def ingest(
    db_uri: str,
    rows: list[dict],
    policy: Policy | None = None,
    table: str = "media",
    run_id: str = "test-run",
    model: ModelConfig = TINY,
    dedup: DedupConfig = DEDUP,
    source: str = "test.parquet",
) -> RunSummary:
    """Decode, encode, classify and commit `rows` (dicts with id/image/image_uri/text) as one run."""
    batch = pa.Table.from_pylist(
        [{"source": f"{source}#{index}", **row} for index, row in enumerate(rows)], schema=ROW_SCHEMA
    )
    # The tests' own image files may live anywhere: allow exactly the directories they named.
    uri_prefixes = sorted({str(Path(row["image_uri"]).parent) for row in rows if row.get("image_uri")})
    config = job_config(db_uri, table, run_id, model, dedup, uri_prefixes)
    _, *stages = run_stages(config, policy or demo_policy())  # rows come in memory: no read stage
    state = worker_state(model)
    for stage in stages:
        stage.setup(state)
        batch = stage(batch)
    summary = RunSummary(run_id=run_id, table_uri=db_uri, table=table)
    sink = open_sink(config, run_id)
    sink.stage(batch)
    commit(config, sink, summary)
    return summary
