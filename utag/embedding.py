"""Step 3a of UTAG: one joint embedding of all slides and its kNN graph (:func:`embed`).

* PCA of the message-passed features, computed from the feature covariance matrix
  (exact, deterministic, and cheap when there are tens to a few thousand features).
* The k nearest neighbours of every cell, on the message-passed features when there
  are at most 50 and in PCA space otherwise (``use_rep``): exact (KD-tree, on the points
  turned onto their principal axes above 10 dimensions) up to
  :data:`EXACT_NEIGHBORS_MAX_CELLS` cells where the KD-tree is quick
  (:func:`exact_search`), approximate otherwise (HNSW graphs from ``hnswlib``, which
  PARC already depends on; ~98% of the exact neighbours at a million cells in PCA space,
  where the KD-tree would take two minutes on two cores).
* UMAP's fuzzy-simplicial-set weights on those neighbours, the connectivities scanpy's
  ``sc.pp.neighbors`` computes; ``utag/tests/test_embedding.py`` checks them against
  ``umap.umap_.fuzzy_simplicial_set``.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from . import _validation as check
from ._arrays import column_mean, column_range, row_blocks
from ._numba import jit
from ._order import morton_order
from ._parallel import map_threads, n_threads
from ._progress import Stopwatch

__all__ = [
    "Embedding",
    "embed",
    "fit_pca",
    "neighbour_graphs",
    "pca",
    "nearest_neighbors",
    "exact_neighbors",
    "check_knn_method",
    "effective_dimensions",
    "exact_search",
    "approximate_neighbors",
    "distinct_profile_neighbors",
    "fuzzy_connectivities",
    "knn_distances",
    "knn_graph",
    "locality_order",
    "representation",
]

logger = logging.getLogger(__name__)

#: Above this many cells the kNN search is approximate (``method="auto"``): the exact
#: KD-tree search grows faster than n log n, and the cost model below misjudges some data
#: at that size: the cell-type fractions of both CODEX spleen sections together lie in few
#: effective dimensions, yet their exact search took several times HNSW's
#: (``benchmarks/knn_methods.py``).
EXACT_NEIGHBORS_MAX_CELLS = 100_000

#: Below :data:`EXACT_NEIGHBORS_MAX_CELLS`, ``method="auto"`` still searches exactly only
#: where the KD-tree is quick. A query visits on the order of ``2**d`` leaves in ``d``
#: effective dimensions (:func:`effective_dimensions`), and at most every cell, so the
#: search costs about ``n_cells * min(2**d, n_cells)``; above this budget HNSW is used.
#: The budget keeps every labelled dataset of ``benchmarks/`` exact (the largest, 20,000
#: synthetic cells in 11 effective dimensions, is 4.1e7) and turns to HNSW where the
#: KD-tree takes tens of seconds (100,000 cells with 40 markers: 5.1e7 and more);
#: ``benchmarks/knn_methods.py`` measures both searches.
EXACT_SEARCH_BUDGET = 5e7

#: :func:`effective_dimensions` counts the principal axes holding this share of the variance.
EFFECTIVE_VARIANCE = 0.95
KNN_METHODS = ("auto", "exact", "approximate")

#: HNSW settings: links per node, candidate list while building, candidate list while
#: searching. With the index split in two (see :func:`approximate_neighbors`) they
#: find 97.8% of the exact 15 neighbours of 1,000,000 synthetic cells in 10-d PCA space.
HNSW_M = 8
HNSW_EF_CONSTRUCTION = 24
HNSW_EF = 16
_HNSW_PARTS = 2

#: The exact search turns points of more dimensions than this onto their principal axes
#: first (:func:`_on_principal_axes`); PCA embeddings (10 components by default) are on
#: them already.
_ROTATE_ABOVE_DIMS = 10

#: Candidates beyond ``n_neighbors`` that the exact search ranks again (:func:`exact_neighbors`):
#: one shows whether a tie runs past the last neighbour; more only slow the KD-tree down
#: (the ball query covers the ties), and give the same neighbours.
_EXACT_SPARE = 1

#: :func:`locality_order` orders cells along this many leading principal axes.
_LOCALITY_AXES = 3

_SMOOTH_K_TOLERANCE = 1e-5
_MIN_K_DIST_SCALE = 1e-3
_MAX_BANDWIDTH_STEPS = 64


def _covariance(features, mean: np.ndarray) -> np.ndarray:
    """Feature covariance in float64, accumulated over row chunks (no full-size copy)."""
    n_rows, n_features = features.shape
    scatter = np.zeros((n_features, n_features))
    for rows in row_blocks(n_rows):
        block = features[rows].astype(np.float64)
        if sp.issparse(block):
            scatter += (block.T @ block).toarray()
        else:
            scatter += centred_scatter(block, mean)
    if sp.issparse(features):
        scatter -= n_rows * np.outer(mean, mean)
    return scatter / max(n_rows - 1, 1)


def centred_scatter(block: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``(block - mean).T @ (block - mean)`` in float64, for a dense block of rows."""
    block = np.array(block, dtype=np.float64)
    block -= mean
    return block.T @ block


def pca(features, n_comps: int) -> dict:
    """Principal components of ``features`` (cells x features, dense or sparse).

    Returns a dict with ``embedding`` (cells x n_comps, float32), ``components``
    (features x n_comps), ``variance`` and ``variance_ratio``. Component signs are
    fixed so that each component's largest loading is positive.
    """
    mean = column_mean(features)  # float64 sums, as utag.distributed takes them
    components, variance, variance_ratio = principal_axes(_covariance(features, mean), n_comps)
    return {
        "embedding": project(features, components, mean),
        "components": components.astype(np.float32),
        "variance": variance,
        "variance_ratio": variance_ratio,
    }


def principal_axes(covariance: np.ndarray, n_comps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top ``n_comps`` eigenvectors of ``covariance`` (float64, features x n_comps,
    each with its largest loading positive), their variances and shares of the total."""
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    top = np.argsort(eigenvalues)[::-1][:n_comps]
    variance = np.clip(eigenvalues[top], 0, None)
    components = eigenvectors[:, top]
    largest = np.abs(components).argmax(axis=0)
    components *= np.sign(components[largest, np.arange(components.shape[1])])
    total = np.clip(eigenvalues, 0, None).sum()
    return components, variance, (variance / total if total > 0 else np.zeros_like(variance))


def project(features, components: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``features`` (all cells or a block of them) on the principal ``components``
    (float64, from :func:`principal_axes`), centred on ``mean``: float32.

    Each coordinate is computed in float64 and rounded to float32 once, so that a cell's
    coordinates do not depend on the block of cells it is projected with (the Dask route
    projects slide by slide, ``utag()`` in memory all cells at once) nor on the BLAS: a
    float32 product rounds differently with the shape of the block, and a kNN graph built
    on the PCA (Leiden and PARC above 50 features or with ``use_rep="X_pca"``) turns such
    rounding into other domains.
    The float64 sums still differ in their last bits, so a float32 coordinate can differ
    in its last bit, about once in 10^9 (none in 3 million coordinates tried)."""
    components = np.asarray(components, dtype=np.float64)
    offset = np.asarray(mean, dtype=np.float64) @ components
    embedding = np.empty((features.shape[0], components.shape[1]), dtype=np.float32)
    for rows in row_blocks(features.shape[0]):
        block = features[rows]
        block = block.astype(np.float64) if sp.issparse(block) else np.asarray(block, dtype=np.float64)
        embedding[rows] = block @ components - offset
    return embedding


def nearest_neighbors(embedding: np.ndarray, n_neighbors: int, method: str = "auto",
                      random_state: int = 0, n_jobs: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_neighbors`` nearest cells of every cell (itself first, at distance 0).

    ``method``: ``"exact"`` (KD-tree), ``"approximate"`` (:func:`approximate_neighbors`)
    or ``"auto"`` (exact where the KD-tree is quick, :func:`exact_search`); ``n_jobs``
    threads (``None``: every core), with the same result for any number.

    Returns ``(indices, distances)`` of shape (n_cells, n_neighbors), int64 and float32,
    each row sorted by distance. When more than ``n_neighbors`` cells share a point the
    search may not list a cell among its own neighbours; the cell is then put first and
    the farthest neighbour dropped, as scanpy expects.

    Examples
    --------
    >>> import numpy as np
    >>> points = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    >>> indices, distances = nearest_neighbors(points, 2)
    >>> indices.tolist(), distances.tolist()
    ([[0, 1], [1, 0], [2, 1]], [[0.0, 1.0], [0.0, 1.0], [0.0, 4.0]])
    """
    random_state = check.seed(random_state)
    n_neighbors = check.as_int("n_neighbors", n_neighbors)
    if exact_search(embedding, n_neighbors, method):
        indices, distances = exact_neighbors(embedding, n_neighbors, n_jobs)
    else:
        indices, distances = approximate_neighbors(embedding, n_neighbors, random_state, n_jobs)
    return _self_first(indices.astype(np.int64), distances.astype(np.float32))


def exact_neighbors(embedding: np.ndarray, n_neighbors: int, n_jobs: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_neighbors`` nearest cells of every cell, by exact distance, ties going to
    the cell that comes first: the same neighbours on any CPU.

    A KD-tree proposes one more candidate than needed (on the points
    turned onto their principal axes above :data:`_ROTATE_ABOVE_DIMS` dimensions, which
    is much faster); their distances are then computed again in the input coordinates,
    in one fixed order, and each row ranked by (distance, cell). The rotation's rounding
    depends on the processor's linear-algebra kernels, and neighbourhood compositions of
    one-hot cell types often lie at exactly the same distance, so without this the tree's
    choice among tied cells, hence the kNN graph, changed from one machine to another.
    A row whose last neighbour ties with the spare candidate takes every cell within that
    distance (a ball query) before ranking.

    Returns ``(indices, distances)`` as :func:`nearest_neighbors` (before its cell-first fix).

    Examples
    --------
    >>> points = np.array([[0.0], [1.0], [-1.0], [3.0]])  # cells 1 and 2 tie as 0's neighbour
    >>> exact_neighbors(points, 2)[0].tolist()
    [[0, 1], [1, 0], [2, 0], [3, 1]]
    """
    points = np.ascontiguousarray(embedding, dtype=np.float64)
    n_cells = len(points)
    k = min(n_neighbors, n_cells)
    n_candidates = min(k + _EXACT_SPARE, n_cells)
    searched = _on_principal_axes(embedding) if embedding.shape[1] > _ROTATE_ABOVE_DIMS else points
    tree = cKDTree(searched)
    candidates = tree.query(searched, k=n_candidates, workers=n_threads(n_jobs))[1].reshape(n_cells, -1)
    distances = _pair_distances(points, candidates)
    order = np.lexsort((candidates, distances), axis=1)
    candidates = np.take_along_axis(candidates, order, axis=1)
    distances = np.take_along_axis(distances, order, axis=1)
    # rows whose last neighbour ties (up to the rotation's rounding) with the spare candidate
    # may have tied cells beyond the candidates: take them all
    last = distances[:, k - 1]
    # the rotation rounds each coordinate by up to ~1e-15 of the largest one: a ball of a
    # fixed 1e-12 slack missed duplicates of bright cells (then listed twice in a row)
    slack = 1e-9 * max(float(np.abs(searched).max(initial=0.0)), 1e-3)
    radius = last * (1 + 1e-9) + slack
    open_rows = np.flatnonzero(distances[:, -1] <= radius) if n_candidates < n_cells else np.zeros(0, int)
    if len(open_rows):  # about 1% of the rows of a spleen section
        balls = tree.query_ball_point(searched[open_rows], radius[open_rows], workers=n_threads(n_jobs))
        sizes = np.fromiter(map(len, balls), dtype=np.int64, count=len(balls))
        owners = np.repeat(open_rows, sizes)
        members = np.concatenate(balls).astype(np.int64)
        member_distances = _pair_distances(points, members[:, None], rows=owners)[:, 0]
        ranked = np.lexsort((members, member_distances, owners))  # by row, then distance, then cell
        rank = np.arange(len(ranked)) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # place within its row
        placed = rank < k  # every ball holds the row's k candidates, so each row fills its k places
        keep = ranked[placed]
        candidates[owners[keep], rank[placed]] = members[keep]
        distances[owners[keep], rank[placed]] = member_distances[keep]
    return candidates[:, :k], distances[:, :k]


@jit
def _pair_distance_kernel(points, rows, candidates, out):
    for i in range(candidates.shape[0]):
        a = rows[i]
        for j in range(candidates.shape[1]):
            b = candidates[i, j]
            total = 0.0
            for f in range(points.shape[1]):  # one fixed order of the additions
                difference = points[a, f] - points[b, f]
                total += difference * difference
            out[i, j] = np.sqrt(total)


def _pair_distances(points: np.ndarray, candidates: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distance from cell ``rows[i]`` (default ``i``) to each cell of
    ``candidates[i]``, float64, the same on any CPU."""
    rows = np.arange(len(candidates)) if rows is None else rows
    out = np.empty(candidates.shape, dtype=np.float64)
    _pair_distance_kernel(points, rows.astype(np.int64), candidates.astype(np.int64), out)
    return out


def _on_principal_axes(points: np.ndarray) -> np.ndarray:
    """``points`` centred and turned onto all their principal axes (float64).

    A rotation keeps every distance (up to rounding), but puts the spread in the first
    coordinates, which a KD-tree splits first: on 40 message-passed markers the exact
    search then prunes far more of the tree (much faster).
    """
    mean = points.mean(axis=0, dtype=np.float64)
    axes, _, _ = principal_axes(_covariance(points, mean), points.shape[1])
    return (points.astype(np.float64) - mean) @ axes


def check_knn_method(method: str) -> str:
    """``method`` if it is one of :data:`KNN_METHODS` (in any case; returned in lower case),
    else a ``ValueError`` naming them."""
    if not (isinstance(method, str) and method.lower() in KNN_METHODS):
        raise ValueError(f"kNN method (`knn_method`) must be 'auto', 'exact' or 'approximate', got {method!r}.")
    return method.lower()


def exact_search(points: np.ndarray, n_neighbors: int, method: str = "auto") -> bool:
    """Whether :func:`nearest_neighbors` searches the rows of ``points`` exactly.

    ``"exact"``, or ``n_neighbors`` covering every cell: yes; ``"approximate"``: no;
    ``"auto"``: up to :data:`EXACT_NEIGHBORS_MAX_CELLS` cells, when
    ``n_cells * min(2**d, n_cells)`` (``d`` the :func:`effective_dimensions`) is within
    :data:`EXACT_SEARCH_BUDGET` (always below about 7,000 cells).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> exact_search(rng.normal(size=(60_000, 3)), 15), exact_search(rng.normal(size=(60_000, 20)), 15)
    (True, False)
    """
    n_cells = len(points)
    if check_knn_method(method) == "exact" or n_neighbors >= n_cells:
        return True
    if method == "approximate" or n_cells > EXACT_NEIGHBORS_MAX_CELLS:
        return False

    def cost(dimensions):  # a query visits at most every cell
        return n_cells * min(2.0**dimensions, n_cells)

    if cost(points.shape[1]) <= EXACT_SEARCH_BUDGET:  # cheap whatever the spread
        return True
    return cost(effective_dimensions(points)) <= EXACT_SEARCH_BUDGET


def effective_dimensions(points: np.ndarray) -> int:
    """How many principal axes of ``points`` hold :data:`EFFECTIVE_VARIANCE` of their
    variance (0 when all points are equal): what a KD-tree's cost grows with.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> flat = np.column_stack([rng.normal(size=1_000), rng.normal(size=1_000), np.zeros(1_000)])
    >>> effective_dimensions(flat), effective_dimensions(rng.normal(size=(1_000, 8)))
    (2, 8)
    """
    variance = np.sort(np.clip(np.linalg.eigvalsh(_covariance(points, column_mean(points))), 0, None))[::-1]
    if variance.sum() <= 0:
        return 0
    held = np.cumsum(variance) / variance.sum()
    return int(min(np.searchsorted(held, EFFECTIVE_VARIANCE) + 1, len(variance)))


def approximate_neighbors(embedding: np.ndarray, n_neighbors: int, random_state: int = 0,
                          n_jobs: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Approximate kNN with HNSW indices (``hnswlib``), deterministic for a given seed.

    hnswlib builds one index in parallel by inserting cells from several threads, which
    makes the graph depend on thread timing. Instead the cells, put in
    :func:`locality_order`, are split (alternate cells) into two indices, each built by
    one thread with a seeded level generator, and every cell is searched in both; the
    two candidate lists are merged. The result depends only on the data and
    ``random_state``, not on the number of cores.

    Returns ``(indices, distances)`` sorted by distance (Euclidean, float32).
    """
    random_state = check.seed(random_state)
    n_cells = len(embedding)
    # in locality order HNSW builds and searches much faster (the same part of
    # the index stays in cache from one cell to the next); positions in that order are the ids
    order = locality_order(embedding)
    data = np.ascontiguousarray(embedding[order], dtype=np.float32)
    parts = [np.arange(start, n_cells, _HNSW_PARTS) for start in range(_HNSW_PARTS)]
    n_jobs = n_threads(n_jobs)

    def build(part: int):
        return seeded_hnsw_index(data[parts[part]], parts[part], HNSW_M, HNSW_EF_CONSTRUCTION,
                                 max(HNSW_EF, n_neighbors), random_state + part)

    with ThreadPoolExecutor(max_workers=min(n_jobs, _HNSW_PARTS)) as pool:  # hnswlib releases the GIL
        indices = list(pool.map(build, range(_HNSW_PARTS)))
    candidates, squared = zip(*(index.knn_query(data, k=min(n_neighbors, len(part)), num_threads=n_jobs)
                                for index, part in zip(indices, parts)))
    candidates = np.concatenate(candidates, axis=1)
    squared = np.concatenate(squared, axis=1)
    n_kept = min(n_neighbors, candidates.shape[1])
    neighbours = np.empty((n_cells, n_kept), dtype=np.int64)
    distances = np.empty((n_cells, n_kept), dtype=np.float32)

    def merge(rows: slice) -> None:  # the nearest of both candidate lists, by block of rows
        nearest = np.argsort(squared[rows], axis=1, kind="stable")[:, :n_kept]
        neighbours[order[rows]] = order[np.take_along_axis(candidates[rows], nearest, axis=1)]
        distances[order[rows]] = np.sqrt(np.clip(np.take_along_axis(squared[rows], nearest, axis=1), 0, None))

    map_threads(merge, row_blocks(n_cells), n_jobs)
    return neighbours, distances


def locality_order(points: np.ndarray) -> np.ndarray:
    """A permutation of the rows of ``points`` (cells x dimensions) that puts cells close
    to each other in ``points`` close to each other in the order: a Z-order curve
    (:func:`utag._order.morton_order`) through the three leading principal axes.

    HNSW indices are built and searched much faster in this order, because
    consecutive cells then work on the same part of the index, which stays in the
    processor's cache; which cells a search finds does not depend on the order of the
    queries.

    Examples
    --------
    >>> points = np.array([[0.0, 0.0], [10.0, 0.0], [0.1, 0.0], [10.1, 0.0]])
    >>> locality_order(points).tolist()
    [0, 2, 1, 3]
    """
    n_axes = min(_LOCALITY_AXES, points.shape[1])
    if len(points) < 2 or n_axes == 0:
        return np.arange(len(points))
    mean = points.mean(axis=0, dtype=np.float64)
    axes, _, _ = principal_axes(_covariance(points, mean), n_axes)
    return morton_order(project(points, axes, mean))


def seeded_hnsw_index(points: np.ndarray, ids: np.ndarray, m: int, ef_construction: int, ef: int, seed: int):
    """An HNSW index (``hnswlib``, Euclidean) of ``points`` labelled ``ids``, inserted in
    the given order by one thread with a level generator seeded by ``seed``: the index
    depends only on these arguments, not on thread timing or the number of cores."""
    import hnswlib

    index = hnswlib.Index(space="l2", dim=points.shape[1])
    index.init_index(max_elements=len(points), M=m, ef_construction=ef_construction, random_seed=seed)
    index.set_num_threads(1)  # one thread: the insertion order, hence the graph, is fixed
    index.add_items(points, ids)
    index.set_ef(ef)
    return index


def _self_first(indices: np.ndarray, distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Put every cell first among its own neighbours at distance 0 (see :func:`nearest_neighbors`)."""
    cells = np.arange(len(indices))
    is_self = indices == cells[:, None]
    order = np.argsort(~is_self, axis=1, kind="stable")  # self first, others kept in order
    indices = np.take_along_axis(indices, order, axis=1)
    distances = np.take_along_axis(distances, order, axis=1)
    missing = ~is_self.any(axis=1)
    indices[missing] = np.column_stack([cells[missing], indices[missing, :-1]])
    distances[missing] = np.column_stack([np.zeros(missing.sum()), distances[missing, :-1]])
    distances[:, 0] = 0.0
    return indices, distances


def distinct_profile_neighbors(embedding: np.ndarray, n_neighbors: int, method: str = "auto",
                               random_state: int = 0, n_jobs: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """kNN over distinct profiles: each cell's neighbours are the nearest *other* profiles.

    When more than ``n_neighbors`` cells share one profile (message passing over
    one-hot cell types makes many identical neighbourhood compositions), a plain kNN
    graph links them only to each other: they form disconnected cliques and Leiden
    returns hundreds of fragments. Here the kNN search runs over the distinct rows of
    ``embedding``; every cell gets, besides itself, one representative cell (the first)
    of each of the ``n_neighbors - 1`` nearest other profiles, so cells that share a
    profile share their neighbours and the graph stays connected. When every cell has the
    same profile there is no other profile to link to; each cell then links to the first
    cell (:func:`_one_profile_neighbors`).

    Returns ``(indices, distances)`` as :func:`nearest_neighbors` does, with
    ``min(n_neighbors, number of distinct profiles)`` columns (2 for a single profile).
    """
    random_state = check.seed(random_state)
    profiles, first, inverse = np.unique(embedding, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    if len(profiles) == 1 and min(n_neighbors, len(embedding)) > 1:
        return _one_profile_neighbors(len(embedding))
    indices, distances = nearest_neighbors(profiles, min(n_neighbors, len(profiles)), method, random_state, n_jobs)
    indices, distances = first[indices][inverse], distances[inverse]
    indices[:, 0] = np.arange(len(embedding))
    return indices, distances


def _one_profile_neighbors(n_cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Neighbours of ``n_cells`` (2 or more) cells that all share one profile: the first
    cell for every cell, the second for the first. Identical cells are at distance 0,
    which UMAP weighs 1, so they form one connected star rather than isolated cells."""
    cells = np.arange(n_cells)
    return np.column_stack([cells, np.where(cells == 0, 1, 0)]), np.zeros((n_cells, 2), dtype=np.float32)


def membership_strengths(distances: np.ndarray, n_jobs: int | None = None) -> np.ndarray:
    """:func:`_membership_strengths` of blocks of rows in ``n_jobs`` threads (the same
    numbers for any ``n_jobs``: each row is computed alone)."""
    overall_mean = float(distances.astype(np.float64).mean())
    blocks = map_threads(lambda rows: _membership_strengths(distances[rows], overall_mean),
                         row_blocks(len(distances)), n_jobs)
    return np.concatenate(blocks) if blocks else np.empty((0, distances.shape[1] - 1))


@jit
def _membership_strengths(distances: np.ndarray, overall_mean: float) -> np.ndarray:
    """UMAP's directed kNN weights ``exp(-(d_ij - rho_i) / sigma_i)`` (1 up to ``rho_i``)
    for the neighbours after the first (the cell itself), float64 (n_cells x k-1).

    ``rho_i`` is the nearest non-zero distance and ``sigma_i`` solves
    ``sum_j exp(-(d_ij - rho_i) / sigma_i) = log2(k)`` to within UMAP's tolerance
    (:func:`_bandwidth`), floored at 1e-3 times the mean distance. When more than
    ``log2(k)`` neighbours sit at ``rho_i`` no ``sigma_i`` solves it; UMAP's search then
    shrinks ``sigma_i`` to the floor, and so does this. ``overall_mean``: the mean of
    every cell's distances (the floor's scale for cells whose neighbours all coincide).
    """
    n_cells, k = distances.shape
    target = np.log2(k)
    weights = np.empty((n_cells, k - 1))
    excess = np.empty(k - 1)
    for i in range(n_cells):
        rho = np.inf
        row_mean = 0.0
        for j in range(k):
            row_mean += distances[i, j] / k
            if j > 0 and 0 < distances[i, j] < rho:
                rho = distances[i, j]
        if not np.isfinite(rho):
            rho = 0.0
        n_at_rho = 0
        for j in range(1, k):
            excess[j - 1] = max(distances[i, j] - rho, 0.0)
            n_at_rho += excess[j - 1] == 0
        sigma = 0.0 if n_at_rho > target else _bandwidth(excess, target)
        sigma = max(sigma, (row_mean if rho > 0 else overall_mean) * _MIN_K_DIST_SCALE)
        for j in range(k - 1):
            weights[i, j] = np.exp(-excess[j] / sigma) if excess[j] > 0 else 1.0
    return weights


@jit
def _bandwidth(excess: np.ndarray, target: float) -> float:
    """``sigma`` with ``sum_j exp(-excess_j / sigma)`` within UMAP's tolerance above
    ``target`` (0 when no ``sigma`` gets there, ``inf`` when every term must stay 1).

    Newton's method on ``beta = 1 / sigma`` from ``beta = 0``, where every term is 1. The
    sum is convex and decreasing in ``beta``, so no Newton step passes the root: the
    iterates climb to it without a bracket (at most ~17 steps for neighbours spread over 16
    decades, 5-9 on tissue embeddings), and scaling ``excess`` by ``c`` scales every iterate by
    ``1 / c``, so the weights are the same at any scale of the distances. A search that
    starts at ``sigma = 1`` is not: where ``exp(-excess / 1)`` underflows (distances in the
    hundreds) its Newton step overshoots to ``sigma ~ 1e20``, and halving back down
    exhausts the 64 steps.
    """
    beta = 0.0
    for _ in range(_MAX_BANDWIDTH_STEPS):
        total, slope = 0.0, 0.0
        for value in excess:
            term = np.exp(-beta * value)
            total += term
            slope += value * term
        if total - target < _SMOOTH_K_TOLERANCE:
            break
        if slope == 0:
            return 0.0
        beta += (total - target) / slope
    return 1.0 / beta if beta > 0 else np.inf


@jit
def _transpose(indices: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The directed kNN weights by target cell: CSR arrays ``(start, source, weight)`` of
    the cells pointing to each cell, sources ascending.

    A counting sort in two stable passes: first into buckets of consecutive target cells,
    then within each bucket to the final places. Scattering straight to the final places
    misses the processor's caches at almost every write (3 s at a million cells, against
    0.7 s); a bucket's part of the output stays in cache. At most ~256 buckets, of at
    least 4,096 target cells each.
    """
    n_cells, n_out = indices.shape
    n_edges = n_cells * n_out
    start = np.zeros(n_cells + 1, dtype=np.int64)
    for i in range(n_cells):
        for j in range(n_out):
            start[indices[i, j] + 1] += 1
    for i in range(n_cells):
        start[i + 1] += start[i]
    shift = 12
    while (n_cells >> shift) > 256:
        shift += 1
    n_buckets = (n_cells >> shift) + 1
    bucket_fill = np.empty(n_buckets, dtype=np.int64)  # bucket b: targets from b << shift, stored
    for b in range(n_buckets):                         # where those targets' final places begin
        bucket_fill[b] = start[min(b << shift, n_cells)]
    bucket_target = np.empty(n_edges, dtype=np.int64)
    bucket_source = np.empty(n_edges, dtype=np.int64)
    bucket_weight = np.empty(n_edges)
    for i in range(n_cells):
        for j in range(n_out):
            target = indices[i, j]
            place = bucket_fill[target >> shift]
            bucket_target[place] = target
            bucket_source[place] = i
            bucket_weight[place] = weights[i, j]
            bucket_fill[target >> shift] = place + 1
    source = np.empty(n_edges, dtype=np.int64)
    weight = np.empty(n_edges)
    filled = start[:-1].copy()
    for place in range(n_edges):
        target = bucket_target[place]
        source[filled[target]] = bucket_source[place]
        weight[filled[target]] = bucket_weight[place]
        filled[target] += 1
    return start, source, weight


@jit
def _union_rows(indices: np.ndarray, weights: np.ndarray, incoming_start: np.ndarray, incoming_from: np.ndarray,
                incoming_weight: np.ndarray, first: int, stop: int):
    """Rows ``first`` to ``stop`` of ``a + b - ab`` over the directed kNN weights ``a`` and
    their transpose ``b`` (:func:`_transpose`): each row's number of entries, columns
    (sorted within each row) and values; zero weights are dropped.

    Row ``i`` merges the cells ``i`` points to and the cells pointing to ``i``; each row
    is computed alone, so any split of the rows gives the same numbers.
    """
    n_cells, n_out = indices.shape
    n_rows = stop - first
    max_incoming = 0
    for i in range(first, stop):
        max_incoming = max(max_incoming, incoming_start[i + 1] - incoming_start[i])
    counts = np.zeros(n_rows, dtype=np.int64)
    columns = np.empty(n_rows * n_out + (incoming_start[stop] - incoming_start[first]), dtype=np.int32)
    values = np.empty(len(columns), dtype=np.float32)
    complement = np.ones(n_cells)  # (1 - a)(1 - b), accumulated per neighbour
    seen = np.zeros(n_cells, dtype=np.bool_)
    row = np.empty(n_out + max_incoming, dtype=np.int64)  # hubs are the neighbours of many cells
    nnz = 0
    for i in range(first, stop):
        n_row = 0
        for j in range(n_out):
            other = indices[i, j]
            if not seen[other]:
                seen[other] = True
                row[n_row] = other
                n_row += 1
            complement[other] *= 1.0 - weights[i, j]
        for e in range(incoming_start[i], incoming_start[i + 1]):
            other = incoming_from[e]
            if not seen[other]:
                seen[other] = True
                row[n_row] = other
                n_row += 1
            complement[other] *= 1.0 - incoming_weight[e]
        row[:n_row].sort()
        before = nnz
        for t in range(n_row):
            other = row[t]
            union = 1.0 - complement[other]
            if union > 0:
                columns[nnz] = other
                values[nnz] = union
                nnz += 1
            complement[other] = 1.0
            seen[other] = False
        counts[i - first] = nnz - before
    return counts, columns[:nnz].copy(), values[:nnz].copy()


def _fuzzy_union(indices: np.ndarray, weights: np.ndarray, n_jobs: int | None = None):
    """CSR arrays ``(indptr, columns, values)`` of the fuzzy union ``a + b - ab`` of the
    directed kNN weights and their transpose, one block of rows per thread (``n_jobs``;
    the same arrays for any number: each row is computed alone)."""
    incoming = _transpose(indices, weights)
    bounds = np.linspace(0, len(indices), min(n_threads(n_jobs), max(len(indices), 1)) + 1).astype(np.int64)
    blocks = map_threads(lambda block: _union_rows(indices, weights, *incoming, *block),
                         zip(bounds[:-1], bounds[1:]), n_jobs)
    counts, columns, values = (np.concatenate(parts) for parts in zip(*blocks))  # at least one block, maybe empty
    return np.concatenate([[0], np.cumsum(counts)]), columns, values


def fuzzy_connectivities(indices: np.ndarray, distances: np.ndarray, n_jobs: int | None = None) -> sp.csr_matrix:
    """Symmetric UMAP connectivities (fuzzy union) of a kNN graph, float32 CSR; the
    weights in ``n_jobs`` threads."""
    n_cells, k = indices.shape
    if k < 2:
        return sp.csr_matrix((n_cells, n_cells), dtype=np.float32)
    weights = membership_strengths(np.ascontiguousarray(distances, dtype=np.float32), n_jobs)
    indptr, columns, values = _fuzzy_union(np.ascontiguousarray(indices[:, 1:], dtype=np.int64), weights, n_jobs)
    return sp.csr_matrix((values, columns, indptr), shape=(n_cells, n_cells))


def knn_distances(indices: np.ndarray, distances: np.ndarray) -> sp.csr_matrix:
    """kNN distances as a CSR matrix without the self column (scanpy's ``obsp['distances']``)."""
    n_cells, k = indices.shape
    indptr = np.arange(n_cells + 1, dtype=np.int64) * (k - 1)  # all zero when k = 1: no neighbours
    matrix = sp.csr_matrix(
        (np.ascontiguousarray(distances[:, 1:]).ravel(), np.ascontiguousarray(indices[:, 1:]).ravel(), indptr),
        shape=(n_cells, n_cells),
    )
    matrix.sort_indices()
    return matrix


#: Above this many features PCA is left to ``scanpy.pp.pca`` (randomised/ARPACK solvers)
#: instead of the exact covariance route.
MAX_COVARIANCE_FEATURES = 3000
#: ``sc.pp.neighbors`` with its default ``use_rep`` uses ``X`` itself up to this many
#: features (scanpy's ``settings.N_PCS``), the PCA above.
MAX_FEATURES_FOR_X = 50


def representation(use_rep: str | None, n_features: int) -> str:
    """The representation the kNN graph of the Leiden runs is built on.

    ``None`` chooses as ``scanpy.pp.neighbors`` does with its default ``use_rep`` (and as
    the original UTAG therefore did): the message-passed features ``"X"`` when there are
    at most :data:`MAX_FEATURES_FOR_X` of them, the PCA embedding ``"X_pca"`` otherwise.
    """
    if use_rep is None:
        return "X" if n_features <= MAX_FEATURES_FOR_X else "X_pca"
    if use_rep not in ("X", "X_pca"):
        raise ValueError(f"`use_rep` must be None (scanpy's choice), 'X' or 'X_pca', got {use_rep!r}.")
    return use_rep


#: Share of the cells cut off in cliques of identical profiles (:func:`cut_off`) from which
#: the kNN graph is built over distinct profiles. Below it the cliques are a few cells
#: here and there (pairs of cells alone within ``max_dist`` share their mean; up to 5% on
#: synthetic tissue at half the usual radius), and they are merged as small domains; cells
#: mapped onto spots or binned to a grid are cut off nearly all.
CUT_OFF_SHARE = 0.1


def cut_off(distances: np.ndarray) -> np.ndarray:
    """Which cells UMAP's weights would cut off with their copies, from their kNN
    ``distances`` (itself first, ``k`` columns): cells whose every neighbour is a copy of
    their profile, and cells with a copy and more than ``log2(k)`` neighbours at the
    nearest non-zero distance or closer. No bandwidth then meets UMAP's target, it falls
    to its floor, and every farther neighbour weighs about 0: each cell links only to its
    copies and to the cells at that distance (for ``k = 15``: 3 copies, or 2 copies of a
    cell and 2 of its nearest other profile, as when cells are mapped onto spots or
    centroids binned to a grid)."""
    k = distances.shape[1]
    if k < 2:
        return np.zeros(len(distances), dtype=bool)
    others = distances[:, 1:]
    nearest_non_zero = np.where(others > 0, others, np.inf).min(axis=1)
    crowded = (others <= nearest_non_zero[:, None]).sum(axis=1) > np.log2(k)
    return (others[:, 0] == 0) & (crowded | (others[:, -1] == 0))


def cut_off_cells(distances: np.ndarray, slides: np.ndarray | None = None) -> int:
    """How many cells :func:`cut_off` finds, when they would fragment the kNN graph: at
    least :data:`CUT_OFF_SHARE` of the cells of a slide (``slides``: each cell's slide
    code; ``None``: one slide), or any cell whose every neighbour is a copy; else 0 (a
    few such cells are merged as small domains)."""
    cut = np.concatenate([cut_off(distances[rows]) for rows in row_blocks(len(distances))]) \
        if len(distances) else np.zeros(0, dtype=bool)
    isolated = distances.shape[1] > 1 and bool((distances[:, -1] == 0).any())
    slides = np.zeros(len(cut), dtype=np.int64) if slides is None else np.asarray(slides)
    shares = np.bincount(slides, weights=cut) / np.maximum(np.bincount(slides), 1) if len(cut) else np.zeros(1)
    return int(cut.sum()) if isolated or shares.max() >= CUT_OFF_SHARE else 0


def knn_graph(points: np.ndarray, n_neighbors: int, knn_method: str = "auto", random_state: int = 0,
              n_jobs: int | None = None, slides: np.ndarray | None = None):
    """``(connectivities, distances, tied, method)``: the UMAP-weighted kNN graph of
    ``points``, built over distinct profiles when many cells share one (``tied`` cells),
    and the search used (``"exact"`` or ``"approximate"``, :func:`exact_search`);
    ``n_jobs`` threads (the same graph for any number); ``slides``: each point's slide code
    (:func:`cut_off_cells`)."""
    random_state = check.seed(random_state)
    k = min(n_neighbors, len(points))
    # decided once, on every cell, for the search over distinct profiles too
    method = "exact" if exact_search(points, k, knn_method) else "approximate"
    indices, distances = nearest_neighbors(points, k, method, random_state, n_jobs)
    tied = cut_off_cells(distances, slides)
    if tied:
        logger.info("%d cells share their profile (identical neighbourhoods) with enough other cells to be "
                    "cut off with them in the kNN graph; building it over distinct profiles so that they do "
                    "not form disconnected cliques", tied)
        indices, distances = distinct_profile_neighbors(points, k, method, random_state, n_jobs)
    return fuzzy_connectivities(indices, distances, n_jobs), knn_distances(indices, distances), tied, method


@dataclass
class Embedding:
    """What :func:`embed` computes; ``utag()`` stores it where scanpy would."""

    pca: dict  # "embedding", "components", "variance", "variance_ratio", "params"
    connectivities: sp.csr_matrix  # kNN graph on the representation ``params["use_rep"]``
    distances: sp.csr_matrix
    params: dict  # uns['neighbors']['params']
    rows: np.ndarray | None = None  # the cells the kNN graph is of (a sketch); None: every cell

    def of_a_sample(self, n_cells: int) -> bool:
        """Whether the kNN graph is of fewer than all ``n_cells`` cells (a sketch of them)."""
        return self.rows is not None and len(self.rows) < n_cells

    def to_store(self, n_cells: int) -> "Embedding":
        """What the result keeps: everything but a kNN graph of a sample of the ``n_cells``
        cells, which no cell outside the sample could be looked up in."""
        if self.of_a_sample(n_cells):
            return replace(self, connectivities=None, distances=None)
        return self


def _scanpy_pca(features, n_comps: int, random_state: int, pca_kwargs: dict) -> dict:
    import scanpy as sc
    from anndata import AnnData

    holder = AnnData(features)
    sc.pp.pca(holder, **{"n_comps": n_comps, "random_state": random_state, **pca_kwargs})
    return {"embedding": holder.obsm["X_pca"], "components": holder.varm["PCs"], **holder.uns["pca"]}


def _fit_pca(features, n_comps: int, random_state: int, pca_kwargs: dict) -> dict:
    """The PCA :func:`embed` describes. When no feature varies (one cell, or every cell
    with the same profile) there are no principal directions and scanpy's solvers fail:
    the embedding is all zeros, with the first unit vectors as components. A single
    feature, which scanpy's solvers also refuse, goes through :func:`pca`."""
    n_cells, n_features = features.shape
    if not column_range(features).any():  # every row the same
        logger.warning("No feature varies across the %d cells (every cell has the same profile): "
                       "the PCA embedding is all zeros", n_cells)
        return {
            "embedding": np.zeros((n_cells, n_comps), dtype=np.float32),
            "components": np.eye(n_features, n_comps, dtype=np.float32),
            "variance": np.zeros(n_comps),
            "variance_ratio": np.zeros(n_comps),
            "params": {"zero_center": True, "method": "none (no feature varies)"},
        }
    if (pca_kwargs or n_features > MAX_COVARIANCE_FEATURES) and n_features > 1:
        return _scanpy_pca(features, n_comps, random_state, pca_kwargs)
    return {**pca(features, n_comps), "params": {"zero_center": True, "method": "covariance"}}


def embed(features, n_comps: int = 10, pca_kwargs: dict | None = None, n_neighbors: int = 15,
          knn_method: str = "auto", random_state: int = 0, use_rep: str = "X_pca", watch=None, rows=None,
          n_jobs: int | None = None, slides: np.ndarray | None = None) -> Embedding:
    """PCA of ``features`` (message-passed, cells x features) and the kNN graph.

    ``n_comps`` (or ``pca_kwargs['n_comps']``, as ``utag()`` takes it) is capped below the
    numbers of features and cells (but at least 1); any other ``pca_kwargs`` (or more than
    :data:`MAX_COVARIANCE_FEATURES` features) send the PCA through ``scanpy.pp.pca``,
    unless there is one feature or none varies (:func:`_fit_pca`). The kNN graph is built
    on ``use_rep`` (``"X"``: the features, ``"X_pca"``: the PCA). ``watch``: a
    :class:`utag._progress.Stopwatch`. ``rows``: build the kNN graph on these cells only
    (a sketch; the PCA is of every cell); kept in ``rows``. ``n_jobs``: threads for the
    kNN graph (``None``: every core; the same graph for any number). ``slides``: each
    cell's slide code (where cells cut off with copies of their profile are counted,
    :func:`cut_off_cells`). It is :func:`fit_pca` then :func:`neighbour_graphs`.
    """
    random_state = check.seed(random_state)
    n_neighbors = check.as_int("n_neighbors", n_neighbors)
    fitted = fit_pca(features, n_comps, pca_kwargs, random_state, watch)
    return neighbour_graphs(fitted, features, n_neighbors, knn_method, random_state, use_rep, watch, rows, n_jobs,
                            slides)


def fit_pca(features, n_comps: int = 10, pca_kwargs: dict | None = None, random_state: int = 0,
            watch=None) -> dict:
    """The PCA :func:`embed` takes of every cell (``n_comps`` capped, see there): a dict
    with the float32 ``"embedding"``, ``"components"``, ``"variance"``,
    ``"variance_ratio"`` and ``"params"``, timed as "PCA" by ``watch``."""
    watch = watch or Stopwatch()
    pca_kwargs = dict(pca_kwargs or {})
    n_comps = pca_kwargs.pop("n_comps", n_comps)  # as utag() takes it (capped; no reason for scanpy's PCA)
    with watch("PCA"):
        fitted = _fit_pca(features, capped_n_comps(n_comps, *features.shape), check.seed(random_state), pca_kwargs)
        fitted["embedding"] = np.ascontiguousarray(fitted["embedding"], dtype=np.float32)
    return fitted


def capped_n_comps(n_comps: int, n_cells: int, n_features: int) -> int:
    """``n_comps`` capped below the numbers of features and cells (at least 1), with a warning."""
    capped = max(1, min(n_comps, n_features - 1, n_cells - 1))
    if capped < n_comps:
        logger.warning("pca_kwargs['n_comps']=%d capped to %d (%d features, %d cells)",
                       n_comps, capped, n_features, n_cells)
    return capped


def neighbour_graphs(fitted: dict, features, n_neighbors: int = 15, knn_method: str = "auto", random_state: int = 0,
                     use_rep: str = "X_pca", watch=None, rows=None, n_jobs: int | None = None,
                     slides: np.ndarray | None = None) -> Embedding:
    """The kNN graph of :func:`embed`, given its PCA ``fitted``; ``features`` are read
    (the ``rows`` of them) only when ``use_rep`` is ``"X"``, and may then be any array
    whose rows numpy can read, a Dask array included. ``slides``: every cell's slide code."""
    watch = watch or Stopwatch()
    n_cells = len(fitted["embedding"])
    points = fitted["embedding"]
    if use_rep == "X":
        points = features if rows is None else features[rows]
        points = np.ascontiguousarray(points.toarray() if sp.issparse(points) else points, dtype=np.float32)
    elif rows is not None:
        points = points[rows]
    n_graph = n_cells if rows is None else len(rows)
    k = min(n_neighbors, n_graph)
    with watch("kNN graph"):
        connectivities, distances, tied, search = knn_graph(points, k, knn_method, random_state, n_jobs,
                                                            slides if slides is None or rows is None else slides[rows])
    params = {"n_neighbors": k, "method": "umap", "metric": "euclidean", "use_rep": use_rep,
              "random_state": random_state, "distinct_profiles": bool(tied), "knn": search}
    return Embedding(fitted, connectivities, distances, params, rows)
