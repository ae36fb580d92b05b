"""One demo table per test session (the demo's rows through the run's own stages, tiny CLIP), copied per use."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from clipline.demo.demo import demo_rows
from clipline.reports import write_run_artifacts
from tests.tables import DEDUP, TINY, demo_policy, ingest, job_config

TOKENS = {"alice-token-0123456789": "alice", "bob-token-0123456789ab": "bob"}
RUN_ID = "20261201T120000Z-demo"


@dataclass(frozen=True)
class Demo:
    db: Path  # table `media` and one recorded run (manifest and report)
    rows: dict[str, dict]  # the generator's rows by id: image bytes, caption, shape, colour, kind


def build_demo(root: Path) -> Demo:
    """The demo's rows through the run's stages with the tiny CLIP, committed as one recorded run."""
    rows = demo_rows(root)
    db = str(root / "db")
    summary = ingest(db, rows, run_id=RUN_ID, source=str(root / "input" / "demo.parquet"))
    write_run_artifacts(summary, job_config(db, "media", RUN_ID, TINY, DEDUP), policy=demo_policy())
    return Demo(root / "db", {row["id"]: row for row in rows})


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Demo:
    return build_demo(tmp_path_factory.mktemp("serve-demo"))


@pytest.fixture(scope="module")
def table_copy(demo, tmp_path_factory) -> str:
    """A module's own copy of the demo table (tests that decide rows change it)."""
    copy = tmp_path_factory.mktemp("serve-db") / "db"
    shutil.copytree(demo.db, copy)
    return str(copy)
