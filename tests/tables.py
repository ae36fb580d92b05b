"""Build real clipline tables for tests of verbs that read tables.

The stages are the run's own (`run_stages`), applied in-process in the order the Ray plan
applies them (no actor pool to start per table), and the rows are staged by the run's own sink
and committed by the run's own tail on the test session's Ray (identity, dedup, one commit).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pyarrow as pa

from clipline.models.loader import ClipBundle, model_config_dict
from clipline.operators.base import WorkerState
from clipline.operators.encode import EncodeClip
from clipline.pipelines.run import commit_encoded
from clipline.pipelines.stages import run_stages
from clipline.pipelines.summary import RunSummary
from clipline.schemas.config import DedupConfig, JobConfig, ModelConfig
from clipline.schemas.policy import Policy, load_policy
from clipline.schemas.table import output_schema
from clipline.table.store import ClipTable

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
    db_uri: str,
    table: str,
    run_id: str,
    model: ModelConfig,
    dedup: DedupConfig,
    update_existing_ids: bool = False,
    uri_prefixes: list[str] | None = None,
) -> JobConfig:
    source = {"paths": ["test.parquet"], "max_image_pixels": 10**8, "max_image_bytes": 10**8}
    return JobConfig(
        source={**source, "allowed_uri_prefixes": uri_prefixes or []},
        model=model,
        sink={"uri": db_uri, "table": table, "update_existing_ids": update_existing_ids},
        dedup=dedup,
        run_id=run_id,
    )


def commit_rows(
    db_uri: str,
    rows: pa.Table,
    config: JobConfig,
    embedding_dim: int | None = None,
    policy: Policy | None = None,
) -> RunSummary:
    """Stage already-computed rows with the run's sink and commit them with the run's tail.

    `embedding_dim` overrides the model's (tests with hand-made vectors). Needs the session's
    Ray (the `ray_local` fixture): the tail runs as Ray tasks.
    """
    dim = embedding_dim or int(model_config_dict(config.model.arch)["embed_dim"])
    table = ClipTable.open_or_create(db_uri, config.sink.table, output_schema(dim, config.model))
    return commit_encoded(config, table, rows, policy)


def ingest(
    db_uri: str,
    rows: list[dict],
    policy: Policy | None = None,
    table: str = "media",
    run_id: str = "test-run",
    model: ModelConfig = TINY,
    dedup: DedupConfig = DEDUP,
    source: str = "test.parquet",
    update_existing_ids: bool = False,
) -> RunSummary:
    """Decode, encode, classify and commit `rows` (dicts with id/image/image_uri/text) as one run."""
    batch = pa.Table.from_pylist(
        [{"source": f"{source}#{index}", **row} for index, row in enumerate(rows)], schema=ROW_SCHEMA
    )
    # The tests' own image files may live anywhere: allow exactly the directories they named.
    uri_prefixes = sorted({str(Path(row["image_uri"]).parent) for row in rows if row.get("image_uri")})
    config = job_config(db_uri, table, run_id, model, dedup, update_existing_ids, uri_prefixes)
    policy = policy or demo_policy()
    _, *stages = run_stages(config, policy)  # rows come in memory: no read stage; buckets in the tail
    state = worker_state(model)
    for stage in stages:
        stage.setup(state)
        batch = stage(batch)
    return commit_rows(db_uri, batch, config, policy=policy)
