"""The bad-input corpus through the real pipeline on Ray: one row out per row in, each with its outcome."""

from __future__ import annotations

import json

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipline.pipelines.run import run_job
from clipline.schemas.config import JobConfig
from tests.faults.corpus import cases

pytestmark = pytest.mark.ray

NOT_UTF8 = [b"valid text", b"caf\xe9 au lait", b"\xff\xfe\x00broken"]


def write_corpus(tmp_path):
    corpus = cases(missing_uri=str(tmp_path / "in" / "missing.png"))  # inside the allowed input directory
    rows = [{"id": case.kind, **case.row, "kind": case.kind} for case in corpus]
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("image", pa.binary()),
            ("image_uri", pa.string()),
            ("text", pa.string()),
            ("kind", pa.string()),
        ]
    )
    (tmp_path / "in").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "in" / "corpus.parquet", row_group_size=7)
    bytes_text = pa.table({"id": [f"bytes-{i}" for i in range(len(NOT_UTF8))], "text": pa.array(NOT_UTF8, pa.binary())})
    pq.write_table(bytes_text, tmp_path / "in" / "bytes_text.parquet")
    return corpus


def test_every_bad_input_gets_its_outcome(ray_local, tmp_path):
    corpus = write_corpus(tmp_path)
    config = JobConfig.model_validate(
        {
            "source": {"paths": [str(tmp_path / "in")], "keep_columns": ["kind"]},
            "policy": "clipline/demo/tiny/demo_policy.yaml",
            "sink": {"uri": str(tmp_path / "db")},
        }
    )
    summary = run_job(config)
    rows = lancedb.connect(str(tmp_path / "db")).open_table("media").to_arrow().to_pylist()
    assert len(rows) == summary.rows_in == len(corpus) + len(NOT_UTF8)
    assert len({row["id"] for row in rows}) == len(rows)

    by_kind = {json.loads(row["metadata"])["kind"]: row for row in rows if row["metadata"]}
    for case in corpus:
        row = by_kind[case.kind]
        assert (row["status"], row["error_code"]) == case.outcome, case.kind
        assert (row["flags"] or []) == case.flags, case.kind
        if row["status"] == "failed":
            assert row["error_message"], case.kind
        elif "image" in case.row:
            assert row["image_embedding"] is not None and row["decision"] is not None, case.kind

    rotated, physical = by_kind["exif-rotated-jpeg"], by_kind["physically-rotated-jpeg"]
    cosine = float(np.dot(rotated["image_embedding"], physical["image_embedding"]))
    assert cosine >= 0.999

    texts = {row["id"]: row for row in rows if row["id"].startswith("bytes-")}
    assert [texts[f"bytes-{i}"]["flags"] for i in range(3)] == [None, ["text_not_utf8"], ["text_not_utf8"]]
    assert all(row["status"] == "ok" and row["text_embedding"] is not None for row in texts.values())
