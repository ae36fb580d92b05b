"""The table's LanceDB embedding function: plain LanceDB queries by text and image, and the writes it constrains.

The LanceDB-native queries run in fresh interpreters that import nothing of clipline's: the
function is registered only through the `.pth` line the package installs, processed the way
Python processes it at start-up (`site.addsitedir`).
"""

from __future__ import annotations

import json
import os
import runpy
import site
import subprocess
import sys
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from clipline.schemas.config import ModelConfig
from clipline.schemas.table import output_schema
from clipline.table.curate import CurateQuery, curate
from clipline.table.embedding import FUNCTIONS_KEY, VECTOR_COLUMNS, embed_text, query_model
from clipline.table.search import search_image, search_text
from clipline.table.store import ClipTable
from tests.pipelines.inputs import image_rows
from tests.tables import bundle, ingest

WORKTREE = Path(__file__).resolve().parents[2]
PACKAGING = runpy.run_path(str(WORKTREE / "setup.py"))  # the `.pth` the package installs, not a copy

PLAIN_SESSION = """
import json, site, sys
sys.path.extend(json.loads(sys.argv[5]))  # run with -S: site-packages on the path, its .pth files unread
if sys.argv[3] == "installed":
    site.addsitedir(sys.argv[4])  # what start-up does with site-packages' .pth files
import lancedb
table = lancedb.connect(sys.argv[1]).open_table("media")
query = sys.argv[2] if not sys.argv[2].startswith("@") else open(sys.argv[2][1:], "rb").read()
found = {}
for column in ("image_embedding", "text_embedding"):
    rows = table.search(query, vector_column_name=column).distance_type("cosine").limit(5).select(["id"]).to_list()
    found[column] = [row["id"] for row in rows]
loaded = sorted(name for name in sys.modules if name.startswith("clipline"))
print(json.dumps({"found": found, "clipline_modules": loaded}))
"""


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("lancedb-native")
    ingest(str(root), image_rows("shape", 56, seed=3))
    return str(root)


def plain_session(db: str, query: str, tmp_path: Path, installed: bool = True) -> subprocess.CompletedProcess:
    """A fresh interpreter that only imports lancedb (clipline is on the path, as an installed package is)."""
    site_dir = tmp_path / "site-packages"
    site_dir.mkdir(exist_ok=True)
    (site_dir / PACKAGING["PTH_NAME"]).write_text(PACKAGING["PTH_LINE"])
    env = {**os.environ, "PYTHONPATH": str(WORKTREE)}
    mode = "installed" if installed else "bare"
    # -S: the environment's own copy of the hook (installed with the package) must not decide the bare case
    packages = json.dumps(site.getsitepackages())
    command = [sys.executable, "-S", "-c", PLAIN_SESSION, db, query, mode, str(site_dir), packages]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_the_table_records_its_function_for_both_vector_columns(db):
    metadata = ClipTable.open(db, "media").lance.schema.metadata
    entries = json.loads(metadata[FUNCTIONS_KEY])
    assert [entry["vector_column"] for entry in entries] == list(VECTOR_COLUMNS)
    assert {entry["name"] for entry in entries} == {"clipline-clip"}
    assert entries[0]["model"] == {
        "arch": "clipline-tiny",
        "pretrained": None,
        "checkpoint": None,
        "precision": "auto",
        "dim": 128,
    }


def test_plain_lancedb_searches_by_text_with_the_tables_model(db, tmp_path):
    result = plain_session(db, "a red star", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout)
    table = ClipTable.open(db, "media")
    assert (
        answer["found"]["image_embedding"]
        == search_text(table.lance, bundle(), "a red star", k=5).column("id").to_pylist()
    )
    assert answer["found"]["image_embedding"][0].startswith("shape-")
    assert len(answer["found"]["text_embedding"]) == 5
    # registered by the .pth hook alone: clipline's search code was never imported
    assert "clipline.table.embedding" in answer["clipline_modules"]
    assert not any(name.startswith(("clipline.table.search", "clipline.jobs")) for name in answer["clipline_modules"])


def test_plain_lancedb_searches_by_image_bytes(db, tmp_path):
    original = image_rows("shape", 56, seed=3)[17]
    query = tmp_path / "query.png"
    query.write_bytes(original["image"])
    result = plain_session(db, f"@{query}", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout)["found"]["image_embedding"]
    table = ClipTable.open(db, "media")
    assert found[0] == original["id"]
    assert found == search_image(table.lance, bundle(), original["image"], k=5).column("id").to_pylist()


def test_without_the_hook_lancedb_cannot_rebuild_the_function(db, tmp_path):
    result = plain_session(db, "a red star", tmp_path, installed=False)
    assert result.returncode != 0 and "clipline-clip" in result.stderr


def test_query_model_is_built_once_and_embeds_like_the_pipeline():
    config = ModelConfig()
    assert query_model(config) is query_model(config)
    vector = embed_text(query_model(config), "a red star")
    assert vector.shape == (128,) and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_review_columns_update_keeps_vectors_and_refuses_writes_without_them(db, tmp_path):
    table = ClipTable.open(db, "media")
    before = {row["id"]: row for row in table.lance.to_arrow().to_pylist()}
    some = sorted(before)[:3]
    updates = pa.table({"id": some, "decision": ["block"] * 3})
    assert table.update_columns(updates) == []
    after = {row["id"]: row for row in table.lance.to_arrow().to_pylist()}
    for row_id in some:
        assert after[row_id]["decision"] == "block"
        assert after[row_id]["image_embedding"] == before[row_id]["image_embedding"] is not None
        assert after[row_id]["text_embedding"] == before[row_id]["text_embedding"]
    with pytest.raises(ValueError, match="must carry"):
        table.merge(updates, insert_new=False)


def test_an_older_table_gets_the_function_and_thumbnail_column_at_its_next_run(tmp_path):
    """A table created before this version (no function metadata, no thumbnail) is upgraded in place."""
    schema = output_schema(128, ModelConfig())
    old_schema = pa.schema([field for field in schema if field.name != "thumbnail"], metadata=schema.metadata)
    lancedb.connect(str(tmp_path)).create_table("media", schema=old_schema)
    ingest(str(tmp_path), image_rows("old", 4), run_id="first")
    table = ClipTable.open(str(tmp_path), "media")
    assert FUNCTIONS_KEY in table.lance.schema.metadata
    assert table.lance.schema.names[-1] == "thumbnail"
    rows = table.lance.to_arrow().to_pylist()
    assert len(rows) == 4 and all(row["thumbnail"] and row["image_embedding"] for row in rows)


def test_a_curated_lance_export_keeps_the_function_only_with_its_vectors(db, tmp_path):
    table = ClipTable.open(db, "media").lance
    with_vectors = CurateQuery(columns=["id", "decision", *VECTOR_COLUMNS])
    curate(table, str(tmp_path / "with.lance"), with_vectors)
    curate(table, str(tmp_path / "without.lance"), CurateQuery(columns=["id", "decision"]))
    exports = lancedb.connect(str(tmp_path))
    assert FUNCTIONS_KEY in exports.open_table("with").schema.metadata
    assert FUNCTIONS_KEY not in exports.open_table("without").schema.metadata
    found = exports.open_table("with").search("a red star", vector_column_name="image_embedding").limit(3).to_list()
    assert len(found) == 3
