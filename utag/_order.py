"""An order of the cells that does not depend on the order of the rows.

Every step of UTAG breaks ties by position: cells at the same distance in the kNN search,
nodes with the same key in Leiden's locality sort, the order in which a seeded Leiden
visits nodes, sampled cells. Run on the rows as given, the same cells in another order
give other domains. ``utag()`` therefore runs on the cells sorted by slide, position and
features (:func:`canonical_order`) and puts every result back in the input's order;
only cells identical in all three can swap, and they are interchangeable.

:func:`morton_order` is the other kind of order here: one that puts cells near each other
in an embedding near each other in memory, for the compiled Leiden and the HNSW searches.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["canonical_order", "rows_back", "graph_back", "morton_order"]


def canonical_order(codes: np.ndarray, coords: np.ndarray, features) -> np.ndarray | None:
    """Positions of the cells sorted by slide code, then coordinates, then features
    (features only decide among cells of one slide at one position); ``None`` when the
    rows are already in that order.

    Examples
    --------
    >>> canonical_order(np.array([1, 0, 0]), np.array([[0.0, 0], [2, 0], [1, 5]]), np.zeros((3, 1)))
    array([2, 1, 0])
    """
    order = np.lexsort([*coords.T[::-1], codes])
    same = (np.diff(codes[order]) == 0) & (np.diff(coords[order], axis=0) == 0).all(axis=1)
    if same.any():
        group = np.concatenate([[0], np.cumsum(~same)])  # one id per (slide, position) in sorted order
        tied = np.flatnonzero(np.bincount(group)[group] > 1)
        values = features[order[tied]]
        values = values.toarray() if sp.issparse(values) else np.asarray(values)
        order[tied] = order[tied][np.lexsort([*values.T[::-1], group[tied]])]
    return None if np.array_equal(order, np.arange(len(order))) else order


def inverse_order(order: np.ndarray) -> np.ndarray:
    """The permutation that puts rows taken in ``order`` back where they were.

    >>> inverse_order(np.array([2, 0, 1])).tolist()
    [1, 2, 0]
    """
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return inverse


def rows_back(values, order: np.ndarray | None, axis: int = 0):
    """``values`` computed on the cells in ``order`` (along ``axis``), in the input's order."""
    if order is None or values is None:
        return values
    inverse = inverse_order(order)
    if sp.issparse(values):
        return sp.csr_matrix(values)[inverse]
    return np.take(values, inverse, axis=axis)


def graph_back(matrix: sp.csr_matrix, order: np.ndarray | None) -> sp.csr_matrix:
    """A cells x cells matrix computed on the cells in ``order``, in the input's order
    (rows and columns), CSR with sorted indices."""
    if order is None:
        return matrix
    coo = matrix.tocoo()
    back = sp.csr_matrix((coo.data, (order[coo.row], order[coo.col])), shape=matrix.shape)
    back.sort_indices()
    return back


def morton_order(columns: np.ndarray, bits: int = 10) -> np.ndarray:
    """Rows of ``columns`` (cells x a few dimensions) sorted along a Z-order (Morton)
    curve on a grid of ``2**bits`` steps per dimension: cells near each other in
    ``columns`` get nearby positions (ties in input order).

    Examples
    --------
    >>> morton_order(np.array([[0.0, 0.0], [10.0, 0.0], [0.1, 0.0], [10.1, 0.0]])).tolist()
    [0, 2, 1, 3]
    """
    columns = np.asarray(columns, dtype=np.float64)
    span = np.ptp(columns, axis=0)
    span[span == 0] = 1.0
    grid = ((columns - columns.min(axis=0)) / span * (2**bits - 1)).astype(np.uint64)
    code = np.zeros(len(columns), dtype=np.uint64)
    for bit in range(bits):
        for dim in range(grid.shape[1]):
            code |= ((grid[:, dim] >> np.uint64(bit)) & np.uint64(1)) << np.uint64(bit * grid.shape[1] + dim)
    return np.argsort(code, kind="stable")
