"""Playwright driving Debian's Chromium (never a downloaded browser) for the web app's tests."""

from __future__ import annotations

from pathlib import Path

from tests.reports.browser import chromium

DEBIAN_BINARY = Path("/usr/lib/chromium/chromium")  # what Debian's `chromium` launcher script runs
ARGS = [
    "--disable-gpu",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # no DNS beyond loopback
    "--disable-features=AutofillServerCommunication,Translate,OptimizationHints,MediaRouter",
]


def chromium_executable() -> str:
    """The browser binary; skips with a warning without chromium, fails when CI is set (as the report test)."""
    launcher = chromium()
    return str(DEBIAN_BINARY) if DEBIAN_BINARY.is_file() else launcher
