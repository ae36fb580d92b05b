"""Screenshots of the web app for the README: `python -m tests.serve.screenshots [OUT_DIR]`.

Builds the demo table with the tiny CLIP (as the tests do), serves it on loopback and has Debian's
Chromium take the search page and the review queue. The PNGs are quantised to a 128-colour palette:
small enough to commit.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

from clipline.serve.app import create_app
from clipline.serve.settings import ServeSettings
from tests.serve.browser import ARGS, chromium_executable
from tests.serve.conftest import build_demo
from tests.serve.server import ThreadServer

VIEWPORT = {"width": 1280, "height": 760}


def shrink(path: Path) -> None:
    with Image.open(path) as image:
        image.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        demo = build_demo(Path(work))
        app = create_app(ServeSettings(db=str(demo.db), table="media", reviewer="maria"))
        with ThreadServer(app) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_executable(), args=ARGS)
            page = browser.new_context(base_url=url, viewport=VIEWPORT, device_scale_factor=1).new_page()
            page.goto("/?q=a+photo+of+a+red+star.&k=24&decision=allow&decision=review&decision=block")
            page.screenshot(path=out / "search.png")
            page.goto("/queue?size=12")
            page.keyboard.press("ArrowRight")
            page.keyboard.press("x")
            page.keyboard.press("ArrowRight")
            page.keyboard.press("x")
            page.screenshot(path=out / "queue.png")
            browser.close()
    for name in ("search.png", "queue.png"):
        shrink(out / name)
        print(out / name, (out / name).stat().st_size, "bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/web-ui"))
