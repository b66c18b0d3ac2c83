"""Step 2 of UTAG: message passing over the spatial graph.

``X' = D^-1 A X`` with ``A`` the spatial adjacency (self-loops included) and ``D`` its
row sums: each cell's features become the mean over its neighbourhood
(``normalization_mode="l1_norm"``, the published method). ``"sum"`` (also ``"none"``,
``None``) gives the plain sum ``A X``, what the original code did for any other value;
other names are refused, so that a typo cannot silently sum.

The graph is block-diagonal over slides, so the work is done one slide at a time: the
slide's graph (built by squidpy, see :mod:`utag.graph`) and its product with the slide's
features. The same function runs serially or in a process pool (:func:`utag.graph.per_slide`), which makes
the two routes give bit-identical results.
"""
from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

from . import multiscale
from ._validation import normalization_mode as normalization_mode_name
from .graph import (
    MESSAGE_PASSING_BYTES_PER_CELL,
    MESSAGE_PASSING_BYTES_PER_FEATURE,
    MESSAGE_PASSING_BYTES_PER_PAIR,
    check_graph_fits,
    check_knn_graph_fits,
    combine_slides,
    count_edges,
    per_slide,
    slide_cells,
    spatial_graph,
    worker_processes,
)

__all__ = ["aggregate", "as_float32", "as_float32_less_shift", "less_background", "pass_messages", "slide_messages",
           "whole_means", "wider_than_float32"]

logger = logging.getLogger(__name__)


def aggregate(adjacency: sp.csr_matrix, features, normalization_mode: str = "l1_norm"):
    """Neighbourhood mean (``"l1_norm"``, also ``"mean"``) or sum (``"sum"``, ``"none"``,
    ``None``) of ``features``; other modes raise a ``ValueError`` naming the valid ones.

    ``features`` is a dense array or a sparse matrix with one row per row of
    ``adjacency``; the result has the same kind, float32.
    """
    mode = normalization_mode_name(normalization_mode)
    aggregated = adjacency @ features
    if mode != "l1_norm":
        return aggregated
    row_sums = np.asarray(abs(adjacency).sum(axis=1), dtype=np.float32).ravel()
    scale = np.divide(1.0, row_sums, out=np.zeros_like(row_sums), where=row_sums > 0)
    if sp.issparse(aggregated):
        return sp.csr_matrix(sp.diags(scale) @ aggregated)
    aggregated *= scale[:, None]
    return aggregated


def slide_messages(slide, max_dist: float, normalization_mode: str = "l1_norm", keep_graph: bool = False,
                   kind: str = "radius", n_neighbors: int = 6, kernel_widths=None):
    """Graph and message passing of one slide ``(coords, features)``; ``kind`` and
    ``n_neighbors``: the spatial graph (:func:`utag.graph.spatial_graph`);
    ``kernel_widths``: the multiscale flavour's blocks instead
    (:func:`utag.multiscale.slide_blocks`).

    Returns the aggregated features, the slide's number of edges (self-loops left out)
    and, with ``keep_graph``, its graph ``(connectivities, distances)`` (else ``None``).
    """
    if kernel_widths is not None:
        return multiscale.slide_blocks(slide, max_dist, kernel_widths, kind, n_neighbors, keep_graph)
    coords, features = slide
    connectivities, distances = spatial_graph(coords, max_dist, kind, n_neighbors)
    n_edges = count_edges(connectivities, kind)
    aggregated = aggregate(connectivities, features, normalization_mode)
    return aggregated, n_edges, ((connectivities, distances) if keep_graph else None)


def as_float32(features):
    """Float32 dense C-ordered array or float32 CSR matrix (no copy when already so)."""
    if sp.issparse(features):
        return sp.csr_matrix(features, dtype=np.float32)
    return np.ascontiguousarray(features, dtype=np.float32)


def whole_means(means) -> np.ndarray | None:
    """Column ``means`` rounded to whole numbers (float32), or ``None`` when all are zero."""
    rounded = np.round(np.asarray(means, dtype=np.float64)).astype(np.float32)
    return rounded if rounded.any() else None


def wider_than_float32(features) -> bool:
    """Dense floating-point features that float32 would round (float64 and wider)."""
    return not sp.issparse(features) and np.issubdtype(features.dtype, np.floating) and features.dtype.itemsize > 4


def as_float32_less_shift(features, normalization_mode: str = "l1_norm") -> tuple:
    """``(float32 features, shift)``: dense features that are averaged (``"l1_norm"``)
    less each feature's mean rounded to a whole number (``shift``, float32; ``None`` when
    that is zero everywhere), else :func:`as_float32` and ``None``.

    A mean over neighbours passes a constant through unchanged, so the domains are the
    same without the shift, and it is added back to the means afterwards. With it, float32
    sums of values on a large background (raw intensities) keep the digits in which the
    cells differ; features wider than float32 (``1e9`` plus small differences) are shifted
    in float64 before they are rounded to float32 for the same reason. Whole numbers keep
    integer features (one-hot cell types) integers, whose sums are exact in any order, so
    cells with the same neighbourhood composition keep exactly the same profile. The sum
    (``"sum"``) multiplies a background by each cell's number of neighbours: it is part of
    that result and is kept.

    Examples
    --------
    >>> features, shift = as_float32_less_shift(np.array([[1e9 + 0.25], [1e9 - 0.25]]))
    >>> features.ravel().tolist(), shift.tolist()
    ([0.25, -0.25], [1000000000.0])
    """
    if normalization_mode != "l1_norm" or sp.issparse(features):
        return as_float32(features), None
    shift = whole_means(features.mean(axis=0, dtype=np.float64))
    return less_background(features, shift), shift


def less_background(features, background: np.ndarray | None):
    """Dense ``features`` less ``background`` (float32, or ``None``: nothing), as float32:
    features wider than float32 less the background in float64 before the rounding
    (without a float64 copy of the matrix), others in float32 (sparse: no background)."""
    if background is None:
        return as_float32(features)
    if not wider_than_float32(features):
        return as_float32(features) - background
    shifted = np.empty(features.shape, dtype=np.float32)
    np.subtract(features, background.astype(np.float64), out=shifted, casting="unsafe")
    return shifted


def pass_messages(
    coords: np.ndarray,
    features,
    codes: np.ndarray,
    max_dist: float,
    normalization_mode: str = "l1_norm",
    parallel: bool = True,
    processes: int | None = None,
    progress: bool = False,
    bytes_per_pair: float = MESSAGE_PASSING_BYTES_PER_PAIR,
    keep_graph: bool = False,
    slide_names=None,
    spatial_graph_kind: str = "radius",
    n_spatial_neighbors: int = 6,
    kernel_widths=None,
):
    """Aggregate ``features`` over each slide's spatial graph (or, with ``kernel_widths``,
    the multiscale flavour's Gaussian means).

    Returns
    -------
    aggregated
        Float32 matrix in the input's cell order (dense if ``features`` is dense).
    n_edges
        Number of spatial edges: pairs of cells of one slide that the graph links (within
        ``max_dist`` for the radius graph; once per pair for the directed kNN graph).
    graph
        With ``keep_graph``: ``(connectivities, distances)`` of all slides, block-diagonal
        in the input's cell order, as squidpy stores them; else ``None``.

    ``spatial_graph_kind`` and ``n_spatial_neighbors`` choose the graph
    (:func:`utag.graph.spatial_graph`; default: the radius graph of the published method).
    ``kernel_widths`` (a tuple of widths): the multiscale flavour instead, Gaussian means
    at every width side by side, unscaled (:func:`utag.multiscale.slide_blocks`; the
    radius graph is built at :func:`utag.multiscale.graph_radius`).
    ``processes``: worker processes for the slides (``None``: one per core, at most one
    per slide, from :data:`utag.graph.POOL_MIN_CELLS` cells on; 1, or ``parallel=False``: none).
    ``slide_names`` (indexed by code) name the slide in the error raised when its worker
    process dies. Raises :class:`utag.graph.GraphTooLargeError` before any work if the graphs would
    not fit in memory (``bytes_per_pair``: what the caller will hold per pair, by default
    what message passing itself needs).
    """
    n_outputs = np.shape(features)[1] * (1 if kernel_widths is None else len(kernel_widths))
    bytes_per_cell = MESSAGE_PASSING_BYTES_PER_CELL + MESSAGE_PASSING_BYTES_PER_FEATURE * n_outputs
    normalization_mode = normalization_mode_name(normalization_mode)
    radius = multiscale.graph_radius(max_dist, kernel_widths)
    if spatial_graph_kind == "radius":
        check_graph_fits(coords, codes, max_dist, bytes_per_pair, bytes_per_cell, radius_per_max_dist=radius / max_dist)
    elif spatial_graph_kind == "knn":  # Delaunay has a few edges per cell
        check_knn_graph_fits(codes, n_spatial_neighbors, max_dist, bytes_per_pair, bytes_per_cell)
    features = as_float32(features)
    slides = slide_cells(codes)
    processes = worker_processes(processes if parallel else 1, len(codes))
    results = per_slide(slide_messages, [(coords[cells], features[cells]) for cells in slides], max_dist,
                        normalization_mode, keep_graph, spatial_graph_kind, n_spatial_neighbors, kernel_widths,
                        processes=processes, progress=progress,
                        names=None if slide_names is None else [slide_names[codes[cells[0]]] for cells in slides])
    results = list(results)
    edge_counts, graphs = [edges for _, edges, _ in results], [graph for _, _, graph in results]
    if sp.issparse(features):
        aggregated = sp.vstack([block for block, _, _ in results], format="csr")[np.argsort(np.concatenate(slides))]
    else:
        aggregated = np.empty((features.shape[0], results[0][0].shape[1]), dtype=np.float32)
        for index, cells in enumerate(slides):  # slide by slide, freeing each: no second copy of all cells
            aggregated[cells] = results[index][0]
            results[index] = None
    graph = combine_slides(graphs, slides, radius) if keep_graph else None
    return aggregated, int(sum(edge_counts)), graph
