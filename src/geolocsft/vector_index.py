"""Nearest neighbours among a million feature vectors: exact below a size, an inverted file above.

A brute-force search costs (training images x queries) distance computations: 1M x 250k is
hours, and a space-partitioning tree (KD/ball tree) degrades to the same in 128 dimensions. An
*inverted file* (IVF) index clusters the training vectors into about sqrt(N) cells with k-means,
and searches each query only in its ``probes`` nearest cells: O(queries x (cells + probes x
N / cells)) work, minutes instead of hours at 1M x 250k. It is approximate (a true neighbour in
an unprobed cell is missed), exact when ``probes`` covers every cell; benchmarks/knn.py measures
its recall against the exact search.

Training sets up to ``exact_max`` vectors are searched exactly (scikit-learn's brute force).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

log = logging.getLogger(__name__)

Floats = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]
#: Training vectors used to fit the k-means cells (a seeded sample).
KMEANS_SAMPLE = 100_000
#: Up to this many neighbours, repeated argmin instead of a partial sort.
SMALL_K = 32
#: Lloyd iterations of the k-means that makes the cells.
KMEANS_ITERATIONS = 10
#: Queries scored against the cell centroids at once.
QUERY_CHUNK = 8_192


def _squared_distances(queries: Floats, points: Floats, point_norms: Floats) -> Floats:
    """||q - p||^2 for every pair (float32, clipped at 0)."""
    q_norms = np.einsum("ij,ij->i", queries, queries)
    d = q_norms[:, None] - 2.0 * (queries @ points.T) + point_norms[None, :]
    return np.maximum(d, 0.0, out=d)


def _smallest(d: Floats, k: int) -> tuple[Floats, Ints]:
    """The k smallest entries of each row, sorted, and their column indices (``d`` is used as
    scratch). For a few neighbours, k passes of argmin beat a partial sort per row."""
    k = min(k, d.shape[1])
    if k <= SMALL_K:
        rows = np.arange(d.shape[0])
        values = np.empty((d.shape[0], k), dtype=d.dtype)
        indices = np.empty((d.shape[0], k), dtype=np.int64)
        for i in range(k):
            j = np.argmin(d, axis=1)
            indices[:, i] = j
            values[:, i] = d[rows, j]
            d[rows, j] = np.inf
        return values, indices
    part = np.argpartition(d, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(d, part, axis=1)
    order = np.argsort(values, axis=1, kind="stable")
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(part, order, axis=1)


def assign(x: Floats, centroids: Floats) -> Ints:
    """The nearest centroid of every vector (in chunks)."""
    # argmin ||x - c||^2 = argmin (||c||^2 - 2 x.c): a vector's own norm does not change which
    # centroid is nearest, so it is neither computed nor added (k-means assigns every vector
    # ten times: this is most of its cost).
    half_norms = 0.5 * np.einsum("ij,ij->i", centroids, centroids)
    cell = np.empty(x.shape[0], dtype=np.int64)
    for start in range(0, x.shape[0], QUERY_CHUNK):
        block = x[start : start + QUERY_CHUNK]
        scores = block @ centroids.T
        np.subtract(half_norms[None, :], scores, out=scores)
        cell[start : start + len(block)] = np.argmin(scores, axis=1)
    return cell


def kmeans(
    x: Floats, cells: int, rng: np.random.Generator, iterations: int = KMEANS_ITERATIONS
) -> Floats:
    """Lloyd's k-means from a seeded random start; an emptied cell restarts at a random vector."""
    from scipy.sparse import csr_matrix

    centroids = x[rng.choice(x.shape[0], size=cells, replace=False)].copy()
    for _ in range(iterations):
        cell = assign(x, centroids)
        counts = np.bincount(cell, minlength=cells)
        members = csr_matrix(
            (np.ones(x.shape[0], dtype=np.float32), (cell, np.arange(x.shape[0]))),
            shape=(cells, x.shape[0]),
        )
        sums = np.asarray(members @ x, dtype=np.float32)
        empty = counts == 0
        centroids[~empty] = sums[~empty] / counts[~empty, None]
        if empty.any():
            centroids[empty] = x[rng.choice(x.shape[0], size=int(empty.sum()), replace=False)]
    return centroids


@dataclass
class IvfIndex:
    """An inverted-file index: vectors grouped by their nearest k-means centroid."""

    vectors: Floats
    norms: Floats
    centroids: Floats
    order: Ints  # vector indices sorted by cell
    offsets: Ints  # cell c holds order[offsets[c]:offsets[c + 1]]

    @classmethod
    def build(cls, vectors: npt.ArrayLike, cells: int | None = None, seed: int = 0) -> IvfIndex:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        n = x.shape[0]
        cells = min(n, cells or max(1, round(math.sqrt(n))))
        rng = np.random.default_rng(seed)
        sample = x[rng.choice(n, size=min(n, KMEANS_SAMPLE), replace=False)]
        centroids = kmeans(sample, cells, rng)
        cell = assign(x, centroids)
        order = np.argsort(cell, kind="stable")
        offsets = np.searchsorted(cell[order], np.arange(cells + 1))
        return cls(x, np.einsum("ij,ij->i", x, x), centroids, order, offsets)

    @property
    def cells(self) -> int:
        return int(self.centroids.shape[0])

    def search(self, queries: npt.ArrayLike, k: int, probes: int) -> tuple[Floats, Ints]:
        """Distances (Euclidean) and indices of the ``k`` nearest vectors found per query."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        m = q.shape[0]
        probes = min(probes, self.cells)
        c_norms = np.einsum("ij,ij->i", self.centroids, self.centroids)
        probed = np.empty((m, probes), dtype=np.int64)
        for start in range(0, m, QUERY_CHUNK):
            block = q[start : start + QUERY_CHUNK]
            _, probed[start : start + len(block)] = _smallest(
                _squared_distances(block, self.centroids, c_norms), probes
            )
        # Candidates: k per (query, probed cell); inf where a cell has fewer than k vectors.
        cand_d = np.full((m, probes * k), np.inf, dtype=np.float32)
        cand_i = np.full((m, probes * k), -1, dtype=np.int64)
        flat = probed.ravel()
        by_cell = np.argsort(flat, kind="stable")
        bounds = np.searchsorted(flat[by_cell], np.arange(self.cells + 1))
        for c in tqdm(
            range(self.cells), desc="kNN cells", unit="cell", mininterval=2.0, disable=None
        ):
            members = self.order[self.offsets[c] : self.offsets[c + 1]]
            slots = by_cell[bounds[c] : bounds[c + 1]]
            if not len(members) or not len(slots):
                continue
            rows, probe_no = np.divmod(slots, probes)
            d, j = _smallest(
                _squared_distances(q[rows], self.vectors[members], self.norms[members]), k
            )
            width = d.shape[1]
            columns = probe_no[:, None] * k + np.arange(width)[None, :]
            cand_d[rows[:, None], columns] = d
            cand_i[rows[:, None], columns] = members[j]
        d, j = _smallest(cand_d, k)
        return np.sqrt(d), np.take_along_axis(cand_i, j, axis=1)


def nearest_neighbours(
    train: npt.ArrayLike,
    queries: npt.ArrayLike,
    k: int,
    *,
    exact_max: int,
    probes: int,
    seed: int = 0,
) -> tuple[Floats, Ints]:
    """The ``k`` nearest training vectors of each query: exact brute force up to ``exact_max``
    training vectors, an :class:`IvfIndex` searched in ``probes`` cells above."""
    x = np.asarray(train, dtype=np.float32)
    q = np.asarray(queries, dtype=np.float32)
    k = min(k, x.shape[0])
    if x.shape[0] <= exact_max:
        from sklearn.neighbors import NearestNeighbors

        distances, indices = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x).kneighbors(q)
        return distances.astype(np.float32), indices.astype(np.int64)
    index = IvfIndex.build(x, seed=seed)
    log.info(
        "kNN: inverted-file index of %d vectors in %d cells, %d probed per query",
        x.shape[0],
        index.cells,
        min(probes, index.cells),
    )
    distances, indices = index.search(q, k, probes)
    short = np.flatnonzero((indices < 0).any(axis=1))
    if short.size:  # probed cells held fewer than k vectors: search those queries exactly
        from sklearn.neighbors import NearestNeighbors

        exact = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x)
        d, i = exact.kneighbors(q[short])
        distances[short], indices[short] = d, i
    return distances, indices
