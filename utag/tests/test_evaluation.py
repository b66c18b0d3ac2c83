import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from sklearn import metrics

from utag import evaluate_performance


def _labelled():
    rng = np.random.default_rng(0)
    truth = rng.choice(["a", "b", "c", "NoAnnotation"], size=300, p=[0.4, 0.3, 0.25, 0.05])
    predicted = np.where(rng.uniform(size=300) < 0.8, truth, rng.choice(["a", "b"], size=300))
    obs = pd.DataFrame({"truth": truth, "UTAG Label_x_1.0": predicted,
                        "slide": rng.choice(["s1", "s2"], size=300)}, index=[str(i) for i in range(300)])
    return AnnData(np.zeros((300, 1)), obs=obs)


def test_scores_match_scikit_learn_per_slide_and_pooled():
    adata = _labelled()
    table = evaluate_performance(adata, "truth", batch_key="slide")
    assert list(table["slide"]) == ["all", "s1", "s2"]
    for _, row in table.iterrows():
        cells = adata.obs["truth"] != "NoAnnotation"
        if row["slide"] != "all":
            cells &= adata.obs["slide"] == row["slide"]
        truth, predicted = adata.obs.loc[cells, "truth"], adata.obs.loc[cells, "UTAG Label_x_1.0"]
        assert row["n_cells"] == cells.sum()
        assert row["adjusted_rand"] == pytest.approx(metrics.adjusted_rand_score(truth, predicted))
        assert row["nmi"] == pytest.approx(metrics.normalized_mutual_info_score(truth, predicted))
        assert row["homogeneity"] == pytest.approx(metrics.homogeneity_score(truth, predicted))


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="no column"):
        evaluate_performance(_labelled(), "domain")


def test_numeric_reference_labels_are_ignored_as_asked():
    # integer labels with a missing one become floats: 0.0 must still match ignore_labels=[0]
    truth = np.array([1, 1, 2, 2, 0, 0, np.nan])
    obs = pd.DataFrame({"truth": truth, "UTAG Label_x": ["a", "a", "b", "b", "a", "b", "a"]},
                       index=[str(i) for i in range(7)])
    row = evaluate_performance(AnnData(np.zeros((7, 1)), obs=obs), "truth", ignore_labels=[0]).iloc[0]
    assert row["n_cells"] == 4 and row["adjusted_rand"] == 1.0


def test_cells_without_a_predicted_domain_and_empty_slides_are_not_scored():
    obs = pd.DataFrame({"truth": list("aaabbb") + ["NoAnnotation"] * 2,
                        "UTAG Label_x": ["0", "0", None, "1", "1", None, "0", "1"],
                        "slide": ["s1"] * 6 + ["s2"] * 2}, index=[str(i) for i in range(8)])
    table = evaluate_performance(AnnData(np.zeros((8, 1)), obs=obs), "truth", batch_key="slide").set_index("slide")
    assert table.loc["all", "n_cells"] == 4 and table.loc["all", "n_domains"] == 2
    assert table.loc["all", "adjusted_rand"] == 1.0
    assert table.loc["s2", "n_cells"] == 0 and table.loc["s2", ["rand", "adjusted_rand", "nmi"]].isna().all()


@pytest.mark.parametrize("categorical", [False, True])
def test_cells_without_a_slide_are_scored_in_the_pooled_row_only(categorical):
    # not as a slide named "None" or "nan", nor with a real slide of that name
    slides = pd.Series(["a", "a", "nan", "nan", None, None], dtype="category" if categorical else object)
    obs = pd.DataFrame({"slide": slides.to_numpy(), "truth": list("xyxyxy"), "UTAG Label_x": list("010110")},
                       index=list("123456"))
    table = evaluate_performance(AnnData(np.zeros((6, 1)), obs=obs), "truth", batch_key="slide").set_index("slide")
    assert list(table.index) == ["all", "a", "nan"]
    assert list(table["n_cells"]) == [6, 2, 2]
    assert table.loc["nan", "adjusted_rand"] == 1.0  # its two cells only, not the slideless ones (ARI -0.5)


def test_a_slide_named_like_the_pooled_row_is_refused():
    adata = _labelled()
    adata.obs["slide"] = adata.obs["slide"].map({"s1": "all", "s2": "s2"})
    # the slide's row and the pooled row would both read slide == "all"
    with pytest.raises(ValueError, match=r"batch_key='slide'.* slide 'all'.*rename that slide"):
        evaluate_performance(adata, "truth", batch_key="slide")
    renamed = adata.copy()
    renamed.obs["slide"] = renamed.obs["slide"].replace("all", "all_1")
    table = evaluate_performance(renamed, "truth", batch_key="slide")
    assert list(table["slide"]) == ["all", "all_1", "s2"]
    assert list(table["n_cells"]) == [(adata.obs["truth"] != "NoAnnotation").sum(),
                                      ((adata.obs["truth"] != "NoAnnotation") & (adata.obs["slide"] == "all")).sum(),
                                      ((adata.obs["truth"] != "NoAnnotation") & (adata.obs["slide"] == "s2")).sum()]


def test_label_keys_read_back_from_a_file_are_taken_as_keys(tmp_path):
    import anndata

    from utag import utag
    from utag.datasets import synthetic_tissue
    from utag.evaluation import evaluate_clustering

    result = utag(synthetic_tissue(n_cells=2_000, n_slides=2, random_state=0), slide_key="roi", max_dist=20,
                  clustering_method=["kmeans"], resolutions=[0.3, 0.5], progress=False)
    result.write_h5ad(tmp_path / "result.h5ad")
    again = anndata.read_h5ad(tmp_path / "result.h5ad")
    keys = again.uns["utag"]["label_keys"]
    assert isinstance(keys, np.ndarray)  # what h5ad gives back for a list
    scores = evaluate_performance(again, "domain", pred_keys=keys, batch_key="roi")
    assert set(scores["pred_key"]) == set(result.uns["utag"]["label_keys"])
    assert set(evaluate_clustering(again, keys)["domain_key"]) == set(result.uns["utag"]["label_keys"])
