"""LanceDB sink against a real LanceDB in a temp dir: upserts, null vectors, model pinning."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from clipline.operators.columns import embedding_array
from clipline.operators.sink import LanceSink, TableMismatch, last_row_per_id
from clipline.schemas.config import ModelConfig
from clipline.schemas.table import META_DIM, META_MODEL, OUTPUT_COLUMNS

DIM = 8


def sink(uri: str, model: ModelConfig | None = None, dim: int = DIM, run_id: str = "r1") -> LanceSink:
    operator = LanceSink(uri, "media", embedding_dim=dim, model=model or ModelConfig(), run_id=run_id)
    operator.setup()
    return operator


def rows(ids: list[str], with_image: list[bool]) -> pa.Table:
    present = np.array(with_image)
    vectors = np.random.default_rng(0).normal(size=(int(present.sum()), DIM)).astype(np.float32)
    return pa.table(
        {
            "id": ids,
            "status": ["ok"] * len(ids),
            "image_embedding": embedding_array(vectors, present, DIM),
            "decision": ["allow"] * len(ids),
            "unrelated_column": [1] * len(ids),
        }
    )


def test_rerun_upserts_instead_of_duplicating(tmp_path):
    first = sink(str(tmp_path))
    assert first.write(rows(["a", "b", "c"], [True, False, True])) == 3
    version = first.version
    second = sink(str(tmp_path), run_id="r2")
    second.write(rows(["b", "c", "d"], [True, True, True]))
    table = second.table.to_arrow()
    assert sorted(table.column("id").to_pylist()) == ["a", "b", "c", "d"]
    by_id = {row["id"]: row for row in table.to_pylist()}
    assert by_id["a"]["run_id"] == "r1" and by_id["b"]["run_id"] == "r2"
    assert by_id["b"]["image_embedding"] is not None
    assert second.version > version
    assert table.schema.names == list(OUTPUT_COLUMNS)


def test_null_vectors_are_kept_as_null(tmp_path):
    operator = sink(str(tmp_path))
    operator.write(rows(["t1", "t2"], [False, True]))
    stored = {row["id"]: row["image_embedding"] for row in operator.table.to_arrow().to_pylist()}
    assert stored["t1"] is None
    assert len(stored["t2"]) == DIM


def test_metadata_records_model_and_dimension(tmp_path):
    operator = sink(str(tmp_path))
    metadata = operator.table.schema.metadata
    assert metadata[META_MODEL] == b"clipline-tiny"
    assert metadata[META_DIM] == str(DIM).encode()


def test_other_model_or_dimension_is_refused(tmp_path):
    sink(str(tmp_path)).write(rows(["a"], [True]))
    with pytest.raises(TableMismatch, match="embedding dimension"):
        sink(str(tmp_path), dim=DIM * 2)
    with pytest.raises(TableMismatch, match="model 'clipline-tiny'"):
        sink(str(tmp_path), model=ModelConfig(arch="ViT-B-32", pretrained="none"))


def test_duplicate_ids_within_a_chunk_keep_the_last():
    table = pa.table({"id": ["a", "b", "a", "c", "b"], "n": [1, 2, 3, 4, 5]})
    kept = last_row_per_id(table)
    pairs = zip(kept.column("id").to_pylist(), kept.column("n").to_pylist(), strict=True)
    assert sorted(pairs) == [("a", 3), ("b", 5), ("c", 4)]
