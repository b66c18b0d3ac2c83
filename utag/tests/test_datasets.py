import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from utag.datasets import codex_mouse_spleen, synthetic_tissue


def test_synthetic_tissue_layout():
    adata = synthetic_tissue(n_cells=5_001, n_slides=3, n_markers=17, n_domains=4, n_cell_types=6,
                             cell_area=150, random_state=5)
    assert adata.shape == (5_001, 17) and adata.X.dtype == np.float32 and (adata.X >= 0).all()
    counts = adata.obs["roi"].value_counts()
    assert sorted(counts.to_numpy()) == [1667, 1667, 1667]
    for _, cells in adata.obs.groupby("roi", observed=True):
        assert cells["domain"].nunique() == 4  # every domain on every slide
    # density: each slide covers n_cells * cell_area
    slide = adata.obs["roi"] == "roi_0"
    extent = np.ptp(adata.obsm["spatial"][slide.to_numpy()], axis=0)
    assert np.isclose(extent.prod(), 1667 * 150, rtol=0.05)


def test_synthetic_tissue_is_seeded():
    first, second = synthetic_tissue(2_000, random_state=3), synthetic_tissue(2_000, random_state=3)
    np.testing.assert_array_equal(first.X, second.X)
    np.testing.assert_array_equal(first.obsm["spatial"], second.obsm["spatial"])
    assert (first.obs["domain"] == second.obs["domain"]).all()
    other = synthetic_tissue(2_000, random_state=4)
    assert not np.array_equal(first.X, other.X)


def test_domains_are_spatially_coherent_and_cell_types_ambiguous():
    adata = synthetic_tissue(8_000, n_slides=1, random_state=0)
    from scipy.spatial import cKDTree

    coords = adata.obsm["spatial"]
    _, nearest = cKDTree(coords).query(coords, k=2)
    domain = adata.obs["domain"].to_numpy()
    assert (domain == domain[nearest[:, 1]]).mean() > 0.8
    # a cell's type alone does not reveal its domain
    assert adjusted_rand_score(domain, adata.obs["cell_type"]) < 0.3


def test_synthetic_tissue_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_slides"):
        synthetic_tissue(n_cells=3, n_slides=5)
    with pytest.raises(ValueError, match="cell_area"):
        synthetic_tissue(cell_area=0)


def test_bundled_spleen_subset():
    adata = codex_mouse_spleen()
    assert adata.shape == (35_145, 27)
    assert set(adata.obs["domain"].unique()) == {"red pulp", "PALS", "marginal zone", "B-zone", "NoAnnotation"}
    np.testing.assert_array_equal(np.asarray(adata.X).sum(axis=1), 1.0)  # one-hot cell types
    assert adata.obsm["spatial"].shape == (35_145, 2)


def test_spleen_loader_rejects_missing_file(tmp_path):
    with pytest.raises(ValueError, match="not a file"):
        codex_mouse_spleen(tmp_path / "nope.h5ad")


def test_layered_domains_are_bands_across_each_slide():
    adata = synthetic_tissue(n_cells=6_000, n_slides=2, n_domains=4, layout="layers", random_state=3)
    for slide in ("roi_0", "roi_1"):
        cells = (adata.obs["roi"] == slide).to_numpy()
        domain = adata.obs["domain"].cat.codes.to_numpy()[cells]
        y = adata.obsm["spatial"][cells, 1]
        names = adata.obs["domain"].cat.categories
        mean_y = [y[domain == names.get_loc(f"domain_{k}")].mean() for k in range(4)]
        assert np.all(np.diff(mean_y) > 0)  # domain k lies above domain k - 1
        shares = np.bincount(domain, minlength=4) / cells.sum()
        assert shares.min() > 0.15  # each band holds about a quarter of the slide


def test_island_domains_sit_in_a_sea_of_the_first():
    adata = synthetic_tissue(n_cells=6_000, n_slides=2, n_domains=4, layout="islands", random_state=3)
    shares = adata.obs["domain"].value_counts(normalize=True)
    assert 0.45 < shares["domain_0"] < 0.8
    for slide in ("roi_0", "roi_1"):
        assert adata.obs.loc[adata.obs["roi"] == slide, "domain"].nunique() == 4
    # islands are compact: most cells share the domain of their nearest neighbour
    from scipy.spatial import cKDTree

    cells = (adata.obs["roi"] == "roi_0").to_numpy()
    _, nearest = cKDTree(adata.obsm["spatial"][cells]).query(adata.obsm["spatial"][cells], k=2)
    domain = adata.obs["domain"].to_numpy()[cells]
    assert (domain[nearest[:, 1]] == domain).mean() > 0.85
    with pytest.raises(ValueError, match="`layout` must be one of"):
        synthetic_tissue(n_cells=100, layout="rings")
