"""Never silently wrong: numbers at any scale and in any row order, degenerate tissue,
inputs checked at the door (R's numbers among them), and inputs that must be accepted."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.special import softmax
from sklearn.metrics import adjusted_rand_score

import utag
from utag import utag as run_utag
from utag.clustering import soft_assignments
from utag.datasets import synthetic_tissue
from utag.transfer import transfer_labels
from utag.tuning import max_dist_report

FAST = {"slide_key": "roi", "max_dist": 20, "progress": False}


@pytest.fixture(scope="module")
def small():
    return synthetic_tissue(n_cells=1_500, n_slides=2, n_markers=8, n_domains=3, n_cell_types=4, random_state=3)


def _labels(result, key):
    return result.obs[key].to_numpy()


# --- numbers ------------------------------------------------------------------------------

def test_soft_assignments_with_a_background_offset_match_a_float64_reference():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 2_000)
    centres = rng.normal(size=(4, 6))
    features = (centres[labels] + rng.normal(scale=0.8, size=(2_000, 6)) + 5_000).astype(np.float32)
    values = features.astype(np.float64)
    z = (values - values.mean(axis=0)) / values.std(axis=0)
    centroids = np.stack([z[labels == k].mean(axis=0) for k in range(4)])
    reference = softmax(-0.5 * ((z[:, None, :] - centroids[None]) ** 2).sum(axis=2), axis=1)
    for matrix in (features, sp.csr_matrix(features)):
        probabilities = soft_assignments(matrix, labels)
        assert probabilities.dtype == np.float32
        np.testing.assert_allclose(probabilities, reference, atol=1e-5)
        assert (probabilities.argmax(axis=1) == reference.argmax(axis=1)).all()


@pytest.mark.parametrize("method", ["leiden", "parc", "kmeans"])
def test_labels_do_not_depend_on_the_order_of_the_rows(small, method):
    order = np.random.default_rng(1).permutation(small.n_obs)
    key = f"UTAG Label_{method}_0.3"
    result = run_utag(small, clustering_method=method, resolutions=[0.3], **FAST)
    permuted = run_utag(small[order].copy(), clustering_method=method, resolutions=[0.3], **FAST)
    assert (_labels(permuted, key) == _labels(result, key)[order]).all()
    np.testing.assert_array_equal(permuted.obsm[f"{key}_probabilities"], result.obsm[f"{key}_probabilities"][order])
    np.testing.assert_array_equal(permuted.X, result.X[order])
    assert list(permuted.obs_names) == list(small.obs_names[order])


@pytest.mark.parametrize("method", ["leiden", "parc", "kmeans"])
def test_domains_do_not_depend_on_the_scale_of_the_features(small, method):
    key = f"UTAG Label_{method}_0.3"
    reference = _labels(run_utag(small, clustering_method=method, resolutions=[0.3], **FAST), key)
    for factor in (1 / 1024, 1024.0):  # powers of two: the same float32 numbers, scaled
        scaled = small.copy()
        scaled.X = small.X * np.float32(factor)
        assert (_labels(run_utag(scaled, clustering_method=method, resolutions=[0.3], **FAST), key) == reference).all()
    for factor in (1e-3, 1e3):
        scaled = small.copy()
        scaled.X = small.X * np.float32(factor)
        labels = _labels(run_utag(scaled, clustering_method=method, resolutions=[0.3], **FAST), key)
        assert adjusted_rand_score(reference, labels) > 0.95


@pytest.mark.parametrize("method", ["leiden", "parc", "kmeans"])
def test_domains_do_not_depend_on_a_constant_background(small, method):
    """A background only costs the digits float32 drops when it is added: the domains of
    ``X + b`` are those of ``X`` rounded as ``X + b`` rounds it (exactly equal labels;
    before, float32 sums on the background lost more digits)."""
    key = f"UTAG Label_{method}_0.3"
    options = {"clustering_method": method, "resolutions": [0.3], **FAST}
    for background in (np.float32(8.0), np.float32(1_000.0)):
        shifted, rounded = small.copy(), small.copy()
        shifted.X = small.X + background
        rounded.X = shifted.X - background  # exact: the same digits, without the background
        assert (_labels(run_utag(shifted, **options), key) == _labels(run_utag(rounded, **options), key)).all()


# --- degenerate tissue ----------------------------------------------------------------------

def _degenerate(case: str):
    tissue = synthetic_tissue(n_cells=300, n_slides=1, n_markers=5, n_domains=2, n_cell_types=3, random_state=0)
    if case == "all-zero features":
        tissue.X = np.zeros_like(tissue.X)
        return tissue, {}, "all zero"
    if case == "max_dist spans the slide":
        return tissue, {"max_dist": 1e6}, "same units"
    if case == "one point":
        tissue.obsm["spatial"] = np.zeros_like(tissue.obsm["spatial"])
        return tissue, {}, "same units"
    return tissue[:1].copy(), {}, "one cell"


@pytest.mark.parametrize("case", ["all-zero features", "max_dist spans the slide", "one point", "one cell"])
@pytest.mark.parametrize("ask", [{"resolutions": [0.1, 1.0]}, {"resolutions": "auto"}, {"n_domains": 3}],
                         ids=["resolutions", "auto", "n_domains"])
def test_degenerate_tissue_gives_one_domain_and_says_why(case, ask, caplog):
    tissue, options, reason = _degenerate(case)
    methods = ["leiden", "kmeans"] if "n_domains" in ask else ["leiden", "parc", "kmeans"]
    if ask.get("n_domains", 0) > tissue.n_obs:
        ask = {"n_domains": 1}
    with caplog.at_level(logging.WARNING, logger="utag"):
        result = run_utag(tissue, clustering_method=methods, **{**FAST, **options, **ask})
    keys = result.uns["utag"]["label_keys"]
    assert {key.split("_")[1] for key in keys} == set(methods)
    for key in keys:
        assert result.obs[key].nunique() == 1
        assert np.allclose(result.obsm[f"{key}_probabilities"].sum(axis=1), 1)
    assert "same neighbourhood profile" in caplog.text and reason in caplog.text


def test_two_cells_work_with_every_method():
    tissue = synthetic_tissue(n_cells=300, n_slides=1, n_markers=5, random_state=0)[:2].copy()
    tissue.obsm["spatial"] = np.array([[0.0, 0.0], [100.0, 0.0]])
    tissue.X = np.array([[1, 0, 0, 0, 0], [0, 1, 0, 0, 0]], dtype=np.float32)
    result = run_utag(tissue, clustering_method=["leiden", "parc", "kmeans"], resolutions=[0.1], **FAST)
    for key in result.uns["utag"]["label_keys"]:
        assert 1 <= result.obs[key].nunique() <= 2


# --- inputs checked at the door -------------------------------------------------------------

@pytest.mark.parametrize("flavor", ["utag", "multiscale"])
def test_sparse_features_on_a_large_offset_give_the_dense_moments(small, flavor):
    # scipy's sparse mean(dtype=float64) sums in float32: on raw intensities the PCA and the
    # multiscale block scales came out far from the dense route's
    raised = small.copy()
    raised.X = np.asarray(raised.X, dtype=np.float32) + 1000
    as_sparse = raised.copy()
    as_sparse.X = sp.csr_matrix(as_sparse.X)
    options = dict(clustering_method="kmeans", resolutions=[0.3], flavor=flavor, **FAST)
    dense, sparse = run_utag(raised, **options), run_utag(as_sparse, **options)
    np.testing.assert_allclose(sparse.uns["pca"]["variance"], dense.uns["pca"]["variance"], rtol=1e-3)
    if flavor == "multiscale":
        np.testing.assert_allclose(sparse.uns["utag"]["multiscale"]["block_scales"],
                                   dense.uns["utag"]["multiscale"]["block_scales"], rtol=1e-3)
    np.testing.assert_allclose(sparse.uns["utag"]["model"]["mean"], dense.uns["utag"]["model"]["mean"], rtol=1e-5)


def test_r_numbers_as_seeds_give_the_same_result(small):
    key = "UTAG Label_leiden_0.3"
    as_int = run_utag(small, clustering_method="leiden", resolutions=[0.3], random_state=1, **FAST)
    as_float = run_utag(small, clustering_method="leiden", resolutions=[0.3], random_state=1.0, **FAST)
    assert (_labels(as_int, key) == _labels(as_float, key)).all()
    assert as_float.uns["utag"]["random_state"] == 1


def test_no_seed_draws_one_and_records_it(small):
    key = "UTAG Label_leiden_0.3"
    options = {"clustering_method": "leiden", "resolutions": [0.3], "knn_method": "approximate", **FAST}
    fresh = run_utag(small, random_state=None, **options)
    seed = fresh.uns["utag"]["random_state"]
    assert isinstance(seed, int)
    assert (_labels(run_utag(small, random_state=seed, **options), key) == _labels(fresh, key)).all()


def _seeded_calls(adata, result):
    from utag import analysis, clustering, embedding, evaluation, graph, plotting, tuning, utils
    from utag.clustering import Neighbourhood

    neighbourhood = Neighbourhood(result.obsm["X_pca"], result.obsp["connectivities"])
    codes = pd.factorize(adata.obs["roi"])[0]
    label = "UTAG Label_leiden_0.3"
    return {
        "synthetic_tissue": lambda seed: synthetic_tissue(n_cells=300, random_state=seed).X,
        "estimate_pairs": lambda seed: graph.estimate_pairs(adata.obsm["spatial"], codes, 20, random_state=seed),
        "cluster": lambda seed: clustering.cluster("leiden", neighbourhood, 0.3, seed),
        "kmeans": lambda seed: clustering.kmeans(neighbourhood, 0.3, random_state=seed),
        "resolution_sweep": lambda seed: tuning.resolution_sweep(result, resolutions=[0.1, 0.3], n_runs=2,
                                                                 random_state=seed, progress=False),
        "resolution_for_n_domains": lambda seed: tuning.resolution_for_n_domains(neighbourhood, 3, seed)[1],
        "colocalization": lambda seed: analysis.measure_per_domain_cell_type_colocalization(
            result, label, "cell_type", slide_key="roi", max_dist=20, n_permutations=3, random_state=seed),
        "original colocalization": lambda seed: utils.measure_per_domain_cell_type_colocalization(
            result.copy(), label, n_iterations=3, random_state=seed),
        "evaluate_clustering": lambda seed: evaluation.evaluate_clustering(
            result, [label], "cell_type", slide_key="roi", max_dist=20, random_state=seed),
        "approximate neighbours": lambda seed: embedding.nearest_neighbors(result.obsm["X_pca"], 5, "approximate",
                                                                           random_state=seed),
        "knn_graph": lambda seed: embedding.knn_graph(result.obsm["X_pca"], 5, random_state=seed),
        "sweep": lambda seed: tuning.sweep(neighbourhood, adata.obsm["spatial"], codes, resolutions=[0.3], n_runs=2,
                                           random_state=seed),
        "plot_domain_network": lambda seed: plotting.plot_domain_network(result, label, slide_key="roi", max_dist=20,
                                                                         random_state=seed),
    }


def test_every_seeded_function_takes_r_numbers_and_names_bad_seeds(small):
    result = run_utag(small, clustering_method="leiden", resolutions=[0.3], **FAST)
    for name, call in _seeded_calls(small, result).items():
        call(1.0)
        call(None)
        for bad in (-1, 1.5, "1", True):
            with pytest.raises(ValueError, match="random_state"):
                call(bad)
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.mark.parametrize("mode,same_as", [("mean", "l1_norm"), ("none", "sum"), (None, "sum"), ("SUM", "sum")])
def test_normalization_mode_names(small, mode, same_as):
    options = {"apply_clustering": False, **FAST}
    got = run_utag(small, normalization_mode=mode, **options)
    expected = run_utag(small, normalization_mode=same_as, **options)
    np.testing.assert_array_equal(got.X, expected.X)
    assert got.uns["utag"]["normalization_mode"] == same_as


@pytest.mark.parametrize("typo", ["l1", "avg", "L1-norm", 1])
def test_normalization_mode_typos_are_refused_with_the_list(small, typo):
    with pytest.raises(ValueError, match=r"normalization_mode.*'l1_norm'.*'sum'"):
        run_utag(small, normalization_mode=typo, **FAST)


def test_features_beyond_float32_range_are_a_clear_error(small):
    huge = small.copy()
    huge.X = small.X.astype(np.float64) * 1e36
    with pytest.raises(ValueError, match="adata.X.*Rescale"):
        run_utag(huge, **FAST)


def test_duplicated_channels_are_a_clear_error(small):
    channels = [small.var_names[0], small.var_names[1], small.var_names[0]]
    with pytest.raises(ValueError, match=rf"channels_to_use.*{small.var_names[0]}.*more than once"):
        run_utag(small, channels_to_use=channels, **FAST)


@pytest.mark.parametrize("name,kwargs,instead", [
    ("leiden_kwargs", {"random_state": 1}, "random_state"), ("leiden_kwargs", {"seed": 1}, "random_state"),
    ("leiden_kwargs", {"resolution": 1.0}, "resolutions"), ("parc_kwargs", {"random_seed": 1}, "random_state"),
    ("kmeans_kwargs", {"random_state": 1}, "random_state")])
def test_backend_keywords_that_utag_sets_are_refused_up_front(small, name, kwargs, instead):
    with pytest.raises(ValueError, match=rf"{name}.*pass `{instead}=`"):
        run_utag(small, clustering_method="leiden", resolutions=[0.3], **{name: kwargs}, **FAST)


@pytest.mark.parametrize("name,kwargs,message", [
    ("leiden_kwargs", {"n_iterations": "x"}, r"leiden_kwargs\['n_iterations'\]"),
    ("parc_kwargs", {"small_pop": "a"}, r"parc_kwargs\['small_pop'\]"),
    ("kmeans_kwargs", {"max_iter": 0}, r"kmeans_kwargs\['max_iter'\]"),
    ("leiden_kwargs", {"flavor": "leidenalg", "partition_type": "x"}, "partition class")])
def test_backend_keywords_of_the_wrong_kind_are_named_before_any_work(small, name, kwargs, message, monkeypatch):
    import utag.segmentation as segmentation

    def no_work(*args, **kwargs):
        raise AssertionError("message passing ran before the check")

    monkeypatch.setattr(segmentation, "pass_messages", no_work)
    with pytest.raises(ValueError, match=message):
        run_utag(small, clustering_method="leiden", resolutions=[0.3], **{name: kwargs}, **FAST)


def test_initial_membership_follows_the_rows_of_adata(small):
    # utag() clusters the cells in its own order; a membership given per row must follow them
    rows = np.random.default_rng(0).permutation(small.n_obs)
    shuffled = small[rows].copy()
    membership = shuffled.obs["domain"].cat.codes.to_numpy()
    kept = run_utag(shuffled, clustering_method="leiden", resolutions=[0.3], **FAST,
                    leiden_kwargs={"initial_membership": membership, "n_iterations": 0})
    assert adjusted_rand_score(membership, _labels(kept, "UTAG Label_leiden_0.3")) == 1.0
    with pytest.raises(ValueError, match="initial_membership.*one label per cell"):
        run_utag(small, clustering_method="leiden", resolutions=[0.3], **FAST,
                 leiden_kwargs={"initial_membership": membership[:10]})


def test_float_processes_and_every_core_as_minus_one(small, monkeypatch):
    from utag import clustering

    threads = []
    take_turns = clustering._take_turns
    monkeypatch.setattr(clustering, "_take_turns", lambda steps, n, *a: threads.append(n) or take_turns(steps, n, *a))
    expected = run_utag(small, clustering_method="leiden", resolutions=[0.05, 0.3], n_jobs=2, **FAST)
    for options in ({"parallel": True, "processes": 2.0}, {"n_jobs": -1}):  # R sends 2 as 2.0
        got = run_utag(small, clustering_method="leiden", resolutions=[0.05, 0.3], **options, **FAST)
        for key in expected.uns["utag"]["label_keys"]:
            assert (_labels(got, key) == _labels(expected, key)).all()
    assert threads[0] == threads[1] == 2 and threads[2] >= 1 and len(threads) == 3


def test_channels_are_found_among_repeated_var_names(small):
    repeated = small.copy()
    names = list(repeated.var_names)
    names[1] = names[0]
    repeated.var_names = names
    channels = list(small.var_names[2:6])
    expected = run_utag(small, channels_to_use=channels, clustering_method="kmeans", resolutions=[0.3], **FAST)
    got = run_utag(repeated, channels_to_use=channels, clustering_method="kmeans", resolutions=[0.3], **FAST)
    np.testing.assert_array_equal(got.X, expected.X)
    with pytest.raises(ValueError, match=rf"channels_to_use.*{names[0]}.*var_names_make_unique"):
        run_utag(repeated, channels_to_use=[names[0], names[3]], **FAST)


def test_the_original_defaults_and_spellings(small):
    import inspect

    # the original's default methods, whole-number resolutions keyed as str() wrote them,
    # processes=-1 for every core, channels by position or by mask
    assert inspect.signature(run_utag).parameters["clustering_method"].default == ["leiden", "parc"]
    result = run_utag(small, clustering_method="kmeans", resolutions=[1, 0.3], processes=-1, **FAST)
    assert result.uns["utag"]["label_keys"] == ["UTAG Label_kmeans_1", "UTAG Label_kmeans_0.3"]
    assert result.obs["UTAG Label_kmeans_1"].nunique() == 10
    by_name = run_utag(small, channels_to_use=list(small.var_names[2:5]), clustering_method="kmeans",
                       resolutions=[0.3], **FAST)
    mask = np.isin(np.arange(small.n_vars), [2, 3, 4])
    for channels in ([2, 3, 4], mask):
        got = run_utag(small, channels_to_use=channels, clustering_method="kmeans", resolutions=[0.3], **FAST)
        assert list(got.var_names) == list(by_name.var_names)
        np.testing.assert_array_equal(_labels(got, "UTAG Label_kmeans_0.3"), _labels(by_name, "UTAG Label_kmeans_0.3"))
    with pytest.raises(ValueError, match="positions.*outside"):
        run_utag(small, channels_to_use=[0, 99], **FAST)
    with pytest.raises(ValueError, match=r"resolutions.*> 0.*0\.05") as error:
        run_utag(small, clustering_method="kmeans", resolutions=[0], **FAST)
    assert "distance" not in str(error.value)


def test_more_domains_than_cells_is_a_clear_error(small):
    with pytest.raises(ValueError, match="n_domains=2000.*1500 cells"):
        run_utag(small, n_domains=2_000, resolutions=None, clustering_method="leiden", **FAST)


# --- valid input accepted -----------------------------------------------------------------

def test_resolutions_as_any_sequence_and_float32_keys_as_typed(small):
    for resolutions in (pd.Series([0.3, 0.1], dtype=np.float32), pd.Series([np.float32(0.3), 0.1]),
                        [np.float32(0.3), 0.1], np.array([0.3, 0.1], dtype=np.float32), (0.3, 0.1),
                        [0.1 + 0.2, 0.1], np.arange(0.1, 0.4, 0.1)[[2, 0]]):  # 0.30000000000000004
        result = run_utag(small, clustering_method="kmeans", resolutions=resolutions, **FAST)
        assert result.uns["utag"]["label_keys"] == ["UTAG Label_kmeans_0.3", "UTAG Label_kmeans_0.1"]
    single = run_utag(small, clustering_method="kmeans", resolutions=np.float32(0.3), **FAST)
    assert single.uns["utag"]["label_keys"] == ["UTAG Label_kmeans_0.3"]


def test_boolean_one_hot_features_are_read_as_zero_and_one(small):
    types = pd.get_dummies(small.obs["cell_type"])
    one_hot = small[:, :0].copy()
    as_bool = type(small)(types.to_numpy(dtype=bool), obs=small.obs, obsm=dict(small.obsm))
    as_float = type(small)(types.to_numpy(dtype=np.float32), obs=small.obs, obsm=dict(small.obsm))
    key = "UTAG Label_leiden_0.3"
    got = run_utag(as_bool, clustering_method="leiden", resolutions=[0.3], **FAST)
    expected = run_utag(as_float, clustering_method="leiden", resolutions=[0.3], **FAST)
    assert (_labels(got, key) == _labels(expected, key)).all()
    assert one_hot.n_vars == 0


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_backed_h5ad_with_channels_in_any_order(small, tmp_path, sparse):
    import anndata

    stored = small.copy()
    if sparse:
        stored.X = sp.csr_matrix(stored.X)
    path = tmp_path / "cells.h5ad"
    stored.write_h5ad(path)
    channels = list(small.var_names[[5, 0, 3, 1]])
    options = {"clustering_method": "kmeans", "resolutions": [0.3], **FAST}
    backed = anndata.read_h5ad(path, backed="r")
    for chosen in (None, channels):
        got = run_utag(backed, channels_to_use=chosen, **options)
        expected = run_utag(stored, channels_to_use=chosen, **options)
        assert list(got.var_names) == list(expected.var_names)
        np.testing.assert_array_equal(got.obs["UTAG Label_kmeans_0.3"], expected.obs["UTAG Label_kmeans_0.3"])
    # transfer and the radius report read the columns they need in the model's order too
    # (a backed file reads columns only in increasing order: they raised a TypeError)
    model = run_utag(stored, channels_to_use=channels, **options)
    key = "UTAG Label_kmeans_0.3"
    np.testing.assert_array_equal(transfer_labels(model, backed, slide_key="roi").obs[key],
                                  transfer_labels(model, stored, slide_key="roi").obs[key])
    pd.testing.assert_frame_equal(
        max_dist_report(backed, max_dists=[20], slide_key="roi", channels_to_use=channels),
        max_dist_report(stored, max_dists=[20], slide_key="roi", channels_to_use=channels))
    backed.file.close()


def test_transfer_reads_boolean_features_as_zero_and_one(small):
    as_bool = small[:, :6].copy()
    as_bool.X = np.asarray(as_bool.X) > np.median(np.asarray(as_bool.X))
    as_float = as_bool.copy()
    as_float.X = as_bool.X.astype(np.float32)
    options = {"clustering_method": "kmeans", "resolutions": [0.3], **FAST}
    model = run_utag(as_bool, **options)  # utag() reads them as 0 and 1; transfer refused them
    key = "UTAG Label_kmeans_0.3"
    np.testing.assert_array_equal(transfer_labels(model, as_bool, slide_key="roi").obs[key],
                                  transfer_labels(model, as_float, slide_key="roi").obs[key])


# --- evaluation ---------------------------------------------------------------------------

def test_evaluate_performance_leaves_unlabelled_cells_out():
    truth = pd.Series(["a", "a", "b", "b", None, np.nan, "NoAnnotation", "Other"], dtype=object)
    predicted = ["0", "0", "1", "1", "1", "0", "0", "1"]
    adata = utag.evaluation.AnnData(np.zeros((8, 1)), obs=pd.DataFrame(
        {"truth": truth.to_numpy(), "UTAG Label_leiden_0.1": predicted}, index=[f"c{i}" for i in range(8)]))
    table = utag.evaluate_performance(adata, "truth", ignore_labels="Other")
    assert table["n_cells"].item() == 5  # no "nan" domain; "NoAnnotation" is kept when not named
    scores = utag.evaluate_performance(adata, "truth", ignore_labels=["Other", "NoAnnotation"])
    assert scores["n_cells"].item() == 4 and scores["adjusted_rand"].item() == 1.0


# --- import -------------------------------------------------------------------------------

def test_import_works_where_numba_cannot_cache():
    """No cache location at all: utag's kernels (PARC's Jaccard weights too) compile without one."""
    script = textwrap.dedent("""
        import numba.core.caching as caching
        caching.CacheImpl._locator_classes = []   # no location numba could cache in
        import numpy as np
        from utag._leiden import leiden
        from utag._parc import _jaccard
        import scipy.sparse as sp
        graph = sp.csr_matrix(np.ones((4, 4)) - np.eye(4))
        print(len(leiden(graph, resolution=0.1)), len(_jaccard(graph.indptr, graph.indices)))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["4", "12"]


def test_a_read_only_installation_without_a_writable_home_caches_in_the_temporary_directory(tmp_path):
    """numba can then cache neither next to the packages nor in the home directory, and
    squidpy (whose graph builders utag uses) failed to import: utag points numba's cache
    at the temporary directory, where its kernels and squidpy's go."""
    script = textwrap.dedent("""
        import numba.core.caching as caching
        # what a read-only install and home leave: only a directory named by the user
        caching.CacheImpl._locator_classes = [caching.UserProvidedCacheLocator]
        import numba
        import numpy as np
        import scipy.sparse as sp
        import utag
        from utag._parc import _jaccard
        from utag.graph import spatial_graph
        graph, _ = spatial_graph(np.random.default_rng(0).uniform(0, 50, size=(200, 2)), 10.0)  # squidpy's builder
        graph = sp.csr_matrix(graph)
        print(len(_jaccard(graph.indptr, graph.indices)) == graph.nnz, numba.config.CACHE_DIR)
    """)
    environment = {key: value for key, value in os.environ.items() if key != "NUMBA_CACHE_DIR"}
    environment["TMPDIR"] = str(tmp_path)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env=environment)
    assert run.returncode == 0, run.stderr
    count, directory = run.stdout.split()
    assert count == "True" and directory.startswith(str(tmp_path))
    assert any(path.suffix == ".nbi" for path in Path(directory).rglob("*"))  # utag's kernels cached there


def test_whole_number_backend_keywords_take_r_numbers_and_any_negative_iteration_count(small):
    options = {"resolutions": [0.3], **FAST}
    expected = run_utag(small, clustering_method="leiden", leiden_kwargs={"flavor": "igraph", "n_iterations": 2},
                        **options)
    got = run_utag(small, clustering_method="leiden", leiden_kwargs={"flavor": "igraph", "n_iterations": 2.0},
                   **options)  # as R sends 2: igraph refused the float after all the work
    key = "UTAG Label_leiden_0.3"
    np.testing.assert_array_equal(got.obs[key], expected.obs[key])
    run_utag(small, clustering_method="leiden", leiden_kwargs={"n_iterations": -2}, **options)  # until stable
    run_utag(small, clustering_method="kmeans", kmeans_kwargs={"max_iter": 300.0}, **options)


@pytest.mark.parametrize("options, message", [
    ({"slide_key": pd.Series(["a"] * 300)}, r"`slide_key` must name a column of `adata.obs`, got a Series"),
    ({"pca_kwargs": {"n_comps": 5, "svd_solverr": "arpack"}}, r"`pca_kwargs` has keys .* \['svd_solverr'\]"),
    # scanpy keywords for where the data come from or the result goes: they used to fail after the graph
    ({"pca_kwargs": {"key_added": "mine"}}, r"`pca_kwargs` has keys .*\['key_added'\] \(utag passes"),
    ({"pca_kwargs": {"layer": "raw", "mask_var": None}}, r"`pca_kwargs` has keys .*\['layer', 'mask_var'\]"),
    ({"apply_umap": True, "umap_kwargs": {"n_neighbours": 10}},
     r"`umap_kwargs` has keys scanpy.tl.umap does not take: \['n_neighbours'\]"),
    ({"clustering_method": "kmeans", "kmeans_kwargs": {"ninit": 10}},
     r"`kmeans_kwargs` has keys sklearn's KMeans does not take: \['ninit'\]"),
    ({"max_dist": "twenty"}, r"`max_dist` must be a positive number .* or 'auto', got 'twenty'"),
    ({"clustering_method": []}, r"`clustering_method` is empty"),
    ({"resolutions": None}, r"`resolutions` is None: .*`n_domains=K`"),
    ({"clustering_method": "kmeans", "kmeans_kwargs": {"n_clusters": 3}},
     r"kmeans_kwargs\['n_clusters'\]` is set by utag\(\): pass `resolutions=` .* k = ceil\(10 \* resolution\)"),
    ({"flavor": "banksy"}, r"`flavor` must be one of \['utag', 'multiscale'\], got 'banksy'"),
    ({"n_neighbors": 5_000}, r"`n_neighbors=5000` is more than the 299 other cells"),
    ({"min_domain_size": 301}, r"`min_domain_size=301` is more than the 300 cells: every domain would be merged"),
])
def test_mistakes_in_parameters_are_named_before_any_work(options, message):
    adata = synthetic_tissue(n_cells=300, n_slides=1, n_markers=5, random_state=0)
    with pytest.raises(ValueError, match=message):
        run_utag(adata, **{"slide_key": "roi", "progress": False, **options})


def test_a_min_domain_size_above_a_third_of_the_cells_is_flagged(caplog):
    adata = synthetic_tissue(n_cells=300, n_slides=1, n_markers=5, random_state=0)
    with caplog.at_level("WARNING", logger="utag"):
        result = run_utag(adata, slide_key="roi", clustering_method="kmeans", resolutions=[0.5], min_domain_size=0.4,
                          progress=False)
    assert "is 120 cells, more than a third of the 300 cells" in caplog.text
    assert result.obs["UTAG Label_kmeans_0.5"].nunique() <= 2  # k = 5, merged to what the warning said


def test_named_choices_take_any_case():
    adata = synthetic_tissue(n_cells=600, n_slides=2, n_markers=5, random_state=0)
    options = dict(slide_key="roi", clustering_method="kmeans", resolutions=[0.3], progress=False)
    lower = run_utag(adata, max_dist="auto", flavor="multiscale", spatial_graph="knn", **options)
    upper = run_utag(adata, max_dist="Auto", flavor="MultiScale", spatial_graph="KNN", **options)
    assert upper.uns["utag"]["flavor"] == "multiscale" and upper.uns["utag"]["spatial_graph"] == "knn"
    assert upper.uns["utag"]["max_dist"] == lower.uns["utag"]["max_dist"]
    np.testing.assert_array_equal(upper.obs["UTAG Label_kmeans_0.3"], lower.obs["UTAG Label_kmeans_0.3"])


def test_filter_by_variance_takes_features_tied_at_the_median_as_ties():
    # 60 rare genes with the same 7 counts of 1 (the same spread) and 40 varying genes:
    # dense rows in any order and the same matrix as CSR keep the same features (the
    # tied ones used to be picked by the rounding of sums taken in row order)
    rng = np.random.default_rng(0)
    counts = np.zeros((3_000, 100), dtype=np.float32)
    for gene in range(60):
        counts[rng.choice(3_000, 7, replace=False), gene] = 1.0
    counts[:, 60:] = rng.poisson(2.0, size=(3_000, 40))
    adata = anndata.AnnData(counts, obsm={"spatial": rng.uniform(0, 1_000, (3_000, 2))})
    adata.var_names = [f"g{gene}" for gene in range(100)]
    options = dict(slide_key=None, max_dist=60, filter_by_variance=True, apply_clustering=False, progress=False)
    kept = {
        "dense": run_utag(adata, **options).var_names,
        "rows shuffled": run_utag(adata[rng.permutation(3_000)].copy(), **options).var_names,
        "CSR": run_utag(anndata.AnnData(sp.csr_matrix(counts), var=adata.var, obsm=dict(adata.obsm)),
                        **options).var_names,
    }
    for names in kept.values():
        assert list(names) == [f"g{gene}" for gene in range(60, 100)]


def test_scaled_features_are_all_kept_by_filter_by_variance(small, caplog):
    import scanpy as sc

    scaled = small.copy()
    sc.pp.scale(scaled)  # every spread 1, up to float32 rounding
    with caplog.at_level(logging.WARNING, logger="utag"):
        result = run_utag(scaled, filter_by_variance=True, apply_clustering=False, **FAST)
    assert result.n_vars == small.n_vars  # not an arbitrary half
    assert "all features have the same variance" in caplog.text


def test_inputs_that_used_to_fail_or_mislead(small, caplog):
    import warnings

    no_x = anndata.AnnData(obs=small.obs, obsm=dict(small.obsm), layers={"counts": small.X})
    with pytest.raises(ValueError, match=r"`adata.X` is empty.*adata.layers\['counts'\]"):
        run_utag(no_x, **FAST)
    with pytest.raises(ValueError, match="save_key.*'/'"):
        run_utag(small, save_key="run1/leiden", **FAST)
    half = small.copy()
    half.X = half.X.astype(np.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float16 values used to overflow in the range check
        run_utag(half, clustering_method="kmeans", resolutions=[0.3], **FAST)
    shifted = small.copy()
    shifted.X = shifted.X.astype(np.float64) + 1e9  # varies in float64, not in float32
    numbered = small.copy()
    numbered.obs.index = pd.RangeIndex(small.n_obs)  # set in place: AnnData keeps the integers
    kmeans = {"clustering_method": "kmeans", "resolutions": [0.3], **FAST}
    with caplog.at_level(logging.WARNING, logger="utag"):
        # the mean is taken off in float64 before float32 (it used to give one domain)
        on_background = run_utag(shifted, **kmeans).obs["UTAG Label_kmeans_0.3"]
        assert (on_background == run_utag(small, **kmeans).obs["UTAG Label_kmeans_0.3"]).all()
        assert "float32" not in caplog.text
        run_utag(shifted, normalization_mode="sum", **kmeans)  # the sum keeps the background: rounded away
        assert "vary in adata.X but not once utag holds them as float32" in caplog.text
        caplog.clear()
        for offset, rounded in ((100.0, False), (1e4, True)):  # float32 steps of ~1e-5 and ~1e-3
            moved = small.copy()
            moved.X = small.X.astype(np.float64) + offset
            run_utag(moved, normalization_mode="sum", **kmeans)
            assert ("lose precision as float32" in caplog.text) == rounded
        caplog.clear()
        result = run_utag(numbered, clustering_method="kmeans", resolutions=[0.3], **FAST)
        assert "not text" in caplog.text
    assert list(result.obs_names[:2]) == ["0", "1"]


def test_auto_radius_of_cells_that_share_positions(caplog):
    from utag.tuning import suggest_max_dist

    # cells binned to a 50 um grid: most cells share a position with others
    tissue = synthetic_tissue(n_cells=2_000, n_slides=1, random_state=4)
    binned = tissue.copy()
    binned.obsm["spatial"] = np.round(tissue.obsm["spatial"] / 50) * 50
    positions = np.unique(binned.obsm["spatial"], axis=0)
    from scipy.spatial import cKDTree

    spacing = np.median(cKDTree(positions).query(positions, k=2)[0][:, 1])
    assert spacing == 50
    assert suggest_max_dist(binned, slide_key="roi") == pytest.approx(6 * spacing)
    assert suggest_max_dist(tissue, slide_key="roi") > 0  # unchanged where no cells share a position
    with caplog.at_level(logging.WARNING, logger="utag"):
        run_utag(binned, slide_key="roi", max_dist="auto", clustering_method="kmeans", resolutions=[0.3],
                 progress=False)
    # 144 positions: the radius links a cell to most of its slide, which is said without
    # suggesting the same radius again as the one in other units
    assert "max_dist='auto') gives a cell" in caplog.text and "same units" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="utag"):  # the same radius typed: units may be the cause
        run_utag(binned, slide_key="roi", max_dist=6 * spacing, clustering_method="kmeans", resolutions=[0.3],
                 progress=False)
    assert "same units" in caplog.text
