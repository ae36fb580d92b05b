"""Dedup buckets: each image row's nearest and second-nearest centroid, one matmul per batch.

Near-duplicate search compares a row only with rows of the same bucket (spherical k-means
centroids over image embeddings, fitted once per table and model; see `pipelines/dedup.py`), so
dedup costs time linear in the number of rows instead of quadratic. The second-nearest bucket is
searched too: a near copy sitting just across a bucket border is still found.

Runs in the encoder actor right after encoding, while the embeddings are in memory; rows without
an image embedding get null buckets.
"""

from __future__ import annotations

import io

import fsspec
import numpy as np
import pyarrow as pa

from clipline.operators.base import STATEFUL, Resources, WorkerState
from clipline.operators.columns import embedding_matrix, set_column
from clipline.schemas.storage import StorageConfig

BUCKET_BLOCK = 8192  # rows per matmul block: bounds memory for any number of centroids


def load_centroids(uri: str, storage: StorageConfig) -> np.ndarray:
    """(K, D) float32 unit vectors from an `.npy` file (local or s3)."""
    with fsspec.open(uri, "rb", **storage.fsspec_options(uri)) as handle:
        return np.load(io.BytesIO(handle.read()), allow_pickle=False).astype(np.float32, copy=False)


def nearest_two(vectors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the nearest and second-nearest centroid (by cosine) of each unit row vector.

    With a single centroid the second is the first: every row is in bucket 0 either way. Two
    `argmax` passes, not `argpartition`: ten times faster on (rows, 2,000 centroids), and this runs
    for every image row (in the encoder, in the tail, and in every k-means iteration).
    """
    first = np.empty(len(vectors), dtype=np.int32)
    second = np.empty(len(vectors), dtype=np.int32)
    for start in range(0, len(vectors), BUCKET_BLOCK):
        sims = vectors[start : start + BUCKET_BLOCK] @ centroids.T
        if centroids.shape[0] == 1:
            first[start : start + len(sims)] = second[start : start + len(sims)] = 0
            continue
        rows = np.arange(len(sims))
        nearest = sims.argmax(axis=1)
        sims[rows, nearest] = -np.inf
        first[start : start + len(sims)], second[start : start + len(sims)] = nearest, sims.argmax(axis=1)
    return first, second


def bucket_columns(embeddings: pa.ChunkedArray | pa.Array, centroids: np.ndarray) -> tuple[pa.Array, pa.Array]:
    """(`dup_bucket`, `dup_bucket2`) for a column of image embeddings; null where there is none."""
    vectors, present = embedding_matrix(embeddings)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    first, second = nearest_two(vectors / np.maximum(norms, 1e-12), centroids)
    full_first = np.zeros(len(present), dtype=np.int32)
    full_second = np.zeros(len(present), dtype=np.int32)
    full_first[present], full_second[present] = first, second
    return pa.array(full_first, pa.int32(), mask=~present), pa.array(full_second, pa.int32(), mask=~present)


class AssignBuckets:
    """Adds `dup_bucket` and `dup_bucket2` from the image embedding, with the table's centroids."""

    name = "buckets"

    def __init__(self, centroids_uri: str, storage: StorageConfig, resources: Resources = STATEFUL) -> None:
        self.centroids_uri = centroids_uri
        self.storage = storage
        self.resources = resources
        self.centroids: np.ndarray | None = None

    def setup(self, state: WorkerState) -> None:
        """Load the centroids once per worker (a few MB)."""
        self.centroids = load_centroids(self.centroids_uri, self.storage)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.centroids is None:
            raise RuntimeError("AssignBuckets.setup() must run before the first batch")
        first, second = bucket_columns(batch.column("image_embedding"), self.centroids)
        return set_column(set_column(batch, "dup_bucket", first), "dup_bucket2", second)
