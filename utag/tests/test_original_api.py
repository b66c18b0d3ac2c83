"""A script written against the original utag (ElementoLab/utag) runs unchanged.

:func:`script_written_for_the_original_utag` uses only the original names, argument
order, keywords and ``adata`` keys; the tests check what it returns and writes against
brute force (all pairs of cells, plain numpy/scipy/scikit-learn/networkx) on a small
tissue with about 5 neighbours per cell at the original's radius of 40.
"""
import importlib
import inspect

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.ndimage
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import PathPatch, Wedge
from scipy import stats
from scipy.spatial.distance import pdist, squareform
from sklearn.metrics import homogeneity_score, rand_score, silhouette_score

import utag.utils
from utag.datasets import synthetic_tissue

RADIUS = 40.0


def script_written_for_the_original_utag(adata, image_path):
    """What a notebook for the original package did, call for call."""
    from utag.segmentation import evaluate_performance
    from utag.utils import (
        celltype_connectivity,
        domain_connectivity,
        evaluate_clustering,
        measure_per_domain_cell_type_colocalization,
        slide_connectivity,
    )
    from utag.vizualize import add_scale_box_to_fig, add_spatial_image, adj2chord, draw_network, rgbfy_multiplexed_image

    results = {}
    adata = domain_connectivity(adata=adata, slide_key="Slide", domain_key="UTAG Label")
    adata = celltype_connectivity(adata, "Slide", "UTAG Label", "cluster_0.5_label")
    results["per_slide"] = slide_connectivity(adata, slide_key="roi", domain_key="UTAG Label")
    results["colocalization"] = measure_per_domain_cell_type_colocalization(adata, utag_key="UTAG Label",
                                                                            max_dist=40, n_iterations=200)
    results["evaluation"] = evaluate_clustering(adata, ["UTAG Label", "cluster"], celltype_label="celltype",
                                                slide_key="roi")
    results["rand"] = evaluate_performance(adata, batch_key="Slide", truth_key="DOM_argmax", pred_key="cluster")
    results["homogeneity"] = evaluate_performance(adata, "Slide", "DOM_argmax", "cluster", "homogeneity")
    results["network"] = draw_network(adata, node_key="UTAG Label",
                                      adjacency_matrix_key="UTAG Label_domain_adjacency_matrix",
                                      figsize=(4, 4), dpi=50)
    results["chord"] = adj2chord(adata.uns["UTAG Label_domain_adjacency_matrix"], size=300)
    results["rgb"] = rgbfy_multiplexed_image(image_path, rgb_channels=[19, 9, 14], scale_method="contrast_stretch")
    adata = add_spatial_image(adata, image_path, rgb_channels=[19, 9, 14], scale_method="adjust_gamma")
    fig = Figure()
    results["scale_box"] = add_scale_box_to_fig(results["rgb"], fig.add_subplot(), box_width=10)
    return adata, results


# --- the tissue and brute-force references --------------------------------------------------

@pytest.fixture(scope="module")
def original_tissue():
    """600 cells on 2 slides sharing one coordinate frame; UTAG Label lacks domain_2 on roi_1;
    cells shuffled, so roi_1 may come first and slides interleave."""
    adata = synthetic_tissue(n_cells=600, n_slides=2, n_markers=8, n_domains=3, n_cell_types=4, cell_area=1000.0,
                             random_state=0)
    rng = np.random.default_rng(1)
    adata = adata[rng.permutation(adata.n_obs)].copy()
    domain = adata.obs["domain"].astype(str).to_numpy()
    slide = adata.obs["roi"].astype(str).to_numpy()
    label = np.where((slide == "roi_1") & (domain == "domain_2"), "domain_1", domain)
    noisy = np.where(rng.random(adata.n_obs) < 0.2, rng.choice(["domain_0", "domain_1", "domain_2"], adata.n_obs),
                     domain)
    coords = adata.obsm["spatial"]
    adata.obs = pd.DataFrame({
        "Slide": slide, "roi": slide,
        "UTAG Label": pd.Categorical(label),
        "cluster_0.5_label": adata.obs["cell_type"].astype(str).to_numpy(),
        "celltype": adata.obs["cell_type"].astype(str).to_numpy(),
        "DOM_argmax": domain, "cluster": noisy,
        "Y_centroid": coords[:, 1], "X_centroid": coords[:, 0],
    }, index=adata.obs_names)
    return adata


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    import tifffile

    stack = np.random.default_rng(2).gamma(1.0, 40.0, size=(20, 24, 32)).astype(np.uint16)
    path = tmp_path_factory.mktemp("image") / "roi.tiff"
    tifffile.imwrite(path, stack)
    return path


@pytest.fixture(scope="module")
def ran(original_tissue, image_path):
    before = original_tissue.copy()
    adata, results = script_written_for_the_original_utag(original_tissue.copy(), image_path)
    return before, adata, results


def brute_edges(coords, slides=None):
    """Pairs i < j at distance <= 40 (on the same slide, if slides are given)."""
    near = squareform(pdist(coords)) <= RADIUS
    np.fill_diagonal(near, False)
    if slides is not None:
        near &= slides[:, None] == slides[None, :]
    return np.argwhere(np.triu(near))


def brute_table(edges, labels, names):
    """[a, b] = edges between a and b, both ways; [a, a] = edges inside a."""
    position = {name: k for k, name in enumerate(names)}
    table = np.zeros((len(names), len(names)))
    for i, j in edges:
        a, b = position[labels[i]], position[labels[j]]
        table[a, b] += 1
        if a != b:
            table[b, a] += 1
    return pd.DataFrame(table, index=names, columns=names)


def slide_edges(adata):
    return brute_edges(adata.obsm["spatial"], adata.obs["Slide"].to_numpy())


# --- signatures -------------------------------------------------------------------------------

E = inspect.Parameter.empty
ORIGINAL_SIGNATURES = {
    "utag.utils.domain_connectivity": {"adata": E, "slide_key": "Slide", "domain_key": "UTAG Label"},
    "utag.utils.celltype_connectivity": {"adata": E, "slide_key": "Slide", "domain_key": "UTAG Label",
                                         "celltype_key": "cluster_0.5_label"},
    "utag.utils.slide_connectivity": {"adata": E, "slide_key": "roi", "domain_key": "UTAG Label"},
    "utag.utils.measure_per_domain_cell_type_colocalization": {"adata": E, "utag_key": "UTAG Label",
                                                               "max_dist": 40, "n_iterations": 100},
    "utag.utils.evaluate_clustering": {"adata": E, "cluster_keys": E, "celltype_label": "celltype",
                                       "slide_key": "roi", "metrics": ["entropy", "cluster_number",
                                                                       "silhouette_score", "connectivity"]},
    "utag.utils.evaluate_performance": {"adata": E, "batch_key": "Slide", "truth_key": "DOM_argmax",
                                        "pred_key": "cluster", "method": "rand"},
    "utag.utils.z_score": {"x": E},
    "utag.utils.to_uint": {"x": E, "base": 8},
    "utag.utils.to_float": {"x": E, "base": 32},
    "utag.utils.filter_kwargs": {"kwargs": E, "callabl": E, "exclude": None},
    "utag.vizualize.add_spatial_image": {"adata": E, "image_path": E, "rgb_channels": [19, 9, 14],
                                         "log_transform": False, "median_filter": False,
                                         "scale_method": "adjust_gamma", "contrast_percentile": [0, 90],
                                         "gamma": 0.2, "gain": 0.5},
    "utag.vizualize.rgbfy_multiplexed_image": {"image_path": E, "rgb_channels": [19, 9, 14], "log_transform": True,
                                               "median_filter": True, "scale_method": "adjust_gamma",
                                               "contrast_percentile": [10, 90], "gamma": 0.4, "gain": 1},
    "utag.vizualize.add_scale_box_to_fig": {"img": E, "ax": E, "box_width": 100, "box_height": 3,
                                            "color": "white"},
    "utag.vizualize.draw_network": {"adata": E, "node_key": "UTAG Label",
                                    "adjacency_matrix_key": "UTAG Label_domain_adjacency_matrix",
                                    "figsize": [11, 11], "dpi": 200, "font_size": 12, "node_size_min": 1000,
                                    "node_size_max": 3000, "edge_weight": 5, "edge_weight_baseline": 1,
                                    "log_transform": True, "ax": None},
    "utag.vizualize.adj2chord": {"adjacency_matrix": E, "size": 300},
}


@pytest.mark.parametrize("path", sorted(ORIGINAL_SIGNATURES))
def test_signature_is_the_original(path):
    module, name = path.rsplit(".", 1)
    parameters = inspect.signature(getattr(importlib.import_module(module), name)).parameters.values()
    positional = [p for p in parameters if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert all(p.kind == p.KEYWORD_ONLY for p in parameters if p not in positional)  # additions are keyword-only

    def plain(default):
        return list(default) if isinstance(default, (list, tuple)) else default

    assert {p.name: plain(p.default) for p in positional} == ORIGINAL_SIGNATURES[path]
    assert [p.name for p in positional] == list(ORIGINAL_SIGNATURES[path])


# --- what the script computes -------------------------------------------------------------------

def test_domain_connectivity_counts_every_pair_of_cells(ran):
    before, adata, _ = ran
    table = adata.uns["UTAG Label_domain_adjacency_matrix"]
    labels = before.obs["UTAG Label"].astype(str).to_numpy()
    names = sorted(set(labels))
    expected = brute_table(slide_edges(before), labels, names)
    pd.testing.assert_frame_equal(table, expected)
    assert table.to_numpy().sum() > 2 * before.n_obs  # a handful of neighbours per cell


def test_domain_connectivity_returns_its_input(original_tissue):
    adata = original_tissue.copy()
    assert utag.utils.domain_connectivity(adata, "Slide", "UTAG Label") is adata


def test_celltype_connectivity_counts_edges_inside_each_domain(ran):
    before, adata, _ = ran
    tables = adata.uns["UTAG Label_celltype_adjacency_matrix"]
    domains = before.obs["UTAG Label"].astype(str).to_numpy()
    cell_types = before.obs["cluster_0.5_label"].to_numpy()
    assert list(tables) == list(pd.unique(domains))
    edges = slide_edges(before)
    for domain, table in tables.items():
        inside = edges[(domains[edges[:, 0]] == domain) & (domains[edges[:, 1]] == domain)]
        expected = brute_table(inside, cell_types, list(pd.unique(cell_types)))
        pd.testing.assert_frame_equal(table, expected)


def test_slide_connectivity_counts_each_slide_and_drops_absent_domains(ran):
    before, _, results = ran
    per_slide = results["per_slide"]
    slides = before.obs["roi"].to_numpy()
    assert list(per_slide) == list(pd.unique(slides))
    labels = before.obs["UTAG Label"].astype(str).to_numpy()
    edges = slide_edges(before)
    for slide, table in per_slide.items():
        expected = brute_table(edges[slides[edges[:, 0]] == slide], labels, sorted(set(labels)))
        expected = expected.loc[(expected != 0).any(axis=1), (expected != 0).any(axis=0)]
        pd.testing.assert_frame_equal(table, expected)
    assert "domain_2" not in per_slide["roi_1"].index and "domain_2" in per_slide["roi_0"].index


def test_colocalization_counts_like_networkx_attr_matrix(original_tissue):
    import networkx as nx

    labels = original_tissue.obs["UTAG Label"].astype(str).to_numpy()
    names = sorted(set(labels))
    edges = brute_edges(original_tissue.obsm["spatial"])  # over all cells, slides ignored, as the original
    graph = nx.Graph()
    graph.add_nodes_from(range(original_tissue.n_obs))
    graph.add_edges_from(map(tuple, edges))
    nx.set_node_attributes(graph, dict(enumerate(labels)), "label")
    expected = nx.attr_matrix(graph, node_attr="label", rc_order=names)
    codes = pd.Categorical(labels, categories=names).codes.astype(np.int64)
    counts = utag.utils._label_pair_counts(edges[:, 0], edges[:, 1], codes, len(names))[0]
    np.testing.assert_array_equal(counts, expected)


def test_colocalization_against_the_permutation_expectation(ran):
    before, _, results = ran
    table = results["colocalization"]
    labels = before.obs["UTAG Label"].astype(str).to_numpy()
    names = sorted(set(labels))
    assert list(table.index) == names and list(table.columns) == names
    edges = brute_edges(before.obsm["spatial"])
    observed = brute_table(edges, labels, names).to_numpy()
    # a random permutation of the labels puts a and b at the two ends of an edge with
    # probability 2 n_a n_b / (n (n - 1)), and two a's with n_a (n_a - 1) / (n (n - 1))
    sizes = pd.Series(labels).value_counts().loc[names].to_numpy().astype(float)
    n = sizes.sum()
    pair = 2 * np.outer(sizes, sizes)
    np.fill_diagonal(pair, sizes * (sizes - 1))
    shuffled = 200 * len(edges) * pair / (n * (n - 1))
    expected = (np.log((observed + 1) / (observed + 1).sum())
                - np.log((shuffled + 1) / (shuffled + 1).sum()))
    np.testing.assert_allclose(table.to_numpy(), expected, atol=0.05)
    assert np.isfinite(table.to_numpy()).all() and (np.diag(table) > 0).all()


def test_colocalization_is_seeded(original_tissue):
    measure = utag.utils.measure_per_domain_cell_type_colocalization
    first = measure(original_tissue, "UTAG Label", 40, 5, random_state=3)
    pd.testing.assert_frame_equal(first, measure(original_tissue, "UTAG Label", 40, 5, random_state=3))
    assert not first.equals(measure(original_tissue, "UTAG Label", 40, 5, random_state=4))
    # and, at one seed, whatever the order of the rows
    shuffled = original_tissue[np.random.default_rng(0).permutation(original_tissue.n_obs)].copy()
    pd.testing.assert_frame_equal(first, measure(shuffled, "UTAG Label", 40, 5, random_state=3))


def test_evaluate_clustering_matches_scipy_and_sklearn(ran):
    before, _, results = ran
    table = results["evaluation"]
    assert list(table.index) == ["entropy", "cluster_number", "silhouette_score", "connectivity"]
    assert list(table.columns) == ["UTAG Label", "cluster"]
    edges = slide_edges(before)
    for key in table.columns:
        labels = before.obs[key].astype(str).to_numpy()
        composition = pd.crosstab(labels, before.obs["celltype"].to_numpy())  # absent cell types count 0
        counts = brute_table(edges, labels, sorted(set(labels))).to_numpy()
        between = counts[np.triu_indices_from(counts, k=1)].sum()
        expected = {
            "entropy": composition.apply(lambda row: stats.entropy(row.to_numpy()), axis=1).mean(),
            "cluster_number": len(set(labels)),
            "silhouette_score": silhouette_score(before.X, labels),
            "connectivity": np.log(np.trace(counts) / between),
        }
        np.testing.assert_allclose(table[key].to_numpy(), [expected[m] for m in table.index], rtol=1e-6)


def test_evaluate_clustering_samples_large_silhouettes_and_checks_metrics(original_tissue, monkeypatch):
    monkeypatch.setattr(utag.utils, "SILHOUETTE_CELLS", 100)
    table = utag.utils.evaluate_clustering(original_tissue, "cluster", metrics="silhouette_score")
    expected = silhouette_score(original_tissue.X, original_tissue.obs["cluster"], sample_size=100, random_state=0)
    assert table.loc["silhouette_score", "cluster"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="`metrics`"):
        utag.utils.evaluate_clustering(original_tissue, "cluster", metrics=["entropy", "purity"])


def test_evaluate_performance_scores_each_slide_in_order_of_appearance(ran):
    before, _, results = ran
    slides = before.obs["Slide"].to_numpy()
    truth, predicted = before.obs["DOM_argmax"].to_numpy(), before.obs["cluster"].to_numpy()
    order = pd.unique(slides)
    assert results["rand"] == pytest.approx([rand_score(truth[slides == s], predicted[slides == s]) for s in order])
    assert results["homogeneity"] == pytest.approx(
        [homogeneity_score(truth[slides == s], predicted[slides == s]) for s in order])
    assert all(isinstance(score, float) for score in results["rand"])
    with pytest.raises(ValueError, match="`method`"):
        utag.utils.evaluate_performance(before, method="ari")
    # a cell without a reference label is left out (it used to stop scikit-learn with "Input contains NaN")
    unlabelled = before.copy()
    first = unlabelled.obs_names[0]
    unlabelled.obs["DOM_argmax"] = unlabelled.obs["DOM_argmax"].astype(object)
    unlabelled.obs.loc[first, "DOM_argmax"] = np.nan
    kept = (slides != slides[0]) | (np.arange(len(slides)) > 0)
    expected = [rand_score(truth[(slides == s) & kept], predicted[(slides == s) & kept]) for s in order]
    assert utag.utils.evaluate_performance(unlabelled) == pytest.approx(expected)


def test_draw_network_draws_a_node_per_domain_and_an_edge_per_contact(ran):
    _, adata, results = ran
    fig = results["network"]
    matrix = adata.uns["UTAG Label_domain_adjacency_matrix"].to_numpy()
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and tuple(fig.get_size_inches()) == (4, 4) and fig.dpi == 50
    assert len(ax.collections[0].get_offsets()) == len(matrix)
    segments = sum(len(c.get_segments()) for c in ax.collections if isinstance(c, LineCollection))
    assert segments == np.count_nonzero(np.triu(matrix))  # within-domain contacts are self-loops
    assert sorted(t.get_text() for t in ax.texts) == sorted(adata.uns["UTAG Label_domain_adjacency_matrix"].index)


def test_draw_network_uses_domain_colours_and_explains_a_missing_table(original_tissue):
    from matplotlib.colors import to_rgba

    from utag.vizualize import draw_network

    adata = utag.utils.domain_connectivity(original_tissue.copy())
    adata.uns["UTAG Label_colors"] = ["#ff0000", "#00ff00", "#0000ff"]
    nodes = draw_network(adata, figsize=(3, 3), dpi=50).axes[0].collections[0]
    np.testing.assert_allclose(nodes.get_facecolors(), [to_rgba(c) for c in adata.uns["UTAG Label_colors"]])
    with pytest.raises(ValueError, match="adjacency_matrix_key.*domain_connectivity"):
        draw_network(original_tissue.copy())


def test_adj2chord_draws_links_of_at_least_five_contacts(ran):
    _, adata, results = ran
    fig = results["chord"]
    matrix = adata.uns["UTAG Label_domain_adjacency_matrix"].to_numpy().astype(int)
    links = np.triu(matrix, k=1) >= 5
    patches = fig.axes[0].patches
    assert isinstance(fig, Figure) and fig.get_size_inches().tolist() == [3.0, 3.0] and fig.dpi == 100
    assert sum(isinstance(p, PathPatch) for p in patches) == links.sum()
    assert sum(isinstance(p, Wedge) for p in patches) == (links | links.T).any(axis=1).sum()


# --- images ------------------------------------------------------------------------------------

def original_rgb(stack, rgb_channels, log_transform, median_filter, scale_method, contrast_percentile, gamma, gain):
    """The original pipeline, step by step, with numpy in place of scikit-image."""
    image = stack.astype(np.float32)
    if median_filter:
        image = scipy.ndimage.median_filter(image, size=3)
    output = np.stack([image[c] for c in rgb_channels], axis=2)
    if log_transform:
        output = np.log(output + 1)
    for i in range(3):
        channel = output[:, :, i]
        if scale_method == "contrast_stretch":
            low, high = np.percentile(channel, contrast_percentile)
            channel = (np.clip(channel, low, high) - low) / (high - low)
        elif scale_method == "adjust_gamma":
            channel = gain * channel**gamma
        else:
            counts, edges = np.histogram(channel, bins=256)
            channel = np.interp(channel, (edges[:-1] + edges[1:]) / 2, np.cumsum(counts) / counts.sum())
        output[:, :, i] = np.clip(channel, 0, 1)
    return output


SETTINGS = [  # (rgb_channels, log_transform, median_filter, scale_method, contrast_percentile, gamma, gain)
    ([19, 9, 14], True, True, "adjust_gamma", (10, 90), 0.4, 1),
    ([19, 9, 14], False, False, "adjust_gamma", (0, 90), 0.2, 0.5),
    ([0, 5, 19], True, True, "contrast_stretch", (10, 90), 0.4, 1),
    ([19, 0, 1], False, True, "contrast_stretch", (2, 98), 0.4, 1),
    ([3, 9, 14], True, False, "equalize_hist", (10, 90), 0.4, 1),
    ([0, 19, 7], False, True, "equalize_hist", (10, 90), 0.4, 1),
]


@pytest.mark.parametrize("settings", SETTINGS)
def test_rgbfy_multiplexed_image_reproduces_the_original(image_path, settings):
    import tifffile

    from utag.vizualize import rgbfy_multiplexed_image

    stack = tifffile.imread(image_path)
    rgb = rgbfy_multiplexed_image(image_path, *settings)
    assert rgb.shape == (24, 32, 3) and rgb.dtype == np.float32
    np.testing.assert_allclose(rgb, original_rgb(stack, *settings), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(rgb, rgbfy_multiplexed_image(stack, *settings))  # an array works too


@pytest.mark.parametrize("settings", SETTINGS)
def test_rgbfy_multiplexed_image_equals_scikit_image(image_path, settings):
    exposure = pytest.importorskip("skimage.exposure")
    import tifffile

    from utag.vizualize import rgbfy_multiplexed_image

    channels, log_transform, median_filter, scale_method, percentile, gamma, gain = settings
    image = tifffile.imread(image_path).astype(np.float32)
    if median_filter:
        image = scipy.ndimage.median_filter(image, size=3)
    output = np.stack([image[c] for c in channels], axis=2)
    if log_transform:
        output = np.log(output + 1)
    for i in range(3):
        if scale_method == "contrast_stretch":
            low, high = np.percentile(output[:, :, i], percentile)
            output[:, :, i] = exposure.rescale_intensity(output[:, :, i], in_range=(low, high), out_range=(0, 1))
        elif scale_method == "adjust_gamma":
            output[:, :, i] = exposure.adjust_gamma(output[:, :, i], gamma=gamma, gain=gain)
        else:
            output[:, :, i] = exposure.equalize_hist(output[:, :, i])
        output[:, :, i] = np.clip(output[:, :, i], 0, 1)
    np.testing.assert_array_equal(rgbfy_multiplexed_image(image_path, *settings), output)


def test_rgbfy_multiplexed_image_rejects_unknown_scale_methods(image_path):
    from utag.vizualize import rgbfy_multiplexed_image

    with pytest.raises(ValueError, match="`scale_method`"):
        rgbfy_multiplexed_image(image_path, scale_method="clahe")
    with pytest.raises(ValueError, match="`rgb_channels`"):
        rgbfy_multiplexed_image(image_path, rgb_channels=[20, 0, 1])


def test_add_spatial_image_writes_what_the_original_wrote(ran, image_path):
    import tifffile

    before, adata, results = ran
    np.testing.assert_array_equal(adata.obsm["spatial"], before.obs[["Y_centroid", "X_centroid"]].to_numpy())
    image = original_rgb(tifffile.imread(image_path), [19, 9, 14], False, False, "adjust_gamma", (0, 90), 0.2, 0.5)
    assert list(adata.uns["spatial"]) == ["image"]
    assert adata.uns["spatial"]["image"]["scalefactors"] == {"tissue_hires_scalef": 1, "spot_diameter_fullres": 1}
    assert list(adata.uns["spatial"]["image"]["images"]) == ["hires"]
    np.testing.assert_allclose(adata.uns["spatial"]["image"]["images"]["hires"], image, rtol=1e-5, atol=1e-6)
    box = results["scale_box"].patches[0]
    assert box.get_xy() == pytest.approx((32 - 10, 24 * 0.97)) and box.get_width() == 10


def test_the_script_writes_only_where_the_original_wrote(ran):
    before, adata, _ = ran
    pd.testing.assert_frame_equal(adata.obs, before.obs)
    np.testing.assert_array_equal(adata.X, before.X)
    assert set(adata.obsm) == set(before.obsm) | {"spatial"}
    assert set(adata.uns) - set(before.uns) == {"UTAG Label_domain_adjacency_matrix",
                                                "UTAG Label_celltype_adjacency_matrix", "spatial"}
    assert not adata.obsp and not adata.layers



def test_adj2chord_lines_columns_up_with_rows_and_filter_kwargs_excludes_with_kwargs():
    from utag.utils import filter_kwargs
    from utag.vizualize import adj2chord

    table = pd.DataFrame([[50, 10, 0], [10, 40, 7], [0, 7, 30]], index=list("abc"), columns=list("abc"))
    def arcs(matrix):
        fig = adj2chord(matrix, size=200)
        plt.close(fig)
        return [(p.theta1, p.theta2) for p in fig.axes[0].patches if isinstance(p, Wedge)]

    assert arcs(table.loc[["c", "a", "b"]]) == arcs(table.loc[["c", "a", "b"], ["b", "c", "a"]])
    assert filter_kwargs({"a": 1, "b": 2}, lambda a, **kwargs: 0, exclude=["a"]) == {"b": 2}


def test_colocalization_pools_slides_that_share_positions():
    # the original API pools slides; the bundled spleen's two sections share one frame, and
    # cells of both at one position must not trip the order that makes the shuffle row-free
    adata = synthetic_tissue(n_cells=600, n_slides=2, random_state=0)
    adata.obsm["spatial"] = np.round(adata.obsm["spatial"] / 20) * 20  # many cells at one position
    table = utag.utils.measure_per_domain_cell_type_colocalization(adata, "domain", 40, 5, random_state=0)
    assert table.shape == (adata.obs["domain"].nunique(),) * 2 and np.isfinite(table.to_numpy()).all()


def test_colocalization_keeps_every_category_as_the_original():
    from utag.datasets import synthetic_tissue

    # a result subset to one slide keeps the categories of domains found only elsewhere:
    # the original's table has a row and a column of NaN for each, which notebooks index by
    tissue = synthetic_tissue(n_cells=2_000, n_slides=1, n_domains=3, random_state=0)
    tissue.obs["UTAG Label"] = pd.Categorical(tissue.obs["domain"].astype(str),
                                              categories=[*sorted(tissue.obs["domain"].astype(str).unique()), "gone"])
    table = utag.utils.measure_per_domain_cell_type_colocalization(tissue, "UTAG Label", max_dist=20,
                                                                    n_iterations=20)
    assert list(table.index) == list(table.columns) == list(tissue.obs["UTAG Label"].cat.categories)
    assert table.loc["gone"].isna().all() and table["gone"].isna().all()
    assert np.isfinite(table.drop(index="gone", columns="gone").to_numpy()).all()
