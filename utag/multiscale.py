"""``flavor="multiscale"``: each cell described by its neighbourhood at several widths.

The published method replaces a cell's features by their plain mean within one radius,
``max_dist``. The multiscale flavour concatenates Gaussian-weighted means at several
kernel widths (by default ``max_dist / 4``, ``max_dist / 2`` and ``max_dist``):

* the narrowest is dominated by the cell itself and its closest neighbours;
* the middle one is close to UTAG's own neighbourhood;
* the widest sees the surrounding region.

Each block is then scaled to unit total variance so that every scale weighs the same in
the PCA. Across the labelled datasets this finds domains closer to the experts' and
depends less on ``max_dist`` (see ``docs/multiscale.md`` and ``benchmarks/accuracy.py``).

A kernel of width ``w`` gives each neighbour within ``2.5 w`` the weight
``exp(-d^2 / 2 w^2)`` (the cell itself 1), normalised to sum to one per cell. To keep the
graph small, a width wider than ``max_dist / 2`` is reached by ``p`` passes of the
kernel of width ``w / sqrt(p)``, the smallest ``p`` that brings that below
``max_dist / 2`` (Gaussians compose: ``p`` passes of width ``w / sqrt(p)`` have width
``w``). So one spatial graph of radius ``1.25 max_dist`` per slide serves every width.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from ._arrays import column_mean, row_blocks
from ._validation import check_positive
from .graph import count_edges, spatial_graph

__all__ = ["FLAVORS", "DEFAULT_WIDTHS", "flavor_widths", "block_scales",
           "edge_lengths", "feature_names", "gaussian_kernel", "graph_radius",
           "kernel_passes", "kernel_widths", "scale_blocks", "scaled_background", "slide_blocks"]

#: ``utag(flavor=...)``: the published method, or the multiscale neighbourhoods.
FLAVORS = ("utag", "multiscale")
#: Default kernel widths, as multiples of ``max_dist``.
DEFAULT_WIDTHS = (0.25, 0.5, 1.0)
#: Kernels are cut at this many widths (the weight there is exp(-3.125) = 4%).
CUTOFF = 2.5
#: The widest kernel applied in one pass, as a multiple of ``max_dist``.
ONE_PASS_WIDTH = 0.5
#: The widest kernel accepted, as a multiple of ``max_dist`` (100 passes).
MAX_WIDTH = 5.0


def flavor_widths(flavor: str, max_dist: float, widths=None) -> tuple[float, ...] | None:
    """The kernel widths of ``flavor`` (checked, with ``widths`` as the user passed
    them): ``None`` for ``"utag"``, :func:`kernel_widths` for ``"multiscale"``.

    Examples
    --------
    >>> flavor_widths("utag", 20) is None, flavor_widths("multiscale", 20)
    (True, (5.0, 10.0, 20.0))
    """
    if flavor not in FLAVORS:
        raise ValueError(f"`flavor` must be one of {list(FLAVORS)}, got {flavor!r}.")
    if flavor == "utag":
        if widths is not None:
            raise ValueError("`kernel_widths` sets the scales of flavor='multiscale'; pass flavor='multiscale' "
                             "or leave `kernel_widths` out.")
        return None
    return kernel_widths(max_dist, widths)


def kernel_widths(max_dist: float, widths=None) -> tuple[float, ...]:
    """The kernel widths to use: ``widths`` checked and sorted, or the defaults
    (:data:`DEFAULT_WIDTHS` times ``max_dist``).

    Examples
    --------
    >>> kernel_widths(20)
    (5.0, 10.0, 20.0)
    >>> kernel_widths(20, [30, 8])
    (8.0, 30.0)
    """
    if widths is None:
        return tuple(float(f * max_dist) for f in DEFAULT_WIDTHS)
    widths = [widths] if np.ndim(widths) == 0 else list(widths)
    if not widths:
        raise ValueError("`kernel_widths` is empty: pass one or more widths in the units of "
                         "`obsm['spatial']`, or None for max_dist / 4, max_dist / 2 and max_dist.")
    widths = sorted({check_positive("kernel_widths", w) for w in widths})
    if widths[-1] > MAX_WIDTH * max_dist:
        raise ValueError(f"`kernel_widths` up to {MAX_WIDTH:g} x max_dist ({MAX_WIDTH * max_dist:g}) are supported, "
                         f"got {widths[-1]:g}: a wider kernel takes (width / (max_dist / 2))^2 passes. Raise "
                         "`max_dist`.")
    if len({f"{w:g}" for w in widths}) < len(widths):
        raise ValueError(f"`kernel_widths` {widths} name the same feature columns ('<feature>@<width>'); pass "
                         "widths that differ in their first 6 digits.")
    return tuple(widths)


def kernel_passes(width: float, max_dist: float) -> int:
    """How many passes reach ``width`` with kernels no wider than ``max_dist / 2``.

    Examples
    --------
    >>> [kernel_passes(w, max_dist=20) for w in (5, 10, 20, 30)]
    [1, 1, 4, 9]
    """
    return max(1, math.ceil((width / (ONE_PASS_WIDTH * max_dist)) ** 2 - 1e-9))


def graph_radius(max_dist: float, widths) -> float:
    """Radius of the spatial graph that every kernel fits in (``widths=None``, UTAG's
    flavour: ``max_dist``).

    Examples
    --------
    >>> graph_radius(20, kernel_widths(20))  # 2.5 times the widest one-pass kernel, 10
    25.0
    """
    if widths is None:
        return float(max_dist)
    return CUTOFF * max(w / math.sqrt(kernel_passes(w, max_dist)) for w in widths)


def gaussian_kernel(edges: sp.csr_matrix, width: float) -> sp.csr_matrix:
    """Row-normalised Gaussian weights of width ``width`` on the edges of ``edges`` (a CSR
    matrix of edge lengths, self-loops included) no longer than ``CUTOFF * width``."""
    keep = edges.data <= CUTOFF * width
    # (d / width)^2 of the kept edges only: width^2 underflows to 0 for a tiny width (0 / 0 at
    # the self-loop), and d / width of an edge far beyond the cutoff may overflow
    weights = np.zeros(len(edges.data))
    weights[keep] = np.exp(-0.5 * (edges.data[keep].astype(np.float64) / width) ** 2)
    kernel = sp.csr_matrix((weights.astype(np.float32), edges.indices.copy(), edges.indptr.copy()), shape=edges.shape)
    kernel.eliminate_zeros()
    row_sums = np.asarray(kernel.sum(axis=1), dtype=np.float32).ravel()  # >= 1: the cell itself
    return sp.csr_matrix(sp.diags(1.0 / row_sums) @ kernel)


def edge_lengths(coords: np.ndarray, connectivities: sp.csr_matrix) -> sp.csr_matrix:
    """The graph's structure with every entry (self-loops too) holding its edge's length."""
    # every cell is its own neighbour, whatever the graph kind
    connectivities = sp.csr_matrix(connectivities) + sp.identity(connectivities.shape[0], format="csr")
    rows = np.repeat(np.arange(connectivities.shape[0]), np.diff(connectivities.indptr))
    lengths = np.linalg.norm(coords[rows] - coords[connectivities.indices], axis=1)
    return sp.csr_matrix((lengths, connectivities.indices, connectivities.indptr), shape=connectivities.shape)


def slide_blocks(slide, max_dist: float, widths, kind: str = "radius", n_neighbors: int = 6,
                 keep_graph: bool = False):
    """The multiscale features of one slide ``(coords, features)``: the Gaussian means at
    every width side by side (unscaled), the slide's number of edges and, with
    ``keep_graph``, its graph ``(connectivities, distances)``.

    Examples
    --------
    >>> coords = np.array([[0.0, 0.0], [1.0, 0.0], [30.0, 0.0]])
    >>> features = np.array([[1.0], [0.0], [5.0]], dtype=np.float32)
    >>> blocks, n_edges, _ = slide_blocks((coords, features), max_dist=4.0, widths=(1.0, 2.0))
    >>> blocks.round(3)  # widths 1 and 2: the near neighbour weighs exp(-1/2) and exp(-1/8)
    array([[0.622, 0.531],
           [0.378, 0.469],
           [5.   , 5.   ]], dtype=float32)
    >>> n_edges
    1
    """
    coords, features = slide
    radius = graph_radius(max_dist, widths)
    connectivities, distances = spatial_graph(coords, radius, kind, n_neighbors)
    edges = edge_lengths(np.asarray(coords, dtype=np.float64), connectivities)
    blocks = []
    for width in widths:
        passes = kernel_passes(width, max_dist)
        kernel = gaussian_kernel(edges, width / math.sqrt(passes))
        block = features
        for _ in range(passes):
            block = kernel @ block
        blocks.append(block)
    stacked = sp.hstack(blocks, format="csr") if sp.issparse(features) else np.hstack(blocks)
    n_edges = count_edges(connectivities, kind)
    return stacked, n_edges, ((connectivities, distances) if keep_graph else None)


def block_scales(blocks, n_blocks: int) -> np.ndarray:
    """One factor per block (``n_blocks`` equal column blocks of ``blocks``) that brings
    the block's total variance over all cells to 1 (1 where it does not vary)."""
    n_cells = blocks.shape[0]
    mean = column_mean(blocks)
    if sp.issparse(blocks):
        blocks = sp.csr_matrix(blocks)
        values = blocks.data.astype(np.float64)
        squares = np.bincount(blocks.indices, weights=values * values, minlength=blocks.shape[1]) / n_cells
    else:  # a block of rows at a time: no float64 copy of every cell
        squares = sum(np.einsum("ij,ij->j", rows, rows) for rows in
                      (np.asarray(blocks[chunk], dtype=np.float64) for chunk in row_blocks(n_cells))) / n_cells
    return scales_of_moments(mean, squares, n_blocks)


def scales_of_moments(mean: np.ndarray, squares: np.ndarray, n_blocks: int) -> np.ndarray:
    """:func:`block_scales` from every column's mean and mean square over all cells."""
    variance = np.maximum(squares - mean**2, 0).reshape(n_blocks, -1).sum(axis=1)
    return np.where(variance > 0, 1.0 / np.sqrt(np.where(variance > 0, variance, 1.0)), 1.0)


def feature_names(names, widths) -> list[str]:
    """Names of the multiscale features: ``"<feature>@<width>"``, block by block."""
    return [f"{name}@{width:g}" for width in widths for name in names]


def column_factors(scales: np.ndarray, n_columns: int) -> np.ndarray:
    """Each block's factor in ``scales`` repeated over its columns (float32).

    >>> column_factors(np.array([1.0, 0.5]), 4).tolist()
    [1.0, 1.0, 0.5, 0.5]
    """
    return np.repeat(np.asarray(scales, dtype=np.float32), n_columns // len(scales))


def scale_blocks(blocks, scales: np.ndarray):
    """``blocks`` (float32) with each column block multiplied by its factor, in place
    when dense."""
    per_column = column_factors(scales, blocks.shape[1])
    if sp.issparse(blocks):
        return sp.csr_matrix(blocks @ sp.diags(per_column), dtype=np.float32)
    blocks *= per_column
    return blocks


def scaled_background(background: np.ndarray | None, scales: np.ndarray | None) -> np.ndarray | None:
    """The background of the multiscale blocks scaled by ``scales``: a constant passes every
    kernel unchanged, then is scaled with its block (``background`` as is without ``scales``).

    Examples
    --------
    >>> scaled_background(np.array([10.0, 20.0], dtype=np.float32), np.array([1.0, 0.5])).tolist()
    [10.0, 20.0, 5.0, 10.0]
    """
    if background is None or scales is None:
        return background
    return np.concatenate([background * scale for scale in scales.astype(np.float32)])
