import numpy as np
import pytest
import scipy.sparse as sp

from utag.embedding import fuzzy_connectivities, knn_distances, nearest_neighbors, pca


@pytest.fixture
def points():
    rng = np.random.default_rng(0)
    return np.vstack([rng.normal(0, 1, (300, 8)), rng.normal(4, 2, (200, 8))]).astype(np.float32)


@pytest.mark.parametrize("sparse_input", [False, True])
def test_pca_matches_scikit_learn(points, sparse_input):
    from sklearn.decomposition import PCA

    reference = PCA(n_components=5, svd_solver="full").fit(points.astype(np.float64))
    expected = reference.transform(points.astype(np.float64))
    data = sp.csr_matrix(points) if sparse_input else points
    fitted = pca(data, 5)
    np.testing.assert_allclose(fitted["variance"], reference.explained_variance_, rtol=1e-4)
    np.testing.assert_allclose(fitted["variance_ratio"], reference.explained_variance_ratio_, rtol=1e-4)
    signs = np.sign((fitted["embedding"] * expected).sum(axis=0))
    np.testing.assert_allclose(fitted["embedding"] * signs, expected, atol=2e-3)


def test_pca_sign_convention_is_deterministic(points):
    components = pca(points, 4)["components"]
    largest = np.abs(components).argmax(axis=0)
    assert (components[largest, np.arange(4)] > 0).all()


def test_nearest_neighbours_are_exact(points):
    indices, distances = nearest_neighbors(points, 6)
    full = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.testing.assert_array_equal(indices[:, 0], np.arange(len(points)))
    np.testing.assert_allclose(np.sort(full, axis=1)[:, :6], distances, rtol=1e-5, atol=1e-5)


def test_each_cell_comes_first_among_its_duplicates():
    points = np.zeros((20, 3), dtype=np.float32)  # 20 identical cells, k=5
    points[10:] += 1
    indices, distances = nearest_neighbors(points, 5)
    np.testing.assert_array_equal(indices[:, 0], np.arange(20))
    assert (distances == 0).all()
    assert all(len(set(row)) == 5 for row in indices)


def test_connectivities_match_umap(points):
    from umap.umap_ import fuzzy_simplicial_set

    indices, distances = nearest_neighbors(points, 15)
    ours = fuzzy_connectivities(indices, distances)
    theirs, _, _ = fuzzy_simplicial_set(
        sp.coo_matrix((len(points), 1)), 15, None, None, knn_indices=indices, knn_dists=distances,
        set_op_mix_ratio=1.0, local_connectivity=1.0,
    )
    theirs = sp.csr_matrix(theirs)
    assert ours.nnz == theirs.nnz
    np.testing.assert_allclose(ours.toarray(), theirs.toarray(), atol=1e-4)
    assert abs(ours - ours.T).max() < 1e-6


def test_knn_distances_drop_the_self_column(points):
    indices, distances = nearest_neighbors(points, 4)
    matrix = knn_distances(indices, distances)
    assert matrix.nnz == 3 * len(points)
    assert matrix.diagonal().max() == 0
    np.testing.assert_allclose(matrix[0, indices[0, 1]], distances[0, 1])


@pytest.fixture(scope="module")
def tissue_embedding():
    from utag import utag
    from utag.datasets import synthetic_tissue

    adata = synthetic_tissue(n_cells=20_000, n_slides=3, random_state=2)
    result = utag(adata, slide_key="roi", apply_clustering=False, progress=False)
    return pca(result.X, 10)["embedding"]


def test_approximate_neighbours_find_the_exact_ones(tissue_embedding):
    exact, exact_distances = nearest_neighbors(tissue_embedding, 15, method="exact")
    approximate, distances = nearest_neighbors(tissue_embedding, 15, method="approximate")
    np.testing.assert_array_equal(approximate[:, 0], np.arange(len(tissue_embedding)))
    assert (np.diff(distances, axis=1) >= 0).all()
    found = (approximate[:, 1:, None] == exact[:, None, 1:]).any(axis=2).mean()
    assert found > 0.97
    # distances are the real ones, never shorter than the exact k-th neighbour
    recomputed = np.linalg.norm(tissue_embedding[approximate] - tissue_embedding[:, None], axis=2)
    np.testing.assert_allclose(distances, recomputed, rtol=1e-4, atol=1e-4)
    assert (distances[:, -1] >= exact_distances[:, -1] - 1e-4).all()


def test_approximate_neighbours_are_deterministic(tissue_embedding):
    from utag.embedding import approximate_neighbors

    first = approximate_neighbors(tissue_embedding, 10, random_state=0, n_jobs=2)[0]
    np.testing.assert_array_equal(first, approximate_neighbors(tissue_embedding, 10, random_state=0, n_jobs=1)[0])


def test_unknown_knn_method_is_rejected(points):
    with pytest.raises(ValueError, match="method"):
        nearest_neighbors(points, 5, method="ball_tree")
