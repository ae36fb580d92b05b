"""Peak RSS of decoding each hostile image, one fresh process per image: the README's memory table.

    python -m benchmarks.decode_memory [--kinds a,b] [--size 224] [--cap-gib 4] [--out DIR]

Each kind of `benchmarks/hostile_corpus.py` is built once (cached under `--out`/corpus) and
decoded by `decode_frame` (the model's pixels and the whole frame, as a run does) in its own
`python` child (subprocess, not fork: no inherited heap). The child imports everything, reads
the file and runs gc, then resets the kernel's peak-RSS counter (`5` into /proc/self/clear_refs
resets VmHWM) and takes its baseline right before the call. Peak = VmHWM after − VmRSS before.
The child's address space is capped at baseline + `--cap-gib` (RLIMIT_AS), so a runaway decode
fails with MemoryError instead of taking the machine down.

Writes `decode_memory.json` and `decode_memory.md` under `--out` (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import hostile_corpus

REPO = Path(__file__).resolve().parent.parent
MAX_PIXELS = 64_000_000

CHILD = r"""
import gc, json, resource, sys, time
from clipline.operators.decode import RowFailure, decode_frame
path, size, max_pixels, cap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

def status():
    out = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "VmSize"):
                out[key] = int(value.split()[0])
    return out

data = open(path, "rb").read()
gc.collect()
resource.setrlimit(resource.RLIMIT_AS, (status()["VmSize"] * 1024 + cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")
before = status()
start = time.perf_counter()
try:
    decode_frame(data, size, max_pixels)
    outcome = "ok"
except RowFailure as failure:
    outcome = failure.code.value
except MemoryError:
    outcome = "MemoryError"
elapsed = time.perf_counter() - start
after = status()
print(json.dumps({
    "outcome": outcome, "seconds": round(elapsed, 3),
    "peak_mib": round((after["VmHWM"] - before["VmRSS"]) / 1024, 1), "baseline_mib": round(before["VmRSS"] / 1024, 1),
}))
"""


def measure(path: Path, size: int, cap_bytes: int, timeout_s: float = 300.0) -> dict:
    """Decode one file in a fresh interpreter; its outcome, seconds and peak MiB above baseline."""
    command = [sys.executable, "-c", CHILD, str(path), str(size), str(MAX_PIXELS), str(cap_bytes)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"outcome": "timeout", "seconds": timeout_s, "peak_mib": None}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        return {"outcome": "crash", "message": tail[0][:200], "seconds": None, "peak_mib": None}
    return json.loads(lines[-1])


def _figure(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def markdown(rows: list[dict]) -> str:
    head = "| kind | bytes | declared | outcome | peak MiB | s |\n|---|---:|---|---|---:|---:|\n"
    body = [
        f"| {row['kind']} | {row['bytes']:,} | {row['declared']} | {row['outcome']} | "
        f"{_figure(row['peak_mib'], ',.0f')} | {_figure(row['seconds'], '.2f')} |"
        for row in rows
    ]
    return head + "\n".join(body) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="", help="comma-separated kind names (default: all)")
    parser.add_argument("--size", type=int, default=224, help="model input size")
    parser.add_argument("--cap-gib", type=float, default=4.0)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    names = [name for name in args.kinds.split(",") if name] or None
    files = hostile_corpus.write_all(out / "corpus", names)
    kinds = hostile_corpus.by_name()
    rows = []
    for name, path in files.items():
        width, height = kinds[name].declared
        result = measure(path, args.size, int(args.cap_gib * 1024**3))
        rows.append({"kind": name, "bytes": path.stat().st_size, "declared": f"{width}x{height}", **result})
        print(f"{name:30s} {result}", flush=True)
    (out / "decode_memory.json").write_text(json.dumps(rows, indent=1))
    (out / "decode_memory.md").write_text(markdown(rows))
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"done in {time.time() - started:.0f} s")
