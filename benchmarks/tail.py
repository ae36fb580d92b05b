"""Tail benchmark: the end of a run (stage, identity, dedup, commit) at scale, on Ray, no model.

    python -m benchmarks.tail --rows 100000 1000000 [--history 1000000] [--dup-fraction 0.1]
                              [--repeats 3] [--address ADDR] [--baseline-rev REV] [--out DIR]

Post-encode rows (512-d, clustered like CLIP embeddings, with planted exact and near duplicates:
`benchmarks/tail_data.py`) are generated and written by Ray tasks exactly as the pipeline's
writer tasks write them, then the real tail runs: identity, dedup in buckets, finalize, one
commit. With `--history`, a table of that many rows (with its own duplicates) is built first,
maintained (buckets, scalar indexes), copied for each measured run, and half of the new run's
duplicates copy history rows.

Each measured run is its own driver process (so its peak RSS is its own) attached to one Ray
started here. Reported per size, median of `--repeats`: rows/s end to end and per phase, driver
peak RSS, bytes the driver received, dedup precision (rows marked duplicate that are planted
copies of that row's cluster) and recall (planted copies found in their original's cluster).

`--baseline-rev REV` also runs the previous release's driver path (rows streamed to the driver,
staged into LanceDB there, deduplicated there, merged) on the same rows, from `git archive REV`,
up to `--baseline-max-rows` rows (it is quadratic; 100k rows took 11 minutes).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from benchmarks.tail_data import DIM, Spec, block_rows, truth
from clipline.pipelines.run import RunContext, commit_staged, discard_staging
from clipline.pipelines.sink import StagingSink
from clipline.pipelines.summary import RunOptions, RunSummary
from clipline.pipelines.tail import file_ranks
from clipline.schemas.config import JobConfig
from clipline.table.buckets import maintain_buckets
from clipline.table.maintain import ensure_scalar_indexes
from clipline.table.store import ClipTable

MODEL = {"arch": "ViT-B-32", "pretrained": "none"}  # 512-d metadata only: no model is built
HISTORY_RUN = 0


def job(db: str, run: int) -> JobConfig:
    return JobConfig.model_validate(
        {"source": {"paths": ["bench"]}, "model": MODEL, "sink": {"uri": db}, "run_id": f"bench-run-{run}"}
    )


def specs(rows: int, run: int, block_rows_: int, dup_fraction: float, history_blocks: int, seed: int) -> list[Spec]:
    blocks = max(1, -(-rows // block_rows_))
    sizes = [block_rows_] * (blocks - 1) + [rows - block_rows_ * (blocks - 1)]
    return [Spec(seed, run, block, size, dup_fraction, history_blocks) for block, size in enumerate(sizes)]


@ray.remote(num_cpus=0.25)
def write_block(sink: StagingSink, spec: Spec) -> tuple[str, str]:
    """A writer task: the block's rows, staged by the pipeline's own sink; returns only its metadata."""
    written = sink(block_rows(spec))
    return written.column("fragments")[0].as_py(), written.column("sources")[0].as_py()


@ray.remote
def score_block(db: str, spec: Spec) -> tuple[int, int, int, int]:
    """(copies found in their group, copies, rows marked duplicate that are right, rows marked duplicate)."""
    sources, groups = truth(spec)
    table = ClipTable.open(db, "media").lance
    prefix = sources[0].rsplit("#", 1)[0]
    rows = (
        table.search()
        .where(f"source LIKE '{prefix}#%'")
        .select(["source", "dup_of", "dup_cluster"])
        .limit(None)
        .to_arrow()
    )
    by_source = dict(
        zip(rows.column("source").to_pylist(), rows.select(["dup_of", "dup_cluster"]).to_pylist(), strict=True)
    )
    original_count = spec.size - round(spec.size * spec.dup_fraction)
    found = marked = right = 0
    for index, (source, group) in enumerate(zip(sources, groups, strict=True)):
        row = by_source[source]
        if index >= original_count:
            found += row["dup_cluster"] == group
        if row["dup_of"] is not None:
            marked += 1
            right += index >= original_count and row["dup_cluster"] == group
    return found, spec.size - original_count, right, marked


def stage(run: RunContext, blocks: list[Spec]) -> tuple[list[str], dict[str, int], int]:
    """Workers generate and stage the blocks; the driver keeps fragment metadata and row ranges."""
    sink = StagingSink.for_run(run.config, run.staging, run.table.lance.schema, run.summary.run_id)
    fragments, files, received = [], {}, 0
    for fragment_json, sources_json in ray.get([write_block.remote(sink, spec) for spec in blocks]):
        received += len(fragment_json) + len(sources_json)
        fragments.extend(json.loads(fragment_json))
        for path, ranges in json.loads(sources_json).items():
            files[path] = max(files.get(path, 0), max(end for _, end in ranges))
    return fragments, files, received


def measured_run(args: argparse.Namespace) -> dict:
    """One run of `--one-rows` new rows into `--db` (a driver process of its own)."""
    ray.init(address=args.address, log_to_driver=False)
    config = job(args.db, args.one_run)
    table = ClipTable.open_or_create(args.db, "media", output_schema_512())
    run = RunContext(config, None, table, RunSummary(config.run_id, args.db, "media"), RunOptions())
    history_blocks = (
        len(specs(args.history, HISTORY_RUN, args.block_rows, args.dup_fraction, 0, args.seed)) if args.history else 0
    )
    blocks = specs(args.one_rows, args.one_run, args.block_rows, args.dup_fraction, history_blocks, args.seed)
    started = time.perf_counter()
    fragments, files, staged_bytes = stage(run, blocks)
    staged = time.perf_counter()
    try:
        commit_staged(run, fragments, file_ranks(list(files), files), None)
    finally:
        discard_staging(run)
    finished = time.perf_counter()
    summary = run.summary
    found, copies, right, marked = np.sum(ray.get([score_block.remote(args.db, spec) for spec in blocks]), axis=0)
    rows = args.one_rows
    tail_phases = summary.tail["phases_s"]
    return {
        "rows": rows,
        "history": args.history,
        "blocks": len(blocks),
        "wall_s": round(finished - started, 3),
        "rows_per_s": round(rows / (finished - started), 1),
        "phases_s": {"stage": round(staged - started, 3), **tail_phases},
        "phases_rows_per_s": {
            name: round(rows / max(s, 1e-9), 1) for name, s in {"stage": staged - started, **tail_phases}.items()
        },
        "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "driver_bytes": staged_bytes + summary.tail["driver_bytes"],
        "driver_bytes_per_block": round((staged_bytes + summary.tail["driver_bytes"]) / len(blocks), 1),
        "dedup": summary.dedup,
        "precision": round(float(right) / max(1, int(marked)), 4),
        "recall": round(float(found) / max(1, int(copies)), 4),
        "rows_written": summary.rows_written,
        "table_rows": table.count_rows(),
    }


def output_schema_512() -> pa.Schema:
    from clipline.schemas.config import ModelConfig
    from clipline.schemas.table import output_schema

    return output_schema(DIM, ModelConfig(**MODEL))


def build_history(args: argparse.Namespace, db: str, address: str) -> dict:
    """The history table: one run of `--history` rows, then maintained (buckets, scalar indexes)."""
    result = one_process(args, db, HISTORY_RUN, args.history, address, history=0)
    table = ClipTable.open(db, "media")
    started = time.perf_counter()
    buckets = maintain_buckets(table)
    scalar = ensure_scalar_indexes(table.lance)
    result["maintain"] = {
        "buckets": buckets.describe(),
        "scalar": scalar,
        "wall_s": round(time.perf_counter() - started, 3),
    }
    return result


def data_flags(args: argparse.Namespace) -> list[str]:
    """The flags that fix which rows are generated, shared by measured and baseline runs so both see the same data."""
    return ["--dup-fraction", str(args.dup_fraction), "--block-rows", str(args.block_rows), "--seed", str(args.seed)]


def last_json_line(command: list[str], what: str, env: dict[str, str] | None = None) -> dict:
    """Run one measured child process, its RSS its own, and read the JSON record it prints last."""
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def one_process(args: argparse.Namespace, db: str, run: int, rows: int, address: str, history: int) -> dict:
    command = [sys.executable, "-m", "benchmarks.tail", "--one-rows", str(rows), "--one-run", str(run)]
    command += ["--db", db, "--address", address, "--history", str(history), *data_flags(args)]
    return last_json_line(command, "measured run")


def baseline_run(args: argparse.Namespace, rows: int, checkout: Path, address: str, db: str) -> dict:
    """The previous release's driver path on the same rows, in a process importing that release."""
    env = {**os.environ, "PYTHONPATH": f"{checkout}{os.pathsep}{Path(__file__).resolve().parent.parent}"}
    script = Path(__file__).with_name("tail_baseline.py")
    command = [sys.executable, str(script), "--rows", str(rows), "--db", db, "--address", address, *data_flags(args)]
    return last_json_line(command, "baseline run", env)


def checkout_of(rev: str, into: Path) -> Path:
    """`clipline/` as it was at `rev`, unpacked under `into` (git archive; nothing else touched)."""
    archive = subprocess.run(["git", "archive", rev, "clipline"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def median_run(runs: list[dict]) -> dict:
    """The run with the median wall time, with every run's wall time and rows/s beside it."""
    ordered = sorted(runs, key=lambda run: run["wall_s"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["rounds_rows_per_s"] = [run["rows_per_s"] for run in runs]
    chosen["median_rows_per_s"] = statistics.median(run["rows_per_s"] for run in runs)
    return chosen


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    if args.one_rows:
        print(json.dumps(measured_run(args)))
        return {}
    owned = args.address is None
    context = (
        ray.init(address=args.address or "local", include_dashboard=False, _node_ip_address="127.0.0.1")
        if owned
        else ray.init(address=args.address)
    )
    address = context.address_info["gcs_address"] if owned else args.address
    work = Path(tempfile.mkdtemp(prefix="clipline-tail-"))
    results: dict = {
        "command": " ".join(sys.argv),
        "history": args.history,
        "dup_fraction": args.dup_fraction,
        "sizes": {},
    }
    try:
        history_db = None
        if args.history:
            history_db = str(work / "history")
            results["history_build"] = build_history(args, history_db, address)
        for rows in args.rows:
            runs = []
            for repeat in range(args.repeats):
                db = str(work / f"run-{rows}-{repeat}")
                if history_db:
                    shutil.copytree(history_db, db)
                runs.append(one_process(args, db, 1, rows, address, args.history))
                shutil.rmtree(db, ignore_errors=True)
            results["sizes"][rows] = median_run(runs)
            if args.baseline_rev and rows <= args.baseline_max_rows and not args.history:
                checkout = checkout_of(args.baseline_rev, work / "baseline")
                results["sizes"][rows]["baseline"] = baseline_run(
                    args, rows, checkout, address, str(work / f"base-{rows}")
                )
            print(json.dumps({rows: results["sizes"][rows]}, indent=2), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if owned:
            ray.shutdown()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"tail-{'-'.join(map(str, args.rows))}" + (f"-history{args.history}" if args.history else "") + ".json"
    (out / name).write_text(json.dumps(results, indent=2))
    return results


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tail", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000])
    parser.add_argument("--history", type=int, default=0, help="rows already in the table (built first)")
    parser.add_argument("--dup-fraction", type=float, default=0.1)
    parser.add_argument("--block-rows", type=int, default=20_000, help="rows per writer task (sink.commit_rows)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--address", default=None, help="a running Ray cluster (default: start one here)")
    parser.add_argument("--baseline-rev", default=None, help="also run this git revision's driver path")
    parser.add_argument("--baseline-max-rows", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--one-rows", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--one-run", type=int, default=1, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
