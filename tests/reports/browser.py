"""Headless Chromium for report tests: render a page, report which images failed to decode."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
# Appended to a copy of the page (the report itself forbids scripts): after `load`, every <img>
# must be complete with a natural width, i.e. its data URI decoded.
PROBE = """<script>
window.addEventListener('load', () => {
  const images = [...document.images];
  document.body.dataset.images = images.length;
  document.body.dataset.broken = JSON.stringify(
    images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.id || i.alt));
});
</script>"""


def chromium() -> str:
    """Chromium's path; skips (with the reason printed) when it is absent, fails under CI."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("CI is set but chromium is not installed (apt-get install -y chromium)")
    reason = "chromium not installed (apt-get install -y chromium); the report rendering test is skipped"
    print(reason)
    warnings.warn(reason, stacklevel=2)
    pytest.skip(reason)


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [binary, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=180
    )


def decoded_images(binary: str, page: Path, work: Path) -> tuple[int, list[str]]:
    """(number of <img>, ids of those that did not decode) after Chromium loaded `page`."""
    probe = work / "probe.html"
    text = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page.read_text())
    probe.write_text(text.replace("</body>", PROBE + "</body>"))
    result = run_chromium(binary, work / "profile", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'<body data-images="(\d+)" data-broken="([^"]*)"', result.stdout)
    assert found, "the probe did not run: " + result.stdout[:500]
    return int(found.group(1)), json.loads(found.group(2).replace("&quot;", '"'))


def screenshot(binary: str, page: Path, png: Path, work: Path, height: int = 2400) -> None:
    result = run_chromium(
        binary, work / "profile-shot", f"--screenshot={png}", f"--window-size=1280,{height}", page.as_uri()
    )
    assert result.returncode == 0 and png.exists(), result.stderr[-2000:]
