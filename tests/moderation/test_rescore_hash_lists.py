"""Rescore applies a changed hash list from the stored `pdq_hash`: the images are gone, nothing is decoded."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmarks.pdq import hashable_shapes, jpeg
from clipline.moderation.rescore import rescore
from clipline.operators.pdq import pdq_of_image
from clipline.table.store import ClipTable
from tests.tables import DEMO_POLICY_PATH, ingest

COLUMNS = ["id", "decision", "reasons", "hash_matches", "pdq_hash", "policy_hash"]


@pytest.fixture
def table_without_images(tmp_path):
    """12 images ingested by URI under the demo policy (no lists), then deleted from disk."""
    images = hashable_shapes(12, first_seed=500)
    rows = []
    for index, image in enumerate(images):
        path = tmp_path / "images" / f"{index}.png"
        path.parent.mkdir(exist_ok=True)
        image.save(path)
        rows.append({"id": f"img-{index}", "image_uri": str(path)})
    ingest(str(tmp_path / "db"), rows, run_id="first-run")
    for row in rows:
        Path(row["image_uri"]).unlink()
    return tmp_path, images


def read(db: Path) -> dict[str, dict]:
    return {row["id"]: row for row in ClipTable.open(str(db), "media").lance.to_arrow().select(COLUMNS).to_pylist()}


def policy_with_list(root: Path, entries: dict[str, str]) -> Path:
    (root / "known.csv").write_text(
        "hash,label\n" + "".join(f"{digest},{label}\n" for label, digest in entries.items())
    )
    data = yaml.safe_load(Path(DEMO_POLICY_PATH).read_text())
    data["hash_lists"] = [{"name": "known", "uri": "known.csv", "action": "block"}]
    path = root / "with-list.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_grown_list_blocks_and_a_shrunk_one_releases_without_decoding(table_without_images, monkeypatch):
    import PIL.Image

    from clipline.operators.decode import DecodeImages

    root, images = table_without_images
    before = read(root / "db")
    assert before["img-3"]["pdq_hash"] == pdq_of_image(images[3])[0]  # the run stored the frame's hash
    # the list holds hashes of JPEG re-encodes made elsewhere: near the stored hashes, rarely equal
    listed = {f"label-{i}": pdq_of_image(jpeg(images[i]))[0] for i in (3, 7, 9)}
    policy = policy_with_list(root, listed)

    def forbidden(*args, **kwargs):
        raise AssertionError("rescore must not read or decode images")

    monkeypatch.setattr(PIL.Image, "open", forbidden)
    monkeypatch.setattr(DecodeImages, "__call__", forbidden)
    summary = rescore(str(root / "db"), "media", policy)
    after = read(root / "db")
    assert summary.hash_matches == {"known": 3}
    for i in (3, 7, 9):
        row = after[f"img-{i}"]
        assert row["decision"] == "block"
        assert row["reasons"][0]["category"] == "hash:known"
        [match] = row["hash_matches"]
        assert (match["list"], match["label"], match["entry"]) == ("known", f"label-{i}", listed[f"label-{i}"])
    unmatched = [row_id for row_id in after if row_id not in ("img-3", "img-7", "img-9")]
    assert all(after[r]["decision"] == before[r]["decision"] and after[r]["hash_matches"] is None for r in unmatched)
    assert len({row["policy_hash"] for row in after.values()}) == 1 != before["img-3"]["policy_hash"]

    del listed["label-7"]
    policy_with_list(root, listed)
    summary = rescore(str(root / "db"), "media", policy)
    released = read(root / "db")
    assert summary.hash_matches == {"known": 2}
    assert released["img-7"]["decision"] == before["img-7"]["decision"]
    assert released["img-7"]["hash_matches"] is None
    assert released["img-3"]["decision"] == "block"


def test_a_table_from_before_pdq_hashes_rescores_with_a_list_and_gains_the_columns(table_without_images):
    root, images = table_without_images
    table = ClipTable.open(str(root / "db"), "media")
    table.lance.drop_columns(["pdq_hash", "pdq_quality", "hash_matches"])  # as written before they existed
    before = {row["id"]: row["decision"] for row in table.lance.to_arrow().select(["id", "decision"]).to_pylist()}
    policy = policy_with_list(root, {"a": pdq_of_image(images[0])[0]})
    assert rescore(str(root / "db"), "media", policy, dry_run=True).hash_matches == {}
    summary = rescore(str(root / "db"), "media", policy)
    assert summary.hash_matches == {}  # nothing stored to match: no row is blocked by a guess
    after = read(root / "db")
    assert {row_id: row["decision"] for row_id, row in after.items()} == before
    assert all(row["hash_matches"] is None and row["pdq_hash"] is None for row in after.values())
