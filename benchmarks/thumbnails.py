"""What the `thumbnail` column costs: bytes per row, and decode time added per image.

    python -m benchmarks.thumbnails [--n 200] [--repeats 5]

Decodes the same images with the run's decode stage (ViT-B-32's 224 px input) without and with the
thumbnail extra, in interleaved rounds, on camera-sized JPEGs (480-1024 px, quality 85, as
`benchmarks/throughput.py` makes them) and on the demo's drawings (96-256 px, PNG and JPEG). The
time added is the median over rounds of the difference per image; the whole frame the thumbnail is
made from is computed by decode either way.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from benchmarks.inputs import camera_jpegs
from clipline.demo.demo import demo_rows
from clipline.operators.decode import DecodeImages
from clipline.operators.thumbnail import FrameThumbnail

IMAGE_SIZE = 224
LIMIT = 10**8


def demo_images(n: int) -> list[bytes]:
    with tempfile.TemporaryDirectory() as work:
        return [row["image"] for row in demo_rows(Path(work)) if row.get("kind") == "image"][:n]


def decode_seconds(images: list[bytes], thumbnails: bool) -> tuple[float, pa.Table]:
    batch = pa.table({"image": pa.array(images, pa.binary())})
    stage = DecodeImages(IMAGE_SIZE, LIMIT, LIMIT, extras=[FrameThumbnail()] if thumbnails else [])
    started = time.perf_counter()
    out = stage(batch)
    return time.perf_counter() - started, out


def measure(name: str, images: list[bytes], repeats: int) -> dict:
    plain, with_thumbnails, added = [], [], []
    out = None
    for _ in range(repeats):
        without, _ = decode_seconds(images, thumbnails=False)
        with_, out = decode_seconds(images, thumbnails=True)
        plain.append(without / len(images) * 1000)
        with_thumbnails.append(with_ / len(images) * 1000)
        added.append((with_ - without) / len(images) * 1000)
    sizes = [len(value) for value in out.column("thumbnail").to_pylist()]
    input_kb = statistics.fmean(len(image) for image in images) / 1024
    return {
        "images": len(images),
        "input_kb_mean": round(input_kb, 1),
        "thumbnail_bytes": {
            "mean": round(statistics.fmean(sizes)),
            "median": round(statistics.median(sizes)),
            "p95": sorted(sizes)[int(0.95 * (len(sizes) - 1))],
            "max": max(sizes),
        },
        "decode_ms_per_image": round(statistics.median(plain), 2),
        "with_thumbnail_ms_per_image": round(statistics.median(with_thumbnails), 2),
        "added_ms_per_image": round(statistics.median(added), 2),
        "added_fraction_of_decode": round(statistics.median(added) / statistics.median(plain), 3),
        "name": name,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.thumbnails", description=__doc__)
    parser.add_argument("--n", type=int, default=200, help="images per set")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results", help="where thumbnails.json goes")
    args = parser.parse_args(argv)
    results = [
        measure("camera-sized JPEG", camera_jpegs(args.n), args.repeats),
        measure("demo drawings", demo_images(args.n), args.repeats),
    ]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "thumbnails.json").write_text(json.dumps(results, indent=2))
    print(f"{'images':<20} {'input KB':>9} {'thumb B mean/p95':>17} {'decode ms':>10} {'+thumb ms':>10} {'added':>7}")
    for item in results:
        sizes, share = item["thumbnail_bytes"], item["added_fraction_of_decode"]
        print(
            f"{item['name']:<20} {item['input_kb_mean']:>9} {sizes['mean']:>8}/{sizes['p95']:<8} "
            f"{item['decode_ms_per_image']:>10} {item['added_ms_per_image']:>10} {share:>7.1%}"
        )
    return {"sets": results}


if __name__ == "__main__":
    main()
