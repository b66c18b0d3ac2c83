import numpy as np
import pytest
import scipy.sparse as sp

from utag.embedding import (
    distinct_profile_neighbors,
    embed,
    fuzzy_connectivities,
    knn_distances,
    knn_graph,
    nearest_neighbors,
    pca,
)


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


def test_nearest_neighbours_are_exact_in_many_dimensions():
    # above 10 dimensions the search runs on the points turned onto their principal axes;
    # the neighbours and their distances must be those of the points as given
    rng = np.random.default_rng(1)
    points = (rng.normal(size=(400, 40)) @ rng.normal(size=(40, 40)) + 5).astype(np.float32)
    indices, distances = nearest_neighbors(points, 8)
    full = np.linalg.norm(points[:, None].astype(np.float64) - points[None], axis=-1)
    np.testing.assert_array_equal(indices, np.argsort(full, axis=1)[:, :8])
    np.testing.assert_allclose(distances, np.sort(full, axis=1)[:, :8], rtol=1e-5, atol=1e-4)


def test_each_cell_comes_first_among_its_duplicates():
    points = np.zeros((20, 3), dtype=np.float32)  # 20 identical cells, k=5
    points[10:] += 1
    indices, distances = nearest_neighbors(points, 5)
    np.testing.assert_array_equal(indices[:, 0], np.arange(20))
    assert (distances == 0).all()
    assert all(len(set(row)) == 5 for row in indices)


def umap_connectivities(indices: np.ndarray, distances: np.ndarray) -> sp.csr_matrix:
    """umap-learn's fuzzy simplicial set of a kNN graph, called as scanpy's ``sc.pp.neighbors`` calls it."""
    from umap.umap_ import fuzzy_simplicial_set

    connectivities, _, _ = fuzzy_simplicial_set(
        sp.coo_matrix((len(indices), 1)), indices.shape[1], None, None, knn_indices=indices, knn_dists=distances,
        set_op_mix_ratio=1.0, local_connectivity=1.0,
    )
    return connectivities.tocsr()


def assert_same_graph(ours: sp.csr_matrix, theirs: sp.csr_matrix, tolerance: float = 1e-5):
    ours, theirs = ours.tocsr(), theirs.tocsr()
    ours.sort_indices()
    theirs.sort_indices()
    np.testing.assert_array_equal(ours.indptr, theirs.indptr)
    np.testing.assert_array_equal(ours.indices, theirs.indices)
    np.testing.assert_allclose(ours.data, theirs.data, rtol=tolerance, atol=tolerance)


#: Embeddings from 1e-3 to 1e4 times the test points: raw intensities run into the thousands.
SCALES = [1e-3, 1e-1, 1, 10, 100, 1e3, 1e4]


@pytest.mark.parametrize("scale", SCALES)
def test_connectivities_match_umap_at_any_scale(points, scale):
    indices, distances = nearest_neighbors(points * np.float32(scale), 15)
    ours = fuzzy_connectivities(indices, distances)
    assert_same_graph(ours, umap_connectivities(indices, distances))
    assert abs(ours - ours.T).max() < 1e-6


def test_connectivities_of_many_cells_match_umap_with_any_number_of_threads():
    # 20,000 cells: the transpose sorts them in several buckets of 4,096 target cells, and
    # the union's rows are split between threads
    points = np.random.default_rng(5).normal(size=(20_000, 6)).astype(np.float32)
    indices, distances = nearest_neighbors(points, 15)
    one = fuzzy_connectivities(indices, distances, n_jobs=1)
    assert_same_graph(one, umap_connectivities(indices, distances))
    three = fuzzy_connectivities(indices, distances, n_jobs=3)
    for ours, theirs in [(three.indptr, one.indptr), (three.indices, one.indices), (three.data, one.data)]:
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("scale", SCALES)
def test_connectivities_do_not_change_with_the_scale_of_the_embedding(points, scale):
    unscaled = fuzzy_connectivities(*nearest_neighbors(points, 15))
    assert_same_graph(fuzzy_connectivities(*nearest_neighbors(points * np.float32(scale), 15)), unscaled)


def test_membership_strengths_solve_umaps_equation_at_any_scale():
    from utag.embedding import membership_strengths

    rng = np.random.default_rng(3)
    neighbours = np.sort(10.0 ** rng.uniform(0, 3, (400, 14)), axis=1) * 10.0 ** rng.uniform(-8, 8, (400, 1))
    distances = np.column_stack([np.zeros(400), neighbours]).astype(np.float32)
    # sum_j exp(-(d_ij - rho_i) / sigma_i) = log2(k) within UMAP's tolerance, for rows from 1e-8 to 1e11
    np.testing.assert_allclose(membership_strengths(distances).sum(axis=1), np.log2(15), atol=2e-5)


def test_knn_weights_and_soft_assignments_do_not_depend_on_the_number_of_threads():
    from utag.clustering import soft_assignments
    from utag.embedding import membership_strengths

    rng = np.random.default_rng(0)  # more rows than one block of 65,536, so that threads share the work
    distances = np.sort(rng.random((150_000, 15)), axis=1).astype(np.float32)
    distances[:, 0] = 0
    distances[:5, 1:] = 0  # cells whose neighbours all coincide take the floor from every cell's mean
    one = membership_strengths(distances, n_jobs=1)
    np.testing.assert_array_equal(membership_strengths(distances, n_jobs=2), one)
    np.testing.assert_array_equal(membership_strengths(distances, n_jobs=3), one)
    features = rng.normal(size=(150_000, 6)).astype(np.float32)
    labels = rng.integers(0, 4, 150_000)
    np.testing.assert_array_equal(soft_assignments(features, labels, n_jobs=2), soft_assignments(features, labels))


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


def test_locality_order_keeps_groups_of_nearby_cells_together():
    from utag.embedding import locality_order

    rng = np.random.default_rng(0)
    # three groups apart along the fifth dimension only: the leading principal axis
    group = rng.integers(3, size=3_000)
    points = rng.normal(0, 1, size=(3_000, 6))
    points[:, 4] += 50 * group
    order = locality_order(points)
    np.testing.assert_array_equal(np.sort(order), np.arange(3_000))
    # consecutive cells are almost always of one group (in a random order, two in three are not)
    assert np.mean(np.diff(group[order]) != 0) < 0.05


def test_unknown_knn_method_is_rejected(points):
    with pytest.raises(ValueError, match="method"):
        nearest_neighbors(points, 5, method="ball_tree")


DEGENERATE_TISSUES = {
    "50 identical profiles": np.tile(np.random.default_rng(0).normal(size=(1, 8)), (50, 1)),
    "all-zero features": np.zeros((50, 8)),
    "one cell": np.random.default_rng(1).normal(size=(1, 8)),
    "two identical cells": np.ones((2, 8)),
    "two distinct cells": np.random.default_rng(2).normal(size=(2, 8)),
    "one feature": np.random.default_rng(3).normal(size=(30, 1)),
}


def assert_undirected_graph(connectivities: sp.spmatrix, n_cells: int):
    assert connectivities.shape == (n_cells, n_cells)
    assert np.abs((connectivities - connectivities.T).data).max(initial=0) < 1e-6
    assert (connectivities.data >= 0).all()
    assert (connectivities.diagonal() == 0).all()


@pytest.mark.parametrize("name", DEGENERATE_TISSUES)
def test_knn_graph_of_a_degenerate_tissue(name):
    points = DEGENERATE_TISSUES[name].astype(np.float32)
    connectivities, distances, _, _ = knn_graph(points, 15)
    assert_undirected_graph(connectivities, len(points))
    assert distances.shape == (len(points), len(points))
    n_profiles = len(np.unique(points, axis=0))
    if len(points) > 1:  # identical cells are at distance 0, which UMAP weighs 1: one connected graph
        assert sp.csgraph.connected_components(connectivities)[0] == 1
    if n_profiles == 1 and len(points) > 1:
        assert connectivities.data.min() == 1


@pytest.mark.parametrize("use_rep", ["X_pca", "X"])
@pytest.mark.parametrize("pca_kwargs", [None, {"svd_solver": "arpack"}], ids=["covariance", "scanpy"])
@pytest.mark.parametrize("name", DEGENERATE_TISSUES)
def test_embedding_of_a_degenerate_tissue(name, pca_kwargs, use_rep):
    features = DEGENERATE_TISSUES[name].astype(np.float32)
    n_cells, n_features = features.shape
    embedded = embed(features, n_comps=10, pca_kwargs=pca_kwargs, use_rep=use_rep)
    n_comps = embedded.pca["embedding"].shape[1]
    assert embedded.pca["embedding"].shape == (n_cells, n_comps)
    assert 1 <= n_comps <= 10
    assert embedded.pca["components"].shape == (n_features, n_comps)
    assert np.isfinite(embedded.pca["embedding"]).all()
    assert np.isfinite(embedded.pca["variance_ratio"]).all()
    assert_undirected_graph(embedded.connectivities, n_cells)
    assert embedded.distances.shape == (n_cells, n_cells)


def test_embedding_of_identical_profiles_is_zero():
    embedded = embed(np.full((20, 5), 3.0, dtype=np.float32), n_comps=3)
    np.testing.assert_array_equal(embedded.pca["embedding"], np.zeros((20, 3)))
    np.testing.assert_array_equal(embedded.pca["variance_ratio"], np.zeros(3))


def test_identical_profiles_link_to_one_cell():
    indices, distances = distinct_profile_neighbors(np.ones((4, 3), dtype=np.float32), 15)
    np.testing.assert_array_equal(indices, [[0, 1], [1, 0], [2, 0], [3, 0]])
    np.testing.assert_array_equal(distances, np.zeros((4, 2)))


def test_knn_graph_without_neighbours_is_empty():
    indices, distances = np.arange(3)[:, None], np.zeros((3, 1), dtype=np.float32)
    assert knn_distances(indices, distances).shape == (3, 3)
    assert knn_distances(indices, distances).nnz == 0
    assert fuzzy_connectivities(indices, distances).nnz == 0


def test_exact_neighbours_do_not_depend_on_the_rotations_rounding(monkeypatch):
    from utag import embedding

    # neighbourhood compositions of one-hot cell types: small fractions, many exact ties
    rng = np.random.default_rng(0)
    points = (rng.integers(0, 4, size=(3_000, 14)) / 4).astype(np.float32)
    indices, distances = embedding.exact_neighbors(points, 15)
    # another processor's linear algebra rounds the rotated points differently
    rotate = embedding._on_principal_axes
    monkeypatch.setattr(embedding, "_on_principal_axes",
                        lambda p: rotate(p) * (1 + 1e-12 * rng.standard_normal((len(p), p.shape[1]))))
    again, again_distances = embedding.exact_neighbors(points, 15)
    np.testing.assert_array_equal(indices, again)
    np.testing.assert_array_equal(distances, again_distances)
    # and they are the nearest cells, ties going to the cell that comes first
    for row in rng.choice(len(points), 50, replace=False):
        exact = np.sqrt(((points.astype(np.float64) - points[row]) ** 2).sum(axis=1))
        np.testing.assert_array_equal(indices[row], np.lexsort((np.arange(len(points)), exact))[:15])


def test_effective_dimensions_count_the_axes_that_hold_the_spread():
    from utag.embedding import effective_dimensions

    rng = np.random.default_rng(0)
    # 4 strong axes, turned into 30 dimensions, plus faint noise in all 30
    strong = rng.normal(size=(5_000, 4)) * np.array([5.0, 4.0, 3.0, 3.0])
    rotation = np.linalg.qr(rng.normal(size=(30, 30)))[0]
    points = np.hstack([strong, np.zeros((5_000, 26))]) @ rotation + rng.normal(scale=0.01, size=(5_000, 30))
    assert effective_dimensions(points) == 4
    assert effective_dimensions(rng.normal(size=(5_000, 30))) >= 27  # noise fills every axis
    assert effective_dimensions(np.ones((10, 5))) == 0
    # variances 10, 10 and 1: two axes hold 95.2% of the spread, not yet 99%
    scaled = rng.normal(size=(20_000, 3))
    scaled = (scaled - scaled.mean(axis=0)) / scaled.std(axis=0) * np.sqrt([10.0, 10.0, 1.0])
    assert effective_dimensions(scaled) == 2


def test_auto_search_is_exact_only_where_the_kd_tree_is_cheap(monkeypatch):
    from utag import embedding

    rng = np.random.default_rng(1)
    flat = np.hstack([rng.normal(size=(3_000, 2)), np.zeros((3_000, 18))]).astype(np.float32)
    spread = rng.normal(size=(3_000, 20)).astype(np.float32)
    monkeypatch.setattr(embedding, "EXACT_SEARCH_BUDGET", 3_000 * 2**6)
    assert embedding.exact_search(flat, 15) and not embedding.exact_search(spread, 15)
    assert embedding.exact_search(spread, 15, "exact") and not embedding.exact_search(flat, 15, "approximate")
    # the graph is the one of the search chosen, and says which it was
    for points, search in [(flat, "exact"), (spread, "approximate")]:
        connectivities, _, _, used = knn_graph(points, 15)
        assert used == search
        np.testing.assert_array_equal(connectivities.toarray(), knn_graph(points, 15, search)[0].toarray())
    # past the size limit the search is approximate however few the dimensions
    monkeypatch.setattr(embedding, "EXACT_NEIGHBORS_MAX_CELLS", 2_000)
    assert not embedding.exact_search(flat, 15)


@pytest.mark.parametrize("perturbed", [False, True])
def test_exact_neighbours_of_duplicated_bright_profiles_list_each_cell_once(monkeypatch, perturbed):
    from utag import embedding

    # 30 profiles of 40 raw intensities in the thousands, ~30 cells each (more than k):
    # every cell's 15 neighbours are itself and the first 14 other cells of its profile
    rng = np.random.default_rng(0)
    profiles = (rng.normal(size=(30, 40)) * 1e3).astype(np.float32)
    codes = rng.integers(0, 30, size=900)
    if perturbed:  # the rotation rounded as another processor may round it, at the scale of the values
        rotate = embedding._on_principal_axes
        monkeypatch.setattr(embedding, "_on_principal_axes",
                            lambda p: rotate(p) + 1e-12 * rng.standard_normal((len(p), p.shape[1])))
    indices, distances = embedding.nearest_neighbors(profiles[codes], 15, "exact")
    expected = [[cell, *[other for other in np.flatnonzero(codes == code) if other != cell][:14]]
                for cell, code in enumerate(codes)]
    np.testing.assert_array_equal(indices, expected)
    assert (distances == 0).all()


def test_n_comps_in_pca_kwargs_is_capped_as_utag_caps_it(points):
    # utag() takes n_comps in pca_kwargs; embed() took it there uncapped, straight to
    # scikit-learn, which refused 10 components of 5 features
    features = points[:, :5]
    given = embed(features, pca_kwargs={"n_comps": 10})
    expected = embed(features, n_comps=10)
    assert given.pca["embedding"].shape == (len(features), 4)
    np.testing.assert_allclose(given.pca["embedding"], expected.pca["embedding"], rtol=1e-5, atol=1e-5)
    assert embed(points, n_comps=10, pca_kwargs={"n_comps": 3}).pca["embedding"].shape == (len(points), 3)


@pytest.mark.parametrize("n_neighbors", [0, -3, 2.5])
def test_n_neighbors_that_is_not_a_positive_whole_number_is_refused(points, n_neighbors):
    # used to fail deep in the search (IndexError: index 0 is out of bounds)
    with pytest.raises(ValueError, match="n_neighbors"):
        nearest_neighbors(points, n_neighbors)
    with pytest.raises(ValueError, match="n_neighbors"):
        embed(points, n_neighbors=n_neighbors)


def test_projection_does_not_depend_on_the_block_of_cells(points):
    from utag.embedding import principal_axes, project

    mean = points.mean(axis=0, dtype=np.float64)
    axes, _, _ = principal_axes(np.cov(points.T.astype(np.float64)), 4)
    whole = project(points, axes, mean)
    blocks = np.vstack([project(points[start:start + 37], axes, mean) for start in range(0, len(points), 37)])
    np.testing.assert_array_equal(blocks, whole)  # the Dask route projects slide by slide
    np.testing.assert_allclose(whole, (points.astype(np.float64) - mean) @ axes, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(project(sp.csr_matrix(points), axes, mean), whole)


def test_cut_off_finds_cells_whose_umap_weights_keep_them_with_their_copies():
    from utag.embedding import cut_off, membership_strengths

    # k = 15, log2(k) = 3.9: a cell with 3 copies has 4 neighbours at the nearest non-zero
    # distance or closer, as has a cell with 2 copies whose nearest other profile has 2 cells
    distances = np.array([
        [0, 0, 0, 0, *np.arange(1, 12)],     # 3 copies
        [0, 0, 0, 1, 1, *np.arange(2, 12)],  # 2 copies, then 2 cells at the same distance
        [0, 0, 0, *np.arange(1, 13)],        # 2 copies: 3 neighbours at or below the nearest distance
        [0, 0, 1, 1, 1, *np.arange(2, 12)],  # 1 copy and 3 ties: 4
        [0, *np.ones(4), *np.arange(2, 12)], # no copy: ties alone are not copies
    ], dtype=np.float32)
    assert cut_off(distances).tolist() == [True, True, False, True, False]
    # what cut off means: UMAP's weights of the farther neighbours are (almost) nothing (ties
    # without a copy do that too, but distinct profiles cannot help there)
    far_weights = membership_strengths(distances)[:4, -5:].max(axis=1)
    assert ((far_weights < 1e-3) == cut_off(distances)[:4]).all()


def test_cells_mapped_onto_spots_give_domains_not_fragments():
    import anndata
    import scipy.sparse.csgraph as csgraph
    from sklearn.metrics import adjusted_rand_score

    from utag import utag
    from utag.datasets import synthetic_tissue

    # 3 cells at the centroid of each spot (cells mapped onto Visium spots, or binned to a
    # grid): each cell has 2 copies of its neighbourhood, and the copies of the nearest spot
    # tie with each other; UMAP's weights then cut every spot off with its nearest one
    spots = synthetic_tissue(n_cells=1_200, n_slides=1, n_domains=3, random_state=2)
    copies = np.repeat(np.arange(spots.n_obs), 3)
    obs = spots.obs.iloc[copies].set_axis([f"cell_{i}" for i in range(len(copies))])
    cells = anndata.AnnData(spots.X[copies], obs=obs, obsm={"spatial": spots.obsm["spatial"][copies]})
    cells.X = cells.X + np.random.default_rng(0).normal(0, 0.05, cells.X.shape).astype(np.float32)
    result = utag(cells, slide_key="roi", max_dist=30, clustering_method=["leiden"], resolutions=[0.1],
                  progress=False)
    assert result.uns["neighbors"]["params"]["distinct_profiles"]
    assert csgraph.connected_components(result.obsp["connectivities"])[0] == 1
    labels = result.obs["UTAG Label_leiden_0.1"]
    assert labels.nunique() <= 6
    assert adjusted_rand_score(cells.obs["domain"], labels) > 0.5


def test_cut_off_cells_are_counted_per_slide():
    from utag.embedding import cut_off, cut_off_cells

    # a slide of 90 cells mapped 3 per spot (8% of all cells: each has 2 copies and 3
    # cells of the next spot at one distance) beside a slide of 1,000 ordinary cells
    distances = np.zeros((1_090, 15), dtype=np.float32)
    distances[:90] = [0, 0, 0, 1, 1, 1, *range(2, 11)]
    distances[90:] = np.arange(15) + np.random.default_rng(0).random((1_000, 1))
    assert cut_off(distances)[:90].all() and not cut_off(distances)[90:].any()
    assert cut_off_cells(distances) == 0  # under a tenth of all the cells
    assert cut_off_cells(distances, slides=np.r_[np.zeros(90, int), np.ones(1_000, int)]) == 90
    # with k = 2, a cell whose one neighbour is a copy is cut off
    assert cut_off(np.zeros((4, 2), dtype=np.float32)).all()
