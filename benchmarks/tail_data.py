"""Post-encode rows with planted duplicates, for the tail benchmark: deterministic, block by block.

Kept free of clipline imports so the same rows can be fed to another version of the code (the
benchmark's baseline runs the previous release's driver path on them).

Embeddings look like CLIP's in the way that matters to dedup: clustered on the unit sphere
(1,000 centres; unrelated rows of one cluster have cosine ~0.5, far below any threshold). Each
block has `dup_fraction` planted duplicates: half exact (the same bytes: same content hash and
vector), half near (a random direction added so the cosine to the original is 0.96–0.99, like a
resized or re-encoded copy). With `history_blocks`, a block's duplicates copy originals of a
history block (rows committed by an earlier run) half of the time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray

DIM = 512
CENTRES = 1000
NEAR_COSINE = (0.96, 0.99)


@dataclass(frozen=True)
class Spec:
    """Which rows one block holds: run `run` (0 = history), block `block` of `size` rows."""

    seed: int
    run: int
    block: int
    size: int
    dup_fraction: float
    history_blocks: int  # blocks of history the duplicates may copy (0: none)


def centres(seed: int) -> np.ndarray:
    matrix = np.random.default_rng([seed, 0]).standard_normal((CENTRES, DIM)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def unit(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


def originals(spec: Spec) -> tuple[np.ndarray, int]:
    """The block's original vectors and how many there are (the rest of the block are copies)."""
    count = spec.size - round(spec.size * spec.dup_fraction)
    rng = np.random.default_rng([spec.seed, spec.run, spec.block, 1])
    clusters = rng.integers(CENTRES, size=count)
    noise = rng.standard_normal((count, DIM)).astype(np.float32) / np.sqrt(DIM)
    return unit(centres(spec.seed)[clusters] + noise), count


def row_id(run: int, block: int, index: int) -> str:
    """A content-hash-shaped id (64 hex), unique per (run, block, row)."""
    return f"{run:016x}{block:016x}{index:016x}{0:016x}"


def planted(spec: Spec) -> tuple[list[tuple[int, int, int]], list[bool], np.ndarray]:
    """For each copy: (run, block, index) of its original, whether it is exact, and the near cosines."""
    _, count = originals(spec)
    copies = spec.size - count
    rng = np.random.default_rng([spec.seed, spec.run, spec.block, 2])
    from_history = spec.history_blocks > 0 and spec.run > 0
    targets = []
    for _ in range(copies):
        if from_history and rng.random() < 0.5:
            block = int(rng.integers(spec.history_blocks))
            targets.append((0, block, int(rng.integers(count))))
        else:
            targets.append((spec.run, spec.block, int(rng.integers(count))))
    exact = [index % 2 == 0 for index in range(copies)]
    cosines = rng.uniform(*NEAR_COSINE, size=copies)
    return targets, exact, cosines


def block_rows(spec: Spec) -> pa.Table:
    """The block as post-encode rows: id, content hash, source, status, image embedding, decision."""
    vectors, count = originals(spec)
    targets, exact, cosines = planted(spec)
    cache: dict[tuple[int, int], np.ndarray] = {(spec.run, spec.block): vectors}
    ids = [row_id(spec.run, spec.block, index) for index in range(count)]
    rows = [vectors]
    rng = np.random.default_rng([spec.seed, spec.run, spec.block, 3])
    for index, ((run, block, original), same, cosine) in enumerate(zip(targets, exact, cosines, strict=True)):
        if (run, block) not in cache:
            cache[(run, block)] = originals(Spec(spec.seed, run, block, spec.size, spec.dup_fraction, 0))[0]
        source = cache[(run, block)][original]
        if same:
            copy = source
        else:
            direction = unit(rng.standard_normal((1, DIM)).astype(np.float32))[0]
            direction -= (direction @ source) * source
            direction /= np.linalg.norm(direction)
            copy = source * cosine + direction * np.sqrt(1 - cosine**2)
        rows.append(copy[None, :])
        ids.append(row_id(run, block, original) if same else row_id(spec.run, spec.block, count + index))
    matrix = np.concatenate(rows).astype(np.float32)
    return pa.table(
        {
            "id": ids,
            "content_sha256": ids,
            "source": [f"bench-{spec.run}-{spec.block:05d}.parquet#{index}" for index in range(spec.size)],
            "status": ["ok"] * spec.size,
            "image_embedding": pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), DIM),
            "decision": ["allow"] * spec.size,
        }
    )


def specs(rows: int, run: int, block_rows_: int, dup_fraction: float, history_blocks: int, seed: int) -> list[Spec]:
    """One run's blocks of `block_rows_` rows (the last one shorter): what the writer tasks get."""
    blocks = max(1, -(-rows // block_rows_))
    sizes = [block_rows_] * (blocks - 1) + [rows - block_rows_ * (blocks - 1)]
    return [Spec(seed, run, block, size, dup_fraction, history_blocks) for block, size in enumerate(sizes)]


@ray.remote
def generate_block(spec: Spec) -> pa.Table:
    """A block's rows, made by a task: they stand for encoder output in the object store."""
    return block_rows(spec)


def truth(spec: Spec) -> tuple[list[str], list[str]]:
    """(source, planted group) of every row of the block: a copy's group is its original's id."""
    _, count = originals(spec)
    targets, _, _ = planted(spec)
    groups = [row_id(spec.run, spec.block, index) for index in range(count)]
    groups += [row_id(run, block, original) for run, block, original in targets]
    sources = [f"bench-{spec.run}-{spec.block:05d}.parquet#{index}" for index in range(spec.size)]
    return sources, groups


def own_peak_rss_mb() -> float:
    """This process's peak RSS since it started (VmHWM). Not `ru_maxrss`: Linux carries that over
    from the parent through fork and exec, so a driver started by a large parent would report the
    parent's peak."""
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key == "VmHWM":
                return round(int(value.split()[0]) / 1024, 1)
    raise RuntimeError("no VmHWM in /proc/self/status")
