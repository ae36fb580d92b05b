"""The PDQ harness runs end to end at a small size and writes its table and JSON (no speed asserted here)."""

from __future__ import annotations

import json

import pytest

from benchmarks.pdq import main

pytestmark = pytest.mark.slow


def test_harness_writes_results(tmp_path, capsys):
    argv = ["--images", "4", "--robustness", "6", "--unrelated", "20", "--list-size", "3000", "--queries", "100"]
    results = main([*argv, "--repeats", "1", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "pdq.json").read_text())
    assert written == json.loads(json.dumps(results))
    for model in written["cost"]["models"].values():
        assert model["pdq"]["cpu_ms"] > 0 and 0 < model["pdq_share_cpu"] < 1
    assert written["robustness"]["edits"]["mirror"]["plain"]["matched"] == 0
    assert written["unrelated"]["pairs"] == 190
    for mode in ("plain", "dihedral"):
        assert written["list"][mode]["rows_per_cpu_s"] > 0
    assert "rows per CPU-s" in capsys.readouterr().out
