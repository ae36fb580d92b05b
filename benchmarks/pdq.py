"""PDQ harness: what a hash costs per image, which edited copies match a list, false matches, list speed.

    python -m benchmarks.pdq [--images 64] [--robustness 200] [--unrelated 1000] [--list-size 1000000]

  cost        per image, on the throughput harness's camera-sized JPEGs (480-1023 px): decode (the
              pipeline's `decode_frame`), PDQ of the decoded whole frame (`PdqHash`), and CLIP encode
              (batches of 32, `--threads` torch threads) with the tiny model and a random-init
              ViT-B-32. The figure that matters: PDQ / (decode + encode), target <= 5 %.
  robustness  shapes-world images at 256 px with PDQ quality >= 50, each on a list; the share of
              edited copies (JPEG q60, 50 % resize, crops, mirror) whose hash is within 31 bits of
              their original's entry, with plain and with dihedral matching.
  unrelated   `--unrelated` generated images (no two alike): every pair within 31 bits is a false
              match (plain, and with dihedral matching: any rotation or mirror of one near the other).
  list        a `--list-size`-line list file: load (read, parse, index) and match rate per actor
              (rows per CPU-second through `PolicyHashLists.match`, batches of 64 rows).

Prints a table and writes `pdq.json` under `--out` (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml
from PIL import Image, ImageOps

from benchmarks.inputs import camera_jpegs
from clipline.demo.shapes import COLOURS, SHAPES, render
from clipline.operators.hamming import cross_distances, dihedral_words, hex_to_words
from clipline.operators.hash_lists import HashList, PolicyHashLists
from clipline.operators.pdq import MIN_QUALITY, PdqHash, pdq_of_image
from clipline.schemas.config import ModelConfig
from clipline.schemas.policy import load_policy

MAX_DISTANCE = 31
Edit = Callable[[Image.Image], Image.Image]


# --------------------------------------------------------------------------- images and edits
def shape_image(seed: int, size: int = 256) -> Image.Image:
    """One shapes-world picture; the seed decides shape, colour, background and placement."""
    rng = np.random.default_rng(seed)
    return render(SHAPES[int(rng.integers(len(SHAPES)))], COLOURS[int(rng.integers(len(COLOURS)))], rng, size=size)


def hashable_shapes(count: int, first_seed: int = 0, size: int = 256) -> list[Image.Image]:
    """`count` shapes images whose PDQ quality is at least MIN_QUALITY (about 4 in 5 are)."""
    images, seed = [], first_seed
    while len(images) < count:
        image = shape_image(seed, size)
        if pdq_of_image(image)[1] >= MIN_QUALITY:
            images.append(image)
        seed += 1
    return images


def jpeg(image: Image.Image, quality: int = 60) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def resized(image: Image.Image, factor: float = 0.5) -> Image.Image:
    return image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.BICUBIC)


def crop_each_side(fraction: float) -> Edit:
    def edit(image: Image.Image) -> Image.Image:
        dx, dy = round(image.width * fraction), round(image.height * fraction)
        return image.crop((dx, dy, image.width - dx, image.height - dy))

    return edit


def crop_one_side(fraction: float) -> Edit:
    """Removes `fraction` of the width from the left edge."""

    def edit(image: Image.Image) -> Image.Image:
        return image.crop((round(image.width * fraction), 0, image.width, image.height))

    return edit


EDITS: dict[str, Edit] = {
    "jpeg_q60": jpeg,
    "resize_50pct": resized,
    "crop_0.5pct_each_side": crop_each_side(0.005),
    "crop_1pct_each_side": crop_each_side(0.01),
    "crop_2.5pct_each_side": crop_each_side(0.025),
    "crop_5pct_each_side": crop_each_side(0.05),
    "crop_1pct_one_side": crop_one_side(0.01),
    "crop_5pct_one_side": crop_one_side(0.05),
    "mirror": ImageOps.mirror,
}


# --------------------------------------------------------------------------- robustness, false matches
def listed_matches(originals: list[Image.Image], copies: list[Image.Image], dihedral: bool) -> dict:
    """Share of copies whose nearest list entry within MAX_DISTANCE is their own original's."""
    hash_list = HashList(
        hex_to_words([pdq_of_image(image)[0] for image in originals]), [str(i) for i in range(len(originals))]
    )
    queries = hex_to_words([pdq_of_image(image)[0] for image in copies])
    found = hash_list.nearest(queries, MAX_DISTANCE, dihedral)
    own = sum(match is not None and match.label == str(i) for i, match in enumerate(found))
    other = sum(match is not None and match.label != str(i) for i, match in enumerate(found))
    return {"matched": own / len(copies), "matched_another_entry": other / len(copies)}


def robustness(count: int) -> dict:
    originals = hashable_shapes(count)
    results = {}
    for name, edit in EDITS.items():
        copies = [edit(image) for image in originals]
        results[name] = {
            "plain": listed_matches(originals, copies, False),
            "dihedral": listed_matches(originals, copies, True),
        }
    return {"images": count, "size_px": 256, "max_distance": MAX_DISTANCE, "edits": results}


def false_matches(count: int) -> dict:
    """Pairs of unrelated images within MAX_DISTANCE (each image is another seed of the shapes world)."""
    hashed = [pdq_of_image(shape_image(1_000_000 + seed)) for seed in range(count)]
    words = hex_to_words([digest for digest, _ in hashed])
    upper = np.triu_indices(count, 1)
    plain = cross_distances(words, words)[upper]
    # with dihedral matching, i matches j when any rotation or mirror of i is near j (or of j near i)
    nearest = np.min([cross_distances(variant, words) for variant in dihedral_words(words)], axis=0)
    dihedral = np.minimum(nearest, nearest.T)[upper]
    quality = np.array([q for _, q in hashed]) >= MIN_QUALITY
    both_good = (quality[:, None] & quality[None, :])[upper]
    return {
        "images": count,
        "share_quality_at_least_50": float(quality.mean()),
        "pairs": len(plain),
        "plain_within_31": int((plain <= MAX_DISTANCE).sum()),
        "plain_closest_bits": int(plain.min()),
        "dihedral_within_31": int((dihedral <= MAX_DISTANCE).sum()),
        "dihedral_within_31_both_quality_50": int(((dihedral <= MAX_DISTANCE) & both_good).sum()),
        "dihedral_closest_bits": int(dihedral.min()),
    }


# --------------------------------------------------------------------------- cost per image
@dataclass
class Stopwatch:
    """CPU seconds of this process (all threads) and wall seconds, summed over the blocks it times."""

    cpu: float = 0.0
    wall: float = 0.0

    @contextmanager
    def timing(self) -> Iterator[None]:
        cpu, wall = time.process_time(), time.perf_counter()
        yield
        self.cpu += time.process_time() - cpu
        self.wall += time.perf_counter() - wall

    def per_item_ms(self, count: int) -> dict[str, float]:
        return {"cpu_ms": 1000 * self.cpu / count, "wall_ms": 1000 * self.wall / count}


def model_cost(model: ModelConfig, jpegs: list[bytes], batch_size: int) -> dict:
    """Per-image ms of decode, PDQ of the decoded frame and encode with one model."""
    from clipline.models.loader import load_clip
    from clipline.models.zero_shot import encode_pixels
    from clipline.operators.decode import decode_frame

    bundle = load_clip(model)
    extra = PdqHash()
    decode, pdq, encode = Stopwatch(), Stopwatch(), Stopwatch()
    pixels = []
    for data in jpegs:
        with decode.timing():
            decoded = decode_frame(data, bundle.image_size, 10**9)
        with pdq.timing():
            extra(decoded.frame)
        pixels.append(decoded.pixels)
    encode_pixels(bundle, np.stack(pixels[:2]))  # warm-up: first-call allocations
    for start in range(0, len(pixels), batch_size):
        with encode.timing():
            encode_pixels(bundle, np.stack(pixels[start : start + batch_size]))
    steps = {
        name: watch.per_item_ms(len(jpegs)) for name, watch in (("decode", decode), ("pdq", pdq), ("encode", encode))
    }
    shares = {
        f"pdq_share_{kind}": steps["pdq"][f"{kind}_ms"]
        / (steps["decode"][f"{kind}_ms"] + steps["encode"][f"{kind}_ms"])
        for kind in ("cpu", "wall")
    }
    return {**steps, **shares}


def cost(count: int, threads: int, batch_size: int = 32) -> dict:
    """Per-image milliseconds (CPU and wall) of decode, PDQ and encode, for the tiny model and ViT-B-32."""
    import torch

    torch.set_num_threads(threads)
    jpegs = camera_jpegs(count)
    models = {"clipline-tiny": ModelConfig(), "ViT-B-32 random init": ModelConfig(arch="ViT-B-32", pretrained="none")}
    results = {label: model_cost(model, jpegs, batch_size) for label, model in models.items()}
    return {"images": count, "torch_threads": threads, "batch_size": batch_size, "models": results}


# --------------------------------------------------------------------------- list load and match speed
def list_entries(size: int, bases: np.ndarray, seed: int = 1) -> np.ndarray:
    """`size` list hashes: each a real image hash with 20-60 random bits flipped, so entries share the
    bit biases and neighbourhoods of real PDQ hashes (harder for the index than uniform random)."""
    rng = np.random.default_rng(seed)
    bits = np.unpackbits(bases.astype(">u8").view(np.uint8).reshape(-1, 32), axis=1)
    chosen = bits[rng.integers(len(bases), size=size)]
    flips = rng.random((size, 256)) < rng.uniform(20, 60, size=(size, 1)) / 256
    return np.packbits(chosen ^ flips, axis=1).view(">u8").astype(np.uint64)


def write_list(path: Path, words: np.ndarray) -> None:
    raw = words.astype(">u8").tobytes().hex()
    with path.open("w") as handle:
        handle.write("hash,label\n")
        for index in range(len(words)):
            handle.write(f"{raw[64 * index : 64 * (index + 1)]},label-{index % 97}\n")


def query_batches(queries: list[str], batch_rows: int) -> list[pa.Table]:
    return [
        pa.table(
            {
                "status": ["ok"] * len(part),
                "pdq_hash": pa.array(part, pa.string()),
                "pdq_quality": pa.array([100] * len(part), pa.int32()),
            }
        )
        for part in (queries[start : start + batch_rows] for start in range(0, len(queries), batch_rows))
    ]


def list_speed(size: int, queries: int, repeats: int, batch_rows: int = 64) -> dict:
    """Load a `size`-line list as a run does (policy check, then per actor) and match query rows against it."""
    bases = hashable_shapes(1000, first_seed=2_000_000)
    hashes = [pdq_of_image(image)[0] for image in bases]
    words = list_entries(size, hex_to_words(hashes))
    stream = [pdq_of_image(shape_image(3_000_000 + seed))[0] for seed in range(queries)]
    results: dict = {"entries": size, "queries": queries, "batch_rows": batch_rows}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_list(root / "list.csv", words)
        results["file_mib"] = (root / "list.csv").stat().st_size / 2**20
        for dihedral in (False, True):
            spec = {"name": "big", "uri": "list.csv", "action": "block", "dihedral": dihedral}
            (root / "policy.yaml").write_text(
                yaml.safe_dump(
                    {
                        "name": "bench",
                        "version": "1",
                        "categories": [{"name": "x", "positive": ["x"], "negative": ["y"], "review_threshold": 0.5}],
                        "hash_lists": [spec],
                    }
                )
            )
            check, load = Stopwatch(), Stopwatch()
            with check.timing():
                policy = load_policy(root / "policy.yaml")
            with load.timing():
                lists = PolicyHashLists.load(policy)
            batches = query_batches(stream, batch_rows)
            rates = []
            for _ in range(repeats):
                matching = Stopwatch()
                with matching.timing():
                    matched = [lists.match(batch) for batch in batches]
                rates.append((queries / matching.cpu, queries / matching.wall))
            results["dihedral" if dihedral else "plain"] = {
                "policy_check_s": {"cpu": check.cpu, "wall": check.wall},
                "actor_load_s": {"cpu": load.cpu, "wall": load.wall},
                "index_mib": lists.lists[0][1].index.nbytes / 2**20,
                "rows_per_cpu_s": statistics.median(rate for rate, _ in rates),
                "rows_per_wall_s": statistics.median(rate for _, rate in rates),
                "rows_matched": sum(row is not None for batch in matched for row in batch),
            }
    return results


# --------------------------------------------------------------------------- main
def summary_lines(results: dict) -> list[str]:
    lines = ["cost per image (ms, CPU / wall)   decode          pdq             encode          pdq share (CPU / wall)"]
    for model, row in results["cost"]["models"].items():
        cells = "  ".join(f"{row[s]['cpu_ms']:6.1f} / {row[s]['wall_ms']:6.1f}" for s in ("decode", "pdq", "encode"))
        lines.append(
            f"  {model:<30} {cells}   {100 * row['pdq_share_cpu']:.1f} % / {100 * row['pdq_share_wall']:.1f} %"
        )
    robust = results["robustness"]
    lines.append(
        f"edited copies matching their entry within {MAX_DISTANCE} bits "
        f"({robust['images']} images, quality >= 50): plain / dihedral"
    )
    for edit, row in robust["edits"].items():
        lines.append(f"  {edit:<24} {100 * row['plain']['matched']:5.1f} %  {100 * row['dihedral']['matched']:5.1f} %")
    unrelated = results["unrelated"]
    lines.append(
        f"unrelated images: {unrelated['images']} ({unrelated['pairs']} pairs); within {MAX_DISTANCE} bits: "
        f"plain {unrelated['plain_within_31']} (closest {unrelated['plain_closest_bits']} bits), "
        f"dihedral {unrelated['dihedral_within_31']} (closest {unrelated['dihedral_closest_bits']} bits)"
    )
    speed = results["list"]
    for mode in ("plain", "dihedral"):
        row = speed[mode]
        lines.append(
            f"{speed['entries']:,}-entry list, {mode}: policy check {row['policy_check_s']['wall']:.1f} s, actor load "
            f"{row['actor_load_s']['wall']:.1f} s, index {row['index_mib']:.0f} MiB, "
            f"{row['rows_per_cpu_s']:,.0f} rows per CPU-s ({row['rows_per_wall_s']:,.0f} per wall-s)"
        )
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pdq", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64, help="camera-sized JPEGs for the cost per image")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for encoding")
    parser.add_argument("--robustness", type=int, default=200, help="list images for the edited-copy match rates")
    parser.add_argument("--unrelated", type=int, default=1000, help="unrelated images for the false-match count")
    parser.add_argument("--list-size", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=5000, help="rows matched against the list")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    machine["load_average_at_start"] = os.getloadavg()  # a shared machine: wall figures depend on it
    results = {
        "machine": machine,
        "cost": cost(args.images, args.threads),
        "robustness": robustness(args.robustness),
        "unrelated": false_matches(args.unrelated),
        "list": list_speed(args.list_size, args.queries, args.repeats),
    }
    machine["load_average_at_end"] = os.getloadavg()
    print("\n".join(summary_lines(results)))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pdq.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
