"""The throughput harness runs every stage, peers included, and writes its table, JSON and plot (no speed asserted)."""

from __future__ import annotations

import json
import shutil
from datetime import datetime

import pytest

from benchmarks import gpu_summary
from benchmarks.throughput import RATIOS, STAGES, main

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_harness_writes_results_for_every_stage(ray_local, tmp_path, capsys):
    results = main(
        [
            *("--model", "clipline-tiny", "--n", "16", "--batch-size", "8", "--repeats", "1", "--prompts", "10"),
            *("--image-size", "phone", "--jpeg-decode", "encoder", "--out", str(tmp_path)),
        ]
    )
    written = json.loads((tmp_path / "throughput.json").read_text())
    assert written["n"] == 16 and written["jpeg_decode"] == "encoder" and "--image-size" in written["command"]
    assert set(written["sizes"]) == {"phone"}
    for size in written["sizes"].values():
        assert set(STAGES) | {"moderate_cold"} <= set(size["seconds"])
        assert {"bare_steady", "embed_steady", "captions_steady", "lancedb_steady"} <= set(size["seconds"])
        assert all(rate > 0 for rate in size["img_per_s"].values())
        assert set(RATIOS) <= set(size["ratios"]) and all(len(v) == 1 for v in size["ratios_per_round"].values())
        for stage in ("embed", "captions", "moderate"):
            startup = size["startup"][stage]
            assert {"planned_s", "first_batch_encoded_s", "imports_cpu_s", "model_build_s"} <= set(startup)
            assert 0 < startup["planned_s"] < startup["first_batch_encoded_s"]
    assert written["sizes"]["phone"]["image_size"] == "640x480"
    assert (tmp_path / "throughput.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "LanceDB open-clip embedding function" in printed and "clipline_over_raydata" in printed
    assert results["sizes"]["phone"]["ratios"] == written["sizes"]["phone"]["ratios"]

    # The GPU check's summary reads the same results; here with made-up nvidia-smi samples.
    run = tmp_path / "gpu-work" / "tiny-b8-encoder"
    run.mkdir(parents=True)
    shutil.copy(tmp_path / "throughput.json", run)
    start = written["sizes"]["phone"]["rounds"][0]["runs"]["embed"]["startup"]["run_started_at"]
    stamps = [datetime.fromtimestamp(start + 0.05 * i).strftime("%Y/%m/%d %H:%M:%S.%f")[:-3] for i in range(4000)]
    (run / "util.csv").write_text("".join(f"{stamp}, 93, 2048\n" for stamp in stamps))
    rows = gpu_summary.main([str(tmp_path / "gpu-work"), "--out", str(tmp_path / "recorded")])
    assert rows[0]["bottleneck"].startswith("GPU") and rows[0]["gpu_util_steady"]["median_pct"] == 93
    assert rows[0]["img_per_s"] > 0 and rows[0]["operators"]["decode"]["rows"] == 16
    assert "| clipline-tiny | 8 | encoder | 16 |" in (tmp_path / "recorded" / "gpu-check.md").read_text()
