"""Spatial graph options (``utag(spatial_graph=...)``): radius (the published method), the k
nearest cells, and Delaunay with long edges removed; each equal to brute force."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.spatial import Delaunay, distance_matrix

from utag import utag
from utag.datasets import synthetic_tissue
from utag.graph import spatial_graph
from utag.transfer import transfer_labels


def _knn_brute_force(coords: np.ndarray, k: int) -> np.ndarray:
    distances = distance_matrix(coords, coords)
    np.fill_diagonal(distances, np.inf)
    adjacency = np.eye(len(coords))
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :k]
    adjacency[np.repeat(np.arange(len(coords)), k), nearest.ravel()] = 1
    return adjacency


def _delaunay_brute_force(coords: np.ndarray, max_dist: float) -> np.ndarray:
    adjacency = np.eye(len(coords))
    for simplex in Delaunay(coords).simplices:
        for a in simplex:
            for b in simplex:
                if a != b and np.linalg.norm(coords[a] - coords[b]) <= max_dist:
                    adjacency[a, b] = 1
    return adjacency


@pytest.fixture(scope="module")
def points():
    return np.random.default_rng(0).uniform(0, 100, size=(300, 2))


def test_knn_graph_holds_each_cells_nearest_cells_and_itself(points):
    connectivities, distances = spatial_graph(points, max_dist=20, kind="knn", n_neighbors=6)
    np.testing.assert_array_equal(connectivities.toarray(), _knn_brute_force(points, 6))
    assert np.allclose(distances[connectivities.nonzero()], np.linalg.norm(
        points[connectivities.nonzero()[0]] - points[connectivities.nonzero()[1]], axis=1))


def test_delaunay_graph_drops_edges_longer_than_max_dist(points):
    connectivities, distances = spatial_graph(points, max_dist=8, kind="delaunay")
    np.testing.assert_array_equal(connectivities.toarray(), _delaunay_brute_force(points, 8))
    assert distances.max() <= 8


def test_delaunay_cells_at_one_position_share_its_neighbours(points):
    # Qhull leaves repeated points out of the triangulation; each copy gets the position's edges
    repeated = np.concatenate([points, points[:20]])
    connectivities, distances = spatial_graph(repeated, max_dist=8, kind="delaunay")
    alone = _delaunay_brute_force(points, 8)
    copies = np.concatenate([np.arange(len(points)), np.arange(20)])  # each cell's position
    expected = alone[np.ix_(copies, copies)]
    np.testing.assert_array_equal(connectivities.toarray(), expected)
    assert distances[len(points), 0] == 0 and connectivities[len(points), 0] == 1
    # a constant third coordinate (a flat z) gives the 2-D triangulation, not the radius graph
    flat, _ = spatial_graph(np.column_stack([points, np.full(len(points), 3.0)]), max_dist=8, kind="delaunay")
    np.testing.assert_array_equal(flat.toarray(), alone)


def test_delaunay_graph_kept_in_the_result_survives_h5ad(tmp_path):
    import anndata

    tissue = synthetic_tissue(n_cells=1_000, n_slides=2, random_state=0)
    result = utag(tissue, slide_key="roi", max_dist=20, spatial_graph="delaunay", keep_spatial_connectivity=True,
                  clustering_method="kmeans", resolutions=[0.3], progress=False)
    result.write_h5ad(tmp_path / "delaunay.h5ad")
    params = anndata.read_h5ad(tmp_path / "delaunay.h5ad").uns["spatial_neighbors"]["params"]
    assert list(params["radius"]) == [0.0, 20.0]


@pytest.mark.parametrize("kind", ["knn", "delaunay"])
def test_tiny_or_flat_slides_still_get_a_graph(kind):
    for coords in (np.zeros((1, 2)), np.array([[0.0, 0.0], [1.0, 0.0]]),
                   np.column_stack([np.arange(5.0), np.zeros(5)])):  # on a line: no triangulation
        connectivities, _ = spatial_graph(coords, max_dist=1.5, kind=kind, n_neighbors=6)
        assert (connectivities.diagonal() == 1).all()


@pytest.mark.parametrize("kind", ["knn", "delaunay"])
def test_message_passing_averages_over_the_chosen_graph(kind):
    tissue = synthetic_tissue(n_cells=900, n_slides=3, n_markers=5, random_state=1)
    result = utag(tissue, slide_key="roi", max_dist=15, spatial_graph=kind, n_spatial_neighbors=5,
                  clustering_method="kmeans", resolutions=[0.3], keep_spatial_connectivity=True, progress=False)
    features = np.asarray(tissue.X, dtype=np.float64)
    expected = np.empty_like(features)
    for slide in tissue.obs["roi"].unique():
        cells = np.flatnonzero(tissue.obs["roi"].to_numpy() == slide)
        coords = tissue.obsm["spatial"][cells]
        adjacency = _knn_brute_force(coords, 5) if kind == "knn" else _delaunay_brute_force(coords, 15)
        expected[cells] = adjacency @ features[cells] / adjacency.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(result.X, expected, rtol=1e-5, atol=1e-5)
    stored = result.obsp["spatial_connectivities"]
    assert sp.issparse(stored) and (stored.diagonal() == 1).all()
    assert result.uns["utag"]["spatial_graph"] == kind


def test_transfer_uses_the_graph_of_the_model():
    tissue = synthetic_tissue(n_cells=1_200, n_slides=2, n_markers=6, random_state=2)
    result = utag(tissue, slide_key="roi", max_dist=15, spatial_graph="knn", n_spatial_neighbors=8,
                  clustering_method="kmeans", resolutions=[0.3], progress=False)
    transferred = transfer_labels(result, tissue, slide_key="roi", n_jobs=1)
    np.testing.assert_allclose(transferred.X, result.X, rtol=1e-5, atol=1e-4)


def test_unknown_spatial_graph_is_refused():
    tissue = synthetic_tissue(n_cells=300, n_slides=1, random_state=0)
    with pytest.raises(ValueError, match=r"spatial_graph.*'radius', 'knn', 'delaunay'"):
        utag(tissue, slide_key="roi", spatial_graph="grid", progress=False)


def test_delaunay_cells_qhull_cannot_tell_apart_keep_their_neighbours(points):
    # 1e-10 apart at coordinates of about 1,000: Qhull leaves such points out of the
    # triangulation; each must get the edges of the position it cannot be told from
    far = points * 10
    near = np.concatenate([far, far[:3] + 1e-10])
    connectivities, distances = spatial_graph(near, max_dist=80, kind="delaunay")
    copies = np.concatenate([np.arange(len(far)), np.arange(3)])
    expected = _delaunay_brute_force(far, 80)[np.ix_(copies, copies)]
    np.testing.assert_array_equal(connectivities.toarray(), expected)
    assert connectivities[len(far), 0] == 1 and connectivities[len(far)].sum() > 2  # linked, not alone
    rows, columns = connectivities.nonzero()
    np.testing.assert_allclose(distances[rows, columns].A1, np.linalg.norm(near[rows] - near[columns], axis=1))


def test_delaunay_graph_of_cells_on_a_line_or_a_tilted_plane(points):
    # on a line, a circle through two cells holds every cell between them: only neighbours
    # along the line are Delaunay neighbours (the radius graph would also skip over cells)
    rng = np.random.default_rng(1)
    line = np.outer(rng.uniform(0, 50, size=20), [0.6, 0.8]) + 3.0
    connectivities, distances = spatial_graph(line, max_dist=8, kind="delaunay")
    along = np.argsort(line[:, 0])
    expected = np.eye(len(line))
    for a, b in zip(along[:-1], along[1:]):
        if np.linalg.norm(line[a] - line[b]) <= 8:
            expected[a, b] = expected[b, a] = 1
    np.testing.assert_array_equal(connectivities.toarray(), expected)
    assert distances.max() <= 8
    # a slide in 3-D on a tilted plane: the triangulation within the plane
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    tilted = np.column_stack([points, np.zeros(len(points))]) @ rotation.T + 5.0
    connectivities, _ = spatial_graph(tilted, max_dist=8, kind="delaunay")
    np.testing.assert_array_equal(connectivities.toarray(), _delaunay_brute_force(points, 8))
