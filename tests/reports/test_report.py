"""The report page: every category's plot, flagged thumbnails re-read from the input, escaping."""

from __future__ import annotations

import base64
import io
import re
from xml.etree import ElementTree

import pytest
from PIL import Image

from clipline.reports import report_for_run, write_run_artifacts
from clipline.reports.thumbnails import load_thumbnails, source_image_bytes
from clipline.schemas.config import SourceConfig
from clipline.schemas.storage import StorageConfig
from clipline.table.store import ClipTable
from tests.pipelines.inputs import image_rows, png_bytes, write_parquet
from tests.reports.synthetic import scored_rows, write_run
from tests.tables import DEDUP, TINY, demo_policy, ingest, job_config

STAR = {"star": 0.95, "cross": 0.01, "red": 0.9, "blue": 0.05}
CROSS = {"star": 0.01, "cross": 0.7, "red": 0.05, "blue": 0.9}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("report")
    images = tmp_path / "in" / "images"  # under the input's directory: the default allowed prefix
    images.mkdir(parents=True)
    uri_image = images / "uri-star.png"
    uri_image.write_bytes(png_bytes("star", "blue", 7))
    (tmp_path / "outside.png").write_bytes(png_bytes("star", "red", 8))
    rows = [
        *scored_rows(16, seed=3),
        {"id": "uri-star", "image_uri": str(uri_image), "scores": STAR},
        {"id": "text-cross", "text": "a cross <script>alert('x')</script> & more", "scores": CROSS},
        {"id": "lost-uri", "image_uri": str(images / "gone.png"), "scores": STAR},
        {"id": "outside-uri", "image_uri": str(tmp_path / "outside.png"), "scores": STAR},
        {"id": "broken", "image": b"nope", "error_code": "image_decode_failed"},
    ]
    summary, config = write_run(tmp_path / "db", tmp_path / "in", "run-r", rows)
    artifacts = write_run_artifacts(summary, config)
    return {
        "tmp": tmp_path,
        "artifacts": artifacts,
        "html": (tmp_path / "db" / "_clipline" / "runs" / "media" / "run-r.html").read_text(),
    }


def data_uris(page: str, kind: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(rf'src="data:image/{kind};base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_has_a_plot_per_category_and_the_summary_plots(report):
    page = report["html"]
    for name in ("star", "cross", "red", "blue"):
        assert f'id="plot-scores-{name}"' in page
    for plot in ("plot-decisions", "plot-errors", "plot-throughput"):
        assert f'id="{plot}"' in page
    plots = data_uris(page, "png")
    assert len(plots) == 3
    for data in plots:
        image = Image.open(io.BytesIO(data))
        image.load()
        assert image.width >= 400
    histograms = data_uris(page, r"svg\+xml")
    assert len(histograms) == 4
    for data in histograms:
        svg = ElementTree.fromstring(data)  # well-formed, sized, with its bars and threshold lines
        assert int(svg.get("width")) >= 400
        assert svg.findall("{http://www.w3.org/2000/svg}rect") and svg.findall("{http://www.w3.org/2000/svg}line")


def test_flagged_rows_show_thumbnails_from_the_parquet_and_from_image_uri(report):
    page = report["html"]
    decisions = report["artifacts"].manifest["decisions"]
    blocked = re.search(r'<div class="grid" id="grid-block">(.*?)</section>', page, re.S).group(1)
    review = re.search(r'<div class="grid" id="grid-review">(.*?)</section>', page, re.S).group(1)
    assert blocked.count('class="card block"') == decisions["block"]
    assert review.count('class="card review"') == decisions["review"]
    assert 'data-id="uri-star"' in blocked and 'data-id="lost-uri"' in blocked
    thumbnails = data_uris(page, "jpeg")
    # Every flagged image row has a picture except the one whose image_uri is gone and the one
    # outside the allowed prefixes (the report re-reads under the run's policy); the text row has none.
    image_rows = decisions["block"] + decisions["review"] - 3
    assert len(thumbnails) == image_rows
    for data in thumbnails:
        assert max(Image.open(io.BytesIO(data)).size) <= 160
    assert "uri_not_found" in page and "does not exist" in page
    assert "uri_not_allowed" in page and 'data-id="outside-uri"' in blocked
    assert "text-only row" in review


def test_text_from_the_table_is_escaped(report):
    page = report["html"]
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    assert "script-src" not in page and "default-src 'none'" in page


def test_report_for_run_renders_a_recorded_run_again(report):
    db = str(report["tmp"] / "db")
    manifest, page = report_for_run(db, "media")
    assert manifest["run_id"] == "run-r" and 'id="plot-scores-star"' in page
    with pytest.raises(ValueError, match="no manifest for run 'nope'"):
        report_for_run(db, "media", "nope")


def test_source_rows_are_read_from_their_row_group(tmp_path):
    rows = [{"id": f"i{n}", "image": png_bytes("circle", ("red", "blue")[n % 2], n)} for n in range(20)]
    path = tmp_path / "in.parquet"
    write_parquet(rows, path, row_group_size=8)
    sources = [f"{path}#{n}" for n in (0, 9, 17)] + [f"{path}#99", f"{tmp_path}/missing.parquet#1", "no-row-number"]
    found, problems = source_image_bytes(sources, "image", StorageConfig())
    for n in (0, 9, 17):
        assert found[f"{path}#{n}"] == rows[n]["image"]
    assert "past the end" in problems[f"{path}#99"]
    assert "cannot read" in problems[f"{tmp_path}/missing.parquet#1"]
    assert problems["no-row-number"] == "source has no row number"
    thumbs = load_thumbnails(
        [{"id": "a", "source": f"{path}#9", "image_uri": None, "text": None}], SourceConfig(paths=[str(path)])
    )
    pixel = Image.open(io.BytesIO(thumbs["a"].jpeg)).convert("RGB").getpixel((48, 48))
    assert pixel[2] > 150 and pixel[0] < 100  # row 9 is the blue one


def test_oversized_images_are_refused_before_decoding(tmp_path):
    big = io.BytesIO()
    Image.new("RGB", (400, 400), "red").save(big, format="PNG")
    (tmp_path / "big.png").write_bytes(big.getvalue())
    row = {"id": "big", "source": None, "image_uri": str(tmp_path / "big.png"), "text": None}
    source = SourceConfig(paths=[str(tmp_path / "in.parquet")], max_image_pixels=1000)
    thumb = load_thumbnails([row], source)["big"]
    assert thumb.jpeg is None and "image_too_large" in thumb.missing and "limit of 1000" in thumb.missing


def test_stored_thumbnails_are_shown_without_reading_the_input(ray_local, tmp_path):
    """Rows ingested with thumbnails (the default) need no input at report time: here it never existed."""
    db = str(tmp_path / "db")
    summary = ingest(db, image_rows("kept", 24), run_id="run-t", source=str(tmp_path / "deleted.parquet"))
    config = job_config(db, "media", "run-t", TINY, DEDUP)
    write_run_artifacts(summary, config, policy=demo_policy())
    page = (tmp_path / "db" / "_clipline" / "runs" / "media" / "run-t.html").read_text()
    flagged = ClipTable.open(db, "media").count_rows("decision IN ('block', 'review')")
    pictures = data_uris(page, "webp")
    assert flagged > 0 and len(pictures) == flagged and data_uris(page, "jpeg") == []
    assert "cannot read" not in page
    for data in pictures:
        assert Image.open(io.BytesIO(data)).format == "WEBP"
