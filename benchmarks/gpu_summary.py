"""Summarise benchmarks/gpu_check.sh's runs: img/s, GPU utilisation over each run's span, and the bottleneck.

    python -m benchmarks.gpu_summary <work dir of gpu_check.sh> [--out benchmarks/recorded]

Each run directory holds the harness's `throughput.json` and `util.csv` (nvidia-smi samples:
timestamp, GPU utilisation %, memory used MiB). Utilisation is taken over the run's own span
(from `run_job` start to its end) and over its steady part (first encoded batch to the end), so
data generation and Ray's start do not dilute it.

The bottleneck is read from the run's numbers, not guessed: the GPU when it was busy most of the
steady span; the CPU decode tasks when they kept their CPUs busy most of the run; otherwise the
side in between (the encoder actor's own host work: batch assembly, JPEG decode launch, copies).
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import datetime
from pathlib import Path

GPU_BUSY = 85.0  # % median utilisation over the steady span
DECODE_BUSY = 0.8  # share of the decode CPUs' seconds spent in decode tasks


def utilisation(util_csv: Path, start: float, end: float) -> dict[str, float | None]:
    """Median and mean GPU utilisation, and peak memory, of the samples between two epoch times."""
    samples = []
    for line in util_csv.read_text().splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != 3:
            continue
        try:
            stamp = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            samples.append((stamp, float(parts[1]), float(parts[2])))
        except ValueError:
            continue
    inside = [sample for sample in samples if start <= sample[0] <= end]
    if not inside:
        return {"median_pct": None, "mean_pct": None, "peak_memory_mib": None, "samples": 0}
    return {
        "median_pct": statistics.median(sample[1] for sample in inside),
        "mean_pct": round(statistics.fmean(sample[1] for sample in inside), 1),
        "peak_memory_mib": max(sample[2] for sample in inside),
        "samples": len(inside),
    }


def bottleneck(gpu_steady: float | None, decode_share: float | None) -> str:
    if gpu_steady is not None and gpu_steady >= GPU_BUSY:
        return f"GPU (median {gpu_steady:.0f} % busy while encoding)"
    if decode_share is not None and decode_share >= DECODE_BUSY:
        return f"CPU decode tasks ({decode_share:.0%} of the decode CPUs' time in decode)"
    return (
        f"encoder actor host side: GPU median {gpu_steady or 0:.0f} %, decode CPUs {decode_share or 0:.0%} busy "
        "(batch assembly, decode launches, host-device copies)"
    )


def summarise_run(run: Path) -> dict:
    results = json.loads((run / "throughput.json").read_text())
    size = next(iter(results["sizes"].values()))
    record = size["rounds"][0]["runs"]["embed"]
    startup, operators = record["startup"], record["operators"]
    start = startup["run_started_at"]
    end = start + size["seconds"]["embed"]
    encoded_from = start + (startup.get("first_batch_encoded_s") or 0)
    decode = next((op for op in operators if "ReadAndDecode" in op["name"]), None)
    encoder = next((op for op in operators if "EncodeClassifyActor" in op["name"]), None)
    decode_cpus = max(1.0, results["machine"]["cpus"] - 1)  # one CPU is the encoder actor's
    decode_share = decode["task_s"] / (decode_cpus * decode["wall_s"]) if decode and decode["wall_s"] else None
    gpu_run = utilisation(run / "util.csv", start, end)
    gpu_steady = utilisation(run / "util.csv", encoded_from, end)
    return {
        "run": run.name,
        "model": results["model"],
        "batch_size": results["batch_size"],
        "jpeg_decode": results["jpeg_decode"],
        "n": results["n"],
        "img_per_s": round(size["img_per_s"]["embed"], 1),
        "img_per_s_steady": round(size["img_per_s"]["embed_steady"], 1),
        "seconds": round(size["seconds"]["embed"], 2),
        "startup_s": startup.get("first_batch_encoded_s"),
        "gpu_util_run": gpu_run,
        "gpu_util_steady": gpu_steady,
        "decode_cpu_share": round(decode_share, 3) if decode_share is not None else None,
        "operators": {"decode": decode, "encoder": encoder},
        # A run shorter than a few samples has none in its steady span: judge it by the whole run.
        "bottleneck": bottleneck(
            gpu_steady["median_pct"] if gpu_steady["samples"] else gpu_run["median_pct"], decode_share
        ),
        "machine": results["machine"],
        "command": results["command"],
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | batch | JPEG decode | n | img/s end to end | img/s steady | start-up s | GPU util (steady, median) "
        "| bottleneck |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        util = row["gpu_util_steady"]["median_pct"]
        lines.append(
            f"| {row['model']} | {row['batch_size']} | {row['jpeg_decode']} | {row['n']} | {row['img_per_s']} "
            f"| {row['img_per_s_steady']} | {row['startup_s']} | {'' if util is None else f'{util:.0f} %'} "
            f"| {row['bottleneck']} |"
        )
    return "\n".join(lines) + "\n"


def last_line(path: Path) -> str | None:
    lines = path.read_text().strip().splitlines() if path.exists() else []
    return lines[-1] if lines else None


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/recorded"))
    args = parser.parse_args(argv)
    runs = sorted(path.parent for path in args.work.glob("*/throughput.json"))
    rows = [summarise_run(run) for run in runs]
    device = last_line(args.work / "device.csv")
    tests = last_line(args.work / "device-decode-tests.txt")  # pytest's summary line
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-check.json").write_text(
        json.dumps({"device": device, "device_decode_tests": tests, "runs": rows}, indent=2)
    )
    table = markdown(rows)
    (args.out / "gpu-check.md").write_text(f"Device: {device}\n\nGPU decode tests: {tests}\n\n{table}")
    print(table)
    return rows


if __name__ == "__main__":
    main()
