"""Runs written straight into a real LanceDB table with chosen scores: no model, no Ray.

Scores are given per row, and decisions, labels and reasons come from the production `decide`,
so the table looks exactly like a run's. The input parquet is real, because reports re-read
flagged images from it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from clipline.operators.classify import decide
from clipline.pipelines.sink import conform, provenance
from clipline.pipelines.summary import RunSummary, Tally
from clipline.schemas.config import JobConfig, ModelConfig
from clipline.schemas.policy import Policy, load_policy
from clipline.schemas.storage import StorageConfig
from clipline.schemas.table import REASON_TYPE, SCORE_TYPE, output_schema
from clipline.table.store import ClipTable
from tests.pipelines.inputs import png_bytes, write_parquet

DEMO_POLICY = Path(__file__).parents[2] / "clipline" / "demo" / "tiny" / "demo_policy.yaml"


def policy() -> Policy:
    return load_policy(DEMO_POLICY)


def scored_rows(count: int, seed: int, star_shift: float = 0.0) -> list[dict]:
    """Image rows: a quarter stars (blocked), a quarter crosses (review), the rest allowed.

    `star_shift` moves every star score (the drift tests' knob).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        kind = ("star", "cross", "circle", "square")[index % 4]
        colour = ("red", "blue")[index % 2]
        base = {"star": 0.02, "cross": 0.02, "red": 0.1, "blue": 0.1}
        base[colour] = 0.9
        if kind in ("star", "cross"):
            base[kind] = 0.9 if kind == "star" else 0.65
        scores = {name: float(np.clip(value + rng.normal(0, 0.03), 0, 1)) for name, value in base.items()}
        scores["star"] = float(np.clip(scores["star"] + star_shift, 0, 1))
        rows.append({"id": f"r{seed}-{index}", "image": png_bytes(kind, colour, seed * 1000 + index), "scores": scores})
    return rows


def write_run(
    db: Path | str,
    input_dir: Path | str,
    run_id: str,
    rows: list[dict],
    table: str = "media",
    extra_paths: tuple = (),
    storage: StorageConfig | None = None,
    filesystem=None,
) -> tuple[RunSummary, JobConfig]:
    """Write `rows` as run `run_id`: the input parquet, the table rows, the driver's summary.

    A row is a dict with `id` and any of `image`, `image_uri`, `text`, and `scores` (category →
    score) or `error_code` for a failed row. For s3:// pass `storage` and a pyarrow `filesystem`.
    """
    pol = policy()
    storage = storage or StorageConfig()
    parquet = f"{input_dir}/{run_id}.parquet"
    if filesystem is None:
        Path(input_dir).mkdir(parents=True, exist_ok=True)
    inputs = [{k: row.get(k) for k in ("id", "image", "image_uri", "text")} for row in rows]
    write_parquet(inputs, parquet.split("://", 1)[-1], filesystem)
    records = []
    for index, row in enumerate(rows):
        record = {
            "id": row["id"],
            "source": f"{parquet}#{index}",
            "text": row.get("text"),
            "image_uri": row.get("image_uri"),
            "status": "failed" if row.get("error_code") else "ok",
            "error_code": row.get("error_code"),
            "error_message": "broken on purpose" if row.get("error_code") else None,
            "policy_version": pol.version,
            "policy_hash": pol.content_hash,
        }
        if row.get("scores"):
            values = np.array([row["scores"][name] for name in pol.category_names], dtype=np.float32)
            decision, labels, reasons = decide(pol, values)
            record.update(
                scores=[{"category": n, "score": float(s)} for n, s in zip(pol.category_names, values, strict=True)],
                decision=decision,
                labels=labels,
                reasons=reasons,
            )
        records.append(record)
    batch = pa.Table.from_pylist(
        records,
        schema=pa.schema(
            [
                ("id", pa.string()),
                ("source", pa.string()),
                ("text", pa.string()),
                ("image_uri", pa.string()),
                ("status", pa.string()),
                ("error_code", pa.string()),
                ("error_message", pa.string()),
                ("policy_version", pa.string()),
                ("policy_hash", pa.string()),
                ("scores", pa.list_(SCORE_TYPE)),
                ("decision", pa.string()),
                ("labels", pa.list_(pa.string())),
                ("reasons", pa.list_(REASON_TYPE)),
            ]
        ),
    )
    # Rows straight into the table (one commit, like a run's): the report reads them, not how they got there.
    clip_table = ClipTable.open_or_create(str(db), table, output_schema(8, ModelConfig()), storage)
    summary = RunSummary(run_id=run_id, table_uri=str(db), table=table)
    summary.table_version_before = clip_table.version
    written = conform(batch, clip_table.lance.schema, provenance(ModelConfig(), run_id))
    clip_table.lance.add(written, on_bad_vectors="null")
    tally = Tally()
    tally.add(written)
    summary.rows_in = summary.rows_written = len(rows)
    tally.fill(summary)
    summary.files_total = 1
    summary.files_processed = [str(parquet)]
    summary.table_rows = clip_table.count_rows()
    summary.table_version_after = clip_table.version
    summary.wall_s = 2.0
    config = JobConfig.model_validate(
        {
            # Prefixes given: a path carrying credentials (which the manifest must redact) is no prefix.
            "source": {
                "paths": [str(parquet), *extra_paths],
                "allowed_uri_prefixes": [f"{str(input_dir).rstrip('/')}/"],
            },
            "policy": str(DEMO_POLICY),
            "sink": {"uri": str(db), "table": table},
            "storage": storage.model_dump(),
            "run_id": run_id,
        }
    )
    return summary, config
