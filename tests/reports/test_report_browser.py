"""The report opened in headless Chromium: the page renders and every image on it decodes."""

from __future__ import annotations

from PIL import Image

from clipline.reports import write_run_artifacts
from tests.reports.browser import chromium, decoded_images, screenshot
from tests.reports.synthetic import scored_rows, write_run


def test_report_renders_in_chromium_with_all_its_images(tmp_path):
    binary = chromium()
    write_run_artifacts(*write_run(tmp_path / "db", tmp_path / "in", "run-1", scored_rows(12, seed=1)))
    summary, config = write_run(tmp_path / "db", tmp_path / "in", "run-2", scored_rows(12, seed=2, star_shift=-0.3))
    write_run_artifacts(summary, config)
    page = tmp_path / "db" / "_clipline" / "runs" / "media" / "run-2.html"
    images, broken = decoded_images(binary, page, tmp_path)
    assert broken == []
    assert images == 6 + 6  # 6 plots (no failed rows: no error plot), 6 thumbnails (3 stars, 3 crosses)
    png = tmp_path / "report.png"
    screenshot(binary, page, png, tmp_path)
    shot = Image.open(png).convert("RGB")
    assert shot.size == (1280, 2400)
    colours = shot.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200  # plots and thumbnails drawn, not a blank page
