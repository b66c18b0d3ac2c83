"""flavor="multiscale": features against brute force, records, transfer, errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy.spatial.distance import cdist
from sklearn.metrics import adjusted_rand_score

from utag import utag
from utag.datasets import synthetic_tissue
from utag.transfer import transfer_labels
from utag.tuning import max_dist_report


def _tiny_tissue() -> AnnData:
    """Two slides of a few cells, two of them on the same spot, integer and real features."""
    rng = np.random.default_rng(3)
    coords = np.vstack([rng.uniform(0, 12, size=(14, 2)), [[3.0, 3.0], [3.0, 3.0]], rng.uniform(0, 9, size=(10, 2))])
    features = np.column_stack([rng.integers(0, 3, size=26), rng.normal(5.0, 2.0, size=26), rng.uniform(size=26)])
    obs = pd.DataFrame({"slide": pd.Categorical(["a"] * 16 + ["b"] * 10)}, index=[f"c{i}" for i in range(26)])
    adata = AnnData(features.astype(np.float32), obs=obs, var=pd.DataFrame(index=["m0", "m1", "m2"]))
    adata.obsm["spatial"] = coords
    return adata


def _brute_force(adata: AnnData, max_dist: float, widths) -> np.ndarray:
    """Gaussian means per width (``p`` passes of width ``w / sqrt(p)``, ``p`` the fewest
    that bring it to ``max_dist / 2`` or below), each block scaled to unit total variance."""
    x = np.asarray(adata.X, dtype=np.float64)
    blocks = [np.zeros_like(x) for _ in widths]
    for slide in adata.obs["slide"].cat.categories:
        cells = (adata.obs["slide"] == slide).to_numpy()
        distances = cdist(adata.obsm["spatial"][cells], adata.obsm["spatial"][cells])
        for block, width in zip(blocks, widths):
            passes = 1
            while width / np.sqrt(passes) > max_dist / 2 + 1e-12:
                passes += 1
            sigma = width / np.sqrt(passes)
            weights = np.where(distances <= 2.5 * sigma, np.exp(-(distances**2) / (2 * sigma**2)), 0.0)
            kernel = weights / weights.sum(axis=1, keepdims=True)
            values = x[cells]
            for _ in range(passes):
                values = kernel @ values
            block[cells] = values
    return np.hstack([block / np.sqrt(block.var(axis=0).sum()) for block in blocks])


@pytest.mark.parametrize("widths", [None, (1.0, 7.5)])
def test_multiscale_features_equal_brute_force(widths):
    adata = _tiny_tissue()
    before = adata.copy()
    result = utag(adata, slide_key="slide", max_dist=4.0, apply_clustering=False, flavor="multiscale",
                  kernel_widths=widths, progress=False)
    expected_widths = (1.0, 2.0, 4.0) if widths is None else widths
    np.testing.assert_allclose(result.X, _brute_force(adata, 4.0, expected_widths), rtol=2e-5, atol=2e-6)
    assert result.var_names.tolist() == [f"{m}@{w:g}" for w in expected_widths for m in ("m0", "m1", "m2")]
    assert result.var["feature"].tolist() == ["m0", "m1", "m2"] * len(expected_widths)
    recorded = result.uns["utag"]["multiscale"]
    np.testing.assert_array_equal(recorded["kernel_widths"], expected_widths)
    # 7.5 is wider than max_dist / 2 = 2: (7.5 / 2)^2 = 14.1, so 15 passes of width 7.5 / sqrt(15)
    np.testing.assert_array_equal(recorded["kernel_passes"], [1, 1, 4] if widths is None else [1, 15])
    assert result.uns["utag"]["flavor"] == "multiscale"
    assert (adata.X == before.X).all() and adata.obs.equals(before.obs)


def test_multiscale_is_independent_of_row_order_and_processes():
    adata = synthetic_tissue(n_cells=3_000, n_slides=3, random_state=2)
    first = utag(adata, slide_key="roi", max_dist=20, clustering_method="leiden", resolutions=[0.2],
                 flavor="multiscale", progress=False, parallel=False)
    shuffled = adata[np.random.default_rng(0).permutation(adata.n_obs)].copy()
    second = utag(shuffled, slide_key="roi", max_dist=20, clustering_method="leiden", resolutions=[0.2],
                  flavor="multiscale", progress=False, processes=2)
    second = second[adata.obs_names]
    np.testing.assert_allclose(second.X, first.X, rtol=1e-5, atol=1e-6)
    assert adjusted_rand_score(first.obs["UTAG Label_leiden_0.2"], second.obs["UTAG Label_leiden_0.2"]) == 1.0


def test_multiscale_finds_the_domains_of_a_synthetic_tissue():
    adata = synthetic_tissue(n_cells=8_000, n_slides=2, random_state=0, layout="layers")
    result = utag(adata, slide_key="roi", max_dist=40, clustering_method="kmeans", resolutions=[0.5],
                  flavor="multiscale", progress=False)
    assert adjusted_rand_score(adata.obs["domain"], result.obs["UTAG Label_kmeans_0.5"]) > 0.6


@pytest.mark.parametrize("kind", ["knn", "delaunay"])
def test_multiscale_on_other_spatial_graphs(kind):
    adata = synthetic_tissue(n_cells=2_000, n_slides=2, random_state=1)
    result = utag(adata, slide_key="roi", max_dist=30, clustering_method="kmeans", resolutions=[0.5],
                  flavor="multiscale", spatial_graph=kind, progress=False, keep_spatial_connectivity=True)
    assert result.shape == (adata.n_obs, 3 * adata.n_vars)
    assert np.isfinite(result.X).all()
    # every block is scaled to unit total variance
    totals = result.X.var(axis=0, dtype=np.float64).reshape(3, -1).sum(axis=1)
    np.testing.assert_allclose(totals, 1.0, rtol=1e-4)
    stored = result.obsp["spatial_distances"]
    assert stored.shape == (adata.n_obs, adata.n_obs)
    if kind == "delaunay":  # edges cut at the kernels' graph radius, 1.25 max_dist
        assert 30 < stored.max() <= 1.25 * 30 + 1e-9


def test_transfer_with_the_multiscale_flavour():
    tissue = synthetic_tissue(n_cells=8_000, n_slides=2, random_state=0, layout="islands")
    reference = tissue[tissue.obs["roi"] == "roi_0"].copy()
    new = tissue[tissue.obs["roi"] == "roi_1"].copy()
    result = utag(reference, slide_key="roi", max_dist=40, clustering_method="kmeans", resolutions=[0.5],
                  flavor="multiscale", progress=False)
    model = result.uns["utag"]["model"]
    assert model["flavor"] == "multiscale" and model["features"].tolist() == reference.var_names.tolist()

    again = transfer_labels(result, reference, slide_key="roi", method="centroid", n_jobs=1)
    np.testing.assert_allclose(again.X, result.X, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(again.obsm["X_pca"], result.obsm["X_pca"], atol=1e-4)
    assert again.var_names.tolist() == result.var_names.tolist()

    transferred = transfer_labels(result, new, slide_key="roi")
    own = utag(new, slide_key="roi", max_dist=40, clustering_method="kmeans", resolutions=[0.5],
               flavor="multiscale", progress=False)
    key = "UTAG Label_kmeans_0.5"
    truth = new.obs["domain"]
    assert adjusted_rand_score(truth, transferred.obs[key]) > adjusted_rand_score(truth, own.obs[key]) - 0.1


def test_max_dist_report_of_the_multiscale_graph():
    adata = synthetic_tissue(n_cells=2_000, n_slides=2, random_state=0)
    plain = max_dist_report(adata, max_dists=[10, 20], slide_key="roi")
    wide = max_dist_report(adata, max_dists=[10, 20], slide_key="roi", flavor="multiscale")
    assert plain["graph_radius"].tolist() == plain["max_dist"].tolist()
    assert wide["graph_radius"].tolist() == [12.5, 12.5, 12.5, 25.0, 25.0, 25.0]
    # the multiscale graph at max_dist 20 is the plain graph at radius 25
    at_25 = max_dist_report(adata, max_dists=[25], slide_key="roi")
    np.testing.assert_array_equal(wide["median_neighbours"].to_numpy()[3:], at_25["median_neighbours"].to_numpy())


def test_multiscale_errors_name_the_parameter():
    adata = synthetic_tissue(n_cells=500, n_slides=1, random_state=0)
    with pytest.raises(ValueError, match="`flavor` must be one of"):
        utag(adata, slide_key="roi", flavor="banksy", progress=False)
    with pytest.raises(ValueError, match="`kernel_widths` sets the scales of flavor='multiscale'"):
        utag(adata, slide_key="roi", kernel_widths=[5, 10], progress=False)
    with pytest.raises(ValueError, match="normalization_mode"):
        utag(adata, slide_key="roi", flavor="multiscale", normalization_mode="sum", progress=False)
    with pytest.raises(ValueError, match="kernel_widths"):
        utag(adata, slide_key="roi", flavor="multiscale", kernel_widths=[5, -1], progress=False)
    with pytest.raises(ValueError, match="kernel_widths"):
        utag(adata, slide_key="roi", flavor="multiscale", kernel_widths=[], progress=False)
    with pytest.raises(ValueError, match="up to 5 x max_dist"):
        utag(adata, slide_key="roi", max_dist=20, flavor="multiscale", kernel_widths=[5, 1e6], progress=False)


def test_tiny_kernel_widths_give_finite_gaussian_means():
    # width^2 underflows to 0 below ~1e-162: the self-loop's weight must still be exp(0) = 1, not 0 / 0
    from utag.graph import spatial_graph
    from utag.multiscale import edge_lengths, gaussian_kernel

    coords = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]])  # two cells at one position
    kernel = gaussian_kernel(edge_lengths(coords, spatial_graph(coords, 2.0)[0]), 1e-200).toarray()
    np.testing.assert_array_equal(kernel, [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])

    # so narrow a kernel averages each cell with the cells at its very position only (two share (3, 3))
    adata = _tiny_tissue()
    result = utag(adata, slide_key="slide", max_dist=4.0, apply_clustering=False, flavor="multiscale",
                  kernel_widths=[1e-200, 2.0], progress=False)
    x = np.asarray(adata.X, dtype=np.float64)
    same = (cdist(adata.obsm["spatial"], adata.obsm["spatial"]) == 0) & (
        adata.obs["slide"].to_numpy()[:, None] == adata.obs["slide"].to_numpy()[None])
    narrow = same @ x / same.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(result.X[:, :3], narrow / np.sqrt(narrow.var(axis=0).sum()), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(result.X[:, 3:], _brute_force(adata, 4.0, (2.0,)), rtol=2e-5, atol=2e-6)
