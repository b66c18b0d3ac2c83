"""Sketch clustering: cluster a sample of the cells, assign every other cell by a vote of
its nearest sampled cells in the joint embedding.

Domains are large structures, so a well-spread sample of a few hundred thousand cells
holds them all. The sample (:func:`sketch_cells`) keeps every slide's share of the cells
and is balanced over a coarse partition of the embedding: within each slide, each
region of a 32-centroid k-means of the PCA gets a share proportional to the square root of
its size, at least one cell. Rare neighbourhoods are thereby sampled more densely than
common ones. The others are assigned by :func:`assign_by_vote`.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np

from . import _validation as check
from ._parallel import n_threads
from .embedding import locality_order, seeded_hnsw_index

__all__ = ["SKETCH_ABOVE", "DEFAULT_SKETCH_SIZE", "sketch_cells", "assign_by_vote", "majority_vote",
           "sketch_size_for", "vote", "vote_index"]

logger = logging.getLogger(__name__)

#: ``sketch_size="auto"`` sketches above this many cells.
SKETCH_ABOVE = 2_000_000
#: The sample ``sketch_size="auto"`` clusters.
DEFAULT_SKETCH_SIZE = 200_000
#: Candidate list of the HNSW search for each cell's nearest sampled cells: a vote of 15
#: needs most of them, not all (50 gave the same winner for all but a fraction of a
#: percent of the cells, at twice the time).
VOTE_EF = 16
#: Links per node and candidate list while building the vote's index. Sparser than the
#: kNN graph's index: on 1M synthetic cells (100k sampled, 10 PCs) the build took 2.5 s
#: instead of 4.9 s at M=16, ef_construction=100, with recall 96.9% instead of 97.6% and
#: the same winner as the exact vote for 99.87% of cells instead of 99.88%.
VOTE_M, VOTE_EF_CONSTRUCTION = 12, 50
#: Cells searched and voted at a time.
_VOTE_CHUNK = 65_536
#: Centroids of the coarse partition the sample is balanced over.
N_COARSE = 32


def sketch_size_for(sketch_size, n_cells: int) -> int | None:
    """The sample size to cluster, or ``None`` for every cell.

    ``"auto"``: :data:`DEFAULT_SKETCH_SIZE` above :data:`SKETCH_ABOVE` cells, else none;
    ``None`` or ``0``: none; a number below 1: that fraction of the cells; from 1: that
    many cells, at most all of them (the sketch route then clusters every cell and gives
    the unsketched labels).

    Examples
    --------
    >>> sketch_size_for("auto", 1_000), sketch_size_for(0.1, 1_000), sketch_size_for(5_000, 1_000)
    (None, 100, 1000)
    """
    if sketch_size is None:
        return None
    if isinstance(sketch_size, str):
        if not check.is_auto(sketch_size):
            raise ValueError(f"`sketch_size` must be 'auto', None, a fraction or a number of cells, got "
                             f"{sketch_size!r}.")
        return DEFAULT_SKETCH_SIZE if n_cells > SKETCH_ABOVE else None
    if isinstance(sketch_size, bool) or not isinstance(sketch_size, (int, float, np.integer, np.floating)) \
            or not np.isfinite(sketch_size) or sketch_size < 0:
        raise ValueError(f"`sketch_size` must be 'auto', None, a fraction of the cells (below 1) or a number of "
                         f"cells, got {sketch_size!r}.")
    size = float(sketch_size)
    if size == 0:
        return None
    size = int(round(size * n_cells)) if size < 1 else int(size)
    if size < 2:
        raise ValueError(f"`sketch_size={sketch_size!r}` samples {size} cell(s) of {n_cells}; sample at least 2 "
                         "(a number of cells from 1 on, a fraction below 1), or None for every cell.")
    return min(size, n_cells)


def sketch_cells(embedding: np.ndarray, codes: np.ndarray, size: int, random_state: int = 0,
                 balanced: bool = True) -> np.ndarray:
    """Indices (sorted) of about ``size`` cells to cluster.

    Each slide (``codes``) gets its share of ``size``; within a slide, with ``balanced``,
    each region of a coarse k-means partition of ``embedding`` gets a share proportional
    to the square root of its number of cells (at least one cell), else a uniform sample.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> embedding = rng.normal(size=(10_000, 3))
    >>> codes = np.repeat([0, 1], [8_000, 2_000])
    >>> sample = sketch_cells(embedding, codes, 1_000)
    >>> abs(len(sample) - 1_000) < 10, round(float(np.mean(codes[sample] == 1)), 1)
    (True, 0.2)
    """
    random_state = check.seed(random_state)
    rng = np.random.default_rng(random_state)
    n_cells = len(codes)
    slide_sizes = np.bincount(codes)
    quota = _largest_remainder(size * slide_sizes / n_cells)
    if balanced:
        region = _coarse_regions(embedding, rng, random_state)
        group = codes.astype(np.int64) * N_COARSE + region
    else:
        group = codes.astype(np.int64)
    group_ids, group_of_cell, group_sizes = np.unique(group, return_inverse=True, return_counts=True)
    group_slide = group_ids // N_COARSE if balanced else group_ids
    weight = np.sqrt(group_sizes) if balanced else group_sizes.astype(np.float64)
    allocation = _water_fill(group_sizes, weight, group_slide, quota)
    # a random rank within each group; the first `allocation` of each group are kept
    order = np.lexsort((rng.random(n_cells), group_of_cell))
    starts = np.concatenate([[0], np.cumsum(group_sizes)[:-1]])
    rank = np.empty(n_cells, dtype=np.int64)
    rank[order] = np.arange(n_cells) - starts[group_of_cell[order]]
    return np.flatnonzero(rank < allocation[group_of_cell])


def _water_fill(sizes: np.ndarray, weight: np.ndarray, slide: np.ndarray, quota: np.ndarray) -> np.ndarray:
    """Cells to take from each group: ``min(size, t * weight)`` with ``t`` per slide such
    that the slide's groups add up to its ``quota`` (by bisection, all slides at once),
    in whole numbers (largest remainders), and at least one cell per group where the
    quota allows."""
    low = np.zeros(len(quota))
    high = np.full(len(quota), 1.0)
    np.maximum.at(high, slide, sizes / weight)  # from here on every group is taken whole
    for _ in range(60):
        middle = (low + high) / 2
        taken = np.bincount(slide, weights=np.minimum(sizes, middle[slide] * weight), minlength=len(quota))
        short = taken < quota
        low, high = np.where(short, middle, low), np.where(short, high, middle)
    share = np.minimum(sizes, high[slide] * weight)
    # whole numbers adding up to each slide's quota: the floors, plus one for the largest remainders
    taken = np.floor(share)
    missing = quota - np.bincount(slide, weights=taken, minlength=len(quota))
    order = np.lexsort((taken - share, slide))  # by slide, largest remainder first
    starts = np.concatenate([[0], np.cumsum(np.bincount(slide, minlength=len(quota)))[:-1]])
    rank = np.empty(len(share), dtype=np.int64)
    rank[order] = np.arange(len(share)) - starts[slide[order]]
    taken += (rank < np.round(missing)[slide]) & (taken < sizes)
    # at least one cell per group, unless the slide's quota is smaller than its number of groups
    enough = (quota >= np.bincount(slide, minlength=len(quota)))[slide]
    return np.where(enough, np.maximum(taken, 1), taken)


def _largest_remainder(shares: np.ndarray) -> np.ndarray:
    """Whole numbers summing to ``round(shares.sum())``, each within one of its share."""
    floors = np.floor(shares)
    missing = int(round(shares.sum() - floors.sum()))
    floors[np.argsort(floors - shares, kind="stable")[:missing]] += 1
    return floors


def _coarse_regions(embedding: np.ndarray, rng, random_state: int) -> np.ndarray:
    """Each cell's region: the nearest of ``N_COARSE`` k-means centroids fitted on a
    uniform subsample of 20,000 cells."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    points = np.asarray(embedding, dtype=np.float32)
    n_regions = min(N_COARSE, len(points))
    fit_on = points[rng.choice(len(points), size=min(len(points), 20_000), replace=False)]
    with warnings.catch_warnings():  # fewer distinct points than regions (cells of one profile): fewer regions
        warnings.simplefilter("ignore", ConvergenceWarning)
        centroids = KMeans(n_clusters=n_regions, n_init=1, random_state=random_state).fit(fit_on).cluster_centers_
    squared = (centroids**2).sum(axis=1)
    region = np.empty(len(points), dtype=np.int64)
    for start in range(0, len(points), 262_144):
        chunk = points[start:start + 262_144]
        region[start:start + len(chunk)] = np.argmin(squared - 2 * chunk @ centroids.T, axis=1)
    return region


def majority_vote(votes: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """The most common label in each row of ``votes`` (cells x k labels of their neighbours,
    nearest first), and the vote counts (cells x ``n_labels``).

    A tie goes to the tied label of the nearest neighbour, so the winner does not depend
    on how the labels are numbered: each vote weighs ``1 + 2**-(rank + 1)``, and the extra
    weights of all the farther neighbours add up to less than that of a nearer one.

    Examples
    --------
    >>> winners, counts = majority_vote(np.array([[2, 0, 0, 2], [1, 1, 0, 0]]), 3)
    >>> winners.tolist(), counts.tolist()
    ([2, 1], [[2, 0, 2], [2, 2, 0]])
    """
    n_cells, k = votes.shape
    flat = (np.arange(n_cells)[:, None] * n_labels + votes).ravel()
    weights = np.broadcast_to(1.0 + 0.5 ** np.arange(1, k + 1), votes.shape).ravel()
    scores = np.bincount(flat, weights=weights, minlength=n_cells * n_labels).reshape(n_cells, n_labels)
    return scores.argmax(axis=1), np.floor(scores).astype(np.int64)  # the extras add up to less than one vote


def assign_by_vote(embedding: np.ndarray, sample: np.ndarray, labellings: list[np.ndarray],
                   n_neighbors: int = 15, random_state: int = 0, n_jobs: int | None = None
                   ) -> list[np.ndarray]:
    """Every cell's label in each of ``labellings`` (labels of the ``sample`` cells): its
    own for sampled cells, else the majority among its ``n_neighbors`` nearest sampled
    cells in ``embedding`` (ties: the label of the nearest tied cell, :func:`majority_vote`).

    Examples
    --------
    >>> embedding = np.array([[0.0], [0.1], [5.0], [5.1], [0.05], [4.9]])
    >>> assign_by_vote(embedding, np.array([0, 1, 2, 3]), [np.array([0, 0, 1, 1])], n_neighbors=2)[0]
    array([0, 0, 1, 1, 0, 1])
    """
    points = np.ascontiguousarray(embedding, dtype=np.float32)
    if len(sample) == len(points):  # every cell sampled: nothing to vote on, no index to build
        return sampled_labels(len(points), sample, labellings)
    index = vote_index(points[sample], n_neighbors, random_state)
    order = locality_order(points)  # the other cells searched in locality order: much faster
    sampled = np.zeros(len(points), dtype=bool)
    sampled[sample] = True
    others = order[~sampled[order]]
    assigned = sampled_labels(len(points), sample, labellings)
    threads = n_threads(n_jobs)
    for start in range(0, len(others), _VOTE_CHUNK):  # a chunk at a time: the neighbour lists of all
        cells = others[start:start + _VOTE_CHUNK]  # of ten million cells would take gigabytes
        for full, voted in zip(assigned, vote(index, points[cells], labellings, n_neighbors, threads)):
            full[cells] = voted
    return assigned


def sampled_labels(n_cells: int, sample: np.ndarray, labellings: list[np.ndarray]) -> list[np.ndarray]:
    """One int64 array of ``n_cells`` per labelling, holding the ``sample``'s labels (the
    other cells' entries are left for the vote to fill)."""
    assigned = []
    for labels in labellings:
        full = np.empty(n_cells, dtype=np.int64)
        full[sample] = labels
        assigned.append(full)
    return assigned


def vote_index(sampled_points: np.ndarray, n_neighbors: int = 15, random_state: int = 0):
    """The HNSW index (``hnswlib``) that :func:`vote` searches for ``n_neighbors`` sampled
    cells: ``sampled_points`` (the sampled cells' rows of the embedding, float32), each
    labelled by its position there.

    One seeded thread inserts them in their locality order
    (:func:`utag.embedding.locality_order`), so the index depends only on the sample and
    ``random_state``; it can be pickled to other processes (the Dask route's workers) and
    searched there with the same answers.
    """
    random_state = check.seed(random_state)
    points = np.ascontiguousarray(sampled_points, dtype=np.float32)
    order = locality_order(points)
    return seeded_hnsw_index(points[order], order, VOTE_M, VOTE_EF_CONSTRUCTION,
                             max(VOTE_EF, min(n_neighbors, len(points))), random_state)


def vote(index, points: np.ndarray, labellings: list[np.ndarray], n_neighbors: int = 15,
         n_threads: int = 1) -> list[np.ndarray]:
    """Each labelling's winner for every row of ``points``: the majority among the row's
    ``n_neighbors`` nearest sampled cells in ``index`` (:func:`vote_index`; ``labellings``
    give the sampled cells' labels). Each row's answer depends on that row alone, so any
    split of the cells, searched with any number of threads, gives the same labels."""
    neighbours = nearest_indexed(index, points, n_neighbors, n_threads)
    labellings = [np.asarray(labels, dtype=np.int64) for labels in labellings]
    return [majority_vote(labels[neighbours], int(labels.max()) + 1)[0] for labels in labellings]


def nearest_indexed(index, points: np.ndarray, n_neighbors: int = 15, n_threads: int = 1) -> np.ndarray:
    """The positions in ``index`` (:func:`vote_index`) of each row's ``n_neighbors``
    nearest indexed points (all of them if fewer), nearest first; a row's answer depends
    on that row alone, whatever ``n_threads``."""
    k = min(n_neighbors, index.get_current_count())
    return index.knn_query(np.ascontiguousarray(points, dtype=np.float32), k=k,
                           num_threads=n_threads)[0].astype(np.int64)
