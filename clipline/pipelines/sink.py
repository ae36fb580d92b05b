"""The run's sink: workers conform their rows to the table schema and write them as Lance fragments.

Rows are written where they are made: a writer task takes a batch of encoded rows, stamps the
run's provenance, fills absent columns with nulls, writes the batch as fragments of the run's
staging dataset (beside the table, under `_clipline/staging/`) and returns only metadata to the
driver: the fragments' JSON (~500 bytes each) and which input rows it wrote, as ranges. The
driver commits the staging dataset once; the tail (identity, dedup, the table commit) reads it
from workers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa

from clipline.operators.columns import column_or_nulls
from clipline.pipelines.accounting import source_ranges
from clipline.pipelines.lance_io import LanceLocation
from clipline.pipelines.startup import STARTUP_METADATA_KEY
from clipline.schemas.config import JobConfig, ModelConfig
from clipline.schemas.table import BUCKET_COLUMNS, pipeline_schema

# Second-nearest dedup bucket: needed by this run's dedup only, never stored in the table.
SECOND_BUCKET = "dup_bucket2"
WRITTEN_SCHEMA = pa.schema(
    [("fragments", pa.string()), ("sources", pa.string()), ("rows", pa.int64()), ("startup", pa.string())]
)


def staging_schema(table_schema: pa.Schema) -> pa.Schema:
    """The columns a run stages: what it writes to the table, plus the second-nearest bucket."""
    schema = pipeline_schema(table_schema)
    return schema.append(pa.field(SECOND_BUCKET, BUCKET_COLUMNS["dup_bucket"]))


def provenance(model: ModelConfig, run_id: str) -> dict[str, str]:
    return {"model": model.arch, "pretrained": model.weights_label, "run_id": run_id}


def conform(batch: pa.Table, schema: pa.Schema, stamped: dict[str, str]) -> pa.Table:
    """Select and cast to `schema`; stamp provenance and `processed_at`; absent columns become nulls."""
    now = datetime.now(UTC)
    columns = []
    for field in schema:
        if field.name in stamped:
            columns.append(pa.array([stamped[field.name]] * batch.num_rows, field.type))
        elif field.name == "processed_at":
            columns.append(pa.array([now] * batch.num_rows, field.type))
        else:
            columns.append(column_or_nulls(batch, field.name, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


@dataclass(frozen=True)
class StagingSink:
    """Ray Data UDF (tasks): one batch of encoded rows in, one row of metadata about what was written out."""

    staging: LanceLocation
    schema: pa.Schema
    stamped: dict[str, str]

    @classmethod
    def for_run(cls, config: JobConfig, staging: LanceLocation, table_schema: pa.Schema, run_id: str) -> StagingSink:
        return cls(staging, staging_schema(table_schema), provenance(config.model, run_id))

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = conform(batch, self.schema, self.stamped)
        fragments = self.staging.write(rows, self.schema)
        sources = source_ranges(rows.column("source").to_pylist())
        startup = (batch.schema.metadata or {}).get(STARTUP_METADATA_KEY)  # an encoder's first batch says when
        written = {"fragments": json.dumps(fragments), "sources": json.dumps(sources), "rows": rows.num_rows}
        return pa.Table.from_pylist([{**written, "startup": startup and startup.decode()}], schema=WRITTEN_SCHEMA)
