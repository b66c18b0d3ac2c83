"""Promises every public function keeps: a wrongly typed or out-of-range argument is a
ValueError naming the parameter (not a bare TypeError, AttributeError or numpy error from
deep inside, and never silently accepted); answers do not depend on the order of the rows;
the slide column utag() recorded is the default everywhere."""
import matplotlib
import numpy as np
import pytest

from utag import utag
from utag.analysis import domain_connectivity, measure_per_domain_cell_type_colocalization
from utag.datasets import synthetic_tissue
from utag.evaluation import evaluate_clustering
from utag.graph import spatial_neighbors
from utag.io import write_domains
from utag.plotting import domain_colors, plot_chord, plot_domain_network, plot_domains
from utag.transfer import transfer_labels
from utag.tuning import (
    max_dist_report,
    recommended_resolutions,
    resolution_for_n_domains,
    resolution_sweep,
    suggest_max_dist,
)

matplotlib.use("Agg")
KEY = "UTAG Label_leiden_0.3"


@pytest.fixture(scope="module")
def result():
    tissue = synthetic_tissue(n_cells=2_000, n_slides=2, n_markers=8, random_state=0)
    return utag(tissue, slide_key="roi", clustering_method="leiden", resolutions=[0.3], progress=False)


BAD_CALLS = {
    "channels_to_use": lambda r: utag(r, slide_key="roi", channels_to_use=3, progress=False),
    "umap_kwargs": lambda r: utag(r, slide_key="roi", umap_kwargs="n_neighbors=30", progress=False),
    "n_neighbors": lambda r: utag(r, slide_key="roi", n_neighbors=float("nan"), progress=False),
    "keys": lambda r: transfer_labels(r, r, keys=0),
    "n_jobs": lambda r: transfer_labels(r, r, n_jobs="auto"),
    "leiden_kwargs": lambda r: resolution_sweep(r.copy(), leiden_kwargs="igraph", progress=False),
    "leiden_kwargs ": lambda r: resolution_for_n_domains(r, 3, leiden_kwargs=1),
    "n_jobs ": lambda r: resolution_sweep(r.copy(), n_jobs="auto", progress=False),
    "n": lambda r: recommended_resolutions(resolution_sweep(r.copy(), [0.3, 1.0], n_runs=2, progress=False), n=0),
    "connectivity": lambda r: plot_domain_network(r, KEY, connectivity=np.eye(3)),
    "connectivity ": lambda r: plot_chord(r, KEY, connectivity="counts"),
    "panel_size": lambda r: plot_domains(r, KEY, panel_size=0),
    "scale_bar": lambda r: plot_domains(r, KEY, scale_bar=-100),
    "point_size": lambda r: plot_domains(r, KEY, point_size="2"),
    "min_weight": lambda r: plot_domain_network(r, KEY, max_dist=20, min_weight="0.1"),
    "gap": lambda r: plot_chord(r, KEY, max_dist=20, gap=1.5),
    "palette": lambda r: domain_colors(r.copy(), KEY, palette=5),
    "key_added": lambda r: spatial_neighbors(r.copy(), max_dist=20, key_added=None),
    "key_added  ": lambda r: domain_connectivity(r.copy(), KEY, max_dist=20, key_added=-1),
    "key_added   ": lambda r: measure_per_domain_cell_type_colocalization(
        r.copy(), KEY, "cell_type", max_dist=20, n_permutations=2, key_added=True),
    "slide_key": lambda r: synthetic_tissue(n_cells=300, slide_key=None),
}


@pytest.mark.parametrize("parameter", BAD_CALLS)
def test_a_bad_argument_is_refused_naming_the_parameter(result, parameter):
    before = result.copy()
    with pytest.raises(ValueError, match=f"`{parameter.strip()}`"):
        BAD_CALLS[parameter](result)
    assert list(result.obs.columns) == list(before.obs.columns) and set(result.uns) == set(before.uns)


@pytest.mark.parametrize("path, message", [("domains.h5ad", "ends in .h5ad"), ("", "must name the .zarr store"),
                                           ("domains.zarr", "`overwrite` must be True or False")])
def test_write_domains_refuses_paths_it_cannot_write_as_a_store(result, tmp_path, monkeypatch, path, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "domains.zarr").mkdir()
    (tmp_path / "domains.zarr" / "held").write_text("x")
    with pytest.raises(ValueError, match=message):
        write_domains(result, path, overwrite="nope" if path == "domains.zarr" else False)
    assert not (tmp_path / "domains.h5ad").exists() and (tmp_path / "domains.zarr" / "held").exists()


def test_the_silhouette_does_not_depend_on_the_order_of_the_rows(result):
    # the sample of cells it is computed on was drawn by row position
    shuffled = result[np.random.default_rng(1).permutation(result.n_obs)].copy()
    scores = [evaluate_clustering(adata, KEY, n_silhouette=300)["silhouette"].to_numpy() for adata in
              (result, shuffled)]
    np.testing.assert_allclose(scores[0], scores[1])


def test_the_radius_tools_default_to_the_slides_utag_recorded():
    # four slides on the same coordinates: taken as one, each cell has cells of the other
    # three slides about it, and the suggested radius halves
    tissue = synthetic_tissue(n_cells=4_000, n_slides=4, n_markers=8, random_state=0)
    result = utag(tissue, slide_key="roi", clustering_method="kmeans", resolutions=[0.3], max_dist="auto",
                  progress=False)
    per_slide = suggest_max_dist(tissue, slide_key="roi")
    assert result.uns["utag"]["max_dist"] == per_slide
    assert suggest_max_dist(result) == per_slide
    assert suggest_max_dist(tissue) < 0.75 * per_slide  # no record: one slide, as documented
    pooled = max_dist_report(result, [20.0])
    pooled = pooled.loc[pooled["slide"] == "all", "median_neighbours"].item()
    one_slide = max_dist_report(result, [20.0], slide_key=None)
    assert pooled < 0.5 * one_slide.loc[one_slide["slide"] == "all", "median_neighbours"].item()
