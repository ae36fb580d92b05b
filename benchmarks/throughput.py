"""Throughput harness: clipline against bare open_clip loops and two peers, as ratios of equal work.

    python -m benchmarks.throughput [--model ViT-B-32 --pretrained none] [--n 512] [--repeats 3]
        [--image-size phone camera] [--threads 2] [--batch-size 32] [--jpeg-decode auto]

On the same generated JPEG parquet (captioned photos; see benchmarks/inputs.py) and the same model:

  images only
    bare           Pillow decode + open_clip preprocess + encode_image in batches, no Ray
    embed          the clipline pipeline, the caption column left out
    lancedb        LanceDB's `open-clip` embedding function on `table.add()` of the image bytes
    raydata        Ray Data's batch-inference pattern (read_parquet, map, map_batches actor, write)
  images + captions
    bare_captions  the bare loop plus the text tower and clip_score, batch for batch
    captions       the clipline pipeline on the captioned rows (its default)
  moderation
    moderate       `embed` with a policy of >= `--prompts` prompts, prompt embeddings already cached;
                   the first run with the policy, which encodes the prompts, is timed once (`moderate_cold`)
    write          Lance staging + the tail (identity, dedup, one commit) of the same number of rows, alone

plus Ray Data's overhead per batch through an actor pool that does nothing. The stages run in
`--repeats` rounds, interleaved (every stage of every image size once per round) so that a slow
spell on a shared machine hits every stage; each ratio is the median of its per-round ratios.
"End to end" is what a user waits on once Ray is up (model loading and worker start included);
"steady" leaves start-up out where the tool lets it be told apart. Clipline runs also report
their start-up pieces from the run summary. Results: a table on stdout, `<name>.json` and
`<name>.png` in `--out` (default `throughput.*`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
import torch

from benchmarks.inputs import IMAGE_SIZES, big_policy, write_inputs
from benchmarks.references import (
    ReferenceWeights,
    Timing,
    bare_loop,
    lancedb_open_clip,
    ray_data_batch_inference,
)
from clipline.models.loader import load_clip
from clipline.operators.columns import embedding_array
from clipline.pipelines.plan import ensure_ray
from clipline.pipelines.run import commit_encoded, run_job
from clipline.pipelines.summary import RunOptions
from clipline.schemas.config import JobConfig, ModelConfig
from clipline.schemas.table import output_schema
from clipline.table.store import ClipTable, Sidecars

# stage → (label, bar label, kind of work); the order is the order of a round and of the printed table.
STAGES = {
    "bare": ("bare open_clip loop", "bare loop", "reference"),
    "embed": ("clipline", "clipline", "clipline"),
    "lancedb": ("LanceDB open-clip embedding function", "LanceDB\nopen-clip fn", "peer"),
    "raydata": ("Ray Data batch-inference pattern", "Ray Data\nbatch inference", "peer"),
    "bare_captions": ("bare loop, image + text towers + clip_score", "bare loop\n+ captions", "reference"),
    "captions": ("clipline, captions (default)", "clipline\n+ captions", "clipline"),
    "moderate": ("clipline + policy, prompts cached", "clipline\n+ policy", "clipline"),
    "write": ("Lance staging + tail + commit only", "", "write"),
}
COLD = ("  first run, prompts encoded", "first run,\nprompts encoded", "clipline")
# ratio → (reference stage, clipline stage): reference seconds / clipline seconds, so > 1 = clipline faster.
RATIOS = {
    "clipline_over_bare": ("bare", "embed"),
    "clipline_captions_over_bare_captions": ("bare_captions", "captions"),
    "clipline_over_lancedb": ("lancedb", "embed"),
    "clipline_over_raydata": ("raydata", "embed"),
    "moderation_over_embedding": ("embed", "moderate"),
}
CAPTION_COLUMN_LEFT_OUT = "caption_not_read"  # a column the inputs lack: image-only runs on captioned data
STARTUP_PIECES = ("planned_s", "first_batch_encoded_s")
ENCODER_PIECES = (
    "actor_started_s",
    "worker_boot_cpu_s",
    "imports_s",
    "imports_cpu_s",
    "model_build_s",
    "model_build_cpu_s",
    "first_batch_s",
    "first_batch_cpu_s",
)


@dataclass(frozen=True)
class Bench:
    """What every round shares for one image size: the model, the generated inputs, where outputs go."""

    args: argparse.Namespace
    model: ModelConfig
    dim: int
    size: str
    work: Path
    parquet: Path
    policy: Path
    weights: ReferenceWeights | None  # written only when a peer runs: ViT-L-14's weights are 1.7 GB
    transform: Callable

    @property
    def cold_db(self) -> Path:
        """The first moderation run's database: its prompt cache seeds every later moderation run."""
        return self.work / f"db-{self.size}-moderate-cold"

    def out(self, stage: str, index: int) -> Path:
        return self.work / f"{stage}-{self.size}-{index}"


@dataclass(frozen=True)
class ClipRun:
    """One clipline run: seconds end to end and of the encoder stage, and what its summary recorded.

    `record` holds the run's start-up pieces and Ray Data's per-operator stats (wall, rows, task and
    CPU seconds), which say which side bounded the run.
    """

    timing: Timing
    record: dict


def clipline_run(
    bench: Bench, db: Path, captions: bool, policy: Path | None = None, banks: Path | None = None
) -> ClipRun:
    """One run into a new table; `banks` is a database whose cached prompt embeddings it starts with.

    The steady figure is the encoder stage from its first batch to its last, as Ray Data recorded it.
    """
    if banks is not None:
        shutil.copytree(Sidecars(str(banks)).prompt_banks, Sidecars(str(db)).prompt_banks)
    args = bench.args
    source: dict = {"paths": [str(bench.parquet)]}
    if not captions:
        source["columns"] = {"text": CAPTION_COLUMN_LEFT_OUT}
    config = JobConfig.model_validate(
        {
            "source": source,
            "model": bench.model.model_dump(exclude_none=True),
            "policy": str(policy) if policy else None,
            "sink": {"uri": str(db)},
            "resources": {
                "batch_size": args.batch_size,
                "torch_threads": args.threads,
                "jpeg_decode": args.jpeg_decode,
            },
        }
    )
    started = time.perf_counter()
    summary = run_job(config, RunOptions(full=True))
    elapsed = time.perf_counter() - started
    if summary.rows_in != summary.ok:
        raise RuntimeError(f"clipline run lost or failed rows: {summary.format()}")
    encoder = next(stage for stage in summary.stages if "EncodeClassifyActor" in stage["name"])
    return ClipRun(Timing(elapsed, encoder["wall_s"]), {"startup": summary.startup, "operators": summary.stages})


def lance_write_only(db: Path, n: int, dim: int, model: ModelConfig) -> Timing:
    vectors = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = pa.table(
        {
            "id": [f"img-{i}" for i in range(n)],
            "content_sha256": [f"{i:064x}" for i in range(n)],
            "source": [f"x#{i}" for i in range(n)],
            "status": ["ok"] * n,
            "image_embedding": embedding_array(vectors, np.ones(n, dtype=bool), dim),
        }
    )
    config = JobConfig.model_validate(
        {"source": {"paths": ["x"]}, "model": model.model_dump(), "sink": {"uri": str(db)}}
    )
    started = time.perf_counter()
    table = ClipTable.open_or_create(str(db), "media", output_schema(dim, model))
    commit_encoded(config, table, rows)
    return Timing(time.perf_counter() - started)


def run_stage(stage: str, bench: Bench, index: int) -> tuple[Timing, dict | None]:
    """One stage once: its timing, and for clipline runs what the run recorded."""
    args = bench.args
    if stage in ("bare", "bare_captions"):
        return bare_loop(bench.model, bench.parquet, args.batch_size, args.threads, stage == "bare_captions"), None
    if stage == "lancedb":
        return lancedb_open_clip(bench.weights, bench.parquet, bench.out(stage, index), args.batch_size), None
    if stage == "raydata":
        timing = ray_data_batch_inference(
            bench.weights, bench.transform, bench.parquet, bench.out(stage, index), args.batch_size
        )
        return timing, None
    if stage == "write":
        return lance_write_only(bench.out(stage, index), args.n, bench.dim, bench.model), None
    policy = bench.policy if stage == "moderate" else None
    run = clipline_run(bench, bench.out(stage, index), stage == "captions", policy, bench.cold_db if policy else None)
    return run.timing, run.record


def timed_round(benches: list[Bench], stages: list[str], index: int) -> dict[str, dict]:
    """Every stage of every image size once: per size, `<stage>` and `<stage>_steady` seconds, and run records."""
    rounds: dict[str, dict] = {bench.size: {"seconds": {}, "runs": {}} for bench in benches}
    for stage in stages:
        for bench in benches:
            timing, record = run_stage(stage, bench, index)
            seconds = rounds[bench.size]["seconds"]
            seconds[stage] = timing.end_to_end
            if timing.steady is not None:
                seconds[f"{stage}_steady"] = timing.steady
            if record:
                rounds[bench.size]["runs"][stage] = record
    return rounds


class NoOp:
    """An actor that returns its batch: what is left is Ray Data's own cost per batch."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch


def noop_pass_seconds(n_batches: int, batch_size: int) -> float:
    table = pa.table(
        {"x": np.zeros(n_batches * batch_size, dtype=np.float32), "pixels": [b"\0" * 50_000] * (n_batches * batch_size)}
    )
    dataset = ray.data.from_arrow([table.slice(i * batch_size, batch_size) for i in range(n_batches)])
    started = time.perf_counter()
    plan = dataset.map_batches(
        NoOp, compute=ray.data.ActorPoolStrategy(size=1), batch_size=batch_size, batch_format="pyarrow", num_cpus=1
    )
    for _ in plan.iter_batches(batch_size=None, batch_format="pyarrow"):
        pass
    return time.perf_counter() - started


def ray_overhead_per_batch(batch_size: int, few: int = 10, many: int = 60) -> float:
    """Seconds Ray Data adds per batch: the slope between a short and a long no-op pass.

    The difference cancels what every pass pays once (actor start, plan start), which is not a
    per-batch cost and would swamp it.
    """
    return (noop_pass_seconds(many, batch_size) - noop_pass_seconds(few, batch_size)) / (many - few)


def startup_medians(startups: list[dict]) -> dict[str, float]:
    """Median of each start-up piece over rounds: the run's own, then its (first) encoder's."""
    pieces: dict[str, list[float]] = {}
    for startup in startups:
        encoder = (startup.get("encoders") or [{}])[0]
        for name, value in [
            *((p, startup.get(p)) for p in STARTUP_PIECES),
            *((p, encoder.get(p)) for p in ENCODER_PIECES),
        ]:
            if isinstance(value, int | float):
                pieces.setdefault(name, []).append(value)
    return {name: round(statistics.median(values), 3) for name, values in pieces.items()}


def summarise_size(args: argparse.Namespace, rounds: list[dict], extra: dict) -> dict:
    """Medians over rounds for one image size; each ratio is the median of its per-round ratios (paired)."""
    seconds_per_round = [r["seconds"] for r in rounds]
    per_round: dict[str, list[float]] = {}
    for name, (reference, ours) in RATIOS.items():
        for suffix in ("", "_steady"):
            if all(f"{reference}{suffix}" in s and f"{ours}{suffix}" in s for s in seconds_per_round):
                per_round[f"{name}{suffix}"] = [
                    s[f"{reference}{suffix}"] / s[f"{ours}{suffix}"] for s in seconds_per_round
                ]
    seconds = {stage: statistics.median(s[stage] for s in seconds_per_round) for stage in seconds_per_round[0]}
    seconds.update(extra)
    clipline_stages = {stage for r in rounds for stage in r["runs"]}
    return {
        "seconds": seconds,
        "img_per_s": {stage: args.n / secs for stage, secs in seconds.items() if not stage.startswith("write")},
        "ratios": {name: statistics.median(values) for name, values in per_round.items()},
        "ratios_per_round": per_round,
        "startup": {
            stage: startup_medians([r["runs"][stage]["startup"] for r in rounds]) for stage in sorted(clipline_stages)
        },
        "rounds": rounds,
    }


def mean_jpeg_kb(parquet: Path) -> float:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    return pc.mean(pc.binary_length(pq.read_table(parquet, columns=["image"]).column("image"))).as_py() / 1024


def plot(results: dict, path: Path) -> None:
    """Img/s per stage and image size, end to end (solid) and steady (hatched), each round a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(results["sizes"])
    colours = {"reference": "#888", "clipline": "#3b7dd8", "peer": "#4f9d69"}
    figure, axes = plt.subplots(len(sizes), 1, figsize=(11, 3.6 * len(sizes)), squeeze=False)
    for axis, size in zip(axes[:, 0], sizes, strict=True):
        result = results["sizes"][size]
        labels = {**STAGES, "moderate_cold": COLD}
        names = [stage for stage in labels if stage in result["img_per_s"]]
        for offset, suffix, hatch in ((-0.2, "", None), (0.2, "_steady", "//")):
            shown = [(i, stage) for i, stage in enumerate(names) if f"{stage}{suffix}" in result["img_per_s"]]
            bars = axis.bar(
                [i + offset for i, _ in shown],
                [result["img_per_s"][f"{stage}{suffix}"] for _, stage in shown],
                width=0.4,
                color=[colours[labels[stage][2]] for _, stage in shown],
                hatch=hatch,
                edgecolor="white",
                label="steady" if suffix else "end to end",
            )
            axis.bar_label(bars, fmt="%.1f", fontsize="x-small")
            for i, stage in shown:
                dots = [
                    results["n"] / r["seconds"][f"{stage}{suffix}"]
                    for r in result["rounds"]
                    if f"{stage}{suffix}" in r["seconds"]
                ]
                axis.plot([i + offset] * len(dots), dots, "k.", markersize=3)
        axis.set_xticks(
            range(len(names)),
            [labels[stage][1] for stage in names],
            fontsize="x-small",
        )
        axis.set_ylabel("images / s")
        axis.set_title(
            f"{size} photos ({result['image_size']}, {result['mean_jpeg_kb']:.0f} KB JPEG)", fontsize="small"
        )
        axis.legend(loc="upper right", fontsize="x-small")
    figure.suptitle(
        f"{results['model']} on {results['machine']['cpus']:g} CPUs, n={results['n']}, batch {results['batch_size']}, "
        f"median of {results['repeats']} rounds (dots: each round)",
        fontsize="small",
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def print_table(results: dict) -> None:
    setup = f"n={results['n']}, batch {results['batch_size']}, {results['threads']} threads"
    print(f"\n{results['model']} ({results['pretrained']}), {setup}, medians of {results['repeats']} rounds")
    for size, result in results["sizes"].items():
        rates, seconds = result["img_per_s"], result["seconds"]
        print(f"\n {size} photos ({result['image_size']}, mean JPEG {result['mean_jpeg_kb']:.0f} KB)")
        print(f"  {'':<46} {'end to end':>17} {'steady':>12}")
        for stage, (label, _, kind) in [*STAGES.items(), ("moderate_cold", COLD)]:
            if stage not in seconds:
                continue
            line = f"  {label:<46} "
            line += (
                f"{seconds[stage]:16.2f} s" if kind == "write" else f"{rates[stage]:6.2f} img/s {seconds[stage]:5.1f} s"
            )
            if f"{stage}_steady" in rates:
                line += f" {rates[f'{stage}_steady']:6.2f} img/s"
            print(line)
        for name, value in result["ratios"].items():
            rounds = ", ".join(f"{v:.3f}" for v in result["ratios_per_round"][name])
            print(f"  {name:<46} {value:.3f}   (rounds: {rounds})")
        for stage, pieces in result["startup"].items():
            print(f"  start-up {stage:<37} " + ", ".join(f"{k} {v:.2f}" for k, v in pieces.items()))
    if results["ray_overhead_ms_per_batch"] is not None:
        print(f"\n  Ray overhead per batch {results['ray_overhead_ms_per_batch']:.1f} ms (no-op actor)")


def prepare(args: argparse.Namespace, model: ModelConfig, work: Path, size: str) -> Bench:
    """Inputs, policy and reference weights for one image size; warms this process's model code once.

    The in-process stages (bare loops, LanceDB) would otherwise pay torch's first-call costs in
    whichever of them runs first.
    """
    bundle = load_clip(model, "cpu")
    with torch.inference_mode():
        bundle.model.encode_image(torch.zeros(2, 3, bundle.image_size, bundle.image_size))
        bundle.model.encode_text(bundle.tokenizer(["warm up"] * 2))
    return Bench(
        args=args,
        model=model,
        dim=bundle.embed_dim,
        size=size,
        work=work,
        parquet=write_inputs(work, args.n, size, unique=args.unique_images),
        policy=big_policy(work, args.prompts),
        weights=ReferenceWeights.write(model, work) if {"lancedb", "raydata"} & set(args.stages) else None,
        transform=bundle.preprocess,
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--image-size", nargs="+", default=list(IMAGE_SIZES), choices=list(IMAGE_SIZES))
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    parser.add_argument("--jpeg-decode", default="auto", choices=["auto", "tasks", "encoder"])
    parser.add_argument("--unique-images", type=int, help="generate this many images and repeat them to --n rows")
    parser.add_argument(
        "--ray-overhead", action=argparse.BooleanOptionalAction, default=True, help="time Ray Data's per-batch cost"
    )
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--name", default="throughput", help="results go to <out>/<name>.json and <name>.png")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # LanceDB's per-batch progress bars, throttled anyway: output only
    pretrained = None if args.model == "clipline-tiny" and args.pretrained == "bundled" else args.pretrained
    model = ModelConfig(arch=args.model, pretrained=pretrained, precision=args.precision)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="clipline-bench-"))
    ensure_ray(None)
    benches = [prepare(args, model, work, size) for size in args.image_size]
    cold = {}
    if "moderate" in args.stages:
        for bench in benches:
            cold[bench.size] = clipline_run(bench, bench.cold_db, False, bench.policy).timing.end_to_end
    rounds = [timed_round(benches, args.stages, index) for index in range(args.repeats)]
    results = {
        "command": "python -m benchmarks.throughput " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "model": args.model,
        "pretrained": model.weights_label,
        "precision": args.precision,
        "jpeg_decode": args.jpeg_decode,
        "n": args.n,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "prompts": args.prompts,
        "repeats": args.repeats,
        "machine": {
            "cpus": ray.cluster_resources().get("CPU"),
            "gpus": ray.cluster_resources().get("GPU", 0),
            "gpu_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "sizes": {},
        "ray_overhead_ms_per_batch": ray_overhead_per_batch(args.batch_size) * 1000 if args.ray_overhead else None,
    }
    for bench in benches:
        extra = {"moderate_cold": cold[bench.size]} if bench.size in cold else {}
        result = summarise_size(args, [r[bench.size] for r in rounds], extra)
        (min_w, max_w), (min_h, max_h) = IMAGE_SIZES[bench.size]
        result["image_size"] = (
            f"{min_w}x{min_h}" if (min_w, min_h) == (max_w, max_h) else f"{min_w}-{max_w} x {min_h}-{max_h}"
        )
        result["mean_jpeg_kb"] = mean_jpeg_kb(bench.parquet)
        results["sizes"][bench.size] = result
    (out / f"{args.name}.json").write_text(json.dumps(results, indent=2))
    plot(results, out / f"{args.name}.png")
    print_table(results)
    return results


if __name__ == "__main__":
    main()
