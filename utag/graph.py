"""Step 1 of UTAG: the spatial graph.

Cells of one slide are connected when their centroids lie within ``max_dist`` of each
other (inclusive), every cell is connected to itself, and slides are combined
block-diagonally so that no edge crosses slides. squidpy builds each slide's graph
(:class:`squidpy.gr.neighbors.RadiusBuilder` with ``set_diag=True``, what
``squidpy.gr.spatial_neighbors_radius(adata, radius=max_dist, set_diag=True,
library_key=slide_key)`` runs per slide), so what utag stores is what squidpy stores (the
radius with a relative slack of :data:`INCLUSIVE_SLACK`, see there).
The options of :func:`spatial_graph` (:data:`SPATIAL_GRAPHS`) build instead each cell's
``n_neighbors`` nearest cells (``KNNBuilder``) or the Delaunay triangulation with edges
longer than ``max_dist`` cut (``DelaunayBuilder``).

Before any graph is built its number of edges is estimated from a sample of cells
(:func:`estimate_pairs`, a fraction of a second at a million cells), and
:func:`check_graph_fits` raises :class:`GraphTooLargeError`, with a ``max_dist`` that
would fit, when the graph would not fit in memory (:func:`check_knn_graph_fits`: the
same for the kNN graph, naming an ``n_spatial_neighbors`` that would fit).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import threading
import warnings

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial import cKDTree

from . import _validation as check
from ._memory import available_memory
from ._parallel import map_processes

__all__ = [
    "GraphTooLargeError",
    "mean_neighbours",
    "check_graph_fits",
    "check_knn_graph_fits",
    "combine_slides",
    "count_edges",
    "estimate_pairs",
    "LOST_WORKER_HINT",
    "per_slide",
    "POOL_MIN_CELLS",
    "radius_graph",
    "spatial_graph",
    "SPATIAL_GRAPHS",
    "slide_cells",
    "slide_pairs",
    "spatial_neighbors",
    "worker_processes",
]

logger = logging.getLogger(__name__)


#: Kinds of spatial graph (``utag(spatial_graph=...)``): cells within ``max_dist`` (the
#: published method), each cell's ``n_spatial_neighbors`` nearest cells, or the Delaunay
#: triangulation with edges longer than ``max_dist`` removed. All include self-loops.
SPATIAL_GRAPHS = ("radius", "knn", "delaunay")
#: Relative slack on ``max_dist`` when edges are kept or cut: cells exactly ``max_dist``
#: apart (common with whole-pixel centroids and a whole ``max_dist``) stay linked in any
#: units. Computed in float64, their distance after scaling coordinates and ``max_dist``
#: together (pixels to um) can come out a rounding error above ``max_dist``; dropping
#: those edges changed the domains of the bundled spleen subset. With whole-pixel
#: coordinates and a whole ``max_dist`` below 20,000 px the next possible distance is
#: more than this above ``max_dist``, so those graphs stay exactly squidpy's.
INCLUSIVE_SLACK = 1e-9


#: Slides of fewer cells build their graph in one thread. For about ten cells or fewer
#: scikit-learn's neighbour search (under squidpy) takes its brute-force route, which
#: starts its OpenMP threads for every slide: in worker processes, whose threads contend
#: for the same cores, that took several times as long as the graph itself
#: (``benchmarks/tiny_slides.py``). Larger slides search a tree and keep their threads.
ONE_THREAD_BELOW_CELLS = 50

#: The thread limit is the whole process's: threads that build small slides' graphs at
#: once (Dask's threaded scheduler) take turns, so that each restores the limits it found.
_ONE_THREAD = threading.Lock()


@functools.cache
def _thread_controller():
    """One controller per process: making one scans the loaded libraries (~10 ms)."""
    from threadpoolctl import ThreadpoolController  # scikit-learn's dependency

    return ThreadpoolController()


@contextlib.contextmanager
def _one_thread():
    """Native thread pools (OpenMP, BLAS) limited to one thread inside the block."""
    with _ONE_THREAD, _thread_controller().limit(limits=1):
        yield


def mean_neighbours(n_edges: float, n_cells: int) -> float:
    """Neighbours per cell, on average, of a graph of ``n_edges`` pairs (self-loops not counted)."""
    return 2 * n_edges / max(n_cells, 1)


def _inclusive(max_dist: float) -> float:
    """The radius edges are searched and cut with: ``max_dist`` and its rounding slack."""
    return float(max_dist) * (1 + INCLUSIVE_SLACK)


def _builder(max_dist: float, kind: str = "radius", n_neighbors: int = 6):
    with warnings.catch_warnings():  # squidpy's docstring templates (docrep) warn at import, in every worker
        warnings.filterwarnings("ignore", message="'.*' is not a valid key!", category=SyntaxWarning)
        from squidpy.gr.neighbors import DelaunayBuilder, KNNBuilder, RadiusBuilder

    if kind == "knn":
        return KNNBuilder(n_neighs=int(n_neighbors), set_diag=True)
    if kind == "delaunay":
        return DelaunayBuilder(radius=(0.0, float(max_dist)), set_diag=True)
    return RadiusBuilder(radius=float(max_dist), set_diag=True)


def radius_graph(coords: np.ndarray, max_dist: float) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """One slide's radius graph, built by squidpy: ``(connectivities, distances)``.

    ``connectivities``: float32 0/1 CSR, symmetric, with self-loops; ``distances``:
    float64 CSR of the Euclidean lengths of the same edges (zero on the diagonal).
    """
    return spatial_graph(coords, max_dist)


def spatial_graph(coords: np.ndarray, max_dist: float, kind: str = "radius",
                  n_neighbors: int = 6) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """One slide's spatial graph of kind ``kind`` (see :data:`SPATIAL_GRAPHS`), built by
    squidpy (``RadiusBuilder``, ``KNNBuilder``, ``DelaunayBuilder``): ``(connectivities,
    distances)`` as :func:`radius_graph` returns them. The kNN graph is directed (a cell's
    row holds its ``n_neighbors`` nearest cells); the others are symmetric.

    Examples
    --------
    >>> coords = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [10.0, 10.0]])
    >>> spatial_graph(coords, max_dist=2.0, kind="delaunay")[0].toarray().astype(int)
    array([[1, 1, 1, 0],
           [1, 1, 1, 0],
           [1, 1, 1, 0],
           [0, 0, 0, 1]])
    """
    coords = np.ascontiguousarray(coords, dtype=np.float64)
    if kind == "knn" and len(coords) <= n_neighbors:  # every cell is a neighbour of every other
        kind, max_dist = "radius", np.inf
    if kind == "delaunay":
        return _delaunay_graph(coords, _inclusive(max_dist))
    builder = _builder(_inclusive(max_dist), kind, n_neighbors)
    with _one_thread() if len(coords) < ONE_THREAD_BELOW_CELLS else contextlib.nullcontext():
        return builder.build(coords)


def _delaunay_graph(coords: np.ndarray, max_dist: float) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """squidpy's Delaunay graph (edges longer than ``max_dist`` cut) of the distinct
    positions, constant coordinates (a flat z) left out; cells at the same position share
    its neighbours and are linked to each other (Qhull would leave all but one out), and so
    do cells at a position Qhull leaves out of the triangulation, too close to another to
    tell apart (about 1e-13 of the slide's size), with those of the nearest position in it.
    Positions Qhull cannot triangulate, on a line or (in 3-D) a tilted plane, get the
    Delaunay graph within it (:func:`_flat_delaunay`)."""
    from scipy.spatial import QhullError

    points, position = np.unique(coords, axis=0, return_inverse=True)
    position = position.ravel()
    varying = np.ptp(points, axis=0) > 0 if len(points) else np.ones(coords.shape[1], dtype=bool)
    reduced = points[:, varying]
    # moved next to the origin by whole numbers (exact for integer and most pixel coordinates):
    # Qhull loses precision when the slide lies far from it (an offset of 1e6 cell spacings)
    reduced = np.ascontiguousarray(reduced - np.floor(reduced.min(axis=0)) if len(reduced) else reduced)
    try:  # the whole triangulation: its edges are cut below, once left-out positions have their place
        connectivities, _ = _builder(np.inf, "delaunay").build(reduced)
    except (QhullError, ValueError):  # fewer than 3 positions, or all on a line (in 3-D: on a plane)
        connectivities = _flat_delaunay(reduced)
    if connectivities is None:
        logger.warning("Delaunay triangulation failed for %d positions; using the radius graph instead",
                       len(points))
        connectivities, _ = _builder(max_dist).build(np.ascontiguousarray(points))
        cut = False
    else:
        position = _triangulated_positions(connectivities, reduced)[position]
        cut = True
    # each cell takes the edges of its position (cells at one position are linked through its self-loop)
    at = sp.csr_matrix((np.ones(len(coords)), (np.arange(len(coords)), position)), shape=(len(coords), len(points)))
    pairs = sp.csr_matrix(at @ sp.csr_matrix(connectivities) @ at.T)
    pairs.sum_duplicates()
    pairs.sort_indices()
    rows, columns = np.repeat(np.arange(len(coords)), np.diff(pairs.indptr)), pairs.indices
    lengths = np.linalg.norm(coords[rows] - coords[columns], axis=1)
    if cut:  # what squidpy's DelaunayBuilder(radius=max_dist) cuts: edges longer than max_dist
        kept = (rows == columns) | (lengths <= max_dist)
        rows, columns, lengths = rows[kept], columns[kept], lengths[kept]
    off_diagonal = rows != columns
    connectivities = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, columns)), shape=pairs.shape)
    distances = sp.csr_matrix((lengths[off_diagonal], (rows[off_diagonal], columns[off_diagonal])),
                              shape=pairs.shape)
    return connectivities, distances


def _flat_delaunay(points: np.ndarray) -> sp.csr_matrix | None:
    """The Delaunay graph (self-loops included) of positions Qhull cannot triangulate
    because they span fewer dimensions than they have: one or two positions, positions on
    a line (each linked to the next along it: a circle through two others holds the ones
    between them) or, in 3-D, on a tilted plane (the triangulation within the plane).
    ``None`` when they are not flat."""
    if len(points) < 2:
        return sp.identity(len(points), dtype=np.float32, format="csr")
    centred = points - points.mean(axis=0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    rank = int((singular > 1e-9 * singular[0]).sum())
    if rank >= 2:  # a plane in 3-D: triangulate within it
        from scipy.spatial import QhullError

        if rank == points.shape[1]:  # not flat: Qhull failed for another reason
            return None
        try:
            return _builder(np.inf, "delaunay").build(np.ascontiguousarray(centred @ axes[:rank].T))[0]
        except (QhullError, ValueError):
            return None
    order = np.argsort(centred @ axes[0])
    step = sp.csr_matrix((np.ones(len(points) - 1), (order[:-1], order[1:])), shape=(len(points),) * 2)
    return sp.csr_matrix(step + step.T + sp.identity(len(points)), dtype=np.float32)


def _triangulated_positions(connectivities: sp.csr_matrix, points: np.ndarray) -> np.ndarray:
    """Each position's place in the triangulation ``connectivities`` of ``points``: itself,
    or, for a position Qhull left out (no edge but its self-loop), the nearest one in it."""
    place = np.arange(len(points))
    left_out = np.diff(connectivities.indptr) <= 1
    if left_out.any() and not left_out.all():
        vertices = np.flatnonzero(~left_out)
        place[left_out] = vertices[cKDTree(points[vertices]).query(points[left_out])[1]]
    return place


def graph_params(max_dist: float, kind: str = "radius", n_neighbors: int = 6) -> dict:
    """The parameters squidpy records in ``uns['spatial_neighbors']['params']`` (tuples
    as lists, which ``.h5ad`` files can hold)."""
    params = _builder(max_dist, kind, n_neighbors).uns_params()
    return {key: list(value) if isinstance(value, tuple) else value for key, value in params.items()}


def combine_slides(graphs: list[tuple[sp.csr_matrix, sp.csr_matrix]], slides: list[np.ndarray],
                   max_dist: float) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """The slides' graphs as one block-diagonal graph in the input's cell order, as squidpy
    combines libraries (``slides``: each slide's cell indices, as :func:`slide_cells` gives)."""
    return _builder(max_dist).combine(graphs, np.concatenate(slides))


def count_edges(connectivities: sp.csr_matrix, kind: str = "radius") -> int:
    """Pairs of distinct cells one slide's graph of kind ``kind`` (with every self-loop)
    links; a kNN graph's pair counts once whether one or both cells hold the other."""
    if kind == "knn":  # directed: i may hold j without j holding i
        connectivities = sp.csr_matrix(connectivities).maximum(sp.csr_matrix(connectivities).T)
    return (connectivities.nnz - connectivities.shape[0]) // 2


def upper_pairs(connectivities: sp.csr_matrix) -> np.ndarray:
    """Edges ``(i, j)``, ``i < j``, of a symmetric graph (self-loops left out); shape (n_edges, 2)."""
    upper = sp.triu(connectivities, k=1, format="coo")
    return np.column_stack([upper.row, upper.col]).astype(np.int64, copy=False)


def slide_cells(codes: np.ndarray) -> list[np.ndarray]:
    """Indices of the cells of each slide, ascending within a slide, slides in code order."""
    order = np.argsort(codes, kind="stable")
    boundaries = np.flatnonzero(np.diff(codes[order])) + 1
    return np.split(order, boundaries)


# --- memory safety --------------------------------------------------------------------
# A radius graph has about n * density * pi * max_dist^2 / 2 pairs until max_dist reaches
# the slide's size, then n^2 / 2: a max_dist as large as a 200,000-cell slide asks for
# 2e10 pairs (~2 TB), and the operating system kills the process instead of Python
# raising MemoryError. Every function that builds a radius graph therefore estimates its
# pairs first (check_graph_fits) and raises GraphTooLargeError if they would not fit.
#
# Peak memory beyond what the process held before the call, per pair (i < j) and per
# cell: benchmarks/graph_memory.py measures it (VmHWM minus VmRSS in a fresh process per
# run, one uniform slide of 100,000 or 300,000 cells at max_dist 20, 40, 80) and fits both;
# docs/generated/performance_graph-memory.md has its table. squidpy's radius graph
# dominates every route: scikit-learn's per-cell neighbour arrays (index and distance),
# their concatenation, and the COO-to-CSR connectivities and distances, about 180 bytes
# per pair and 470 per cell; message passing adds the slide's float32 features and its
# result. The constants below are at or above what was measured.
MESSAGE_PASSING_BYTES_PER_PAIR = 200
MESSAGE_PASSING_BYTES_PER_CELL = 320
MESSAGE_PASSING_BYTES_PER_FEATURE = 8  # per cell and feature
SPATIAL_GRAPH_BYTES_PER_PAIR = 200
#: what utag(keep_spatial_connectivity=True) adds: the stored graph (float32 connectivities
#: and float64 distances, both directions) and the copy made when slides are combined
STORED_GRAPH_BYTES_PER_PAIR = 80
EDGE_LIST_BYTES_PER_PAIR = 200
GRAPH_BYTES_PER_CELL = 500
#: What to change when a slide's worker process dies (most likely out of memory).
LOST_WORKER_HINT = ("pass fewer `processes` (processes=1 runs one slide at a time) or a smaller `max_dist`, "
                    "or split the slide")
# Share of the available memory a graph may take: the rest is left to the other stages
# and to other processes. Read at each check, so it can be changed at run time.
MEMORY_FRACTION = 0.8
# The estimate's KD-tree holds at most this many cells: a tree of 1,000,000 cells takes
# 0.3 s to build and up to 0.7 s to count in, one of 100,000 a tenth of that.
_ESTIMATE_TREE_CELLS = 100_000


class GraphTooLargeError(ValueError, MemoryError):
    """The spatial graph of ``max_dist`` would not fit in the available memory.

    Attributes: ``max_dist``, ``n_pairs`` (estimated spatial edges), ``required`` and
    ``available`` (bytes), and ``suggested_max_dist`` (the largest round value whose
    graph fits, or ``None`` if none does).
    """

    def __init__(self, message: str, max_dist: float, n_pairs: float, required: float, available: float,
                 suggested_max_dist: float | None):
        super().__init__(message)
        self.max_dist = max_dist
        self.n_pairs = n_pairs
        self.required = required
        self.available = available
        self.suggested_max_dist = suggested_max_dist


def estimate_pairs(coords: np.ndarray, codes: np.ndarray, max_dist: float, sample_size: int = 2_000,
                   random_state: int = 0) -> float:
    """Estimated number of radius pairs of all slides together, without building the graph.

    A seeded random ``sample_size`` cells are drawn from a seeded random 100,000 (or all)
    cells, and their neighbours within ``max_dist`` among those 100,000 counted with one
    dual-tree ``cKDTree.count_neighbors``, which counts pairs of whole KD-tree nodes at
    once and so stays fast even when ``max_dist`` spans the slides. Slides are first
    laid side by side, further apart than ``max_dist``, so one tree holds them all and
    no pair crosses slides. With ``m`` sampled cells, ``b`` in the tree, ``n`` in all and
    ``C`` pairs counted (each sampled cell with itself included), the estimate
    ``(C - m) n (n - 1) / (2 m (b - 1))`` is unbiased for the number of pairs
    :func:`slide_pairs` returns.

    Examples
    --------
    >>> from utag.datasets import synthetic_tissue
    >>> adata = synthetic_tissue(n_cells=20_000, n_slides=2, random_state=0)
    >>> coords, codes = adata.obsm["spatial"], adata.obs["roi"].cat.codes.to_numpy()
    >>> estimate = estimate_pairs(coords, codes, max_dist=20)
    >>> exact = len(slide_pairs(coords, codes, max_dist=20))
    >>> bool(abs(estimate / exact - 1) < 0.05)
    True
    """
    random_state = check.seed(random_state)
    n_cells = len(codes)
    if n_cells < 2 or not max_dist >= 0:  # NaN: no pairs
        return 0.0
    rng = np.random.default_rng(random_state)
    tree_cells = rng.choice(n_cells, size=min(n_cells, _ESTIMATE_TREE_CELLS), replace=False)
    n_sampled = min(sample_size, len(tree_cells))
    points, radius = _slides_side_by_side(coords[tree_cells], codes[tree_cells], max_dist)
    tree = cKDTree(points, balanced_tree=False, compact_nodes=False)
    sample = cKDTree(points[:n_sampled], balanced_tree=False, compact_nodes=False)
    counted = sample.count_neighbors(tree, radius) - n_sampled
    return counted * n_cells * (n_cells - 1) / (2 * n_sampled * (len(tree_cells) - 1))


def _slides_side_by_side(points: np.ndarray, codes: np.ndarray, max_dist: float) -> tuple[np.ndarray, float]:
    """Slides shifted along x into disjoint boxes more than ``max_dist`` apart.

    Also returns the radius to count with: ``max_dist``, or just over the largest
    slide's diagonal when that is smaller (the same pairs, counted faster).
    """
    _, slide = np.unique(codes, return_inverse=True)
    n_slides = slide.max() + 1
    low = np.full((n_slides, points.shape[1]), np.inf)
    high = np.full((n_slides, points.shape[1]), -np.inf)
    np.minimum.at(low, slide, points)
    np.maximum.at(high, slide, points)
    diagonal = float(np.linalg.norm(high - low, axis=1).max())
    width = high[:, 0] - low[:, 0] + 2 * diagonal + 1  # gap > any radius used
    start = np.concatenate([[0.0], np.cumsum(width)[:-1]])
    shifted = points - low[slide]
    shifted[:, 0] += start[slide]
    return shifted, min(max_dist, diagonal * (1 + 1e-6))


def check_knn_graph_fits(codes: np.ndarray, n_neighbors: int, max_dist: float,
                         bytes_per_pair: float = MESSAGE_PASSING_BYTES_PER_PAIR, bytes_per_cell: float = 0.0,
                         fraction: float | None = None) -> float | None:
    """Raise :class:`GraphTooLargeError` if the graph linking each cell to its
    ``n_neighbors`` nearest cells of its slide would not fit in memory (as
    :func:`check_graph_fits` for the radius graph; the pairs are known exactly: at most
    ``n_neighbors`` per cell, fewer on a slide of fewer cells). The error names
    ``n_spatial_neighbors``, the keyword of ``utag()``, and the largest value that fits.
    Returns the number of (directed) edges, or ``None`` when the available memory is unknown."""
    memory = _memory_budget(fraction)
    if memory is None:
        return None
    available, budget, fraction = memory
    sizes = np.bincount(np.asarray(codes))
    # directed edges, each held once, where bytes_per_pair holds a radius pair in both directions
    n_edges = float(np.minimum(n_neighbors, np.maximum(sizes - 1, 0)) @ sizes)
    required = bytes_per_pair * n_edges / 2 + bytes_per_cell * len(codes)
    if required <= budget:
        return n_edges
    fitting = int(2 * (budget - bytes_per_cell * len(codes)) // (bytes_per_pair * len(codes))) if len(codes) else 0
    hint = (f"pass `n_spatial_neighbors={fitting}` or fewer" if fitting >= 1
            else "no number of spatial neighbours fits: use a machine with more memory or fewer cells")
    raise GraphTooLargeError(_too_large(f"`n_spatial_neighbors={n_neighbors}`", n_edges, required, available,
                                        fraction) + f": {hint}.", max_dist, n_edges, required, available, None)


def _memory_budget(fraction: float | None) -> tuple[float, float, float] | None:
    """``(available bytes, the bytes a graph may take, fraction)`` (``fraction``: default
    :data:`MEMORY_FRACTION`), or ``None`` when the available memory is unknown (then no
    graph's size is checked)."""
    fraction = MEMORY_FRACTION if fraction is None else fraction
    available = available_memory()
    if available is None:
        logger.info("available memory unknown: the spatial graph's size is not checked")
        return None
    return available, fraction * available, fraction


def _too_large(setting: str, n_edges: float, required: float, available: float, fraction: float) -> str:
    """The first sentence of a :class:`GraphTooLargeError` (no full stop): ``setting``
    (e.g. ``"`max_dist=150`"``) implies too many edges for the memory."""
    return (f"{setting} implies about {_format_count(n_edges)} spatial edges (~{_format_bytes(required)} to "
            f"build the graph), but only {_format_bytes(available)} of memory is available ({fraction:.0%} of it "
            "may be used); building it would get the process killed")


def check_graph_fits(coords: np.ndarray, codes: np.ndarray, max_dist: float,
                     bytes_per_pair: float = MESSAGE_PASSING_BYTES_PER_PAIR, bytes_per_cell: float = 0.0,
                     fraction: float | None = None, radius_per_max_dist: float = 1.0) -> float | None:
    """Raise :class:`GraphTooLargeError` if the radius graph of ``max_dist`` would not fit.

    ``radius_per_max_dist``: the graph's radius over ``max_dist`` (above 1 for the
    multiscale flavour, see :func:`utag.multiscale.graph_radius`); the error still names
    ``max_dist`` values, as the user passes them.

    The graph needs about ``bytes_per_pair * pairs + bytes_per_cell * n_cells`` bytes
    (the constants above say what each route measured), ``pairs`` from
    :func:`estimate_pairs`; it must fit in ``fraction`` (default
    ``utag.graph.MEMORY_FRACTION``, 0.8) of :func:`available_memory`.
    The error names the number of edges ``max_dist`` implies and the largest round
    ``max_dist`` whose graph fits (verified with its own estimate).

    Returns
    -------
    The estimated number of pairs, or ``None`` when the available memory is unknown
    (then nothing is checked).
    """
    memory = _memory_budget(fraction)
    if memory is None:
        return None
    available, budget, fraction = memory
    n_pairs = float(estimate_pairs(coords, codes, max_dist * radius_per_max_dist))
    required = bytes_per_pair * n_pairs + bytes_per_cell * len(codes)
    logger.info("max_dist=%g: about %s spatial edges (~%s), %s of memory available", max_dist,
                _format_count(n_pairs), _format_bytes(required), _format_bytes(available))
    if required <= budget:
        return n_pairs
    max_pairs = (budget - bytes_per_cell * len(codes)) / bytes_per_pair
    suggested, suggested_pairs = _fitting_max_dist(coords, codes, max_dist, n_pairs, max_pairs, radius_per_max_dist)
    radius = "" if radius_per_max_dist == 1 else f" (a spatial graph of radius {max_dist * radius_per_max_dist:g})"
    message = _too_large(f"`max_dist={max_dist:g}`{radius}", n_pairs, required, available, fraction) + ". "
    if suggested is None:
        message += "No max_dist fits: free memory, or run fewer cells or slides at a time. "
    else:
        message += (f"`max_dist={suggested:g}` would give about {_format_count(suggested_pairs)} edges "
                    f"(~{_format_bytes(bytes_per_pair * suggested_pairs + bytes_per_cell * len(codes))}). ")
    message += ("`max_dist` is a distance in the units of `obsm['spatial']`: for IMC (1 px = 1 um) 10-40 is "
                "typical; see `utag.tuning.max_dist_report` to compare values.")
    raise GraphTooLargeError(message, max_dist, n_pairs, required, available, suggested)


def _fitting_max_dist(coords: np.ndarray, codes: np.ndarray, max_dist: float, n_pairs: float,
                      max_pairs: float, radius_per_max_dist: float = 1.0) -> tuple[float | None, float | None]:
    """Largest ``max_dist`` with 2 significant digits whose estimated pairs (at radius
    ``max_dist * radius_per_max_dist``) fit ``max_pairs``."""
    if max_pairs <= 0:
        return None, None
    # beyond the diagonal of all coordinates (slides may share a frame) every pair is connected
    candidate = min(max_dist, float(np.linalg.norm(np.ptp(coords, axis=0))) / radius_per_max_dist)
    for _ in range(30):
        # pairs grow about as max_dist^2 while it is smaller than the slides
        candidate = _round_down(candidate * 0.95 * math.sqrt(max_pairs / n_pairs))
        if candidate <= 0:
            break
        n_pairs = float(estimate_pairs(coords, codes, candidate * radius_per_max_dist))
        if n_pairs <= max_pairs:
            return candidate, n_pairs
    return None, None


def _round_down(value: float, digits: int = 2) -> float:
    """``value`` rounded down to ``digits`` significant digits (0 if not positive)."""
    if not value > 0:
        return 0.0
    step = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
    return float(f"{math.floor(value / step * (1 + 1e-12)) * step:.{digits}g}")


def _format_count(count: float) -> str:
    """``1.2e10`` style for large counts, digits with thousands separators otherwise."""
    if count < 1e6:
        return f"{count:,.0f}"
    mantissa, exponent = f"{count:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _format_bytes(n_bytes: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= size:
            return f"{n_bytes / size:.1f} {unit}"
    return f"{n_bytes:.0f} bytes"


#: With ``processes=None`` (one worker process per core), inputs of fewer cells are done
#: in this process: starting the workers (each imports squidpy) takes seconds on a first
#: call, more than they save on such an input's slides (``benchmarks/worker_processes.py``).
POOL_MIN_CELLS = 250_000


def worker_processes(processes: int | None, n_cells: int) -> int | None:
    """The worker processes for the slides of ``n_cells`` cells when ``processes`` are
    asked for: 1 (this process) instead of ``None`` (one per core) below
    :data:`POOL_MIN_CELLS`; a number of ``processes`` is kept.

    Examples
    --------
    >>> worker_processes(None, 20_000), worker_processes(None, 10**6), worker_processes(2, 20_000)
    (1, None, 2)
    """
    return 1 if processes is None and n_cells < POOL_MIN_CELLS else processes


def per_slide(function, items: list, *args, processes: int | None = None, progress: bool = False,
              names: list | None = None) -> list:
    """``function(item, *args)`` for every slide's ``item``, in a pool of ``processes``
    worker processes (default: one per core, at most one per slide; 1: no pool);
    ``progress`` shows a bar over the slides.

    A worker that dies (the out-of-memory killer's way) raises
    :class:`utag._parallel.WorkerLostError` naming its slide (``names``, default the
    slide's position) within seconds, and Ctrl-C stops every worker.
    """
    n_workers = min(len(items), processes or os.cpu_count() or 1)
    logger.info("%d slide(s)%s", len(items), f" in {n_workers} processes" if n_workers > 1 else "")
    return map_processes(function, items, *args, n_workers=n_workers, names=names, what="slide",
                         hint=LOST_WORKER_HINT, desc="slides", progress=progress)


def _upper_pairs_of_slide(coords: np.ndarray, max_dist: float) -> np.ndarray:
    return upper_pairs(radius_graph(coords, max_dist)[0])


def slide_pairs(coords: np.ndarray, codes: np.ndarray, max_dist: float,
                bytes_per_pair: float = EDGE_LIST_BYTES_PER_PAIR, processes: int | None = None) -> np.ndarray:
    """Radius pairs ``(i, j)``, ``i < j``, of every slide, as global cell indices (no
    cross-slide pairs); the slides' graphs are built in ``processes`` worker processes
    (:func:`worker_processes`).

    Raises :class:`GraphTooLargeError` first if the pairs, at ``bytes_per_pair`` bytes
    each for what the caller does with them, would not fit in memory.
    """
    check_graph_fits(coords, codes, max_dist, bytes_per_pair, GRAPH_BYTES_PER_CELL)
    slides = slide_cells(codes)
    local = per_slide(_upper_pairs_of_slide, [coords[cells] for cells in slides], max_dist,
                      processes=worker_processes(processes, len(codes)),
                      names=[int(codes[cells[0]]) for cells in slides])
    return np.concatenate([cells[pairs] for cells, pairs in zip(slides, local)])


def spatial_neighbors(
    adata: AnnData,
    max_dist: float = 20.0,
    slide_key: str | None = "Slide",
    key_added: str = "spatial",
    copy: bool = False,
) -> AnnData | None:
    """Build UTAG's spatial graph with squidpy, one slide at a time, after the memory check.

    Stores what ``squidpy.gr.spatial_neighbors_radius(adata, radius=max_dist,
    set_diag=True, library_key=slide_key)`` stores, without its requirements that the
    slide column be categorical and the cell names unique.

    Parameters
    ----------
    adata
        Cells with centroids in ``adata.obsm['spatial']``.
    max_dist
        Radius, in the units of ``obsm['spatial']``; cells at distance ``<= max_dist``
        are connected. Default 20 (um for IMC, where 1 px = 1 um).
    slide_key
        Column of ``adata.obs`` naming each cell's slide; ``None`` treats all cells as
        one slide. No edge connects cells of different slides.
    key_added
        Prefix of the keys written: ``obsp[f'{key_added}_connectivities']`` (0/1 with
        self-loops), ``obsp[f'{key_added}_distances']`` and ``uns[f'{key_added}_neighbors']``.
    copy
        Return a new AnnData instead of writing into ``adata``.

    Returns
    -------
    ``None``, or a new AnnData when ``copy=True``.

    Examples
    --------
    >>> from utag.datasets import synthetic_tissue
    >>> from utag.graph import spatial_neighbors
    >>> adata = synthetic_tissue(n_cells=2_000, n_slides=2, random_state=0)
    >>> spatial_neighbors(adata, max_dist=20, slide_key="roi")
    >>> float(adata.obsp["spatial_connectivities"].diagonal().min())
    1.0
    """
    check.check_n_cells(adata, features=False)  # only the coordinates are needed
    max_dist = check.check_positive("max_dist", max_dist)
    check.save_key(key_added, "key_added", "the start of the obsp and uns keys written")
    coords = check.spatial_coordinates(adata)
    codes, names = check.slide_codes(adata, slide_key)
    check_graph_fits(coords, codes, max_dist, SPATIAL_GRAPH_BYTES_PER_PAIR, GRAPH_BYTES_PER_CELL)
    slides = slide_cells(codes)
    built = per_slide(radius_graph, [coords[cells] for cells in slides], max_dist,
                      processes=worker_processes(None, len(codes)), names=[names[codes[cells[0]]] for cells in slides])
    graph = combine_slides(built, slides, max_dist)
    target = adata.copy() if copy else adata
    store_spatial_graph(target, graph, max_dist, key_added)
    return target if copy else None


def store_spatial_graph(adata: AnnData, graph: tuple[sp.csr_matrix, sp.csr_matrix], max_dist: float,
                        key_added: str = "spatial", kind: str = "radius", n_neighbors: int = 6) -> None:
    """Write ``graph = (connectivities, distances)`` of kind ``kind`` into ``adata`` under squidpy's keys."""
    connectivities_key = f"{key_added}_connectivities"
    distances_key = f"{key_added}_distances"
    adata.obsp[connectivities_key], adata.obsp[distances_key] = graph
    adata.uns[f"{key_added}_neighbors"] = {
        "connectivities_key": connectivities_key,
        "distances_key": distances_key,
        "params": graph_params(max_dist, kind, n_neighbors),
    }
