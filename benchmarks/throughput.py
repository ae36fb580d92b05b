"""Throughput harness: clipline against a bare open_clip loop, as ratios measured in one run.

    python -m benchmarks.throughput [--model ViT-B-32 --pretrained none] [--n 512] [--threads 2] [--repeats 3]

All stages run on the same generated JPEG parquet and the same model:
  (a) bare      Pillow decode + open_clip preprocess + encode_image in batches, no Ray, `--threads` threads
  (b) embed     the clipline pipeline, embedding only
  (c) moderate  the pipeline with a policy of >= `--prompts` prompts, its prompt embeddings already
                cached next to the table (a scheduled run's steady state); the first run with the
                policy, which encodes the prompts, is timed once as `moderate_cold`
  (d) write     LanceDB staging + one merge commit of the same number of rows, alone
plus Ray Data's overhead per batch through an actor pool that does nothing. Stages (a)-(d) run
`--repeats` rounds, interleaved so that a slow spell on a shared machine hits every stage; each
ratio is the median of its per-round ratios. Times are end to end for what a user waits on (model
loading and worker start included, Ray's own start excluded). Results go to a table on stdout,
`throughput.json` and `throughput.png` in `--out`.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
import yaml
from PIL import Image

from clipline.models.loader import load_clip
from clipline.operators.columns import embedding_array
from clipline.pipelines.plan import ensure_ray
from clipline.pipelines.run import commit_encoded, run_job
from clipline.pipelines.summary import RunOptions
from clipline.schemas.config import JobConfig, ModelConfig
from clipline.schemas.table import output_schema
from clipline.table.store import ClipTable, Sidecars


def photo_like(rng: np.random.Generator) -> Image.Image:
    """A smooth gradient with blobs and sensor noise at a camera-ish size: JPEG sizes like real uploads."""
    width, height = int(rng.integers(480, 1024)), int(rng.integers(360, 768))
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
    for _ in range(4):
        cx, cy, radius = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(30, 200)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))[..., None]
        base = base * (1 - blob) + rng.uniform(0, 255, 3) * blob
    base += rng.normal(0, 6, base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def write_inputs(directory: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        buffer = io.BytesIO()
        photo_like(rng).save(buffer, format="JPEG", quality=85)
        images.append(buffer.getvalue())
    path = directory / "in" / "images.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = [f"img-{i}" for i in range(n)]
    pq.write_table(pa.table({"id": ids, "image": pa.array(images, pa.binary())}), path, row_group_size=64)
    return path


def big_policy(directory: Path, prompts: int) -> Path:
    """A policy with at least `prompts` prompts (templates not counted), for the moderation cost."""
    per_category = 10
    categories = [
        {
            "name": f"c{i}",
            "positive": [f"concept {i} variant {j}" for j in range(per_category // 2)],
            "negative": [f"other thing {i} variant {j}" for j in range(per_category // 2)],
            "review_threshold": 0.5,
            "block_threshold": 0.9,
        }
        for i in range(-(-prompts // per_category))
    ]
    path = directory / "policy.yaml"
    path.write_text(yaml.safe_dump({"name": "bench", "version": "1", "categories": categories}))
    return path


def bare_loop(model: ModelConfig, parquet: Path, batch_size: int, threads: int) -> tuple[float, float]:
    """The reference: what a careful engineer writes without a pipeline.

    Returns (seconds with the model load, seconds of the loop alone).
    """
    torch.set_num_threads(threads)
    images = pq.read_table(parquet, columns=["image"]).column("image").to_pylist()
    started = time.perf_counter()
    bundle = load_clip(model)
    loop_started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = [
                bundle.preprocess(Image.open(io.BytesIO(data)).convert("RGB"))
                for data in images[start : start + batch_size]
            ]
            features = bundle.model.encode_image(torch.stack(batch))
            torch.nn.functional.normalize(features, dim=-1)
    finished = time.perf_counter()
    return finished - started, finished - loop_started


def pipeline_run(
    model: ModelConfig,
    parquet: Path,
    db: Path,
    policy: Path | None,
    batch_size: int,
    threads: int,
    prompt_banks_from: Path | None = None,
) -> tuple[float, float]:
    """One run into a new table; `prompt_banks_from` is a database whose cached prompt embeddings it starts with.

    Returns (seconds end to end, seconds of the encoder stage from its first batch to its last,
    as Ray Data recorded it: the steady state, without worker start-up).
    """
    if prompt_banks_from is not None:
        shutil.copytree(Sidecars(str(prompt_banks_from)).prompt_banks, Sidecars(str(db)).prompt_banks)
    config = JobConfig.model_validate(
        {
            "source": {"paths": [str(parquet)]},
            "model": model.model_dump(exclude_none=True),
            "policy": str(policy) if policy else None,
            "sink": {"uri": str(db)},
            "resources": {"batch_size": batch_size, "torch_threads": threads},
        }
    )
    started = time.perf_counter()
    summary = run_job(config, RunOptions(full=True))
    elapsed = time.perf_counter() - started
    assert summary.rows_in == summary.ok, summary
    encoder = next(stage for stage in summary.stages if "EncodeClassifyActor" in stage["name"])
    return elapsed, encoder["wall_s"]


@dataclass(frozen=True)
class Bench:
    """What every round shares: the model, the generated inputs, and where the tables go."""

    model: ModelConfig
    dim: int
    work: Path
    parquet: Path
    policy: Path

    @property
    def cold_db(self) -> Path:
        """The first moderation run's database: its prompt cache seeds every later moderation run."""
        return self.work / "db-moderate-cold"


def timed_round(args: argparse.Namespace, bench: Bench, index: int) -> dict:
    """(a)-(d) once: end-to-end seconds per stage, and `<stage>_steady` without start-up."""
    model, parquet, work = bench.model, bench.parquet, bench.work
    run = {"batch_size": args.batch_size, "threads": args.threads}
    seconds = {}
    seconds["bare"], seconds["bare_steady"] = bare_loop(model, parquet, args.batch_size, args.threads)
    seconds["embed"], seconds["embed_steady"] = pipeline_run(model, parquet, work / f"db-embed-{index}", None, **run)
    seconds["moderate"], seconds["moderate_steady"] = pipeline_run(
        model, parquet, work / f"db-moderate-{index}", bench.policy, **run, prompt_banks_from=bench.cold_db
    )
    seconds["write"] = lance_write_only(work / f"db-write-{index}", args.n, bench.dim, model)
    return seconds


def lance_write_only(db: Path, n: int, dim: int, model: ModelConfig) -> float:
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
    return time.perf_counter() - started


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


def plot(results: dict, path: Path) -> None:
    """Img/s per stage, end to end and in the steady state, each round a dot behind its median bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = {
        "bare": ("(a) bare loop", "#888"),
        "embed": ("(b) pipeline\nembed only", "#3b7dd8"),
        "moderate": ("(c) pipeline\n+ moderation", "#d8893b"),
        "moderate_cold": ("(c) first run,\nprompts encoded", "#e8c39b"),
    }
    figure, axis = plt.subplots(figsize=(8, 4))
    width = 0.38
    for offset, suffix, hatch, label in ((-width / 2, "", None, "end to end"), (width / 2, "_steady", "//", "steady")):
        names = [stage for stage in stages if f"{stage}{suffix}" in results["img_per_s"]]
        positions = [list(stages).index(stage) + offset for stage in names]
        bars = axis.bar(
            positions,
            [results["img_per_s"][f"{stage}{suffix}"] for stage in names],
            width=width,
            color=[stages[stage][1] for stage in names],
            hatch=hatch,
            edgecolor="white",
            label=label,
        )
        axis.bar_label(bars, fmt="%.1f", fontsize="small")
        for position, stage in zip(positions, names, strict=True):
            rounds = [results["n"] / r[f"{stage}{suffix}"] for r in results["rounds"] if f"{stage}{suffix}" in r]
            axis.plot([position] * len(rounds), rounds, "k.", markersize=4)
    axis.set_xticks(range(len(stages)), [label for label, _ in stages.values()])
    axis.set_ylabel("images / s")
    axis.legend(loc="upper right", fontsize="small")
    axis.set_title(
        f"{results['model']} on {results['machine']['cpus']:g} CPUs, n={results['n']}, "
        f"median of {results['repeats']} rounds (dots: each round)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def summarise(
    args: argparse.Namespace, model: ModelConfig, rounds: list[dict], moderate_cold: float, overhead: float
) -> dict:
    """Medians over rounds; each ratio is the median of its per-round ratios (paired, so drift cancels)."""
    per_round_ratios = {
        "pipeline_over_bare": [r["bare"] / r["embed"] for r in rounds],
        "moderation_over_embedding": [r["embed"] / r["moderate"] for r in rounds],
        "pipeline_over_bare_steady": [r["bare_steady"] / r["embed_steady"] for r in rounds],
        "moderation_over_embedding_steady": [r["embed_steady"] / r["moderate_steady"] for r in rounds],
    }
    seconds = {stage: statistics.median(r[stage] for r in rounds) for stage in rounds[0]}
    seconds["moderate_cold"] = moderate_cold
    return {
        "model": args.model,
        "pretrained": model.weights_label,
        "n": args.n,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "prompts": args.prompts,
        "repeats": args.repeats,
        "machine": {
            "cpus": ray.cluster_resources().get("CPU"),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "seconds": seconds,
        "rounds": rounds,
        "img_per_s": {stage: args.n / secs for stage, secs in seconds.items() if stage != "write"},
        "startup_s": {
            stage: statistics.median(r[stage] - r[f"{stage}_steady"] for r in rounds)
            for stage in ("bare", "embed", "moderate")
        },
        "ratios": {name: statistics.median(values) for name, values in per_round_ratios.items()},
        "ratios_per_round": per_round_ratios,
        "lance_write_share_of_pipeline": statistics.median(r["write"] / r["embed"] for r in rounds),
        "ray_overhead_ms_per_batch": overhead * 1000,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of (a)-(d); medians are reported")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    model = ModelConfig(arch=args.model, pretrained=args.pretrained)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="clipline-bench-"))
    ensure_ray(None)
    bench = Bench(model, load_clip(model).embed_dim, work, write_inputs(work, args.n), big_policy(work, args.prompts))
    moderate_cold, _ = pipeline_run(model, bench.parquet, bench.cold_db, bench.policy, args.batch_size, args.threads)
    rounds = [timed_round(args, bench, index) for index in range(args.repeats)]
    results = summarise(args, model, rounds, moderate_cold, ray_overhead_per_batch(args.batch_size))
    (out / "throughput.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "throughput.png")
    print_table(results)
    return results


def print_table(results: dict) -> None:
    setup = f"n={results['n']}, batch {results['batch_size']}, {results['threads']} threads"
    print(f"\n{results['model']} ({results['pretrained']}), {setup}, medians of {results['repeats']} rounds")
    print(f"  {'':<36} {'end to end':>16} {'steady state':>14} {'start-up':>9}")
    rates, seconds = results["img_per_s"], results["seconds"]
    for stage, label in (
        ("bare", "(a) bare open_clip loop"),
        ("embed", "(b) pipeline, embedding only"),
        ("moderate", f"(c) pipeline + {results['prompts']}-prompt policy"),
        ("moderate_cold", "    (c) first run, prompts encoded"),
    ):
        line = f"  {label:<36} {rates[stage]:6.2f} img/s {seconds[stage]:5.1f} s"
        if f"{stage}_steady" in rates:
            line += f" {rates[f'{stage}_steady']:8.2f} img/s {results['startup_s'][stage]:6.1f} s"
        print(line)
    print(f"  {'(d) Lance write only':<36} {seconds['write']:16.2f} s")
    ratios, per_round = results["ratios"], results["ratios_per_round"]
    labels = {
        "pipeline_over_bare": "pipeline / bare",
        "pipeline_over_bare_steady": "  steady state",
        "moderation_over_embedding": "moderation / embedding",
        "moderation_over_embedding_steady": "  steady state",
    }
    for name, label in labels.items():
        rounds = ", ".join(f"{value:.3f}" for value in per_round[name])
        print(f"  {label:<24} {ratios[name]:.3f}   (rounds: {rounds})")
    print(f"  Lance write share        {results['lance_write_share_of_pipeline']:.3f}")
    print(f"  Ray overhead per batch   {results['ray_overhead_ms_per_batch']:.1f} ms (no-op actor)")


if __name__ == "__main__":
    main()
