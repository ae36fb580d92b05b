"""The run's sink and its one commit, against a real LanceDB in a temp dir and the session's Ray.

Rows are staged by the sink exactly as the writer tasks stage them and committed by the run's
tail: reruns replace rows, ids stay unique, provenance is never erased, reviewer overrides win
and are read at commit, another model's table is refused, and the driver receives metadata only.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from clipline.moderation.review import apply_decisions
from clipline.operators.columns import embedding_array
from clipline.pipelines.accounting import RowAccount, RowsLost, source_ranges
from clipline.pipelines.run import RunContext, commit_staged, discard_staging
from clipline.pipelines.sink import StagingSink
from clipline.pipelines.summary import RunOptions, RunSummary
from clipline.schemas.config import DedupConfig, ModelConfig
from clipline.schemas.table import META_DIM, META_MODEL, OUTPUT_COLUMNS, TableMismatch, output_schema
from clipline.table.store import ClipTable
from tests.tables import TINY, commit_rows, job_config

pytestmark = pytest.mark.usefixtures("ray_local")
DIM = 8


def rows(ids: list[str], with_image: list[bool], sources: list[str] | None = None, **columns) -> pa.Table:
    present = np.array(with_image)
    vectors = np.random.default_rng(len(ids)).normal(size=(int(present.sum()), DIM)).astype(np.float32)
    return pa.table(
        {
            "id": ids,
            "content_sha256": columns.pop("content_sha256", [f"sha-{row_id}" for row_id in ids]),
            "source": sources or [f"f.parquet#{i}" for i in range(len(ids))],
            "status": ["ok"] * len(ids),
            "image_embedding": embedding_array(vectors, present, DIM),
            "decision": ["allow"] * len(ids),
            "unrelated_column": [1] * len(ids),
            **columns,
        }
    )


def commit(uri: str, batch: pa.Table, run_id: str = "r1", update_existing_ids: bool = False) -> RunSummary:
    config = job_config(uri, "media", run_id, TINY, DedupConfig(), update_existing_ids)
    return commit_rows(uri, batch, config, embedding_dim=DIM)


def stored(uri: str) -> dict[str, dict]:
    return {row["id"]: row for row in ClipTable.open(uri, "media").lance.to_arrow().to_pylist()}


def test_rerun_replaces_rows_instead_of_duplicating(tmp_path):
    uri = str(tmp_path)
    first = commit(uri, rows(["a", "b", "c"], [True, False, True]))
    version = ClipTable.open(uri, "media").version
    second = commit(uri, rows(["b", "c", "d"], [True, True, True], ["f.parquet#1", "f.parquet#2", "f.parquet#3"]), "r2")
    table = ClipTable.open(uri, "media")
    by_id = stored(uri)
    assert sorted(by_id) == ["a", "b", "c", "d"]
    assert by_id["a"]["run_id"] == "r1" and by_id["b"]["run_id"] == "r2"
    assert by_id["b"]["image_embedding"] is not None
    assert (first.rows_written, second.rows_written, second.rows_replaced) == (3, 3, 2)
    assert table.version == version + 1  # the whole run is one commit
    assert table.lance.schema.names == list(OUTPUT_COLUMNS)


def test_null_vectors_are_kept_as_null(tmp_path):
    commit(str(tmp_path), rows(["t1", "t2"], [False, True]))
    by_id = stored(str(tmp_path))
    assert by_id["t1"]["image_embedding"] is None and len(by_id["t2"]["image_embedding"]) == DIM


def test_metadata_records_model_and_dimension_and_another_model_is_refused(tmp_path):
    uri = str(tmp_path)
    commit(uri, rows(["a"], [True]))
    metadata = ClipTable.open(uri, "media").lance.schema.metadata
    assert metadata[META_MODEL] == b"clipline-tiny" and metadata[META_DIM] == str(DIM).encode()
    with pytest.raises(TableMismatch, match="embedding dimension"):
        ClipTable.open_or_create(uri, "media", output_schema(DIM * 2, TINY))
    with pytest.raises(TableMismatch, match="model 'clipline-tiny'"):
        ClipTable.open_or_create(uri, "media", output_schema(DIM, ModelConfig(arch="ViT-B-32", pretrained="none")))


def test_repeated_ids_in_a_run_become_distinct_rows(tmp_path):
    batch = pa.table(
        {
            "id": ["given", "sha-1", "given", "sha-1"],
            "content_sha256": ["sha-0", "sha-1", "sha-2", "sha-1"],
            "source": ["f#2", "f#3", "f#0", "f#1"],
            "status": ["ok"] * 4,
            "decision": ["allow"] * 4,
        }
    )
    summary = commit(str(tmp_path), batch)
    by_source = {row["source"]: row for row in stored(str(tmp_path)).values()}
    # the first in input order keeps the id, whatever order the rows were processed in
    assert by_source["f#0"]["id"] == "given" and by_source["f#0"]["status"] == "ok"
    assert by_source["f#2"]["id"].startswith("given#") and by_source["f#2"]["status"] == "failed"
    assert by_source["f#2"]["error_code"] == "duplicate_id" and by_source["f#2"]["decision"] is None
    assert by_source["f#1"]["id"] == "sha-1" and by_source["f#1"]["dup_of"] is None
    assert by_source["f#3"]["dup_of"] == "sha-1" and by_source["f#3"]["status"] == "ok"
    assert summary.rows_written == 4 and summary.failed_by_code == {"duplicate_id": 1}


def test_same_content_from_another_file_is_its_own_row_and_keeps_the_first_rows_provenance(tmp_path):
    uri = str(tmp_path)
    content = {"content_sha256": ["sha-x"]}  # no id given: the id is the content hash
    commit(uri, rows(["sha-x"], [True], ["day1.parquet#0"], metadata=['{"uploader_id": "u1"}'], **content))
    later = commit(
        uri, rows(["sha-x"], [True], ["day2.parquet#5"], metadata=['{"uploader_id": "u2"}'], **content), "r2"
    )
    by_id = stored(uri)
    assert by_id["sha-x"]["source"] == "day1.parquet#0" and by_id["sha-x"]["metadata"] == '{"uploader_id": "u1"}'
    [copy] = [row for row_id, row in by_id.items() if row_id != "sha-x"]
    assert copy["source"] == "day2.parquet#5" and copy["dup_of"] == "sha-x" and copy["status"] == "ok"
    assert later.rows_replaced == 0 and later.dedup["exact"] == 1 and later.dedup["of_table"] == 1
    again = commit(uri, rows(["sha-x"], [True], ["day2.parquet#5"], **content), "r2-rerun")  # the same file row
    assert len(stored(uri)) == 2 and again.rows_replaced == 1


def test_a_given_id_from_another_source_fails_unless_updates_are_allowed(tmp_path):
    uri = str(tmp_path)
    commit(uri, rows(["u-1"], [True], ["a.parquet#0"]))
    refused = commit(uri, rows(["u-1"], [True], ["b.parquet#0"]), "r2")
    by_id = stored(uri)
    assert by_id["u-1"]["source"] == "a.parquet#0"
    [failed] = [row for row_id, row in by_id.items() if row_id != "u-1"]
    assert failed["id"].startswith("u-1#") and failed["error_code"] == "duplicate_id"
    assert "sink.update_existing_ids" in failed["error_message"] and refused.rows_replaced == 0
    allowed = commit(uri, rows(["u-1"], [True], ["c.parquet#0"]), "r3", update_existing_ids=True)
    assert stored(uri)["u-1"]["source"] == "c.parquet#0"
    assert (allowed.rows_replaced, allowed.ids_updated) == (1, 1)


def test_reviewer_overrides_survive_reruns_and_win(tmp_path):
    uri = str(tmp_path)
    commit(uri, rows(["a", "b"], [True, True]))
    ClipTable.open(uri, "media").lance.update(
        where="id = 'a'", values={"override_decision": "block", "override_by": "alice"}
    )
    commit(uri, rows(["a", "b"], [True, True]), "r2")
    by_id = stored(uri)
    assert by_id["a"]["decision"] == "block" and by_id["a"]["override_by"] == "alice" and by_id["a"]["run_id"] == "r2"
    assert by_id["b"]["decision"] == "allow" and by_id["b"]["override_decision"] is None


def test_a_review_applied_between_staging_and_commit_survives(tmp_path):
    """Overrides are read at commit: a reviewer deciding while the run stages is not reverted."""
    uri = str(tmp_path)
    commit(uri, rows(["a", "b"], [True, True]))
    config = job_config(uri, "media", "r2", TINY, DedupConfig(), False)
    table = ClipTable.open_or_create(uri, "media", output_schema(DIM, TINY))
    run = RunContext(config, None, table, RunSummary("r2", uri, "media"), RunOptions())
    written = StagingSink.for_run(config, run.staging, table.lance.schema, "r2")(rows(["a", "b"], [True, True]))
    decisions = tmp_path / "decisions.csv"
    decisions.write_text("id,override_decision\na,block\n")
    apply_decisions(uri, "media", decisions, reviewer="bob")  # while the run is between staging and commit
    try:
        commit_staged(run, json.loads(written.column("fragments")[0].as_py()), {"f.parquet": 0}, None)
    finally:
        discard_staging(run)
    by_id = stored(uri)
    assert by_id["a"]["override_decision"] == "block" and by_id["a"]["decision"] == "block"
    assert by_id["a"]["override_by"] == "bob" and by_id["a"]["run_id"] == "r2"


def test_the_sink_sends_the_driver_metadata_only(tmp_path):
    config = job_config(str(tmp_path), "media", "r1", TINY, DedupConfig(), False)
    table = ClipTable.open_or_create(str(tmp_path), "media", output_schema(DIM, TINY))
    run = RunContext(config, None, table, RunSummary("r1", str(tmp_path), "media"), RunOptions())
    batch = rows([f"id{i}" for i in range(2000)], [True] * 2000)
    written = StagingSink.for_run(config, run.staging, table.lance.schema, "r1")(batch)
    discard_staging(run)
    assert written.num_rows == 1 and written.column("rows")[0].as_py() == 2000
    assert json.loads(written.column("sources")[0].as_py()) == {"f.parquet": [[0, 2000]]}
    assert written.nbytes < 1024  # ~0.6 KB for 2,000 rows with their vectors


def test_the_row_check_compares_sets_not_sums():
    account = RowAccount()
    account.add(source_ranges([f"f#{i}" for i in range(10) if i != 3]))  # row 3 lost ...
    account.add(source_ranges(["f#7"]))  # ... and row 7 written twice: the sum is still 10
    with pytest.raises(RowsLost, match="1 row\\(s\\) written more than once.*1 row\\(s\\) missing"):
        account.check({"f": [(0, 10)]})
    whole = RowAccount()
    whole.add(source_ranges([f"f#{i}" for i in range(10)]))
    whole.check({"f": [(0, 10)]})
