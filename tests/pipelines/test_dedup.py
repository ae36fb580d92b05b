"""Tiered dedup: exact by content hash, near by image cosine, within a run and against the table.

The first tests commit hand-made vectors through the run's own sink and tail (stage → identity
and dedup on Ray → one commit), so every rule is checked exactly; the last ones run generated
images through the tiny CLIP and measure precision and recall.
"""

from __future__ import annotations

import io
import itertools
import zlib
from types import SimpleNamespace

import lancedb
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from clipline.demo.shapes import COLOURS, SHAPES, render
from clipline.schemas.config import DedupConfig
from clipline.table import buckets
from tests.tables import commit_rows, job_config

# The tables these tests read are committed by the run's tail, which runs as Ray tasks.
pytestmark = pytest.mark.usefixtures("ray_local")

DIM = 16


def unit(seed: int, dim: int = DIM) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


def nudge(vector: np.ndarray, amount: float, seed: int) -> np.ndarray:
    """A vector at cosine ~ 1 - amount**2 / 2 from `vector`: a near duplicate."""
    moved = vector + amount * unit(seed, len(vector))
    return (moved / np.linalg.norm(moved)).astype(np.float32)


def row(row_id: str, vector=None, sha: str | None = None, source: str | None = None, **extra) -> dict:
    return {
        "id": row_id,
        "content_sha256": sha or f"sha-{row_id}",
        "source": source or f"in.parquet#{zlib.crc32(row_id.encode())}",  # a row number per id
        "status": "ok",
        "image_embedding": None if vector is None else [float(x) for x in vector],
        **extra,
    }


def rows_table(rows: list[dict], dim: int = DIM) -> pa.Table:
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("content_sha256", pa.string()),
            ("source", pa.string()),
            ("status", pa.string()),
            ("image_embedding", pa.list_(pa.float32(), dim)),
            ("decision", pa.string()),
            ("clip_score", pa.float32()),
            ("labels", pa.list_(pa.string())),
            ("text", pa.string()),
            ("pdq_hash", pa.string()),
            ("pdq_quality", pa.int32()),
        ]
    )
    return pa.Table.from_pylist([{name: r.get(name) for name in schema.names} for r in rows], schema=schema)


DEFAULT = DedupConfig()


def write_run(uri: str, rows: list[dict], config: DedupConfig = DEFAULT, run_id: str = "run", dim: int = DIM):
    """Stage → identity and dedup → one commit, as a run does; returns (counts, table)."""
    from tests.tables import TINY

    job = job_config(uri, "media", run_id, TINY, config, update_existing_ids=False)
    summary = commit_rows(uri, rows_table(rows, dim), job, embedding_dim=dim)
    return SimpleNamespace(**summary.dedup), lancedb.connect(uri).open_table("media")


def annotations(table) -> dict[str, tuple]:
    rows = table.search().select(["id", "dup_of", "dup_cluster"]).limit(None).to_arrow().to_pylist()
    return {r["id"]: (r["dup_of"], r["dup_cluster"]) for r in rows}


def test_exact_and_near_duplicates_within_a_run(tmp_path):
    a = unit(1)
    rows = [
        row("a", a, source="f.parquet#0"),
        row("b", a, sha="sha-a", source="f.parquet#1"),  # same bytes as a
        row("c", nudge(a, 0.1, 7), source="f.parquet#2"),  # a resized copy: cosine ~0.995
        row("d", unit(2), source="f.parquet#3"),
        row("t1", None, sha="sha-text", source="f.parquet#4", text="same caption"),
        row("t2", None, sha="sha-text", source="f.parquet#5", text="same caption"),
        row("x", None, source="f.parquet#6", status="failed"),
    ]
    counts, table = write_run(str(tmp_path), rows)
    assert annotations(table) == {
        "a": (None, "a"),
        "b": ("a", "a"),
        "c": ("a", "a"),
        "d": (None, "d"),
        "t1": (None, "t1"),
        "t2": ("t1", "t1"),
        "x": (None, None),
    }
    assert (counts.checked, counts.exact, counts.near, counts.of_run, counts.of_table) == (6, 2, 1, 3, 0)


def test_canonical_is_the_first_in_input_order_not_in_staging_order(tmp_path):
    a = unit(3)
    rows = [row(f"r{i}", nudge(a, 0.05, i), source=f"f.parquet#{i}") for i in (10, 2, 9, 1)]
    _, table = write_run(str(tmp_path), rows)
    assert {k: v[0] for k, v in annotations(table).items()} == {"r1": None, "r2": "r1", "r9": "r1", "r10": "r1"}


def test_every_duplicate_is_within_the_threshold_of_its_canonical(tmp_path):
    """A copy of a copy that drifted too far from the original starts a cluster of its own."""
    chain = [unit(4)]
    for step in range(4):
        chain.append(nudge(chain[-1], 0.25, 100 + step))
    rows = [row(f"c{i}", v, source=f"f.parquet#{i}") for i, v in enumerate(chain)]
    _, table = write_run(str(tmp_path), rows, DedupConfig(near_threshold=0.95))
    marks = annotations(table)
    vectors = dict(enumerate(chain))
    assert marks["c0"] == (None, "c0") and marks["c1"] == ("c0", "c0")
    assert float(chain[0] @ chain[-1]) < 0.95 and marks["c4"][1] != "c0"
    for row_id, (dup_of, _) in marks.items():
        if dup_of is not None:
            assert float(vectors[int(row_id[1:])] @ vectors[int(dup_of[1:])]) >= 0.95


def test_second_run_points_at_first_run_rows_and_reruns_are_stable(tmp_path):
    uri = str(tmp_path)
    a, b = unit(5), unit(6)
    first = [row("a", a, source="one.parquet#0"), row("a2", nudge(a, 0.05, 1), source="one.parquet#1")]
    first += [row("b", b, source="one.parquet#2")]
    write_run(uri, first, run_id="run1")
    second = [
        row("n1", nudge(a, 0.08, 2), source="two.parquet#0"),  # near a2 and a: cluster of a
        row("n2", b, sha="sha-b", source="two.parquet#1"),  # exact copy of b
        row("n3", unit(7), source="two.parquet#2"),
        row("n4", nudge(unit(7), 0.05, 3), source="two.parquet#3"),
    ]
    counts, table = write_run(uri, second, run_id="run2")
    assert (counts.of_table, counts.of_run, counts.exact, counts.near) == (2, 1, 1, 2)
    expected = {
        "a": (None, "a"),
        "a2": ("a", "a"),
        "b": (None, "b"),
        "n1": ("a", "a"),
        "n2": ("b", "b"),
        "n3": (None, "n3"),
        "n4": ("n3", "n3"),
    }
    assert annotations(table) == expected
    for rerun, rows in (("rerun1", first), ("rerun2", second), ("rerun-both", first + second)):
        counts, table = write_run(uri, rows, run_id=rerun)
        assert annotations(table) == expected, rerun
        assert counts.carried == len(rows) and counts.duplicates == 0


def test_a_row_whose_content_changed_is_annotated_afresh(tmp_path):
    uri = str(tmp_path)
    a = unit(8)
    write_run(uri, [row("a", a, source="in.parquet#0"), row("b", unit(9), source="in.parquet#1")])
    _, table = write_run(uri, [row("b", nudge(a, 0.05, 1), sha="sha-b-new", source="in.parquet#1")], run_id="r2")
    assert annotations(table)["b"] == ("a", "a")


def test_table_without_annotations_gets_them_on_rerun(tmp_path):
    uri = str(tmp_path)
    a = unit(10)
    rows = [row("a", a, source="f.parquet#0"), row("b", nudge(a, 0.05, 1), source="f.parquet#1")]
    write_run(uri, rows, config=DedupConfig(enabled=False))  # written before dedup existed
    counts, table = write_run(uri, rows, run_id="r2")
    assert annotations(table) == {"a": (None, "a"), "b": ("a", "a")}
    assert counts.carried == 0


def test_disabled_dedup_changes_nothing(tmp_path):
    a = unit(11)
    rows = [row("a", a, source="in.parquet#0"), row("b", a, sha="sha-a", source="in.parquet#1")]
    counts, table = write_run(str(tmp_path), rows, DedupConfig(enabled=False))
    assert counts.duplicates == 0 and set(annotations(table).values()) == {(None, None)}


def test_many_buckets_give_the_same_clusters_as_one(tmp_path, monkeypatch):
    """With buckets of a few rows each (nearest and second-nearest searched), well-separated clusters
    come out exactly as with every row in one bucket; the table's rows are read by bucket."""
    centres = [unit(1000 + c, 32) for c in range(40)]
    history = [row(f"h{c}", centres[c], source=f"h.parquet#{c}") for c in range(40)]
    run = [
        row(f"n{c}-{j}", nudge(centres[c], 0.1, 50 * c + j), source=f"n.parquet#{c * 3 + j}")
        for c in range(40)
        for j in range(3)
    ]
    run += [row(f"u{i}", unit(5000 + i, 32), source=f"n.parquet#{200 + i}") for i in range(40)]
    results, bucket_counts = {}, {}
    for mode, rows_per_bucket in (("one", 10**6), ("many", 4)):
        monkeypatch.setattr(buckets, "BUCKET_ROWS", rows_per_bucket)
        uri = str(tmp_path / mode)
        write_run(uri, history, run_id="h", dim=32)
        counts, table = write_run(uri, run, run_id="n", dim=32)
        results[mode], bucket_counts[mode] = annotations(table), counts.buckets
        assert counts.of_table == 120 and counts.of_run == 0
    assert bucket_counts == {"one": 1, "many": 10}
    assert results["many"] == results["one"]
    assert all(results["one"][f"n{c}-{j}"] == (f"h{c}", f"h{c}") for c in range(40) for j in range(3))


# ----------------------------------------------------------------------------- tiny CLIP, generated images


def encoded(image: Image.Image, fmt: str = "PNG", quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=fmt, quality=quality)
    return buffer.getvalue()


def variant(image: Image.Image, kind: str, rng: np.random.Generator) -> bytes:
    """The copies a dedup must catch: resized, slightly cropped, JPEG re-encoded, resized + JPEG."""
    w, h = image.size
    if kind == "resize":
        scale = rng.uniform(0.5, 1.6)
        return encoded(image.resize((int(w * scale), int(h * scale)), Image.Resampling.BILINEAR))
    if kind == "crop":
        keep = rng.uniform(0.9, 0.97)
        cw, ch = int(w * keep), int(h * keep)
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return encoded(image.crop((left, top, left + cw, top + ch)))
    if kind == "jpeg":
        return encoded(image, "JPEG", int(rng.integers(40, 80)))
    scale = rng.uniform(0.6, 0.9)
    return encoded(image.resize((int(w * scale), int(h * scale)), Image.Resampling.BILINEAR), "JPEG", 60)


def generated_groups(count: int, copies: int, seed: int, size: int = 128) -> list[list[bytes]]:
    """`count` originals, each with `copies` edited copies; originals are distinct (shape, colour) concepts.

    Distinct concepts because the tiny CLIP encodes the concept, not the instance: two renders of
    "red star" score cosine 0.89-0.99 (median 0.97), as close as an edited copy, so with it no
    threshold tells a re-render from a copy. Real CLIP models separate instances.
    """
    rng = np.random.default_rng(seed)
    kinds = itertools.cycle(("resize", "crop", "jpeg", "resize+jpeg"))
    concepts = list(itertools.product(SHAPES, COLOURS))
    assert count <= len(concepts)
    groups = []
    for index, (shape, colour) in enumerate(concepts[:count]):
        original = render(shape, colour, np.random.default_rng(seed * 100_000 + index), size=size)
        groups.append([encoded(original)] + [variant(original, next(kinds), rng) for _ in range(copies)])
    return groups


def ingest_deduped(uri: str, rows: list[dict], config: DedupConfig, run_id: str, source: str | None = None):
    """tests/tables.py's ingest (the run's stages and tail, dedup included); returns (counts, table).

    The rows come from file `<run_id>.parquet` unless `source` names another (a rerun of a file).
    """
    from tests.tables import ingest

    summary = ingest(uri, rows, dedup=config, run_id=run_id, source=source or f"{run_id}.parquet")
    return SimpleNamespace(**summary.dedup), lancedb.connect(uri).open_table("media")


def pair_counts(predicted: dict[str, str], truth: dict[str, int]) -> tuple[int, int, int]:
    """(pairs in the same predicted and true cluster, predicted pairs, true pairs)."""
    ids = sorted(truth)
    same_true = {(a, b) for a, b in itertools.combinations(ids, 2) if truth[a] == truth[b]}
    same_pred = {(a, b) for a, b in itertools.combinations(ids, 2) if predicted[a] == predicted[b]}
    return len(same_true & same_pred), len(same_pred), len(same_true)


@pytest.fixture(scope="module")
def tiny_weights():
    from clipline.models.loader import TINY_WEIGHTS

    if not TINY_WEIGHTS.exists():
        pytest.skip("the tiny CLIP weights are not trained yet")


def test_near_duplicates_of_generated_images_precision_and_recall(tmp_path, tiny_weights):
    """Three generated sets (3 x 56 originals x 4 images), each deduplicated as one run; pairwise
    precision and recall of the clusters against the known groups, pooled over the sets."""
    hits = predicted_pairs = true_pairs = 0
    for seed in (1, 2, 3):
        rows, truth = [], {}
        for g, images in enumerate(generated_groups(count=56, copies=3, seed=seed)):
            for v, data in enumerate(images):
                rows.append({"id": f"g{g}-v{v}", "image": data})
                truth[f"g{g}-v{v}"] = g
        _, table = ingest_deduped(str(tmp_path / f"set{seed}"), rows, DedupConfig(), f"gen{seed}")
        predicted = {id_: cluster for id_, (_, cluster) in annotations(table).items()}
        pairs = pair_counts(predicted, truth)
        print(f"set {seed}: precision {pairs[0] / max(1, pairs[1]):.3f} recall {pairs[0] / pairs[2]:.3f}")
        hits, predicted_pairs, true_pairs = hits + pairs[0], predicted_pairs + pairs[1], true_pairs + pairs[2]
    precision, recall = hits / predicted_pairs, hits / true_pairs
    print(f"near-dup precision {precision:.3f} recall {recall:.3f} (threshold {DedupConfig().near_threshold})")
    assert precision >= 0.95 and recall >= 0.9


def test_second_run_of_copies_is_marked_dup_of_first_run_ids(tmp_path, tiny_weights):
    uri = str(tmp_path)
    groups = generated_groups(count=21, copies=1, seed=3)
    ingest_deduped(
        uri, [{"id": f"orig{g}", "image": images[0]} for g, images in enumerate(groups)], DedupConfig(), "r1"
    )
    second = [{"id": f"copy{g}", "image": images[1]} for g, images in enumerate(groups)]
    second += [{"id": f"exact{g}", "image": images[0]} for g, images in enumerate(groups[:5])]
    counts, table = ingest_deduped(uri, second, DedupConfig(), "r2")
    marks = annotations(table)
    found = sum(marks[f"copy{g}"][0] == f"orig{g}" for g in range(21))
    assert found >= 19, found
    assert all(marks[f"exact{g}"][0] == f"orig{g}" for g in range(5))
    assert all(marks[f"orig{g}"] == (None, f"orig{g}") for g in range(21))
    assert counts.of_table == counts.duplicates and counts.exact == 5
    _, again = ingest_deduped(uri, second, DedupConfig(), "r2-again", source="r2.parquet")  # the same file again
    assert annotations(again) == marks
