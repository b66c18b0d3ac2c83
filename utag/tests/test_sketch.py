"""Sketch clustering: a sample clustered, the other cells assigned by vote."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from utag import sketch, utag
from utag.datasets import synthetic_tissue
from utag.sketch import assign_by_vote, sketch_cells, sketch_size_for

KW = dict(slide_key="roi", max_dist=20, progress=False)


@pytest.fixture(scope="module")
def sketch_tissue():
    return synthetic_tissue(n_cells=6_000, n_slides=3, random_state=0)


def test_a_sketch_of_every_cell_gives_the_unsketched_labels(sketch_tissue):
    options = dict(clustering_method=["leiden", "kmeans", "parc"], resolutions=[0.1, 0.3], **KW)
    unsketched = utag(sketch_tissue, **options)
    sketched = utag(sketch_tissue, sketch_size=sketch_tissue.n_obs, **options)
    assert sketched.uns["utag"]["sketch"]["size"] == sketch_tissue.n_obs
    for key in unsketched.uns["utag"]["label_keys"]:
        np.testing.assert_array_equal(sketched.obs[key].to_numpy(), unsketched.obs[key].to_numpy())
        np.testing.assert_array_equal(sketched.obsm[f"{key}_probabilities"], unsketched.obsm[f"{key}_probabilities"])


def test_a_sketch_labels_every_cell_like_the_full_run(sketch_tissue):
    options = dict(clustering_method=["leiden", "kmeans"], resolutions=[0.3], **KW)
    unsketched = utag(sketch_tissue, **options)
    first = utag(sketch_tissue, sketch_size=0.4, **options)
    again = utag(sketch_tissue, sketch_size=0.4, **options)
    record = first.uns["utag"]["sketch"]
    assert abs(record["size"] - 2_400) < 50
    assert "connectivities" not in first.obsp  # the kNN graph was of the sample only
    for key in ("UTAG Label_leiden_0.3", "UTAG Label_kmeans_0.3"):
        np.testing.assert_array_equal(first.obs[key].to_numpy(), again.obs[key].to_numpy())  # seeded
        assert adjusted_rand_score(unsketched.obs[key], first.obs[key]) > 0.6
        truth = sketch_tissue.obs["domain"]
        assert adjusted_rand_score(truth, first.obs[key]) > adjusted_rand_score(truth, unsketched.obs[key]) - 0.15
        probabilities = first.obsm[f"{key}_probabilities"]
        assert probabilities.shape == (sketch_tissue.n_obs, first.obs[key].nunique())
        np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_a_sketch_does_not_depend_on_the_order_of_the_rows(sketch_tissue):
    import scipy.sparse as sp

    options = dict(clustering_method="kmeans", resolutions=[0.4], sketch_size=0.3, **KW)
    first = utag(sketch_tissue, **options)
    permutation = np.random.default_rng(5).permutation(sketch_tissue.n_obs)
    second = utag(sketch_tissue[permutation].copy(), **options)
    key = "UTAG Label_kmeans_0.4"
    np.testing.assert_array_equal(second.obs[key].to_numpy(), first.obs[key].to_numpy()[permutation])
    sparse = sketch_tissue.copy()
    sparse.X = sp.csr_matrix(sparse.X)  # sparse input: the same domains up to float rounding
    assert adjusted_rand_score(utag(sparse, **options).obs[key], first.obs[key]) > 0.9
    sampled = np.zeros(sketch_tissue.n_obs, dtype=bool)
    sampled[second.uns["utag"]["sketch"]["cells"]] = True
    in_first_order = np.flatnonzero(sampled[np.argsort(permutation)])
    np.testing.assert_array_equal(in_first_order, first.uns["utag"]["sketch"]["cells"])


def test_a_sketch_of_identical_profiles_is_one_domain():
    import anndata

    adata = anndata.AnnData(np.ones((60, 3), dtype=np.float32))
    adata.obsm["spatial"] = np.random.default_rng(0).uniform(0, 100, size=(60, 2))
    result = utag(adata, slide_key=None, max_dist=10, clustering_method="leiden", resolutions=[0.1], sketch_size=20,
                  progress=False)
    assert result.obs["UTAG Label_leiden_0.1"].nunique() == 1


def test_auto_resolution_and_n_domains_work_on_the_sketch(sketch_tissue):
    automatic = utag(sketch_tissue, clustering_method="leiden", resolutions="auto", sketch_size=0.5, **KW)
    assert automatic.uns["utag_resolution_sweep"]["labels"].shape == (12, sketch_tissue.n_obs)
    assert len(automatic.uns["utag"]["label_keys"]) == 1
    exact = utag(sketch_tissue, clustering_method=["leiden", "kmeans"], resolutions=None, n_domains=4, sketch_size=0.5,
                 **KW)
    for key in exact.uns["utag"]["label_keys"]:
        assert exact.obs[key].nunique() == 4
    from utag.tuning import resolution_sweep

    with pytest.raises(ValueError, match="sketch_size=None"):  # it said to pass utag()'s AnnData, which it is
        resolution_sweep(exact)


def test_small_sketches_have_the_size_asked_for():
    rng = np.random.default_rng(2)
    embedding = rng.normal(size=(2_000, 3))
    codes = np.repeat([0, 1, 2, 3], 500)
    assert abs(len(sketch_cells(embedding, codes, 10)) - 10) <= 4  # fewer cells than coarse regions


def test_the_sample_keeps_slide_shares_and_rare_neighbourhoods():
    rng = np.random.default_rng(1)
    common = rng.normal(0, 1, size=(19_800, 4))
    rare = rng.normal(8, 0.5, size=(200, 4))  # 1% of the cells, far from the rest
    embedding = np.vstack([common, rare])
    codes = np.repeat([0, 1, 2], [10_000, 6_000, 4_000])
    codes = codes[rng.permutation(len(codes))]
    balanced = sketch_cells(embedding, codes, 1_000, random_state=0)
    uniform = sketch_cells(embedding, codes, 1_000, random_state=0, balanced=False)
    for sample in (balanced, uniform):
        assert abs(len(sample) - 1_000) < 20
        np.testing.assert_allclose(np.bincount(codes[sample]) / len(sample), [0.5, 0.3, 0.2], atol=0.01)
    rare_share = [np.mean(sample >= 19_800) for sample in (balanced, uniform)]
    assert rare_share[0] > 1.5 * rare_share[1]  # the balanced sample holds the rare cells more densely


def test_vote_assigns_each_cell_to_its_nearest_sampled_domain():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = rng.integers(3, size=3_000)
    embedding = centres[truth] + rng.normal(0, 1, size=(3_000, 2))
    sample = np.sort(rng.choice(3_000, size=300, replace=False))
    assigned = assign_by_vote(embedding, sample, [truth[sample]])[0]
    np.testing.assert_array_equal(assigned[sample], truth[sample])
    assert np.mean(assigned == truth) > 0.99


def test_vote_does_not_depend_on_the_order_of_the_sample():
    rng = np.random.default_rng(1)
    embedding = rng.normal(size=(2_000, 4))
    labels = (embedding[:, 0] > 0).astype(int) + 2 * (embedding[:, 1] > 0.5)
    sample = np.sort(rng.choice(2_000, size=400, replace=False))
    shuffled = rng.permutation(len(sample))
    in_order = assign_by_vote(embedding, sample, [labels[sample]], n_neighbors=7)[0]
    np.testing.assert_array_equal(
        assign_by_vote(embedding, sample[shuffled], [labels[sample][shuffled]], n_neighbors=7)[0], in_order)
    assert np.mean(in_order == labels) > 0.8  # by chance: about 0.3


def test_auto_sketches_only_large_data(sketch_tissue, monkeypatch, caplog):
    assert "sketch" not in utag(sketch_tissue, clustering_method="kmeans", resolutions=[0.3], **KW).uns["utag"]
    monkeypatch.setattr(sketch, "SKETCH_ABOVE", 5_000)
    monkeypatch.setattr(sketch, "DEFAULT_SKETCH_SIZE", 3_000)
    with caplog.at_level(logging.INFO, logger="utag"):
        result = utag(sketch_tissue, clustering_method="kmeans", resolutions=[0.3], **KW)
    assert abs(result.uns["utag"]["sketch"]["size"] - 3_000) < 50
    assert "sketch_size=None to cluster every cell" in caplog.text


def test_sketch_size_errors_name_the_parameter(sketch_tissue):
    with pytest.raises(ValueError, match="`sketch_size` must be"):
        utag(sketch_tissue, sketch_size="half", **KW)
    with pytest.raises(ValueError, match="sample at least 2"):
        utag(sketch_tissue, sketch_size=1, **KW)
    with pytest.raises(ValueError, match="apply_umap=True needs the kNN graph of every cell"):
        utag(sketch_tissue, sketch_size=0.5, apply_umap=True, **KW)
    with pytest.raises(ValueError, match="more than the 100 cells of the sketch"):
        utag(sketch_tissue, clustering_method="kmeans", resolutions=None, n_domains=200, sketch_size=100, **KW)
    with pytest.raises(ValueError, match="`sketch_size` must be"):
        utag(sketch_tissue, sketch_size="half", apply_clustering=False, **KW)  # checked even when unused
    assert sketch_size_for(None, 10) is None and sketch_size_for(0, 10) is None


def test_majority_vote_does_not_depend_on_how_labels_are_numbered():
    from utag.sketch import majority_vote

    rng = np.random.default_rng(0)
    votes = rng.integers(0, 5, size=(2_000, 6))  # 6 votes over 5 labels: many ties
    winners, counts = majority_vote(votes, 5)
    tied = (counts == counts.max(axis=1, keepdims=True)).sum(axis=1) > 1
    assert tied.mean() > 0.2, "the case must have ties for this test to mean anything"
    assert (counts[np.arange(len(votes)), winners] == counts.max(axis=1)).all()  # a most common label
    # a tie goes to the nearest tied neighbour's label
    first_rank = [min(np.flatnonzero(row == label)) for row, label in zip(votes, winners)]
    best_first = [min(np.flatnonzero(np.isin(row, np.flatnonzero(c == c.max())))) for row, c in zip(votes, counts)]
    assert first_rank == best_first
    renumber = rng.permutation(5)
    assert (majority_vote(renumber[votes], 5)[0] == renumber[winners]).all()


def test_a_sketch_keeps_domains_of_at_least_min_domain_size_and_no_stale_graph_entry():
    import scipy.sparse as sp

    # PARC at a high resolution on a 10% sketch: the vote left a 23-cell domain where
    # every domain should hold at least min_domain_size (0.2%, 40 cells) of all cells
    tissue = synthetic_tissue(n_cells=20_000, n_slides=2, random_state=0)
    # the input's uns['neighbors'] points to its obsp graph, as scanpy.pp.neighbors leaves it
    tissue.obsp["connectivities"] = tissue.obsp["distances"] = sp.identity(tissue.n_obs, format="csr")
    tissue.uns["neighbors"] = {"connectivities_key": "connectivities", "distances_key": "distances"}
    result = utag(tissue, clustering_method="parc", resolutions=[1.0], sketch_size=0.1, **KW)
    sizes = result.obs["UTAG Label_parc_1.0"].value_counts()
    assert sizes.min() >= result.uns["utag"]["min_domain_cells"] == 40
    assert list(sizes) == sorted(sizes, reverse=True)  # numbered by size after merging
    assert result.obsm["UTAG Label_parc_1.0_probabilities"].shape[1] == len(sizes)
    assert "neighbors" not in result.uns and "connectivities" not in result.obsp


def test_the_merge_after_the_vote_keeps_n_domains():
    # with a large min_domain_size the vote's small domains were merged below n_domains
    tissue = synthetic_tissue(n_cells=20_000, n_slides=2, random_state=0)
    result = utag(tissue, clustering_method=["kmeans"], resolutions=None, n_domains=6, min_domain_size=0.08,
                  sketch_size=0.1, **KW)
    for key in result.uns["utag"]["label_keys"]:
        assert result.obs[key].nunique() == 6
