"""Step 1 of UTAG: the spatial graph.

Cells of one slide are connected when their centroids lie within ``max_dist`` of each
other (inclusive), every cell is connected to itself, and slides are combined
block-diagonally so that no edge crosses slides. The result is the same graph as
``squidpy.gr.spatial_neighbors(radius=max_dist, coord_type="generic", set_diag=True,
library_key=slide_key)`` (``utag/tests/test_graph.py`` checks it), built with one
KD-tree radius query per slide.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial import cKDTree

from . import _validation as check


def radius_pairs(coords: np.ndarray, max_dist: float) -> np.ndarray:
    """Pairs ``(i, j)``, ``i < j``, of points at distance ``<= max_dist``; shape (n_pairs, 2)."""
    if len(coords) < 2:
        return np.empty((0, 2), dtype=np.int64)
    return cKDTree(coords).query_pairs(max_dist, output_type="ndarray").astype(np.int64, copy=False)


def adjacency_from_pairs(pairs: np.ndarray, n_cells: int) -> sp.csr_matrix:
    """Symmetric 0/1 float32 CSR adjacency with self-loops from ``i < j`` pairs."""
    diagonal = np.arange(n_cells, dtype=np.int64)
    rows = np.concatenate([pairs[:, 0], pairs[:, 1], diagonal])
    cols = np.concatenate([pairs[:, 1], pairs[:, 0], diagonal])
    ones = np.ones(len(rows), dtype=np.float32)
    adjacency = sp.csr_matrix((ones, (rows, cols)), shape=(n_cells, n_cells))
    adjacency.sort_indices()
    return adjacency


def distances_from_pairs(pairs: np.ndarray, coords: np.ndarray) -> sp.csr_matrix:
    """Symmetric float64 CSR of Euclidean distances; no diagonal, zero distances dropped."""
    n_cells = len(coords)
    distances = np.linalg.norm(coords[pairs[:, 0]] - coords[pairs[:, 1]], axis=1)
    keep = distances > 0  # squidpy stores no explicit zeros (duplicated coordinates)
    pairs, distances = pairs[keep], distances[keep]
    rows = np.concatenate([pairs[:, 0], pairs[:, 1]])
    cols = np.concatenate([pairs[:, 1], pairs[:, 0]])
    matrix = sp.csr_matrix((np.concatenate([distances, distances]), (rows, cols)), shape=(n_cells, n_cells))
    matrix.sort_indices()
    return matrix


def slide_cells(codes: np.ndarray) -> list[np.ndarray]:
    """Indices of the cells of each slide, ascending within a slide, slides in code order."""
    order = np.argsort(codes, kind="stable")
    boundaries = np.flatnonzero(np.diff(codes[order])) + 1
    return np.split(order, boundaries)


def slide_pairs(coords: np.ndarray, codes: np.ndarray, max_dist: float) -> np.ndarray:
    """Radius pairs of every slide, as global cell indices (no cross-slide pairs)."""
    blocks = [cells[radius_pairs(coords[cells], max_dist)] for cells in slide_cells(codes)]
    return np.concatenate(blocks)


def spatial_neighbors(
    adata: AnnData,
    max_dist: float = 20.0,
    slide_key: str | None = "Slide",
    key_added: str = "spatial",
    copy: bool = False,
) -> AnnData | None:
    """Build UTAG's spatial graph and store it the way squidpy does.

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
    check.check_n_cells(adata)
    max_dist = check.check_positive("max_dist", max_dist)
    coords = check.spatial_coordinates(adata)
    codes, _ = check.slide_codes(adata, slide_key)
    pairs = slide_pairs(coords, codes, max_dist)
    target = adata.copy() if copy else adata
    store_spatial_graph(target, pairs, coords, max_dist, key_added)
    return target if copy else None


def store_spatial_graph(adata: AnnData, pairs: np.ndarray, coords: np.ndarray, max_dist: float,
                        key_added: str = "spatial") -> None:
    """Write the graph given by global ``pairs`` into ``adata`` under squidpy's keys."""
    connectivities_key = f"{key_added}_connectivities"
    distances_key = f"{key_added}_distances"
    adata.obsp[connectivities_key] = adjacency_from_pairs(pairs, adata.n_obs)
    adata.obsp[distances_key] = distances_from_pairs(pairs, coords)
    adata.uns[f"{key_added}_neighbors"] = {
        "connectivities_key": connectivities_key,
        "distances_key": distances_key,
        "params": {"radius": float(max_dist), "coord_type": "generic", "transform": None, "set_diag": True},
    }
