"""Label transfer (:mod:`utag.transfer`): new slides, the reference itself, models read back
from h5ad, labels renumbered or missing."""
import re

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from sklearn.metrics import adjusted_rand_score

from utag import utag
from utag.datasets import synthetic_tissue
from utag.transfer import transfer_labels
from utag.tuning import consistent_labels


def test_transfer_after_consistent_labels_gives_the_new_numbers(four_domains):
    adata, _ = four_domains
    result = utag(adata, slide_key="roi", clustering_method=["leiden"], resolutions=[0.05, 0.3, 0.6],
                  progress=False)
    keys = list(result.uns["utag"]["label_keys"])
    before = {key: result.obs[key].to_numpy().copy() for key in keys}
    moved_before = {method: transfer_labels(result, adata, slide_key="roi", method=method)
                    for method in ("knn", "centroid")}
    consistent_labels(result)
    renamed = [key for key in keys if (before[key] != result.obs[key].to_numpy()).any()]
    assert renamed, "the case must renumber something for this test to mean anything"
    for method in ("knn", "centroid"):
        moved = transfer_labels(result, adata, slide_key="roi", method=method)
        for key in renamed:  # the same cells get the same domains, under their new numbers
            renumbering = dict(zip(before[key], result.obs[key].to_numpy()))
            expected = [renumbering[label] for label in moved_before[method].obs[key].to_numpy()]
            assert moved.obs[key].tolist() == expected, (method, key)


def test_transfer_to_a_new_slide(four_domains):
    adata, _ = four_domains
    reference = adata[adata.obs["roi"] == "roi_0"].copy()
    new = adata[adata.obs["roi"] == "roi_1"].copy()
    result = utag(reference, slide_key="roi", clustering_method=["leiden"], resolutions=None, n_domains=4,
                  progress=False)
    key = result.uns["utag"]["label_keys"][0]
    # transferred domains on the new slide are about as good as the domains on the reference slide
    reference_ari = adjusted_rand_score(reference.obs["domain"], result.obs[key])
    for method, margin in [("knn", 0.1), ("centroid", 0.2)]:  # measured: 0.80 and 0.74 vs 0.85
        moved = transfer_labels(result, new, slide_key="roi", method=method)
        assert list(moved.obs_names) == list(new.obs_names)
        assert list(moved.obs[key].cat.categories) == list(result.obs[key].cat.categories)
        np.testing.assert_allclose(moved.obsm[f"{key}_probabilities"].sum(axis=1), 1, rtol=1e-5)
        assert adjusted_rand_score(new.obs["domain"], moved.obs[key]) > reference_ari - margin
    # the reference cells get their own labels back
    back = transfer_labels(result, reference, slide_key="roi")
    assert (back.obs[key].to_numpy() == result.obs[key].to_numpy()).mean() > 0.95
    with pytest.raises(ValueError, match="method"):
        transfer_labels(result, new, method="svm")


def test_a_large_reference_votes_through_the_seeded_index_as_the_exact_search_does(four_domains, monkeypatch):
    import utag.transfer as transfer

    # above what an exact search does quickly (utag()'s own rule for its kNN graph), the
    # voters come from the sketch's seeded HNSW index: the same votes bar a few, the same
    # labels for any number of threads
    adata, _ = four_domains
    reference = adata[adata.obs["roi"] == "roi_0"].copy()
    new = adata[adata.obs["roi"] == "roi_1"].copy()
    result = utag(reference, slide_key="roi", clustering_method="kmeans", resolutions=[0.4], progress=False)
    key = "UTAG Label_kmeans_0.4"
    exact = transfer_labels(result, new, slide_key="roi").obs[key].to_numpy()
    monkeypatch.setattr(transfer, "exact_search", lambda *args, **kwargs: False)
    indexed = [transfer_labels(result, new, slide_key="roi", n_jobs=n_jobs).obs[key].to_numpy() for n_jobs in (1, 2)]
    np.testing.assert_array_equal(indexed[0], indexed[1])
    assert (indexed[0] == exact).mean() > 0.97


@pytest.mark.parametrize("pca_kwargs", [None, {"zero_center": False}], ids=["centred", "uncentred"])
def test_transfer_projects_the_reference_cells_onto_their_own_embedding(four_domains, pca_kwargs):
    adata, _ = four_domains
    reference = adata[adata.obs["roi"] == "roi_0"].copy()
    result = utag(reference, slide_key="roi", clustering_method="kmeans", resolutions=[0.4], pca_kwargs=pca_kwargs,
                  progress=False)
    moved = transfer_labels(result, reference, slide_key="roi", method="centroid")
    np.testing.assert_allclose(moved.obsm["X_pca"], result.obsm["X_pca"], atol=1e-4)


@pytest.mark.parametrize("flavor", ["utag", "multiscale"])
def test_transfer_of_float64_features_on_a_large_background(four_domains, flavor):
    # float64 values of 1e9 plus the markers: rounded to float32 first, every cell looked alike
    adata, _ = four_domains
    lifted = adata.copy()
    lifted.X = adata.X.astype(np.float64) + 1e9
    moved = {}
    for name, tissue in (("plain", adata), ("lifted", lifted)):
        reference, new = (tissue[tissue.obs["roi"] == roi].copy() for roi in ("roi_0", "roi_1"))
        result = utag(reference, slide_key="roi", clustering_method="kmeans", resolutions=[0.4], flavor=flavor,
                      progress=False)
        moved[name] = transfer_labels(result, new, slide_key="roi", method="centroid")
    np.testing.assert_allclose(moved["lifted"].obsm["X_pca"], moved["plain"].obsm["X_pca"], atol=1e-3)
    key = "UTAG Label_kmeans_0.4"
    assert (moved["lifted"].obs[key] == moved["plain"].obs[key]).mean() > 0.99
    assert moved["lifted"].obs[key].nunique() == 4
    # X holds the neighbourhood means, background included, as the reference's X does
    np.testing.assert_allclose(moved["lifted"].X.mean(axis=0), result.X.mean(axis=0), rtol=1e-3)


def test_knn_transfer_warns_when_the_voters_drown_small_domains(four_domains, caplog):
    adata, _ = four_domains
    reference, new = (adata[adata.obs["roi"] == roi].copy() for roi in ("roi_0", "roi_1"))
    result = utag(reference, slide_key="roi", clustering_method="kmeans", resolutions=[0.4], progress=False)
    key = "UTAG Label_kmeans_0.4"
    smallest = int(result.obs[key].value_counts().min())
    with caplog.at_level("WARNING", logger="utag.transfer"):
        usual = transfer_labels(result, new, slide_key="roi")
        assert "outnumber" not in caplog.text and usual.obs[key].nunique() == 4
        everyone = transfer_labels(result, new, slide_key="roi", n_neighbors=reference.n_obs)
    assert f"outnumber twice the {smallest} cells" in caplog.text
    assert everyone.obs[key].nunique() == 1  # what the warning is about: every cell gets the largest domain


def test_knn_transfer_reads_domains_by_name_and_skips_missing_labels(four_domains):
    adata, result = four_domains
    key = "UTAG Label_leiden_0.1"
    new = adata[adata.obs["roi"] == "roi_1"].copy()
    full = transfer_labels(result, new, keys=key, slide_key="roi").obs[key].astype(str).to_numpy()
    dropped = result.obs[key].cat.categories[1]
    # a subset without domain "1": anndata drops the unused category, so "2" sits at position 1
    subset = result[result.obs[key] != dropped].copy()
    assert list(subset.obs[key].cat.categories) != list(result.obs[key].cat.categories)
    moved = transfer_labels(subset, new, keys=key, slide_key="roi").obs[key].astype(str).to_numpy()
    assert dropped not in set(moved)
    kept = full != dropped
    assert (moved[kept] == full[kept]).mean() > 0.95
    # cells without a label do not vote, whatever the number of those missing
    unlabelled = result.copy()
    column = unlabelled.obs[key].astype(object)
    column[column == dropped] = np.nan
    unlabelled.obs[key] = pd.Categorical(column, categories=result.obs[key].cat.categories)
    moved = transfer_labels(unlabelled, new, keys=key, slide_key="roi")
    assert dropped not in set(moved.obs[key].astype(str))
    assert np.asarray(moved.obsm[f"{key}_probabilities"])[:, 1].max() == 0
    with pytest.raises(ValueError, match="n_neighbors"):
        transfer_labels(result, new, keys=key, slide_key="roi", n_neighbors=0)


def test_model_survives_h5ad_and_transfers(four_domains, tmp_path):
    import anndata

    adata, result = four_domains
    path = tmp_path / "result.h5ad"
    result.write_h5ad(path)
    reloaded = anndata.read_h5ad(path)
    key = reloaded.uns["utag"]["label_keys"][0]
    new = adata[adata.obs["roi"] == "roi_1"].copy()
    from_file = transfer_labels(reloaded, new, slide_key="roi", method="centroid")
    in_memory = transfer_labels(result, new, slide_key="roi", method="centroid")
    np.testing.assert_array_equal(from_file.obs[key], in_memory.obs[key])


def test_knn_transfer_names_what_the_result_lacks():
    adata = synthetic_tissue(n_cells=2_000, n_slides=2, random_state=0)
    reference = adata[adata.obs["roi"] == "roi_0"].copy()
    new = adata[adata.obs["roi"] == "roi_1"].copy()
    result = utag(reference, slide_key="roi", clustering_method="kmeans", resolutions=[0.4], progress=False)
    key = "UTAG Label_kmeans_0.4"
    expected = transfer_labels(result, new, slide_key="roi", method="centroid").obs[key]
    # the model alone (e.g. a result slimmed before saving): the centroids still transfer ...
    slim = AnnData(obs=pd.DataFrame(index=result.obs_names), uns={"utag": result.uns["utag"]})
    moved = transfer_labels(slim, new, slide_key="roi", method="centroid").obs[key]
    assert (moved == expected).all()
    # ... and the vote, which needs the reference cells, says so instead of a KeyError
    with pytest.raises(ValueError, match=r"obsm\['X_pca'\].*method='centroid'"):
        transfer_labels(slim, new, slide_key="roi")
    slim.obsm["X_pca"] = result.obsm["X_pca"]
    with pytest.raises(ValueError, match=r"obs\['UTAG Label_kmeans_0.4'\].*method='centroid'"):
        transfer_labels(slim, new, slide_key="roi")


def test_transfer_defaults_to_the_slide_key_utag_recorded(four_domains, caplog):
    adata, result = four_domains  # two slides whose coordinates overlap
    key = "UTAG Label_leiden_0.1"
    assert result.uns["utag"]["slide_key"] == "roi"
    per_slide = transfer_labels(result, adata, keys=key, slide_key="roi", method="centroid").obs[key].to_numpy()
    pooled = transfer_labels(result, adata, keys=key, slide_key=None, method="centroid").obs[key].to_numpy()
    # pooling the slides mixes their neighbourhoods: the self-transfer gets its labels back per slide only
    assert (per_slide == result.obs[key].to_numpy()).mean() > 0.95
    assert (pooled == result.obs[key].to_numpy()).mean() < 0.8
    with caplog.at_level("WARNING", logger="utag.transfer"):
        default = transfer_labels(result, adata, keys=key, method="centroid").obs[key].to_numpy()
    np.testing.assert_array_equal(default, per_slide)
    assert not caplog.records
    # new cells without the recorded column: one slide, and the log says how to name the slides
    unnamed = adata.copy()
    del unnamed.obs["roi"]
    with caplog.at_level("WARNING", logger="utag.transfer"):
        fallback = transfer_labels(result, unnamed, keys=key, method="centroid").obs[key].to_numpy()
    np.testing.assert_array_equal(fallback, pooled)
    assert "slide_key='roi'" in caplog.text and "slide_key=None" in caplog.text
    # a result of one slide (recorded as "None") transfers onto one slide, without a warning
    caplog.clear()
    single = result.copy()
    single.uns["utag"]["slide_key"] = "None"
    with caplog.at_level("WARNING", logger="utag.transfer"):
        alone = transfer_labels(single, adata, keys=key, method="centroid").obs[key].to_numpy()
    np.testing.assert_array_equal(alone, pooled)
    assert not caplog.records


def test_a_domain_no_cell_has_gets_no_centroid():
    from utag.transfer import _centroids

    embedding = np.array([[0.0, 1.0], [2.0, 3.0], [10.0, 10.0], [12.0, 10.0]])
    centroids = _centroids(embedding, np.array([0, 0, 2, 2]))
    np.testing.assert_allclose(centroids[[0, 2]], [[1.0, 2.0], [11.0, 10.0]])
    assert np.isnan(centroids[1]).all()  # not the origin of the PCA, where centroid transfer would put cells


def test_transfer_warns_about_new_coordinates_in_other_units(four_domains, caplog):
    adata, result = four_domains
    new = adata[adata.obs["roi"] == "roi_1"].copy()
    with caplog.at_level("WARNING", logger="utag"):
        transfer_labels(result, new, slide_key="roi")
    assert "reference's units" not in caplog.text  # another slide of the same tissue, in the same units
    assert result.uns["utag"]["model"]["mean_spatial_neighbors"] > 1
    for factor, direction in [(0.4, "smaller"), (2.5, "larger")]:  # um against px is about 0.38
        scaled = new.copy()
        scaled.obsm["spatial"] = new.obsm["spatial"] * factor
        caplog.clear()
        with caplog.at_level("WARNING", logger="utag"):
            transfer_labels(result, scaled, slide_key="roi")
        named = re.search(rf"about ([0-9.]+) times {direction}", caplog.text)
        assert "reference's units" in caplog.text and named and 2 < float(named.group(1)) < 3


def test_labels_that_are_no_domains_of_the_model_are_refused_naming_them():
    from utag.transfer import domain_numbers

    labels = pd.Series(pd.Categorical(["0", "2", None, "3"], categories=["0", "2", "3"]))
    assert domain_numbers(labels, 4).tolist() == [0, 2, -1, 3]
    with pytest.raises(ValueError, match=r"`UTAG Label_leiden_0.1` holds labels that are not domains .* '7'"):
        domain_numbers(pd.Series(["0", "7"]), 4, "UTAG Label_leiden_0.1")


def test_transfer_warns_about_new_features_on_another_scale(four_domains, caplog):
    adata, result = four_domains
    new = adata[adata.obs["roi"] == "roi_1"].copy()
    key = result.uns["utag"]["label_keys"][0]
    with caplog.at_level("WARNING", logger="utag"):
        kept = transfer_labels(result, new, keys=key, slide_key="roi").obs[key].to_numpy()
    assert "reference's scale" not in caplog.text  # another slide of the same tissue, on the same scale
    for factor, direction in [(1000.0, "wider"), (0.001, "narrower")]:  # raw against normalised values, say
        scaled = new.copy()
        scaled.X = new.X * factor
        caplog.clear()
        with caplog.at_level("WARNING", logger="utag"):
            moved = transfer_labels(result, scaled, keys=key, slide_key="roi").obs[key].to_numpy()
        named = re.search(rf"spread ([0-9.e+]+) times {direction}", caplog.text)
        assert "reference's scale" in caplog.text and named and 300 < float(named.group(1)) < 3000
        assert (moved != kept).any()  # what the warning is about: other domains
