"""`clipline search --pdq HEX`: rows near a PDQ hash, nearest first, within a distance; mirrors with --dihedral."""

from __future__ import annotations

import json

import pytest
from PIL import ImageOps

from benchmarks.pdq import hashable_shapes, jpeg, resized
from clipline.jobs.cli import main
from clipline.operators.hamming import hamming
from clipline.operators.pdq import pdq_of_image
from clipline.table.search import search_table
from clipline.table.store import ClipTable
from tests.operators.images import encode
from tests.operators.test_pdq import pinned_image
from tests.tables import ingest


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """An original, its JPEG and half-size copies, its mirror, and 8 unrelated images."""
    root = tmp_path_factory.mktemp("search-pdq")
    original, others = pinned_image(320, 240), hashable_shapes(8, first_seed=900)
    copies = {
        "original": original,
        "jpeg": jpeg(original),
        "half": resized(original),
        "mirror": ImageOps.mirror(original),
    }
    rows = [{"id": name, "image": encode(image, "PNG")} for name, image in copies.items()]
    rows += [{"id": f"other-{i}", "image": encode(image, "PNG")} for i, image in enumerate(others)]
    rows.append({"id": "text-only", "text": "a red star"})
    ingest(str(root / "db"), rows)
    return str(root / "db"), pdq_of_image(original)[0]


def found(results) -> dict[str, int]:
    return dict(zip(results.column("id").to_pylist(), results.column("distance").to_pylist(), strict=True))


def test_finds_the_copies_nearest_first_and_not_the_mirror(table) -> None:
    db, query = table
    results = search_table(db, "media", pdq=query)
    near = found(results)
    assert set(near) == {"original", "jpeg", "half"}
    assert near["original"] == 0
    assert list(near.values()) == sorted(near.values())
    for row in results.to_pylist():
        assert row["score"] == pytest.approx(1 - row["distance"] / 256)


def test_distance_k_where_and_dihedral(table) -> None:
    db, query = table
    assert set(found(search_table(db, "media", pdq=query, max_distance=0))) == {"original"}
    assert len(search_table(db, "media", pdq=query, k=1)) == 1
    assert "original" not in found(search_table(db, "media", pdq=query, where="id != 'original'"))
    with_mirrors = found(search_table(db, "media", pdq=query, dihedral=True))
    assert {"original", "jpeg", "half", "mirror"} <= set(with_mirrors)
    assert not any(row_id.startswith("other-") for row_id in with_mirrors)
    everything = found(search_table(db, "media", pdq=query, max_distance=256, k=100))
    stored = ClipTable.open(db, "media").lance.to_arrow().select(["id", "pdq_hash"]).to_pylist()
    expected = {row["id"]: hamming(query, row["pdq_hash"]) for row in stored if row["pdq_hash"]}
    assert everything == expected and len(expected) == 12  # every image row; the text-only row has no hash


def test_cli_prints_distances_and_refuses_a_bad_hash(table, capsys) -> None:
    db, query = table
    assert main(["search", "--db", db, "--table", "media", "--pdq", query, "--max-distance", "20", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["id"] == "original" and all(row["distance"] <= 20 for row in rows)
    assert main(["search", "--db", db, "--table", "media", "--pdq", query]) == 0
    assert "  0 b" in capsys.readouterr().out
    assert main(["search", "--db", db, "--table", "media", "--pdq", "not-a-hash"]) == 2
    assert "64 hex digits" in capsys.readouterr().err
