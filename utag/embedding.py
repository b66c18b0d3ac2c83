"""Step 3a of UTAG: one joint embedding of all slides and its kNN graph.

* PCA of the message-passed features, computed from the feature covariance matrix
  (exact, deterministic, and cheap when there are tens to a few thousand features).
* The k nearest neighbours of every cell in PCA space, found exactly with a KD-tree.
* UMAP's fuzzy-simplicial-set weights on those neighbours, the connectivities scanpy's
  ``sc.pp.neighbors`` computes; ``utag/tests/test_embedding.py`` checks them against
  ``umap.umap_.fuzzy_simplicial_set``.
"""
from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

logger = logging.getLogger(__name__)

_CHUNK_ROWS = 1 << 16
_SMOOTH_K_TOLERANCE = 1e-5
_MIN_K_DIST_SCALE = 1e-3


def _chunks(n_rows: int):
    for start in range(0, n_rows, _CHUNK_ROWS):
        yield slice(start, min(start + _CHUNK_ROWS, n_rows))


def _covariance(features, mean: np.ndarray) -> np.ndarray:
    """Feature covariance in float64, accumulated over row chunks (no full-size copy)."""
    n_rows, n_features = features.shape
    scatter = np.zeros((n_features, n_features))
    for rows in _chunks(n_rows):
        block = features[rows].astype(np.float64)
        if sp.issparse(block):
            scatter += (block.T @ block).toarray()
        else:
            block -= mean
            scatter += block.T @ block
    if sp.issparse(features):
        scatter -= n_rows * np.outer(mean, mean)
    return scatter / max(n_rows - 1, 1)


def pca(features, n_comps: int) -> dict:
    """Principal components of ``features`` (cells x features, dense or sparse).

    Returns a dict with ``embedding`` (cells x n_comps, float32), ``components``
    (features x n_comps), ``variance`` and ``variance_ratio``. Component signs are
    fixed so that each component's largest loading is positive.
    """
    mean = np.asarray(features.mean(axis=0), dtype=np.float64).ravel()
    covariance = _covariance(features, mean)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    top = np.argsort(eigenvalues)[::-1][:n_comps]
    variance = np.clip(eigenvalues[top], 0, None)
    components = eigenvectors[:, top]
    largest = np.abs(components).argmax(axis=0)
    components *= np.sign(components[largest, np.arange(components.shape[1])])
    total = np.clip(eigenvalues, 0, None).sum()
    embedding = np.asarray(features @ components.astype(np.float32), dtype=np.float32)
    embedding -= (mean @ components).astype(np.float32)
    return {
        "embedding": embedding,
        "components": components.astype(np.float32),
        "variance": variance,
        "variance_ratio": variance / total if total > 0 else np.zeros_like(variance),
    }


def nearest_neighbors(embedding: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact kNN (each cell first, as its own neighbour at distance 0).

    Returns ``(indices, distances)`` of shape (n_cells, n_neighbors). When more than
    ``n_neighbors`` cells share a point the KD-tree may not list a cell among its own
    neighbours; the cell is then put first and the farthest neighbour dropped, as
    scanpy expects.
    """
    distances, indices = cKDTree(embedding).query(embedding, k=n_neighbors, workers=-1)
    distances = distances.reshape(len(embedding), -1)
    indices = indices.reshape(len(embedding), -1)
    cells = np.arange(len(embedding))
    is_self = indices == cells[:, None]
    order = np.argsort(~is_self, axis=1, kind="stable")  # self first, others kept in order
    indices = np.take_along_axis(indices, order, axis=1)
    distances = np.take_along_axis(distances, order, axis=1)
    missing = ~is_self.any(axis=1)
    indices[missing] = np.column_stack([cells[missing], indices[missing, :-1]])
    distances[missing] = np.column_stack([np.zeros(missing.sum()), distances[missing, :-1]])
    distances[:, 0] = 0.0
    return indices.astype(np.int64), distances.astype(np.float32)


def distinct_profile_neighbors(embedding: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """kNN over distinct profiles: each cell's neighbours are the nearest *other* profiles.

    When more than ``n_neighbors`` cells share one profile (message passing over
    one-hot cell types makes many identical neighbourhood compositions), a plain kNN
    graph links them only to each other: they form disconnected cliques and Leiden
    returns hundreds of fragments. Here the kNN search runs over the distinct rows of
    ``embedding``; every cell gets, besides itself, one representative cell (the first)
    of each of the ``n_neighbors - 1`` nearest other profiles, so cells that share a
    profile share their neighbours and the graph stays connected.
    """
    profiles, first, inverse = np.unique(embedding, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    indices, distances = nearest_neighbors(profiles, min(n_neighbors, len(profiles)))
    indices, distances = first[indices][inverse], distances[inverse]
    indices[:, 0] = np.arange(len(embedding))
    return indices, distances


def _smooth_knn_sigmas(distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """UMAP's per-cell ``rho`` (nearest non-zero distance) and ``sigma`` (bandwidth).

    ``sigma`` solves ``sum_j exp(-(d_ij - rho_i) / sigma_i) = log2(k)`` over the
    neighbours other than the cell itself, by bisection run for all cells at once.
    """
    n_cells, k = distances.shape
    others = distances[:, 1:].astype(np.float64)
    target = np.log2(k)
    positive = np.where(others > 0, others, np.inf)
    rho = positive.min(axis=1)
    rho[~np.isfinite(rho)] = 0.0
    low = np.zeros(n_cells)
    high = np.full(n_cells, np.inf)
    sigma = np.ones(n_cells)
    active = np.ones(n_cells, dtype=bool)
    excess = np.clip(others - rho[:, None], 0, None)
    for _ in range(64):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        total = np.exp(-excess[rows] / sigma[rows, None]).sum(axis=1)
        converged = np.abs(total - target) < _SMOOTH_K_TOLERANCE
        active[rows[converged]] = False
        rows, total = rows[~converged], total[~converged]
        too_wide = total > target
        high[rows[too_wide]] = sigma[rows[too_wide]]
        low[rows[~too_wide]] = sigma[rows[~too_wide]]
        bounded = np.isfinite(high[rows])
        sigma[rows] = np.where(bounded, (low[rows] + high[rows]) / 2, sigma[rows] * 2)
    floor = np.where(rho > 0, distances.mean(axis=1), distances.mean()) * _MIN_K_DIST_SCALE
    return rho, np.maximum(sigma, floor)


def fuzzy_connectivities(indices: np.ndarray, distances: np.ndarray) -> sp.csr_matrix:
    """Symmetric UMAP connectivities (fuzzy union) of a kNN graph, float32 CSR."""
    n_cells, k = indices.shape
    if k < 2:
        return sp.csr_matrix((n_cells, n_cells), dtype=np.float32)
    rho, sigma = _smooth_knn_sigmas(distances)
    excess = distances[:, 1:] - rho[:, None]
    weights = np.where(excess <= 0, 1.0, np.exp(-np.clip(excess, 0, None) / sigma[:, None]))
    rows = np.repeat(np.arange(n_cells), k - 1)
    directed = sp.csr_matrix(
        (weights.ravel().astype(np.float32), (rows, indices[:, 1:].ravel())), shape=(n_cells, n_cells)
    )
    transposed = directed.T.tocsr()
    connectivities = directed + transposed - directed.multiply(transposed)
    connectivities = sp.csr_matrix(connectivities, dtype=np.float32)
    connectivities.eliminate_zeros()
    connectivities.sort_indices()
    return connectivities


def knn_distances(indices: np.ndarray, distances: np.ndarray) -> sp.csr_matrix:
    """kNN distances as a CSR matrix without the self column (scanpy's ``obsp['distances']``)."""
    n_cells, k = indices.shape
    rows = np.repeat(np.arange(n_cells), k - 1)
    matrix = sp.csr_matrix(
        (distances[:, 1:].ravel(), (rows, indices[:, 1:].ravel())), shape=(n_cells, n_cells)
    )
    matrix.sort_indices()
    return matrix
