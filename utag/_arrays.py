"""Small helpers on cells x features arrays, dense or sparse, and on per-cell labels,
shared by the stages."""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["ROW_BLOCK", "column_mean", "column_range", "positions_in", "row_blocks"]

#: Rows per block where work goes over the cells block by block (bounded extra memory;
#: threads take blocks in turn).
ROW_BLOCK = 1 << 16


def row_blocks(n_rows: int):
    """Slices of :data:`ROW_BLOCK` consecutive rows covering ``n_rows``, in order.

    Examples
    --------
    >>> [(rows.start, rows.stop) for rows in row_blocks(ROW_BLOCK + 1)] == [(0, ROW_BLOCK), (ROW_BLOCK, ROW_BLOCK + 1)]
    True
    """
    for start in range(0, n_rows, ROW_BLOCK):
        yield slice(start, min(start + ROW_BLOCK, n_rows))


def column_mean(features) -> np.ndarray:
    """Each column's mean, summed in float64, dense or sparse (scipy's sparse
    ``mean(dtype=np.float64)`` sums in the input's dtype and converts only the result).

    Examples
    --------
    >>> rows = np.full((3, 1), 1000.0, dtype=np.float32) + np.array([[0.1], [0.2], [0.3]], dtype=np.float32)
    >>> bool(np.isclose(column_mean(sp.csr_matrix(rows))[0], column_mean(rows)[0], rtol=1e-12))
    True
    """
    if sp.issparse(features):
        features = sp.csr_matrix(features)
        sums = np.bincount(features.indices, weights=features.data.astype(np.float64), minlength=features.shape[1])
        return sums / max(features.shape[0], 1)
    return np.asarray(features.mean(axis=0, dtype=np.float64)).ravel()


def column_range(features) -> np.ndarray:
    """Each column's largest minus smallest value (float64), dense or sparse: zero where
    a feature does not vary.

    Examples
    --------
    >>> column_range(sp.csr_matrix(np.array([[0.0, 2.0], [0.0, 5.0]]))).tolist()
    [0.0, 3.0]
    """
    top, bottom = features.max(axis=0), features.min(axis=0)
    if sp.issparse(top):
        top, bottom = top.toarray(), bottom.toarray()
    return np.asarray(top, dtype=np.float64).ravel() - np.asarray(bottom, dtype=np.float64).ravel()


def positions_in(values, names) -> np.ndarray:
    """Position of each of ``values`` (one per cell) in ``names`` (distinct), int64; -1
    where the value is missing or not among them. (A ``pd.Categorical`` with ``names``
    as its categories gives the same codes, but pandas 3 deprecates, and pandas 4 will
    refuse, values outside the categories.)

    >>> positions_in(pd.Series(["b", None, "z", "a"]), ["a", "b"]).tolist()
    [1, -1, -1, 0]
    """
    return pd.Index(names).get_indexer(pd.Series(values, dtype=object).to_numpy()).astype(np.int64)
