"""Search latency and recall at sizes beyond the test suite's 50k, with the index `maintain` plans.

    python -m benchmarks.search_latency [--rows 50000 500000] [--dim 512] [--queries 200] [--out DIR]

For each size and each data kind it builds a table of unit vectors, runs `maintain_table` (the
production index plan), then times single queries through `search_vector` with the planned probes
and with every partition probed, and the exhaustive path (`bypass_vector_index`) as the baseline.
Recall@10 is against numpy's exact top 10.

Two kinds of data, because they bracket what an index can do:
  uniform    random unit vectors: no neighbourhood structure, so recall is the fraction of the
             data the probes cover (the worst case, and the test suite's case);
  clustered  unit vectors around 2,000 random centres (cosine ~0.75 to their centre, like CLIP
             embeddings of a media library: many near-topics, few exact repeats).
Results print as a table and land in `search_latency.json` under `--out`.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa

from clipline.table.maintain import ProbeSettings, maintain_table, probe_settings, vector_index
from clipline.table.search import search_vector
from clipline.table.store import ClipTable

CENTRES = 2_000
CHUNK = 50_000


def unit_rows(rng: np.random.Generator, n: int, dim: int, kind: str, centres: np.ndarray | None) -> np.ndarray:
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    if kind == "clustered":
        vectors = centres[rng.integers(len(centres), size=n)] + vectors * (0.9 / np.sqrt(dim))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def build(uri: str, rows: int, dim: int, kind: str, seed: int):
    """The table, written in chunks (one fragment each, like a table after several runs)."""
    rng = np.random.default_rng(seed)
    centres = unit_rows(rng, CENTRES, dim, "uniform", None) if kind == "clustered" else None
    db = lancedb.connect(uri)
    chunks = []
    table = None
    for start in range(0, rows, CHUNK):
        vectors = unit_rows(rng, min(CHUNK, rows - start), dim, kind, centres)
        chunks.append(vectors)
        batch = pa.table(
            {
                "id": [f"r{i}" for i in range(start, start + len(vectors))],
                "status": ["ok"] * len(vectors),
                "image_embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
            }
        )
        table = db.create_table(kind, batch) if table is None else table
        if start:
            table.add(batch)
    return table, np.concatenate(chunks), centres, rng


def exact_top10(data: np.ndarray, queries: np.ndarray) -> np.ndarray:
    scores = queries @ data.T
    top = np.argpartition(-scores, 10, axis=1)[:, :10]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)


def measure(table, queries: np.ndarray, truth: np.ndarray, settings: ProbeSettings | None, exhaustive: bool) -> dict:
    latencies, recalls = [], []
    for query, expected in zip(queries, truth, strict=True):
        started = time.perf_counter()
        if exhaustive:
            found = (
                table.search(query, vector_column_name="image_embedding")
                .distance_type("cosine")
                .bypass_vector_index()
                .select(["id", "_distance"])
                .limit(10)
                .to_arrow()
            )
        else:
            found = search_vector(table, query, 10, columns=["id"], settings=settings)
        latencies.append(time.perf_counter() - started)
        ids = {int(value[1:]) for value in found.column("id").to_pylist()}
        recalls.append(len(ids & set(expected.tolist())) / 10)
    return {
        "recall_at_10": round(float(np.mean(recalls)), 4),
        "p50_ms": round(1000 * float(np.median(latencies)), 2),
        "p95_ms": round(1000 * float(np.percentile(latencies, 95)), 2),
    }


def bench(rows: int, dim: int, kind: str, n_queries: int, workdir: str) -> dict:
    started = time.perf_counter()
    table, data, centres, rng = build(f"{workdir}/{kind}-{rows}", rows, dim, kind, seed=rows)
    write_s = time.perf_counter() - started
    report = maintain_table(ClipTable(str(Path(table.uri).parent), table))
    queries = unit_rows(rng, n_queries, dim, kind, centres)
    truth = exact_top10(data, queries)
    planned = probe_settings(table)
    partitions = int(vector_index(table, "image_embedding").name.rsplit("_p", 1)[1])
    result = {
        "rows": rows,
        "dim": dim,
        "data": kind,
        "write_s": round(write_s, 1),
        "index": report.vector["image_embedding"],
        "index_build_s": report.build_s.get("image_embedding"),
        "maintain_s": round(report.wall_s, 1),
        "planned": {"nprobes": planned.nprobes, **measure(table, queries, truth, planned, False)},
    }
    if planned.nprobes is not None and planned.nprobes < partitions:
        everything = ProbeSettings(nprobes=partitions, refine_factor=planned.refine_factor)
        result["all_partitions"] = {"nprobes": partitions, **measure(table, queries, truth, everything, False)}
    flat_queries = max(10, n_queries // 10)  # the exhaustive path is slow; fewer queries suffice
    result["exhaustive"] = measure(table, queries[:flat_queries], truth[:flat_queries], None, True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[50_000, 500_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--data", nargs="+", default=["uniform", "clustered"], choices=["uniform", "clustered"])
    parser.add_argument("--out", default=".", help="directory for search_latency.json")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="clipline-search-bench-") as workdir:
        for rows in args.rows:
            for kind in args.data:
                result = bench(rows, args.dim, kind, args.queries, workdir)
                results.append(result)
                lines = [f"{rows:>9,} x {args.dim} {kind:<9} {result['index']}"]
                for mode in ("planned", "all_partitions", "exhaustive"):
                    if mode in result:
                        m = result[mode]
                        probes = f"nprobes {m['nprobes']:>4}" if "nprobes" in m else "no index   "
                        lines.append(
                            f"    {mode:<15} {probes}  recall@10 {m['recall_at_10']:.3f}  "
                            f"p50 {m['p50_ms']:7.1f} ms  p95 {m['p95_ms']:7.1f} ms"
                        )
                print("\n".join(lines), flush=True)
    out = Path(args.out) / "search_latency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version()}
    out.write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
