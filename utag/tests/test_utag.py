"""The public pipeline: outputs, input safety, edge cases, bad input, accuracy."""
import copy
import inspect

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from utag import evaluate_performance, utag
from utag.datasets import synthetic_tissue
from utag.graph import spatial_neighbors

FAST = dict(clustering_method=["kmeans"], resolutions=[0.3], progress=False, parallel=False)


def _run(adata, **kwargs):
    return utag(adata, **{"slide_key": "roi", "max_dist": 20, **FAST, **kwargs})


def _snapshot(adata):
    return {
        "X": adata.X.copy(), "obs": adata.obs.copy(), "var": adata.var.copy(),
        "obsm": {k: np.array(v, copy=True) for k, v in adata.obsm.items()},
        "uns": copy.deepcopy(dict(adata.uns)), "obsp": list(adata.obsp.keys()),
    }


def test_writes_labels_and_probabilities_for_every_method_and_resolution(tissue):
    result = utag(tissue, slide_key="roi", max_dist=20, clustering_method=["leiden", "parc", "kmeans"],
                  resolutions=[0.1, 0.5], progress=False)
    for method in ["leiden", "parc", "kmeans"]:
        for resolution in [0.1, 0.5]:
            key = f"UTAG Label_{method}_{resolution}"
            labels = result.obs[key]
            assert isinstance(labels.dtype, pd.CategoricalDtype)
            assert labels.notna().all()
            probabilities = result.obsm[f"{key}_probabilities"]
            assert probabilities.shape == (tissue.n_obs, labels.cat.categories.size)
            np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
            assert (probabilities.argmax(axis=1) == labels.cat.codes).mean() > 0.5
    assert result.obsm["X_pca"].shape == (tissue.n_obs, 10)
    assert result.uns["neighbors"]["params"]["n_neighbors"] == 15
    assert result.obsp["connectivities"].shape == (tissue.n_obs, tissue.n_obs)


def test_input_is_untouched_and_order_kept_with_interleaved_slides(tissue, interleaved):
    before = _snapshot(interleaved)
    result = _run(interleaved, keep_spatial_connectivity=True)
    after = _snapshot(interleaved)
    np.testing.assert_array_equal(before["X"], after["X"])
    pd.testing.assert_frame_equal(before["obs"], after["obs"])
    pd.testing.assert_frame_equal(before["var"], after["var"])
    for key in before["obsm"]:
        np.testing.assert_array_equal(before["obsm"][key], after["obsm"][key])
    assert before["uns"] == after["uns"] and before["obsp"] == after["obsp"]

    assert list(result.obs_names) == list(interleaved.obs_names)
    np.testing.assert_array_equal(result.obsm["spatial"], interleaved.obsm["spatial"])
    # the message-passed matrix of shuffled input is the shuffled matrix of ordered input
    ordered = _run(tissue)
    position = pd.Series(np.arange(tissue.n_obs), index=tissue.obs_names)
    np.testing.assert_allclose(result.X, ordered.X[position[interleaved.obs_names].to_numpy()], rtol=1e-6)
    reference = spatial_neighbors(interleaved, max_dist=20, slide_key="roi", copy=True)
    for key in ["spatial_connectivities", "spatial_distances"]:
        assert (result.obsp[key] != reference.obsp[key]).nnz == 0
    assert result.obsm["spatial"] is not interleaved.obsm["spatial"]


def test_defaults_and_caller_dicts_are_never_mutated(tissue):
    defaults_before = copy.deepcopy({k: p.default for k, p in inspect.signature(utag).parameters.items()})
    pca_kwargs, leiden_kwargs, methods, resolutions = {"n_comps": 50}, {"n_iterations": 2}, ["leiden"], [0.2]
    utag(tissue, slide_key="roi", pca_kwargs=pca_kwargs, leiden_kwargs=leiden_kwargs,
         clustering_method=methods, resolutions=resolutions, progress=False)
    assert pca_kwargs == {"n_comps": 50} and leiden_kwargs == {"n_iterations": 2}
    assert methods == ["leiden"] and resolutions == [0.2]
    defaults_after = {k: p.default for k, p in inspect.signature(utag).parameters.items()}
    assert defaults_after == defaults_before
    assert defaults_after["pca_kwargs"] == {"n_comps": 10}


def test_every_parameter_that_changes_the_labels_is_recorded_and_written(tissue, tmp_path):
    import anndata
    import leidenalg

    membership = np.arange(tissue.n_obs) % 3
    result = utag(tissue, slide_key="roi", save_key="run1", filter_by_variance=True, keep_spatial_connectivity=True,
                  clustering_method=["leiden", "kmeans"], resolutions=[0.3], pca_kwargs={"svd_solver": "full"},
                  leiden_kwargs={"flavor": "leidenalg", "partition_type": leidenalg.RBConfigurationVertexPartition,
                                 "initial_membership": membership},
                  kmeans_kwargs={"max_iter": 50}, progress=False)
    result.write_h5ad(tmp_path / "run.h5ad")
    recorded = anndata.read_h5ad(tmp_path / "run.h5ad").uns["utag"]
    assert recorded["save_key"] == "run1" and recorded["filter_by_variance"] and recorded["keep_spatial_connectivity"]
    assert recorded["pca_kwargs"] == {"svd_solver": "full"} and recorded["kmeans_kwargs"] == {"max_iter": 50}
    leiden = recorded["leiden_kwargs"]
    assert leiden["flavor"] == "leidenalg" and leiden["initial_membership"] == f"{tissue.n_obs} values"
    assert leiden["partition_type"] == "RBConfigurationVertexPartition"
    assert recorded["parc_kwargs"] == {} and not recorded["apply_umap"]


def test_n_comps_is_capped_below_the_number_of_features(tissue, caplog):
    result = _run(tissue, pca_kwargs={"n_comps": 50})
    assert result.obsm["X_pca"].shape[1] == tissue.n_vars - 1
    assert "capped" in caplog.text


def test_serial_and_parallel_give_identical_results(tissue):
    serial = _run(tissue, clustering_method=["leiden", "kmeans"], parallel=False)
    pooled = _run(tissue, clustering_method=["leiden", "kmeans"], parallel=True, processes=2)
    np.testing.assert_array_equal(serial.X, pooled.X)
    for key in ["UTAG Label_leiden_0.3", "UTAG Label_kmeans_0.3"]:
        np.testing.assert_array_equal(serial.obs[key], pooled.obs[key])


def test_the_number_of_threads_does_not_change_the_result(tissue):
    options = dict(clustering_method=["leiden", "kmeans"], resolutions=[0.1, 0.3], knn_method="approximate",
                   sketch_size=0.5)
    one, two = _run(tissue, n_jobs=1, **options), _run(tissue, n_jobs=2, **options)
    for key in one.uns["utag"]["label_keys"]:
        np.testing.assert_array_equal(one.obs[key], two.obs[key])
        np.testing.assert_array_equal(one.obsm[f"{key}_probabilities"], two.obsm[f"{key}_probabilities"])
    with pytest.raises(ValueError, match="n_jobs"):
        _run(tissue, n_jobs=0)


def test_same_random_state_same_result(tissue):
    kwargs = dict(clustering_method=["leiden", "parc", "kmeans"], resolutions=[0.3])
    first, second = _run(tissue, **kwargs), _run(tissue, **kwargs)
    for key in first.uns["utag"]["label_keys"]:
        np.testing.assert_array_equal(first.obs[key], second.obs[key])
        np.testing.assert_array_equal(first.obsm[f"{key}_probabilities"], second.obsm[f"{key}_probabilities"])
    np.testing.assert_array_equal(first.obsm["X_pca"], second.obsm["X_pca"])


def test_random_state_reaches_the_clustering(tissue):
    runs = [_run(tissue, clustering_method=["leiden"], resolutions=[2.0], random_state=seed) for seed in range(4)]
    labels = [r.obs["UTAG Label_leiden_2.0"].to_numpy() for r in runs]
    assert any((labels[0] != other).any() for other in labels[1:])


def test_optional_outputs(tissue):
    result = _run(tissue, apply_umap=True, umap_kwargs={"min_dist": 0.3}, keep_spatial_connectivity=True)
    assert result.obsm["X_umap"].shape == (tissue.n_obs, 2)
    assert result.obsp["spatial_connectivities"].diagonal().min() == 1
    bare = _run(tissue, apply_clustering=False)
    assert "X_pca" not in bare.obsm and not any(c.startswith("UTAG") for c in bare.obs)
    assert "spatial_connectivities" not in bare.obsp


def test_sum_mode_scales_with_neighbourhood_size(tissue):
    mean = _run(tissue, apply_clustering=False)
    total = _run(tissue, apply_clustering=False, normalization_mode="sum", keep_spatial_connectivity=True)
    degree = np.asarray(total.obsp["spatial_connectivities"].sum(axis=1)).ravel()
    np.testing.assert_allclose(total.X, mean.X * degree[:, None], rtol=1e-4)


def test_channels_and_variance_filter_select_features(tissue):
    chosen = list(tissue.var_names[[4, 1, 7]])
    result = _run(tissue, channels_to_use=chosen, apply_clustering=False)
    assert list(result.var_names) == chosen
    filtered = _run(tissue, filter_by_variance=True, apply_clustering=False)
    std = np.asarray(tissue.X).std(axis=0)
    assert list(filtered.var_names) == list(tissue.var_names[std > np.median(std)])


# ---------------------------------------------------------------- edge cases that must work


def _tiny(n=60, seed=0, slides=("a", "b")):
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame({"roi": rng.choice(list(slides), size=n)}, index=[f"c{i}" for i in range(n)])
    return AnnData(rng.gamma(2.0, size=(n, 5)).astype(np.float32), obs=obs,
                   obsm={"spatial": rng.uniform(0, 60, size=(n, 2))})


def test_slide_with_one_cell_and_isolated_cells():
    adata = _tiny()
    adata.obs["roi"] = adata.obs["roi"].astype(object)
    adata.obs.iloc[0, 0] = "lonely"
    adata.obsm["spatial"][1] = [1e5, 1e5]
    result = _run(adata)
    np.testing.assert_allclose(result.X[0], adata.X[0], rtol=1e-6)
    np.testing.assert_allclose(result.X[1], adata.X[1], rtol=1e-6)


def test_duplicated_coordinates():
    adata = _tiny()
    adata.obsm["spatial"][:20] = adata.obsm["spatial"][0]
    result = _run(adata, clustering_method=["leiden", "kmeans"])
    assert result.obs["UTAG Label_leiden_0.3"].notna().all()


@pytest.mark.parametrize("convert", [
    lambda X: X.astype(np.int64), lambda X: X.astype(np.float64), sp.csr_matrix, sp.csc_matrix,
])
def test_feature_dtypes_and_sparse_input(convert):
    adata = _tiny()
    reference = _run(adata, apply_clustering=False)
    converted = adata.copy()
    converted.X = convert(np.round(adata.X) if convert is not sp.csr_matrix else adata.X)
    result = _run(converted)
    assert result.X.dtype == np.float32
    dense = result.X.toarray() if sp.issparse(result.X) else result.X
    if convert in (sp.csr_matrix,):
        np.testing.assert_allclose(dense, reference.X, rtol=1e-6)
    assert result.obs["UTAG Label_kmeans_0.3"].notna().all()


@pytest.mark.parametrize("slide_values", ["strings", "categorical", "integers"])
def test_slide_key_types(slide_values):
    adata = _tiny()
    if slide_values == "categorical":
        adata.obs["roi"] = adata.obs["roi"].astype("category")
    elif slide_values == "integers":
        adata.obs["roi"] = (adata.obs["roi"] == "a").astype(int)
    result = _run(adata, keep_spatial_connectivity=True)
    slides = adata.obs["roi"].to_numpy()
    rows, cols = result.obsp["spatial_connectivities"].nonzero()
    assert (slides[rows] == slides[cols]).all()


def test_single_image_and_method_spellings():
    adata = _tiny()
    result = utag(adata, slide_key=None, max_dist=15, clustering_method=("KMeans", "leiden"), resolutions=0.2,
                  progress=False)
    assert {"UTAG Label_kmeans_0.2", "UTAG Label_leiden_0.2"} <= set(result.obs.columns)


def test_values_as_r_sends_them():
    # reticulate turns R numbers into floats: n_comps = 3.0, processes = 2.0, a vector of resolutions
    adata = _tiny()
    result = utag(adata, slide_key="roi", pca_kwargs={"n_comps": 3.0}, processes=2.0,
                  clustering_method="kmeans", resolutions=[0.2, 0.4], n_neighbors=10.0, progress=False)
    assert result.obsm["X_pca"].shape[1] == 3
    assert {"UTAG Label_kmeans_0.2", "UTAG Label_kmeans_0.4"} <= set(result.obs.columns)


# ---------------------------------------------------------------- bad input


def _without_spatial():
    adata = _tiny()
    del adata.obsm["spatial"]
    return adata


def _with(attribute, value):
    adata = _tiny()
    if attribute == "spatial":
        adata.obsm["spatial"] = value(adata.obsm["spatial"])
    else:
        X = adata.X.copy()
        X[3, 2] = value
        adata.X = X
    return adata


@pytest.mark.parametrize("make, kwargs, message", [
    (_without_spatial, {}, r"obsm\['spatial'\]. is missing"),
    (lambda: _with("spatial", lambda c: c[:, :1]), {}, "shape"),
    (lambda: _with("spatial", lambda c: np.hstack([c, c, c])), {}, "shape"),
    (lambda: _with("spatial", lambda c: np.where(np.arange(len(c))[:, None] == 4, np.nan, c)), {}, "NaN"),
    (lambda: _with("spatial", lambda c: np.where(np.arange(len(c))[:, None] == 4, np.inf, c)), {}, "infinite"),
    (lambda: _with("X", np.nan), {}, "NaN"),
    (_tiny, {"slide_key": "Slide"}, "slide_key='Slide'.*columns: \\['roi'\\]"),
    (_tiny, {"channels_to_use": ["CD3", "CD20"]}, r"\['CD3', 'CD20'\]"),
    (_tiny, {"clustering_method": ["leiden", "louvain"]}, "louvain"),
    (_tiny, {"clustering_method": 5}, "clustering_method"),
    (_tiny, {"max_dist": 0}, "max_dist"),
    (_tiny, {"max_dist": -3}, "max_dist"),
    (_tiny, {"resolutions": []}, "resolutions"),
    (_tiny, {"resolutions": [0.1, -1]}, "resolutions"),
    (_tiny, {"pca_kwargs": {"n_comps": 2.5}}, "n_comps"),
    (lambda: _tiny()[:0].copy(), {}, "zero cells"),
])
def test_bad_input_raises_a_clear_error(make, kwargs, message):
    with pytest.raises(ValueError, match=message):
        utag(make(), **{"slide_key": "roi", "progress": False, **kwargs})


def test_missing_slide_values_are_rejected():
    adata = _tiny()
    adata.obs["roi"] = adata.obs["roi"].astype(object)
    adata.obs.iloc[2, 0] = None
    with pytest.raises(ValueError, match="missing for 1 cells"):
        utag(adata, slide_key="roi", progress=False)


# ---------------------------------------------------------------- accuracy


def test_synthetic_domains_are_recovered():
    from utag.datasets import synthetic_tissue

    adata = synthetic_tissue(n_cells=12_000, n_slides=2, random_state=0)
    result = utag(adata, slide_key="roi", max_dist=20, clustering_method=["leiden"],
                  resolutions=[0.05, 0.1, 0.3], progress=False)
    scores = evaluate_performance(result, truth_key="domain")
    best = scores["adjusted_rand"].max()
    print(scores.to_string())
    assert best >= 0.5
    # the neighbourhood is what makes it work: the cells' own profiles do much worse
    raw = utag(adata, slide_key="roi", max_dist=1e-6, clustering_method=["leiden"],
               resolutions=[0.05, 0.1, 0.3], progress=False)
    assert evaluate_performance(raw, truth_key="domain")["adjusted_rand"].max() < best - 0.2


def test_bundled_spleen_subset_matches_expert_compartments(spleen_subset):
    result = utag(spleen_subset, slide_key="slide", max_dist=200, clustering_method=["leiden"],
                  resolutions=[0.05, 0.1], progress=False)
    scores = evaluate_performance(result, truth_key="domain", batch_key="slide")
    print(scores.to_string())
    pooled = scores[scores["slide"] == "all"].set_index("pred_key")
    # measured: ARI 0.49, NMI 0.55 at resolution 0.05 (4 domains)
    assert pooled["adjusted_rand"].max() >= 0.42
    assert pooled["nmi"].max() >= 0.48


def test_full_spleen_matches_expert_compartments(spleen_full):
    result = utag(spleen_full, slide_key="slide", max_dist=200, clustering_method=["leiden"],
                  resolutions=[0.05, 0.1], progress=False)
    scores = evaluate_performance(result, truth_key="domain", batch_key="slide")
    print(scores.to_string())
    pooled = scores[scores["slide"] == "all"]
    # measured: ARI 0.60, NMI 0.60 at resolution 0.05 (4 domains); cell types alone reach 0.12
    assert pooled["adjusted_rand"].max() >= 0.53
    assert pooled["nmi"].max() >= 0.52


def test_progress_bars_name_the_stages_and_can_be_switched_off(capsys, monkeypatch):
    from utag import _progress

    adata = synthetic_tissue(n_cells=3_000, n_slides=3, random_state=0)
    monkeypatch.setattr(_progress, "DELAY", 0.0)  # draw at once instead of after a few seconds
    options = dict(slide_key="roi", clustering_method="leiden", resolutions=[0.1, 0.3], parallel=False)
    monkeypatch.setattr(_progress, "_can_draw", lambda: True)  # as on a terminal
    utag(adata, **options, progress=True)
    shown = capsys.readouterr().err
    for text in ("utag: kNN graph", "slides", "clustering", "2/2"):
        assert text in shown
    utag(adata, **options, progress=False)
    assert capsys.readouterr().err == ""
    # to a file (a job's log) nothing is drawn: redrawn bars would leave control characters
    monkeypatch.undo()
    monkeypatch.setattr(_progress, "DELAY", 0.0)
    assert not _progress._can_draw()  # pytest captures stderr: not a terminal
    utag(adata, **options, progress=True)
    assert capsys.readouterr().err == ""


def _in_canonical_order(adata):
    """``adata`` with its rows in the order utag() works in (ties in the kNN search are
    broken by position, so a graph rebuilt from the output needs the same order)."""
    from utag._order import canonical_order

    codes = pd.factorize(adata.obs["roi"], sort=True)[0]
    order = canonical_order(codes, adata.obsm["spatial"], adata.X)
    return adata if order is None else adata[order].copy()


def test_knn_graph_on_features_up_to_50_as_scanpy_chooses(tissue):
    from utag.embedding import fuzzy_connectivities, nearest_neighbors

    tissue = _in_canonical_order(tissue)
    result = _run(tissue, clustering_method=["leiden"], resolutions=[0.1])  # 12 features
    assert result.uns["neighbors"]["params"]["use_rep"] == "X"
    indices, distances = nearest_neighbors(np.asarray(result.X), 15)
    expected = fuzzy_connectivities(indices, distances)
    got = result.obsp["connectivities"]
    # the same neighbours; weights up to float32 rounding (utag builds the graph on the
    # features less their whole-number background, X has it added back)
    assert np.array_equal(got.indptr, expected.indptr) and np.array_equal(got.indices, expected.indices)
    assert abs(got - expected).max() < 1e-4
    on_pca = _run(tissue, clustering_method=["leiden"], resolutions=[0.1], use_rep="X_pca")
    assert on_pca.uns["neighbors"]["params"]["use_rep"] == "X_pca"
    indices, distances = nearest_neighbors(on_pca.obsm["X_pca"], 15)
    assert abs(on_pca.obsp["connectivities"] - fuzzy_connectivities(indices, distances)).max() < 1e-6

    wide = synthetic_tissue(n_cells=1_500, n_slides=1, n_markers=60, random_state=2)
    assert _run(wide, clustering_method=["leiden"], resolutions=[0.1]).uns["neighbors"]["params"]["use_rep"] == "X_pca"
    with pytest.raises(ValueError, match="use_rep"):
        _run(tissue, use_rep="X_umap")


def test_the_kNN_search_that_ran_is_recorded(monkeypatch):
    from utag import embedding
    from utag.embedding import fuzzy_connectivities, nearest_neighbors

    # 40 noisy markers spread over more axes than the 10 principal components hold: a
    # budget that the message-passed features exceed and the components meet
    tissue = _in_canonical_order(synthetic_tissue(n_cells=3_000, n_slides=2, n_markers=40, random_state=4))

    def cost(points):
        return len(points) * min(2.0 ** embedding.effective_dimensions(np.asarray(points)), len(points))

    features = _run(tissue, clustering_method=["leiden"], resolutions=[0.1])
    budget = cost(features.obsm["X_pca"])
    assert budget < cost(features.X)
    monkeypatch.setattr(embedding, "EXACT_SEARCH_BUDGET", budget)
    result = _run(tissue, clustering_method=["leiden", "parc"], resolutions=[0.1])
    params = result.uns["neighbors"]["params"]
    assert params["knn"] == "approximate" and "knn_pca" not in params  # one graph, on X, for both methods
    assert _run(tissue, clustering_method=["leiden"], resolutions=[0.1],
                use_rep="X_pca").uns["neighbors"]["params"]["knn"] == "exact"
    indices, distances = nearest_neighbors(np.asarray(result.X), 15, "approximate")
    assert abs(result.obsp["connectivities"] - fuzzy_connectivities(indices, distances)).max() < 1e-4


def test_parc_clusters_leidens_graph_and_kmeans_the_pca(tissue, monkeypatch):
    from utag import clustering

    # the original passes sc.pp.neighbors' graph (on X with 50 features or fewer) to PARC
    # as its neighbor_graph, with the PCA as PARC's data; k-means clusters the PCA
    seen = {}

    def parc(neighbourhood, resolution, random_state=0, **kwargs):
        seen["graph"], seen["points"] = neighbourhood.connectivities, neighbourhood.embedding
        return real_parc(neighbourhood, resolution, random_state, **kwargs)

    real_parc = clustering.BACKENDS["parc"]
    monkeypatch.setitem(clustering.BACKENDS, "parc", parc)
    result = _run(tissue, clustering_method=["parc", "kmeans"], resolutions=[0.3])
    assert result.uns["neighbors"]["params"]["use_rep"] == "X"
    graph = result.obsp["connectivities"]  # in the input's order; PARC saw it in utag's
    assert seen["graph"].nnz == graph.nnz
    np.testing.assert_array_equal(np.sort(seen["graph"].data), np.sort(graph.data))
    np.testing.assert_array_equal(np.sort(seen["points"], axis=0), np.sort(result.obsm["X_pca"], axis=0))
    on_pca = _run(tissue, use_rep="X_pca", clustering_method=["kmeans"], resolutions=[0.3])
    np.testing.assert_array_equal(result.obs["UTAG Label_kmeans_0.3"].to_numpy(),
                                  on_pca.obs["UTAG Label_kmeans_0.3"].to_numpy())


@pytest.mark.parametrize("zero_center", [False, 0], ids=["False", "0"])  # scanpy reads it by truth value
def test_an_uncentred_pca_is_fitted_on_the_neighbourhood_means_it_returns(zero_center):
    # raw intensities on a background: utag shifts dense features internally for float32
    # precision, which a centred PCA never sees; an uncentred one must see the means as
    # returned (the original ran sc.tl.pca(result, zero_center=False)), dense or sparse
    import scanpy as sc

    adata = synthetic_tissue(n_cells=1_500, n_slides=2, random_state=2)
    adata.X = np.asarray(adata.X) + 50
    kwargs = dict(slide_key="roi", max_dist=20, pca_kwargs={"n_comps": 5, "zero_center": zero_center},
                  clustering_method=["kmeans"], resolutions=[0.3], progress=False)
    dense = utag(adata, **kwargs)
    sparse_input = adata.copy()
    sparse_input.X = sp.csr_matrix(sparse_input.X)
    from_sparse = utag(sparse_input, **kwargs)
    reference = AnnData(np.asarray(dense.X).copy())
    sc.pp.pca(reference, n_comps=5, zero_center=False)
    np.testing.assert_allclose(np.abs(dense.varm["PCs"][:, 0]), np.abs(reference.varm["PCs"][:, 0]), atol=1e-4)
    assert dense.obsm["X_pca"][:, 0].mean() == pytest.approx(reference.obsm["X_pca"][:, 0].mean(), rel=1e-3)
    np.testing.assert_allclose(dense.obsm["X_pca"], from_sparse.obsm["X_pca"], atol=1e-2)
    np.testing.assert_array_equal(dense.obs["UTAG Label_kmeans_0.3"].to_numpy(),
                                  from_sparse.obs["UTAG Label_kmeans_0.3"].to_numpy())


def test_no_domain_below_min_domain_size(tissue):
    for min_size, min_cells in [(None, 10), (0.05, 150), (40, 40)]:
        result = _run(tissue, clustering_method=["leiden", "parc", "kmeans"], resolutions=[1.0],
                      min_domain_size=min_size)
        assert result.uns["utag"]["min_domain_cells"] == min_cells
        for key in result.uns["utag"]["label_keys"]:
            sizes = result.obs[key].value_counts()
            assert sizes.min() >= min_cells, key
            # numbered after merging: 0..k-1 by decreasing size, probabilities one column each
            assert list(sizes.index) == [str(i) for i in range(len(sizes))]
            assert result.obsm[f"{key}_probabilities"].shape[1] == len(sizes)
    kept = _run(tissue, clustering_method=["leiden"], resolutions=[3.0], min_domain_size=0)
    merged = _run(tissue, clustering_method=["leiden"], resolutions=[3.0], min_domain_size=50)
    assert kept.obs["UTAG Label_leiden_3.0"].value_counts().min() < 50  # 0 keeps every domain
    assert merged.obs["UTAG Label_leiden_3.0"].nunique() < kept.obs["UTAG Label_leiden_3.0"].nunique()


def test_a_run_on_a_result_drops_the_tables_of_the_labels_it_replaces(tissue):
    from utag.analysis import domain_connectivity, measure_per_domain_cell_type_colocalization

    key = "UTAG Label_kmeans_0.3"
    first = _run(tissue)
    domain_connectivity(first, key, slide_key="roi", max_dist=20)
    measure_per_domain_cell_type_colocalization(first, key, "cell_type", slide_key="roi", max_dist=20, n_permutations=5)
    first.uns["utag_resolution_sweep"] = {"table": pd.DataFrame({"resolution": [0.3]})}
    again = _run(first, max_dist=40)
    # the tables of the old labels would be drawn and read as those of the new ones
    assert f"{key}_connectivity" not in again.uns and f"{key}_colocalization" not in again.uns
    assert "utag_resolution_sweep" not in again.uns


def test_variance_filter_sees_the_spread_of_a_bright_flat_channel():
    # sqrt(E[x^2] - mean^2) in float32 lost the spread of a channel near 1e4 and kept it
    rng = np.random.default_rng(0)
    n_cells = 3_000
    tissue = synthetic_tissue(n_cells=n_cells, n_slides=1, n_markers=4, random_state=0)
    tissue.X = np.column_stack([1e4 + 0.1 * rng.normal(size=n_cells), rng.normal(size=n_cells),
                                2 * rng.normal(size=n_cells), 3 * rng.normal(size=n_cells)]).astype(np.float32)
    result = _run(tissue, filter_by_variance=True)
    assert list(result.var_names) == list(tissue.var_names[[2, 3]])


def test_the_result_carries_no_stale_graphs_pca_or_tables_of_the_input():
    import scipy.sparse as sp

    from utag.evaluation import evaluate_clustering
    from utag.utils import domain_connectivity as original_connectivity

    tissue = synthetic_tissue(n_cells=1_500, n_slides=3, random_state=0)
    tissue.obsp["connectivities"] = tissue.obsp["spatial_connectivities"] = sp.identity(tissue.n_obs, format="csr")
    tissue.uns["neighbors"] = {"connectivities_key": "connectivities"}
    tissue.uns["spatial_neighbors"] = {"connectivities_key": "spatial_connectivities"}
    tissue.obsm["X_pca"] = tissue.obsm["X_umap"] = np.zeros((tissue.n_obs, 2))
    tissue.uns["umap"] = {"params": {}}
    bare = _run(tissue, apply_clustering=False)
    assert "neighbors" not in bare.uns and "spatial_neighbors" not in bare.uns and "X_pca" not in bare.obsm
    clustered = _run(tissue)  # a UMAP of other features would sit beside the new kNN graph
    assert "X_umap" not in clustered.obsm and "umap" not in clustered.uns
    drawn = _run(tissue, apply_umap=True)
    assert drawn.obsm["X_umap"].std() > 0 and "X_umap" in tissue.obsm  # a new one; the input keeps its own
    key = "dom_kmeans_0.3"
    first = _run(tissue, save_key="dom")
    assert "neighbors" in first.uns and first.uns["neighbors"]["connectivities_key"] in first.obsp
    original_connectivity(first, slide_key="roi", domain_key=key)
    again = _run(first, save_key="dom", max_dist=40)
    assert f"{key}_domain_adjacency_matrix" not in again.uns
    # the evaluation helpers find labellings written under another save_key
    assert evaluate_performance(again, "domain")["pred_key"].tolist() == [key]
    assert evaluate_clustering(again)["domain_key"].tolist() == [key]
    with pytest.raises(ValueError, match="use_weights"):  # a TypeError after all the work before
        _run(tissue, clustering_method="leiden", leiden_kwargs={"flavor": "igraph", "weights": None})


def test_the_evaluation_helpers_score_the_labellings_of_an_earlier_run_too(tissue):
    from utag.evaluation import evaluate_clustering

    again = _run(_run(tissue), resolutions=[0.5])  # keeps the first run's column, lists only its own
    keys = ["UTAG Label_kmeans_0.5", "UTAG Label_kmeans_0.3"]
    assert evaluate_performance(again, "domain")["pred_key"].tolist() == keys
    assert evaluate_clustering(again)["domain_key"].tolist() == keys


def test_an_n_domains_run_never_overwrites_a_resolution_run_unseen(caplog):
    adata = synthetic_tissue(n_cells=1_500, n_slides=3, random_state=0)
    options = dict(slide_key="roi", clustering_method="kmeans", min_domain_size=400, progress=False)
    alone = utag(adata, resolutions=[0.3], **options)
    assert alone.obs["UTAG Label_kmeans_0.3"].nunique() < 3  # k=3, then domains below 400 cells merged
    # n_domains=3 writes k-means (k=3, all kept) under the same key: it takes the key, and says so
    with caplog.at_level("WARNING", logger="utag"):
        both = utag(adata, resolutions=[0.3], n_domains=3, **options)
    assert both.obs["UTAG Label_kmeans_0.3"].nunique() == 3
    assert both.uns["utag"]["label_keys"] == ["UTAG Label_kmeans_0.3"]
    assert "n_domains=3: its kmeans run is at resolution 0.3, which was asked for too" in caplog.text
    both = utag(adata, resolutions=[0.4], n_domains=3, **options)  # other keys: both kept
    assert both.obs["UTAG Label_kmeans_0.4"].nunique() < 4 and both.obs["UTAG Label_kmeans_0.3"].nunique() == 3
    without = utag(adata, resolutions=[0.4], **options)
    assert both.obs["UTAG Label_kmeans_0.4"].equals(without.obs["UTAG Label_kmeans_0.4"])


def test_a_run_that_lands_on_an_asked_resolution_is_announced(caplog):
    from utag._runs import Run, without_runs_under_the_keys_of

    planned = [Run("leiden", 0.1, {}, None), Run("leiden", 0.3, {}, None), Run("kmeans", 0.1, {}, None)]
    fixed = [Run("leiden", 0.1, {}, np.zeros(3, dtype=int), floor=4)]
    with caplog.at_level("WARNING", logger="utag"):
        kept = without_runs_under_the_keys_of(planned, fixed, 4)
    assert [(run.method, run.resolution) for run in kept] == [("leiden", 0.3), ("kmeans", 0.1)]
    assert "n_domains=4: its leiden run is at resolution 0.1" in caplog.text


UNITS_WARNING = ("(almost none: the neighbourhood means are little more than the cells themselves). Are max_dist "
                 "and obsm['spatial'] in the same units? About 350 suits")


def test_a_max_dist_in_other_units_is_warned_about(caplog):
    adata = synthetic_tissue(n_cells=3_000, n_slides=2, random_state=0)
    options = dict(slide_key="roi", clustering_method="kmeans", resolutions=[0.3], progress=False)
    with caplog.at_level("WARNING", logger="utag"):
        utag(adata, max_dist=20, **options)  # about 6 neighbours per cell: no warning
    assert "same units" not in caplog.text
    nearest = adata.copy()
    nearest.obsm["spatial"] = nearest.obsm["spatial"] * 10  # um read as 0.1 um pixels
    with caplog.at_level("WARNING", logger="utag"):
        utag(nearest, max_dist=20, **options)
    assert UNITS_WARNING in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="utag"):
        utag(adata, max_dist=250, **options)  # slides of 1,500 cells, about 475 units wide
    assert "(most of its slide: the neighbourhood means hardly differ)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="utag"):
        utag(nearest, max_dist=20, flavor="multiscale", **options)
    assert UNITS_WARNING in caplog.text



def test_small_slides_are_not_told_to_take_a_larger_radius(caplog):
    # 150 slides of 20 cells: a usual radius links a cell to most of its slide; the radius
    # domains need is larger still, so the warning names the slides, not a larger radius
    small = synthetic_tissue(n_cells=3_000, n_slides=150, random_state=0)
    with caplog.at_level("WARNING", logger="utag"):
        utag(small, slide_key="roi", max_dist=20, clustering_method="kmeans", resolutions=[0.3], progress=False)
    assert "(most of its slide: the neighbourhood means hardly differ)" in caplog.text
    assert "If they are, the slides hold few cells" in caplog.text
    assert "suits domains here" not in caplog.text

def test_a_tiny_sketch_and_a_slide_key_of_cell_ids_are_warned_about(caplog):
    adata = synthetic_tissue(n_cells=6_000, n_slides=2, random_state=0)
    options = dict(clustering_method="kmeans", resolutions=[0.3], progress=False)
    with caplog.at_level("WARNING", logger="utag"):
        utag(adata, slide_key="roi", sketch_size=3_000, **options)
    assert "sketch_size=3000 clusters 3000 cells" in caplog.text and "splits" not in caplog.text
    caplog.clear()
    adata.obs["cell_id"] = [f"c{i}" for i in range(adata.n_obs)]
    with caplog.at_level("WARNING", logger="utag"):
        utag(adata[:600].copy(), slide_key="cell_id", parallel=False, **options)
    assert "slide_key='cell_id' splits 600 cells into 600 slides (1.0 cells each)" in caplog.text
