"""Start-up of `clipline --help` and every `clipline <verb> --help`: wall time and peak memory.

    python -m benchmarks.cli_startup [--repeats 5] [--clipline PATH]

Each command runs as its own process, `--repeats` times; the table shows the median wall time and
the median peak RSS (from the kernel's accounting of that child). `--clipline` times an installed
console script (default: `python -m clipline.jobs.cli` with this interpreter).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

VERBS = [
    [],
    ["run"],
    ["demo"],
    ["search"],
    ["report"],
    ["calibrate"],
    ["rescore"],
    ["train-head"],
    ["review", "export"],
    ["review", "apply"],
    ["maintain"],
    ["curate"],
    ["serve"],
]


def timed(command: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one run of `command`."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{command} exited with {process.returncode}")
    return elapsed, usage.ru_maxrss / 1024


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cli_startup", description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clipline", default=None, help="path of an installed `clipline` script")
    args = parser.parse_args(argv)
    base = [args.clipline] if args.clipline else [sys.executable, "-m", "clipline.jobs.cli"]
    results = []
    for verb in VERBS:
        runs = [timed([*base, *verb, "--help"]) for _ in range(args.repeats)]
        results.append(
            {
                "command": " ".join(["clipline", *verb, "--help"]),
                "wall_s": round(statistics.median(run[0] for run in runs), 3),
                "max_rss_mb": round(statistics.median(run[1] for run in runs), 1),
            }
        )
        print(f"{results[-1]['command']:<36} {results[-1]['wall_s']:6.3f} s  {results[-1]['max_rss_mb']:6.1f} MB")
    return results


if __name__ == "__main__":
    main()
