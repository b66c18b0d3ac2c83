"""Downstream analysis against brute-force references on small hand-made graphs."""
import itertools

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData
from scipy import stats

from utag import utag
from utag.analysis import (
    celltype_connectivity,
    domain_composition,
    domain_connectivity,
    measure_per_domain_cell_type_colocalization,
    slide_connectivity,
    spatial_edges,
)
from utag.datasets import synthetic_tissue
from utag.evaluation import evaluate_clustering
from utag.plotting import plot_domains


def _random_tissue(n=240, seed=0, n_domains=3, n_types=4):
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, 100, size=(n, 2))
    obs = pd.DataFrame({
        "slide": rng.choice(["s1", "s2"], size=n),
        "domain": pd.Categorical([f"d{i}" for i in rng.integers(0, n_domains, size=n)]),
        "cell_type": pd.Categorical([f"t{i}" for i in rng.integers(0, n_types, size=n)]),
    }, index=[f"c{i}" for i in range(n)])
    return AnnData(np.zeros((n, 1), dtype=np.float32), obs=obs, obsm={"spatial": coords})


def _brute_edges(adata, max_dist):
    """All pairs i < j on the same slide within max_dist, by a double loop."""
    coords, slides = adata.obsm["spatial"], adata.obs["slide"].to_numpy()
    return [(i, j) for i, j in itertools.combinations(range(adata.n_obs), 2)
            if slides[i] == slides[j] and np.linalg.norm(coords[i] - coords[j]) <= max_dist]


def _brute_counts(edges, labels, names):
    counts = pd.DataFrame(0, index=names, columns=names)
    for i, j in edges:
        a, b = labels[i], labels[j]
        counts.loc[a, b] += 1
        if a != b:
            counts.loc[b, a] += 1
    return counts


def test_domain_connectivity_counts_match_brute_force():
    adata = _random_tissue()
    edges = _brute_edges(adata, 12.0)
    result = domain_connectivity(adata, "domain", slide_key="slide", max_dist=12.0)
    names = list(adata.obs["domain"].cat.categories)
    expected = _brute_counts(edges, adata.obs["domain"].to_numpy(), names)
    np.testing.assert_array_equal(result["counts"].to_numpy(), expected.to_numpy())
    assert adata.uns["domain_connectivity"]["counts"] is result["counts"]
    per_slide = slide_connectivity(adata, "domain", "slide", max_dist=12.0)
    for slide, table in per_slide.items():
        slide_edges = [(i, j) for i, j in edges if adata.obs["slide"].iloc[i] == slide]
        np.testing.assert_array_equal(table.to_numpy(),
                                      _brute_counts(slide_edges, adata.obs["domain"].to_numpy(), names).to_numpy())
    tidy = result["per_slide"].groupby(["domain_a", "domain_b"], observed=True)["count"].sum().unstack()
    np.testing.assert_array_equal(tidy.loc[names, names].to_numpy(), expected.to_numpy())


def test_hand_made_graph_in_obsp():
    # path 0-1-2-3 plus edge 0-2; self-loops must not count
    dense = np.eye(4)
    for i, j in [(0, 1), (1, 2), (2, 3), (0, 2)]:
        dense[i, j] = dense[j, i] = 1
    obs = pd.DataFrame({"domain": ["A", "A", "B", "B"], "cell_type": ["x", "y", "x", "x"]}, index=list("abcd"))
    adata = AnnData(np.zeros((4, 1)), obs=obs, obsm={"spatial": np.zeros((4, 2))},
                    obsp={"spatial_connectivities": sp.csr_matrix(dense)})
    counts = domain_connectivity(adata, "domain")["counts"]
    assert counts.loc["A", "A"] == 1 and counts.loc["B", "B"] == 1 and counts.loc["A", "B"] == 2
    within = celltype_connectivity(adata, "domain", "cell_type")
    assert within["A"].loc["x", "y"] == 1 and within["A"].loc["x", "x"] == 0
    assert within["B"].loc["x", "x"] == 1 and within["B"].to_numpy().sum() == 1


def test_edges_from_obsp_and_from_max_dist_agree_and_never_cross_slides():
    from utag.graph import spatial_neighbors

    adata = _random_tissue()
    adata.obsm["spatial"][adata.obs["slide"] == "s2"] = adata.obsm["spatial"][adata.obs["slide"] == "s2"] * 0.5
    built = spatial_edges(adata, "slide", max_dist=10.0)
    spatial_neighbors(adata, max_dist=10.0, slide_key="slide")
    stored = spatial_edges(adata, "slide")
    assert set(zip(built.source, built.target)) == set(zip(stored.source, stored.target))
    slides = adata.obs["slide"].to_numpy()
    assert (slides[built.source] == slides[built.target]).all()
    # a graph with cross-slide edges (e.g. built without slide_key) is cleaned
    spatial_neighbors(adata, max_dist=10.0, slide_key=None)
    cleaned = spatial_edges(adata, "slide")
    assert (slides[cleaned.source] == slides[cleaned.target]).all()
    assert set(zip(cleaned.source, cleaned.target)) == set(zip(built.source, built.target))


def test_missing_graph_is_a_clear_error():
    with pytest.raises(ValueError, match="max_dist="):
        domain_connectivity(_random_tissue(), "domain")
    with pytest.raises(ValueError, match="not a column"):
        domain_connectivity(_random_tissue(), "nope", max_dist=5)


def test_expected_counts_match_shuffled_labels():
    adata = _random_tissue(n=300, seed=2)
    result = domain_connectivity(adata, "domain", slide_key="slide", max_dist=15.0)
    rng = np.random.default_rng(0)
    shuffled = adata.copy()
    totals = []
    for _ in range(300):
        labels = adata.obs["domain"].to_numpy().copy()
        for slide in ["s1", "s2"]:
            cells = np.flatnonzero(adata.obs["slide"] == slide)
            labels[cells] = rng.permutation(labels[cells])
        shuffled.obs["domain"] = pd.Categorical(labels, categories=adata.obs["domain"].cat.categories)
        totals.append(domain_connectivity(shuffled, "domain", slide_key="slide", max_dist=15.0)["counts"].to_numpy())
    monte_carlo = np.mean(totals, axis=0)
    np.testing.assert_allclose(result["expected"].to_numpy(), monte_carlo, rtol=0.05)
    np.testing.assert_allclose(result["ratio"], result["counts"] / result["expected"])


def test_colocalization_observed_counts_are_the_within_domain_counts():
    adata = _random_tissue()
    table = measure_per_domain_cell_type_colocalization(adata, "domain", "cell_type", slide_key="slide",
                                                        max_dist=12.0, n_permutations=10)
    within = celltype_connectivity(adata, "domain", "cell_type", slide_key="slide", max_dist=12.0)
    for row in table.itertuples():
        assert row.observed == within[row.domain].loc[row.cell_type_a, row.cell_type_b]
    assert (table["cell_type_a"] <= table["cell_type_b"]).all()
    assert len(table) == 3 * 10  # 3 domains x 10 unordered pairs of 4 types
    assert table["p_enrichment"].between(1 / 11, 1).all()


def test_colocalization_p_values_are_calibrated_under_the_null():
    # cell types independent of position: enrichment p-values should be ~uniform
    p_values = []
    for seed in range(6):
        adata = _random_tissue(n=1500, seed=seed, n_domains=2, n_types=5)
        table = measure_per_domain_cell_type_colocalization(adata, "domain", "cell_type", slide_key="slide",
                                                            max_dist=6.0, n_permutations=99, random_state=seed)
        p_values.append(table.loc[table["observed"] > 0, "p_enrichment"].to_numpy())
    p_values = np.concatenate(p_values)
    assert len(p_values) > 100
    assert 0.4 < p_values.mean() < 0.65
    assert (p_values <= 0.05).mean() < 0.1
    assert stats.kstest(p_values, "uniform").statistic < 0.15


def test_colocalization_detects_planted_clustering():
    # type t0 and t1 sit in separate halves of one domain: t0-t0 contact is enriched
    rng = np.random.default_rng(0)
    n = 800
    coords = rng.uniform(0, 100, size=(n, 2))
    cell_type = np.where(coords[:, 0] < 50, "t0", "t1")
    flip = rng.uniform(size=n) < 0.2
    cell_type[flip] = rng.choice(["t0", "t1"], size=flip.sum())
    obs = pd.DataFrame({"domain": "d0", "cell_type": cell_type}, index=[str(i) for i in range(n)])
    adata = AnnData(np.zeros((n, 1)), obs=obs, obsm={"spatial": coords})
    table = measure_per_domain_cell_type_colocalization(adata, "domain", "cell_type", max_dist=8.0,
                                                        n_permutations=99).set_index(["cell_type_a", "cell_type_b"])
    assert table.loc[("t0", "t0"), "p_enrichment"] <= 0.01 and table.loc[("t0", "t0"), "z_score"] > 3
    assert table.loc[("t0", "t1"), "p_depletion"] <= 0.01 and table.loc[("t0", "t1"), "log2_ratio"] < 0
    assert table.loc[("t0", "t0"), "p_value"] <= 0.02


@pytest.mark.parametrize("graph", ["max_dist", "obsp", "obsp without coordinates"])
def test_colocalization_does_not_depend_on_the_order_of_the_rows(graph):
    adata = _random_tissue(n=400)
    edges = _brute_edges(adata, 12.0)
    rows, cols = np.array(edges).T
    adata.obsp["spatial_connectivities"] = sp.csr_matrix((np.ones(len(edges)), (rows, cols)), shape=(400, 400))
    if graph == "obsp without coordinates":
        del adata.obsm["spatial"]
    kwargs = dict(slide_key="slide", n_permutations=30, random_state=3, max_dist=12.0 if graph == "max_dist" else None)
    first = measure_per_domain_cell_type_colocalization(adata, "domain", "cell_type", **kwargs)
    permuted = adata[np.random.default_rng(1).permutation(adata.n_obs)].copy()
    second = measure_per_domain_cell_type_colocalization(permuted, "domain", "cell_type", **kwargs)
    assert first["expected"].sum() > 0 and (first["p_value"] < 1).any()  # a null with something in it
    pd.testing.assert_frame_equal(first, second)


def test_colocalization_is_seeded():
    adata = _random_tissue()
    kwargs = dict(max_dist=12.0, n_permutations=20, random_state=4)
    first = measure_per_domain_cell_type_colocalization(adata, "domain", "cell_type", **kwargs)
    second = measure_per_domain_cell_type_colocalization(adata, "domain", "cell_type", **kwargs)
    pd.testing.assert_frame_equal(first, second)


def test_composition_matches_crosstab():
    adata = _random_tissue()
    composition = domain_composition(adata, "domain", "cell_type", slide_key="slide")
    expected = pd.crosstab(adata.obs["domain"], adata.obs["cell_type"])
    np.testing.assert_array_equal(composition["counts"].to_numpy(), expected.to_numpy())
    np.testing.assert_allclose(composition["proportions"].sum(axis=1), 1.0)
    overall = expected.sum(axis=0) / expected.to_numpy().sum()
    np.testing.assert_allclose(composition["enrichment"].to_numpy(),
                               np.log2((expected.T / expected.sum(axis=1)).T / overall).to_numpy())
    per_slide = composition["per_slide"]
    s1 = per_slide[per_slide["slide"] == "s1"].pivot(index="domain", columns="cell_type", values="count")
    mask = adata.obs["slide"] == "s1"
    np.testing.assert_array_equal(s1.to_numpy(), pd.crosstab(adata.obs["domain"][mask],
                                                              adata.obs["cell_type"][mask]).to_numpy())


def test_evaluate_clustering_leaves_unlabelled_cells_out():
    adata = _random_tissue()
    adata.obsm["X_pca"] = np.random.default_rng(0).normal(size=(adata.n_obs, 3))
    labelled = adata.obs["domain"].to_numpy() != adata.obs["domain"].cat.categories[0]
    adata.obs["partial"] = adata.obs["domain"].astype(object).where(labelled)  # one domain not annotated
    partial = evaluate_clustering(adata, "partial", slide_key="slide", max_dist=12.0, n_silhouette=10_000).iloc[0]
    only = adata[labelled].copy()
    alone = evaluate_clustering(only, "domain", slide_key="slide", max_dist=12.0, n_silhouette=10_000).iloc[0]
    assert partial["silhouette"] == pytest.approx(alone["silhouette"])
    edges = _brute_edges(adata, 12.0)
    labels = adata.obs["domain"].to_numpy()
    both = [(i, j) for i, j in edges if labelled[i] and labelled[j]]
    assert partial["spatial_coherence"] == pytest.approx(np.mean([labels[i] == labels[j] for i, j in both]))


def test_evaluate_clustering_checks_its_sample_size_and_representation():
    adata = _random_tissue()
    adata.obsm["X_pca"] = np.random.default_rng(0).normal(size=(adata.n_obs, 3))
    # R passes 1e4 as a float; -5 used to score all cells but 5, 0 to give NaN silently
    assert evaluate_clustering(adata, "domain", n_silhouette=1e4)["silhouette"].notna().all()
    for bad in (-5, 0, 2.5):
        with pytest.raises(ValueError, match="n_silhouette"):
            evaluate_clustering(adata, "domain", n_silhouette=bad)
    with pytest.raises(ValueError, match="X_umap"):  # named, but absent: not a silent missing column
        evaluate_clustering(adata, "domain", use_rep="X_umap")
    del adata.obsm["X_pca"]
    assert "silhouette" not in evaluate_clustering(adata, "domain")  # the default, absent: left out


def test_a_result_read_back_without_features_is_analysed(tmp_path):
    adata = _random_tissue()
    without_x = AnnData(obs=adata.obs.copy(), obsm={"spatial": adata.obsm["spatial"]})
    expected = domain_connectivity(adata, "domain", slide_key="slide", max_dist=12.0)["counts"]
    got = domain_connectivity(without_x, "domain", slide_key="slide", max_dist=12.0)["counts"]
    pd.testing.assert_frame_equal(got, expected)


def test_evaluate_clustering_against_definitions():
    adata = _random_tissue()
    adata.obs["UTAG Label_x_1"] = adata.obs["domain"]
    adata.obsm["X_pca"] = np.random.default_rng(0).normal(size=(adata.n_obs, 3))
    table = evaluate_clustering(adata, "UTAG Label_x_1", celltype_key="cell_type", slide_key="slide",
                                max_dist=12.0, n_silhouette=10_000)
    row = table.iloc[0]
    assert row["n_domains"] == 3
    edges = _brute_edges(adata, 12.0)
    labels = adata.obs["domain"].to_numpy()
    assert row["spatial_coherence"] == pytest.approx(np.mean([labels[i] == labels[j] for i, j in edges]))
    crosstab = pd.crosstab(adata.obs["domain"], adata.obs["cell_type"])
    entropies = crosstab.apply(lambda r: stats.entropy(r, base=2), axis=1)
    sizes = crosstab.sum(axis=1)
    assert row["celltype_entropy"] == pytest.approx((entropies * sizes).sum() / sizes.sum())
    from sklearn.metrics import silhouette_score

    assert row["silhouette"] == pytest.approx(silhouette_score(adata.obsm["X_pca"], labels))


def test_downstream_functions_keep_the_slides_utag_recorded(caplog):
    # two slides in the same coordinate frame: pooled, cells of different slides would touch
    adata = synthetic_tissue(n_cells=2_000, n_slides=2, random_state=0)
    adata.obsm["spatial"] = adata.obsm["spatial"] - adata.obsm["spatial"].min(axis=0)
    for slide in adata.obs["roi"].unique():
        cells = (adata.obs["roi"] == slide).to_numpy()
        adata.obsm["spatial"][cells] -= adata.obsm["spatial"][cells].min(axis=0)
    result = utag(adata, slide_key="roi", clustering_method="kmeans", resolutions=[0.3], progress=False)
    key = "UTAG Label_kmeans_0.3"
    per_slide = spatial_edges(result, "roi", max_dist=20)
    pooled = spatial_edges(result, None, max_dist=20)
    assert len(pooled.source) > len(per_slide.source)  # the frames overlap
    by_default = spatial_edges(result, max_dist=20)
    np.testing.assert_array_equal(by_default.source, per_slide.source)
    np.testing.assert_array_equal(spatial_edges(result, "AUTO", max_dist=20).source, per_slide.source)
    pd.testing.assert_frame_equal(domain_connectivity(result, key, max_dist=20)["counts"],
                                  domain_connectivity(result, key, slide_key="roi", max_dist=20)["counts"])
    assert set(domain_composition(result, key, "cell_type")["per_slide"]["slide"]) == set(adata.obs["roi"])
    assert len(plot_domains(result, key).axes) >= 2  # one panel per slide
    # a subset without the slide column: one slide, and the log says so
    without = result.copy()
    del without.obs["roi"]
    with caplog.at_level("WARNING", logger="utag"):
        assert len(spatial_edges(without, max_dist=20).source) == len(pooled.source)
    assert "no column 'roi'" in caplog.text
