"""Nearest and second-nearest centroid: what every image row's dedup buckets come from."""

import numpy as np

from clipline.operators.buckets import BUCKET_BLOCK, nearest_two
from clipline.table.buckets import unit_rows


def test_nearest_two_matches_a_full_sort_across_blocks():
    rng = np.random.default_rng(7)
    vectors = unit_rows(rng.standard_normal((BUCKET_BLOCK + 300, 16)).astype(np.float32))
    centroids = unit_rows(rng.standard_normal((40, 16)).astype(np.float32))
    ranked = np.argsort(-(vectors @ centroids.T), axis=1, kind="stable")
    first, second = nearest_two(vectors, centroids)
    assert np.array_equal(first, ranked[:, 0])
    assert np.array_equal(second, ranked[:, 1])


def test_one_centroid_is_both_buckets():
    vectors = unit_rows(np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32))
    first, second = nearest_two(vectors, vectors[:1])
    assert first.tolist() == second.tolist() == [0] * 5
