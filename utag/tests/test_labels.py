"""Stable domain numbers (:mod:`utag.labels`): alignment by overlap, consistent labels across
resolutions (with the transfer model and the tables counted under the old numbers), and the
hierarchy of nested domains."""
import numpy as np
import pandas as pd
import pytest
from anndata import ImplicitModificationWarning
from sklearn.metrics import adjusted_rand_score

from utag import utag
from utag.datasets import synthetic_tissue
from utag.labels import align_labels, consistent_labels, domain_hierarchy
from utag.transfer import transfer_labels


def test_align_labels_follows_overlap():
    reference = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    renamed = np.array([2, 2, 2, 0, 0, 1, 1, 1])  # 2->0, 0->1, 1->2 (mostly)
    np.testing.assert_array_equal(align_labels(reference, renamed), [0, 0, 0, 1, 1, 2, 2, 2])
    split = np.array([0, 0, 3, 1, 1, 1, 2, 2])  # an extra domain gets a new number
    assert align_labels(reference, split).max() == 3


def test_consistent_labels_across_resolutions_and_hierarchy(four_domains):
    adata, _ = four_domains
    result = utag(adata, slide_key="roi", clustering_method=["leiden"], resolutions=[0.05, 0.1, 0.3, 0.6],
                  progress=False)
    before = {k: result.obs[k].to_numpy().copy() for k in result.uns["utag"]["label_keys"]}
    probabilities = {k: result.obsm[f"{k}_probabilities"].copy() for k in before}
    keys = consistent_labels(result)
    for coarse, fine in zip(keys[:-1], keys[1:]):
        a, b = result.obs[coarse].to_numpy(), result.obs[fine].to_numpy()
        # every coarse domain's number lives on in the finer labelling, on its largest part
        for label in np.unique(a):
            assert (b[a == label] == label).mean() > 0.3
    for key in keys:  # only the names changed
        assert adjusted_rand_score(before[key], result.obs[key]) == 1.0
        most_likely = result.obsm[f"{key}_probabilities"].argmax(axis=1).astype(str)
        original = probabilities[key].argmax(axis=1).astype(str)
        assert (pd.crosstab(most_likely, original).to_numpy() > 0).sum() == len(np.unique(original))
    hierarchy = domain_hierarchy(result, keys)
    assert set(hierarchy["fine_key"]) == set(keys[1:])
    assert hierarchy["purity"].between(0, 1).all() and hierarchy["purity"].median() > 0.8
    assert hierarchy.groupby("fine_key")["n_cells"].sum().eq(adata.n_obs).all()


def test_consistent_labels_aligns_each_method_on_its_own_by_default():
    tissue = synthetic_tissue(n_cells=1_500, n_slides=2, n_markers=12, random_state=0)
    result = utag(tissue, slide_key="roi", clustering_method=["leiden", "kmeans"], resolutions=[0.1, 0.3, 0.5],
                  progress=False)
    keys = consistent_labels(result)
    for key in keys:  # no number left empty because the chain passed from one method to the other
        assert (result.obs[key].value_counts() > 0).all(), key
    leiden = [key for key in keys if "_leiden_" in key]
    a, b = (result.obs[key].to_numpy() for key in leiden[:2])
    assert all((b[a == label] == label).mean() > 0.3 for label in np.unique(a))  # aligned within the method


def test_consistent_labels_drops_the_tables_counted_under_the_old_numbers(four_domains):
    from utag.utils import celltype_connectivity, domain_connectivity

    adata, _ = four_domains
    result = utag(adata, slide_key="roi", clustering_method="leiden", resolutions=[0.05, 1.0], progress=False)
    coarse, fine = "UTAG Label_leiden_0.05", "UTAG Label_leiden_1.0"
    result.obs["cell_type"] = pd.Categorical(np.asarray(adata.X).argmax(axis=1).astype(str))
    for key in (coarse, fine):  # the original API's tables, and colours
        domain_connectivity(result, slide_key="roi", domain_key=key)
        celltype_connectivity(result, slide_key="roi", domain_key=key, celltype_key="cell_type")
        result.uns[f"{key}_colors"] = ["#000000"] * result.obs[key].nunique()
    consistent_labels(result, keys=[coarse, fine])
    for key in (coarse, fine):
        assert f"{key}_domain_adjacency_matrix" not in result.uns
        assert f"{key}_celltype_adjacency_matrix" not in result.uns
        assert f"{key}_colors" in result.uns  # colours follow the numbers


def test_consistent_labels_from_fine_to_coarse_leaves_numbers_unused(four_domains):
    adata, _ = four_domains
    result = utag(adata, slide_key="roi", clustering_method="leiden", resolutions=[0.05, 1.0], progress=False)
    fine, coarse = "UTAG Label_leiden_1.0", "UTAG Label_leiden_0.05"
    n_fine, n_coarse = result.obs[fine].nunique(), result.obs[coarse].nunique()
    assert n_fine > n_coarse
    before = result.obs[coarse].to_numpy()
    consistent_labels(result, keys=[fine, coarse])
    after = result.obs[coarse]
    # the coarse domains keep their cells, under the number of the fine domain they overlap most
    assert adjusted_rand_score(before, after) == 1.0
    assert after.nunique() == n_coarse and len(after.cat.categories) >= n_coarse
    probabilities = np.asarray(result.obsm[f"{coarse}_probabilities"])
    assert probabilities.shape[1] == len(after.cat.categories)
    empty = ~np.isin(after.cat.categories, after.unique())
    assert empty.any()  # a fine domain with no coarse partner below the largest number used
    assert (probabilities[:, empty] == 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    centroids = np.asarray(result.uns["utag"]["model"]["centroids"][coarse])
    np.testing.assert_array_equal(np.isnan(centroids).any(axis=1), empty)
    # the centroid transfer never picks an empty domain and gives the cells their own domains back
    back = transfer_labels(result, result, keys=coarse, slide_key="roi", method="centroid").obs[coarse]
    assert set(back.unique()) <= set(after.unique())
    assert (back.to_numpy() == after.to_numpy()).mean() > 0.9


def test_domain_hierarchy_leaves_unlabelled_cells_out():
    import anndata

    from utag.tuning import domain_hierarchy

    obs = pd.DataFrame({"a": ["0", "0", "0", None, "1", "1", "1"], "b": ["0", "0", "1", "1", None, "2", "2"]},
                       index=list("abcdefg"))
    table = domain_hierarchy(anndata.AnnData(obs=obs), ["a", "b"])
    # no domain called "None"; domain 1's cell without a coarse label is not another parent
    assert table[["domain", "parent", "n_cells", "purity"]].values.tolist() == [
        ["0", "0", 2, 1.0], ["1", "0", 1, 1.0], ["2", "1", 2, 1.0]]
    with pytest.raises(ValueError, match="keys"):
        domain_hierarchy(anndata.AnnData(obs=obs), ["a", "c"])
    with pytest.raises(ValueError, match=r"at least two labellings .* got \['a'\]"):  # not its letters
        domain_hierarchy(anndata.AnnData(obs=obs), "a")


def test_consistent_labels_on_a_view_leaves_the_parent_alone():
    adata = synthetic_tissue(n_cells=3_000, n_slides=2, random_state=0)
    result = utag(adata, slide_key="roi", clustering_method="leiden", resolutions=[0.05, 0.3, 1.0], progress=False)
    model = result.uns["utag"]["model"]["centroids"]
    before = {key: np.array(value) for key, value in model.items()}
    labels = {key: result.obs[key].to_numpy().copy() for key in before}
    view = result[result.obs["roi"] == "roi_0"]
    with pytest.warns(ImplicitModificationWarning):  # anndata makes the view a copy of its own
        keys = consistent_labels(view)
    assert not view.is_view
    # the parent's labels and its transfer model still agree: neither was renumbered
    for key in keys:
        np.testing.assert_array_equal(result.obs[key].to_numpy(), labels[key])
        np.testing.assert_array_equal(np.asarray(result.uns["utag"]["model"]["centroids"][key]), before[key])
    # the renumbered view has the labels and model of a renumbered copy
    copy = result[result.obs["roi"] == "roi_0"].copy()
    consistent_labels(copy)
    assert any((copy.obs[key].to_numpy() != labels[key][result.obs["roi"] == "roi_0"]).any() for key in keys)
    moved = transfer_labels(view, copy, slide_key="roi", method="centroid")
    expected = transfer_labels(copy, copy, slide_key="roi", method="centroid")
    for key in keys:
        np.testing.assert_array_equal(view.obs[key].to_numpy(), copy.obs[key].to_numpy())
        np.testing.assert_array_equal(moved.obs[key].to_numpy(), expected.obs[key].to_numpy())


def test_align_labels_takes_lists_and_names_labels_that_are_not_numbers():
    np.testing.assert_array_equal(align_labels([0, 0, 1, 1, 2], [1, 1, 0, 0, 2]), [0, 0, 1, 1, 2])
    names = pd.Series(pd.Categorical(["0", "0", "1", "1"]))  # utag()'s labels, as obs holds them
    for reference, labels in [(names, names), (np.array([0, 0, 1, 1]), np.array([0, -1, 1, 1])),
                              (np.array([0.0, 0.5, 1.0, 1.0]), np.array([0, 0, 1, 1])),
                              (np.array([0, 0, 1]), np.array([0, 0, 1, 1]))]:
        with pytest.raises(ValueError, match="`reference` and `labels`"):
            align_labels(reference, labels)


def test_consistent_labels_keeps_named_labels_and_aligns_the_next_to_them(four_domains):
    adata, _ = four_domains
    result = utag(adata, slide_key="roi", clustering_method="leiden", resolutions=[0.05], progress=False)
    key = "UTAG Label_leiden_0.05"
    names = np.array(["B zone", "T zone", "red pulp", "marginal zone", "capsule", "vessel", "follicle", "sinus"])
    # an expert annotation: the domains under shuffled names (sorted: capsule, follicle, ...)
    codes = result.obs[key].astype(int).to_numpy()
    expert = names[np.random.default_rng(0).permutation(len(names))[codes]]
    result.obs["expert"] = pd.Categorical(expert)
    before = result.obs[key].to_numpy().copy()
    consistent_labels(result, keys=["expert", key])
    np.testing.assert_array_equal(result.obs["expert"].astype(str).to_numpy(), expert)  # names kept
    # each domain now carries the number of its name among the sorted names
    sorted_names = sorted(set(expert))
    np.testing.assert_array_equal(result.obs[key].astype(int).to_numpy(),
                                  [sorted_names.index(name) for name in expert])
    assert adjusted_rand_score(before, result.obs[key]) == 1.0


def test_consistent_labels_on_transferred_labels_without_a_model():
    adata = synthetic_tissue(n_cells=2_000, n_slides=2, random_state=0)
    reference = adata[adata.obs["roi"] == "roi_0"].copy()
    new = adata[adata.obs["roi"] == "roi_1"].copy()
    result = utag(reference, slide_key="roi", clustering_method="leiden", resolutions=[0.05, 1.0], progress=False)
    keys = result.uns["utag"]["label_keys"]
    moved = transfer_labels(result, new, slide_key="roi")
    assert "utag" not in moved.uns  # the new cells' AnnData: labels and probabilities, no model
    before = {key: moved.obs[key].to_numpy().copy() for key in keys}
    assert consistent_labels(moved, keys=keys) == keys
    for key in keys:  # renamed, not regrouped; probabilities follow the numbers
        assert adjusted_rand_score(before[key], moved.obs[key]) == 1.0
        winners = np.asarray(moved.obsm[f"{key}_probabilities"]).argmax(axis=1)
        assert (moved.obs[key].cat.categories[winners] == moved.obs[key].to_numpy()).mean() > 0.95
