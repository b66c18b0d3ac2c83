import numpy as np
import pytest
import scipy.sparse as sp
from anndata import AnnData

from utag.graph import (
    adjacency_from_pairs,
    radius_pairs,
    slide_pairs,
    spatial_neighbors,
)


def _squidpy_graph(adata, radius, library_key):
    import squidpy as sq

    reference = adata.copy()
    sq.gr.spatial_neighbors(reference, radius=radius, coord_type="generic", set_diag=True,
                            library_key=library_key)
    return reference.obsp["spatial_connectivities"], reference.obsp["spatial_distances"]


def _assert_same_sparse(ours, theirs, exact=True):
    ours, theirs = sp.csr_matrix(ours), sp.csr_matrix(theirs)
    ours.sort_indices(), theirs.sort_indices()
    np.testing.assert_array_equal(ours.indptr, theirs.indptr)
    np.testing.assert_array_equal(ours.indices, theirs.indices)
    if exact:
        np.testing.assert_array_equal(ours.data, theirs.data)
    else:
        np.testing.assert_allclose(ours.data, theirs.data, rtol=1e-12)


def test_graph_equals_squidpy_with_interleaved_slides(interleaved):
    adata = interleaved.copy()
    spatial_neighbors(adata, max_dist=20, slide_key="roi")
    connectivities, distances = _squidpy_graph(interleaved, 20, "roi")
    _assert_same_sparse(adata.obsp["spatial_connectivities"], connectivities)
    _assert_same_sparse(adata.obsp["spatial_distances"], distances, exact=False)
    assert adata.obsp["spatial_connectivities"].dtype == connectivities.dtype


def test_graph_equals_squidpy_on_grid_with_duplicates_and_boundary_distances():
    # integer grid: many pairs lie exactly at max_dist = 2 (inclusive) and at sqrt(5) > 2
    grid = np.stack(np.meshgrid(np.arange(12), np.arange(10)), axis=-1).reshape(-1, 2).astype(float)
    coords = np.vstack([grid, grid[:7]])  # 7 duplicated centroids
    adata = AnnData(np.ones((len(coords), 1), dtype=np.float32), obsm={"spatial": coords})
    ours = spatial_neighbors(adata, max_dist=2.0, slide_key=None, copy=True)
    connectivities, distances = _squidpy_graph(adata, 2.0, None)
    _assert_same_sparse(ours.obsp["spatial_connectivities"], connectivities)
    _assert_same_sparse(ours.obsp["spatial_distances"], distances, exact=False)
    # an interior grid cell: itself, 4 at distance 1, 4 at sqrt(2), 4 at exactly 2
    interior = 5 * 12 + 5
    assert ours.obsp["spatial_connectivities"][interior].nnz == 13


def test_radius_pairs_match_brute_force():
    coords = np.random.default_rng(0).uniform(0, 50, size=(300, 2))
    dist = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    expected = {(i, j) for i, j in zip(*np.nonzero(dist <= 7.5)) if i < j}
    assert {tuple(p) for p in radius_pairs(coords, 7.5)} == expected


def test_no_edge_crosses_slides():
    coords = np.random.default_rng(0).uniform(0, 30, size=(400, 2))
    codes = np.repeat([0, 1], 200)
    coords[200:] = coords[:200]  # the second slide sits on top of the first
    pairs = slide_pairs(coords, codes, 10.0)
    assert len(pairs) > 0
    assert (codes[pairs[:, 0]] == codes[pairs[:, 1]]).all()


def test_adjacency_is_symmetric_with_self_loops():
    adjacency = adjacency_from_pairs(np.array([[0, 1], [1, 3]]), 5)
    dense = adjacency.toarray()
    np.testing.assert_array_equal(dense, dense.T)
    np.testing.assert_array_equal(np.diag(dense), np.ones(5))
    assert dense.sum() == 5 + 4


def test_spatial_neighbors_does_not_touch_input_with_copy(tissue):
    result = spatial_neighbors(tissue, max_dist=15, slide_key="roi", copy=True)
    assert "spatial_connectivities" not in tissue.obsp
    assert result.uns["spatial_neighbors"]["params"]["radius"] == 15.0


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_spatial_neighbors_rejects_bad_max_dist(tissue, bad):
    with pytest.raises(ValueError, match="max_dist"):
        spatial_neighbors(tissue, max_dist=bad, slide_key="roi", copy=True)
