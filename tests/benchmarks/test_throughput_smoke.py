"""The throughput harness runs end to end and writes its table, JSON and plot (no speed asserted here)."""

from __future__ import annotations

import json

import pytest

from benchmarks.throughput import main

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_harness_writes_results(ray_local, tmp_path, capsys):
    results = main(
        ["--model", "clipline-tiny", "--n", "32", "--batch-size", "16", "--repeats", "1", "--out", str(tmp_path)]
    )
    written = json.loads((tmp_path / "throughput.json").read_text())
    assert written["n"] == 32 and {"bare", "embed", "moderate", "moderate_cold", "embed_steady"} <= set(
        written["img_per_s"]
    )
    assert all(rate > 0 for rate in written["img_per_s"].values())
    assert {"pipeline_over_bare", "moderation_over_embedding", "pipeline_over_bare_steady"} <= set(written["ratios"])
    assert all(len(values) == 1 for values in written["ratios_per_round"].values())
    assert (tmp_path / "throughput.png").stat().st_size > 1000
    assert "pipeline / bare" in capsys.readouterr().out
    assert results["ratios"] == written["ratios"]
