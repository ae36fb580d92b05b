"""A run on a real local Ray with hash lists: edited copies of listed images are blocked, the run's
summary counts them, and its report shows which rows matched and why.

The list holds the PDQ hashes of the originals (as a list provider computes them from its own
copies); the input holds edited copies. Two lists read the same file: `known` blocks with plain
matching, `known_rotated` sends to review with dihedral matching, so one run shows both.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image

from benchmarks.pdq import EDITS, hashable_shapes, shape_image
from clipline.jobs.run import run_and_record
from clipline.operators.pdq import pdq_of_image
from clipline.schemas.config import load_job_config
from clipline.table.store import ClipTable
from tests.operators.images import encode
from tests.operators.test_pdq import pinned_image
from tests.pipelines.inputs import write_parquet
from tests.tables import DEMO_POLICY_PATH

pytestmark = pytest.mark.ray

MATCHING = ("jpeg_q60", "resize_50pct", "crop_1pct_one_side")
NOT_MATCHING = ("crop_5pct_each_side",)


def png(image: Image.Image) -> bytes:
    return encode(image, "PNG")


def report_reasons(page: str) -> dict[str, str]:
    """Row id → the reasons text of its card in the report's flagged grids."""
    cards = re.findall(r'<div class="card \w+" data-id="([^"]+)">.*?<div>(.*?)</div>', page, flags=re.S)
    return {html.unescape(row_id): html.unescape(re.sub("<[^>]+>", "", reasons)) for row_id, reasons in cards}


@pytest.fixture(scope="module")
def listed_run(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("hash-lists-run")
    originals = [pinned_image(320, 240), *hashable_shapes(3, first_seed=700)]
    (root / "known.csv").write_text(
        "hash,label\n" + "".join(f"{pdq_of_image(image)[0]},original-{i}\n" for i, image in enumerate(originals))
    )
    policy = yaml.safe_load(Path(DEMO_POLICY_PATH).read_text())
    policy["hash_lists"] = [
        {"name": "known", "uri": "known.csv", "action": "block"},
        {"name": "known_rotated", "uri": "known.csv", "action": "review", "dihedral": True},
    ]
    (root / "policy.yaml").write_text(yaml.safe_dump(policy))
    rows = [
        {"id": f"{edit}-{i}", "image": png(EDITS[edit](image))}
        for i, image in enumerate(originals)
        for edit in (*MATCHING, *NOT_MATCHING, "mirror")
    ]
    rows += [{"id": f"unrelated-{i}", "image": png(shape_image(5000 + i))} for i in range(8)]
    rows.append({"id": "caption-only", "text": "a red star"})
    (root / "in").mkdir()
    write_parquet(rows, root / "in" / "uploads.parquet")
    job = {"source": {"paths": ["in/"]}, "policy": "policy.yaml", "sink": {"uri": "db", "table": "media"}}
    (root / "job.yaml").write_text(yaml.safe_dump(job))
    summary = run_and_record(load_job_config(root / "job.yaml"))
    table = ClipTable.open(str(root / "db"), "media").lance
    stored = {row["id"]: row for row in table.to_arrow().to_pylist()}
    page = Path(summary.report_uri).read_text()
    return summary, stored, page, len(originals)


def test_reencoded_resized_and_lightly_cropped_copies_are_blocked_with_the_reason(listed_run) -> None:
    summary, stored, _, count = listed_run
    for edit in MATCHING:
        for i in range(count):
            row = stored[f"{edit}-{i}"]
            assert row["decision"] == "block", row["id"]
            assert row["reasons"][0]["category"] == "hash:known"
            match = row["hash_matches"][0]
            assert (match["list"], match["label"]) == ("known", f"original-{i}")
            assert match["distance"] <= 31
    assert summary.flagged["hash:known"]["block"] == len(MATCHING) * count


def test_five_percent_crops_and_unrelated_images_match_nothing(listed_run) -> None:
    _, stored, _, _ = listed_run
    for row_id, row in stored.items():
        if row_id.startswith(("crop_5pct", "unrelated-", "caption-only")):
            assert row["hash_matches"] is None, row_id
    assert stored["caption-only"]["pdq_hash"] is None
    assert all(stored[f"unrelated-{i}"]["pdq_hash"] for i in range(8))


def test_a_mirror_is_caught_only_by_the_dihedral_list(listed_run) -> None:
    _, stored, _, _ = listed_run
    mirror = stored["mirror-0"]  # the textured test picture: its mirror is 9-16 bits from the derived variant
    assert [match["list"] for match in mirror["hash_matches"]] == ["known_rotated"]
    assert mirror["decision"] in ("review", "block")  # review from the list; block only if CLIP says so
    assert any(reason["category"] == "hash:known_rotated" for reason in mirror["reasons"])


def test_the_report_shows_which_rows_matched_and_why(listed_run) -> None:
    summary, stored, page, count = listed_run
    reasons = report_reasons(page)
    matched = {row_id for row_id, row in stored.items() if row["hash_matches"]}
    assert matched and matched <= set(reasons)
    for row_id in matched:
        for match in stored[row_id]["hash_matches"]:
            assert f"hash:{match['list']}" in reasons[row_id], row_id
    assert not any("hash:" in text for row_id, text in reasons.items() if row_id not in matched)
    assert summary.decisions["block"] >= len(MATCHING) * count
    # the run section names each list, the contents it matched against and how many rows it flagged
    blocked = sum(summary.flagged["hash:known"].values())
    assert f"<b>known</b> ({count} entries, sha256" in page and f"{blocked} rows matched" in page
    assert len({row["policy_hash"] for row in stored.values()}) == 1
