"""LanceDB sink against a real LanceDB in a temp dir: upserts, null vectors, model pinning."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from clipline.operators.columns import embedding_array
from clipline.pipelines.sink import LanceSink
from clipline.schemas.config import ModelConfig
from clipline.schemas.table import META_DIM, META_MODEL, OUTPUT_COLUMNS, TableMismatch

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


def write(operator: LanceSink, batch: pa.Table) -> int:
    operator.stage(batch)
    return operator.commit()


def test_rerun_upserts_instead_of_duplicating(tmp_path):
    first = sink(str(tmp_path))
    assert write(first, rows(["a", "b", "c"], [True, False, True])) == 3
    version = first.version
    second = sink(str(tmp_path), run_id="r2")
    assert write(second, rows(["b", "c", "d"], [True, True, True])) == 3
    table = second.table.lance.to_arrow()
    assert sorted(table.column("id").to_pylist()) == ["a", "b", "c", "d"]
    by_id = {row["id"]: row for row in table.to_pylist()}
    assert by_id["a"]["run_id"] == "r1" and by_id["b"]["run_id"] == "r2"
    assert by_id["b"]["image_embedding"] is not None
    assert second.version > version
    assert table.schema.names == list(OUTPUT_COLUMNS)


def test_null_vectors_are_kept_as_null(tmp_path):
    operator = sink(str(tmp_path))
    write(operator, rows(["t1", "t2"], [False, True]))
    stored = {row["id"]: row["image_embedding"] for row in operator.table.lance.to_arrow().to_pylist()}
    assert stored["t1"] is None
    assert len(stored["t2"]) == DIM


def test_metadata_records_model_and_dimension(tmp_path):
    operator = sink(str(tmp_path))
    metadata = operator.table.lance.schema.metadata
    assert metadata[META_MODEL] == b"clipline-tiny"
    assert metadata[META_DIM] == str(DIM).encode()


def test_other_model_or_dimension_is_refused(tmp_path):
    write(sink(str(tmp_path)), rows(["a"], [True]))
    with pytest.raises(TableMismatch, match="embedding dimension"):
        sink(str(tmp_path), dim=DIM * 2)
    with pytest.raises(TableMismatch, match="model 'clipline-tiny'"):
        sink(str(tmp_path), model=ModelConfig(arch="ViT-B-32", pretrained="none"))


def test_many_chunks_land_in_one_commit_and_discard_leaves_the_table_alone(tmp_path):
    operator = sink(str(tmp_path))
    before = operator.version
    for start in range(0, 30, 10):
        operator.stage(rows([f"id{i}" for i in range(start, start + 10)], [True] * 10))
    assert operator.version == before
    assert operator.commit() == 30
    assert operator.version == before + 1
    assert operator.count_rows() == 30
    failed = sink(str(tmp_path), run_id="r2")
    failed.stage(rows(["new"], [True]))
    failed.discard()
    assert failed.version == before + 1 and failed.count_rows() == 30


def test_repeated_ids_in_a_run_become_distinct_rows(tmp_path):
    operator = sink(str(tmp_path))
    batch = pa.table(
        {
            "id": ["given", "sha-1", "given", "sha-1"],
            "content_sha256": ["sha-0", "sha-1", "sha-2", "sha-1"],
            "source": ["f#0", "f#1", "f#2", "f#3"],
            "status": ["ok"] * 4,
            "decision": ["allow"] * 4,
        }
    )
    operator.stage(batch.slice(0, 2))
    operator.stage(batch.slice(2, 2))
    assert operator.commit() == 4
    stored = {row["source"]: row for row in operator.table.lance.to_arrow().to_pylist()}
    assert stored["f#0"]["id"] == "given" and stored["f#0"]["status"] == "ok"
    assert stored["f#2"]["id"].startswith("given#") and stored["f#2"]["status"] == "failed"
    assert stored["f#2"]["error_code"] == "duplicate_id" and stored["f#2"]["decision"] is None
    assert stored["f#1"]["id"] == "sha-1" and stored["f#1"]["dup_of"] is None
    assert stored["f#3"]["dup_of"] == "sha-1" and stored["f#3"]["status"] == "ok"
    assert len({row["id"] for row in stored.values()}) == 4


def test_reviewer_overrides_survive_reruns_and_win(tmp_path):
    write(sink(str(tmp_path)), rows(["a", "b"], [True, True]))
    table = sink(str(tmp_path)).table.lance
    table.update(where="id = 'a'", values={"override_decision": "block", "override_by": "alice"})
    rerun = sink(str(tmp_path), run_id="r2")
    write(rerun, rows(["a", "b"], [True, True]))
    stored = {row["id"]: row for row in rerun.table.lance.to_arrow().to_pylist()}
    assert stored["a"]["decision"] == "block" and stored["a"]["override_by"] == "alice"
    assert stored["a"]["run_id"] == "r2"
    assert stored["b"]["decision"] == "allow" and stored["b"]["override_decision"] is None
