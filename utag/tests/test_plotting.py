"""Figures render with the Agg backend and contain what they should."""
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from utag.analysis import (
    domain_connectivity,
    measure_per_domain_cell_type_colocalization,
)
from utag.datasets import synthetic_tissue
from utag.plotting import (
    domain_colors,
    plot_chord,
    plot_colocalization,
    plot_composition,
    plot_domain_network,
    plot_domains,
)


@pytest.fixture
def adata():
    return synthetic_tissue(n_cells=3_000, n_slides=3, n_domains=4, n_cell_types=5, random_state=0)


def _ink(fig, tmp_path):
    """Share of non-white pixels of the saved PNG."""
    path = tmp_path / "figure.png"
    fig.savefig(path, dpi=50)
    plt.close(fig)
    pixels = plt.imread(path)[..., :3]
    return float((pixels < 0.95).any(axis=-1).mean())


def test_domains_on_tissue_one_panel_per_slide(adata, tmp_path):
    fig = plot_domains(adata, "domain", slide_key="roi", ncols=2, scale_bar=50, scale_bar_label="50 um")
    assert len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["roi_0", "roi_1", "roi_2"]
    assert sum(len(ax.collections[0].get_offsets()) for ax in fig.axes) == adata.n_obs
    assert all(ax.collections[0].get_rasterized() for ax in fig.axes)
    assert len(fig.legends) == 1 and len(fig.legends[0].get_texts()) == 4
    assert _ink(fig, tmp_path) > 0.15  # the panels are full; the legend's column beside them mostly white


def test_domains_subset_of_slides_and_bad_slide(adata):
    fig = plot_domains(adata, "domain", slide_key="roi", slides=["roi_2"])
    assert [ax.get_title() for ax in fig.axes] == ["roi_2"]
    with pytest.raises(ValueError, match="roi_9"):
        plot_domains(adata, "domain", slide_key="roi", slides=["roi_9"])


def test_colours_are_stored_and_reused(adata):
    colors = domain_colors(adata, "domain")
    assert adata.uns["domain_colors"] == list(colors.values())
    fig = plot_domains(adata, "domain", slide_key="roi")
    first_cell_colour = fig.axes[0].collections[0].get_facecolors()[0]
    label = adata.obs["domain"].iloc[0]
    np.testing.assert_allclose(first_cell_colour, matplotlib.colors.to_rgba(colors[label]))
    adata.uns["domain_colors"] = ["#000000", "#111111", "#222222", "#333333"]
    assert domain_colors(adata, "domain")["domain_0"] == "#000000"


def test_colours_stay_with_their_domain_when_a_category_is_unused(adata):
    categories = list(adata.obs["domain"].cat.categories)
    stored = ["#000000", "#111111", "#222222", "#333333"]
    cropped = adata[adata.obs["domain"] != categories[2]].copy()
    cropped.obs["domain"] = cropped.obs["domain"].cat.set_categories(categories)  # kept, unused, as transfer does
    cropped.uns["domain_colors"] = list(stored)
    colors = domain_colors(cropped, "domain")
    assert colors[categories[3]] == "#333333"
    assert cropped.uns["domain_colors"] == stored  # one colour per category, as scanpy stores them
    figure = plot_domains(cropped, "domain", slide_key="roi")  # the legend lists the domains drawn
    assert [text.get_text() for text in figure.legends[0].get_texts()] == categories[:2] + categories[3:]
    plt.close(figure)


def test_plots_leave_adata_as_it_was_and_name_bad_choices(adata):
    before = set(adata.uns)
    plt.close(plot_chord(adata, "domain", slide_key="roi", max_dist=20))
    plt.close(plot_domain_network(adata, "domain", slide_key="roi", max_dist=20))
    assert set(adata.uns) - before <= {"domain_colors"}
    with pytest.raises(ValueError, match="weight.*counts"):
        plot_chord(adata, "domain", slide_key="roi", max_dist=20, weight="count")
    with pytest.raises(ValueError, match="layout"):
        plot_domain_network(adata, "domain", slide_key="roi", max_dist=20, layout="kamada")
    with pytest.raises(ValueError, match="value"):
        plot_composition(adata, "domain", "cell_type", value="share")
    with pytest.raises(ValueError, match="ncols"):  # was a ZeroDivisionError
        plot_domains(adata, "domain", slide_key="roi", ncols=0)
    with pytest.raises(ValueError, match="slide_key"):  # said the slide was not in obs[None]
        plot_domains(adata, "domain", slides=["roi_0"])


def test_network_and_chord(adata, tmp_path):
    connectivity = domain_connectivity(adata, "domain", slide_key="roi", max_dist=20)
    network = plot_domain_network(adata, "domain", connectivity=connectivity)
    nodes = network.axes[0].collections[-1]
    assert len(nodes.get_offsets()) == 4
    assert _ink(network, tmp_path) > 0.02
    chord = plot_chord(adata, "domain")  # reuses uns["domain_connectivity"]
    patches = chord.axes[0].patches
    n_pairs = int((np.triu(connectivity["counts"].to_numpy(), k=1) > 0).sum())
    assert len(patches) == 4 + n_pairs  # one arc per domain, one ribbon per touching pair
    assert _ink(chord, tmp_path) > 0.1


def test_composition_heatmap_and_bars(adata, tmp_path):
    heatmap = plot_composition(adata, "domain", "cell_type", value="enrichment")
    image = heatmap.axes[0].images[0].get_array()
    assert image.shape == (4, 5)
    assert _ink(heatmap, tmp_path) > 0.1
    bars = plot_composition(adata, "domain", "cell_type", kind="bars")
    widths = np.array([p.get_width() for p in bars.axes[0].patches]).reshape(5, 4)
    np.testing.assert_allclose(widths.sum(axis=0), 1.0)
    with pytest.raises(ValueError, match="kind"):
        plot_composition(adata, "domain", "cell_type", kind="pie")


def test_colocalization_heatmaps_mark_significance(adata, tmp_path):
    table = measure_per_domain_cell_type_colocalization(adata, "domain", "cell_type", slide_key="roi",
                                                        max_dist=20, n_permutations=30)
    fig = plot_colocalization(table, alpha=0.05)
    assert len(fig.axes) == 4 + 1  # one heatmap per domain and a colour bar
    stars = sum(text.get_text() == "*" for ax in fig.axes for text in ax.texts)
    significant = table[table["p_value"] < 0.05]
    assert stars == 2 * len(significant) - (significant["cell_type_a"] == significant["cell_type_b"]).sum()
    assert _ink(fig, tmp_path) > 0.1


def test_colocalization_plot_names_the_table_it_needs(adata):
    connectivity = domain_connectivity(adata, "domain", slide_key="roi", max_dist=20)
    for wrong, got in [(connectivity, "got a dict"), (connectivity["counts"], "got a table with columns"),
                       (pd.DataFrame(columns=["domain", "cell_type_a", "cell_type_b", "p_value"]), "empty table")]:
        with pytest.raises(ValueError, match=f"measure_per_domain_cell_type_colocalization returns.*{got}"):
            plot_colocalization(wrong)


def test_resolution_sweep_and_hierarchy_plots(tmp_path):
    from utag import utag
    from utag.plotting import plot_domain_hierarchy, plot_resolution_sweep
    from utag.tuning import consistent_labels, resolution_sweep

    tissue = synthetic_tissue(n_cells=3_000, n_slides=2, n_domains=4, random_state=0)
    result = utag(tissue, slide_key="roi", clustering_method="leiden", resolutions=[0.05, 0.2, 0.6], progress=False)
    table = resolution_sweep(result, resolutions=[0.05, 0.1, 0.3, 1.0], n_runs=3, progress=False)
    fig = plot_resolution_sweep(table)
    # stability, agreement, spatial coherence, score, and a marker per recommended resolution
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 4 + int(table["recommended"].sum())
    assert any("chosen" in text.get_text() for text in fig.axes[0].texts)
    assert _ink(fig, tmp_path) > 0.05
    keys = consistent_labels(result)
    fig = plot_domain_hierarchy(result, keys)
    ax = fig.axes[0]
    assert len(ax.collections) == 3
    assert len(ax.lines) == result.obs[keys[1]].nunique() + result.obs[keys[2]].nunique()
    assert _ink(fig, tmp_path) > 0.02


def test_hierarchy_plot_draws_a_middle_domain_without_a_coarser_label():
    import anndata
    import pandas as pd

    from utag.plotting import plot_domain_hierarchy

    # domain "2" of b has no cell labelled in a, yet domain "3" of c nests into it
    obs = pd.DataFrame({"a": ["0", "0", "1", "1", None, None], "b": ["0", "0", "1", "1", "2", "2"],
                        "c": ["0", "1", "2", "2", "3", "3"]}, index=list("uvwxyz"))
    ax = plot_domain_hierarchy(anndata.AnnData(obs=obs), ["a", "b", "c"]).axes[0]  # raised KeyError ('b', '2')
    nodes = {(-int(y), text.get_text()): x for text in ax.texts for x, y in [text.get_position()]}
    assert nodes == {(0, "0"): 0.25, (0, "1"): 0.75, (1, "0"): 1 / 6, (1, "1"): 0.5, (1, "2"): 5 / 6,
                     (2, "0"): 0.125, (2, "1"): 0.375, (2, "2"): 0.625, (2, "3"): 0.875}
    # a line up from every domain with a parent: b's 0 and 1, then all four of c's (3 to b's 2)
    lines = sorted((tuple(line.get_xdata()), tuple(line.get_ydata())) for line in ax.lines)
    assert lines == sorted([((0.25, 1 / 6), (0, -1)), ((0.75, 0.5), (0, -1)), ((1 / 6, 0.125), (-1, -2)),
                            ((1 / 6, 0.375), (-1, -2)), ((0.5, 0.625), (-1, -2)), ((5 / 6, 0.875), (-1, -2))])
    plt.close(ax.figure)


def test_network_and_chord_do_not_draw_tables_of_other_labels(adata):
    stored = domain_connectivity(adata, "domain", slide_key="roi", max_dist=20)
    renamed = adata.copy()
    renamed.obs["domain"] = renamed.obs["domain"].cat.rename_categories(list("ABCD"))
    for plot in (plot_domain_network, plot_chord):
        with pytest.raises(ValueError, match="other domains"):
            plot(renamed, "domain", slide_key="roi")
        with pytest.raises(ValueError, match="other domains"):
            plot(renamed, "domain", connectivity=stored)
        with pytest.raises(ValueError, match="weight"):
            plot(adata, "domain", slide_key="roi", weight="per_slide")
    # domains put in another order still match their tables, which are reordered with them
    reordered = adata.copy()
    reordered.obs["domain"] = reordered.obs["domain"].cat.reorder_categories(
        list(reversed(reordered.obs["domain"].cat.categories)))
    fig = plot_chord(reordered, "domain", slide_key="roi")
    plt.close(fig)
    # any other square table of the same domains can weigh the ribbons
    custom = {**stored, "jaccard": stored["ratio"] / stored["ratio"].to_numpy().max()}
    plt.close(plot_chord(adata, "domain", connectivity=custom, weight="jaccard"))
    # half of the cells, every domain kept: the tables of all cells are not theirs
    half = adata[::2].copy()
    for plot in (plot_domain_network, plot_chord):
        with pytest.raises(ValueError, match="other cells"):
            plot(half, "domain", slide_key="roi")
        plt.close(plot(half, "domain", slide_key="roi", max_dist=20))
        plt.close(plot(adata, "domain", slide_key="roi"))


def test_integer_labels_and_selections(adata, tmp_path):
    numbered = adata.copy()
    numbered.obs["domain"] = numbered.obs["domain"].cat.codes.astype(int)
    numbered.obs["roi"] = numbered.obs["roi"].cat.codes.astype(int) + 1
    fig = plot_domains(numbered, "domain", slide_key="roi", slides=2)
    assert [ax.get_title() for ax in fig.axes] == ["2"]
    plt.close(fig)
    with pytest.raises(ValueError, match="slides"):
        plot_domains(numbered, "domain", slide_key="roi", slides=[])
    table = measure_per_domain_cell_type_colocalization(numbered, "domain", "cell_type", max_dist=20,
                                                        n_permutations=5)
    fig = plot_colocalization(table, domains=[0, 1])
    assert [ax.get_title() for ax in fig.axes[:2]] == ["0", "1"]
    assert _ink(fig, tmp_path) > 0.05  # the panels are drawn, not blank
    for bad in ({"domains": []}, {"domains": [7]}, {"cell_types": ["nope"]}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            plot_colocalization(table, **bad)
    with pytest.raises(ValueError, match="heatmap"):
        plot_composition(adata, "domain", "cell_type", kind="bars", value="enrichment")


def test_hierarchy_and_sweep_plots_take_unlabelled_cells_and_the_stored_sweep(adata):
    from utag import utag
    from utag.plotting import plot_domain_hierarchy, plot_resolution_sweep

    labelled = adata.copy()
    fine = labelled.obs["domain"].astype(str).to_numpy(dtype=object)
    fine[::7] = None
    labelled.obs["fine"] = fine
    ax = plot_domain_hierarchy(labelled, ["domain", "fine"]).axes[0]  # raised a KeyError for 'nan'
    assert [text.get_text() for text in ax.texts].count("nan") == 0
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="keys"):
        plot_domain_hierarchy(labelled, [])
    result = utag(adata, slide_key="roi", max_dist=20, clustering_method="leiden", resolutions="auto",
                  progress=False)
    plt.close(plot_resolution_sweep(result.uns["utag_resolution_sweep"]))  # raised KeyError 'resolution'
    with pytest.raises(ValueError, match="resolution_sweep"):
        plot_resolution_sweep(result.uns["utag_resolution_sweep"]["table"].drop(columns="resolution"))


def test_sweep_plot_names_the_columns_it_lacks():
    from utag.plotting import plot_resolution_sweep

    table = pd.DataFrame({"resolution": [0.1, 0.3], "n_domains": [3, 5], "recommended": [True, False]})
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['rank', 'score'\]"):
        plot_resolution_sweep(table)


def test_network_widths_follow_negative_weights_and_chord_takes_many_domains(adata):
    connectivity = domain_connectivity(adata, "domain", slide_key="roi", max_dist=20)
    ratios = connectivity["log2_ratio"].to_numpy()
    network = plot_domain_network(adata, "domain", connectivity=connectivity, weight="log2_ratio", min_weight=-50)
    widths = network.axes[0].collections[0].get_linewidths()
    pairs = sorted(ratios[np.triu_indices(4, 1)][np.isfinite(ratios[np.triu_indices(4, 1)])])
    assert len(widths) == len(pairs) and min(pairs) < 0
    assert np.argmax(widths) != np.argmin(widths) and max(widths) > min(widths)
    assert sorted(widths)[-1] == pytest.approx(6.5) and sorted(widths)[0] == pytest.approx(0.5)
    # 40 domains: the gaps between arcs took the whole circle, and no arc was drawn
    many = synthetic_tissue(n_cells=4_000, n_slides=1, n_domains=40, random_state=0)
    chord = plot_chord(many, "domain", slide_key="roi", max_dist=20)
    arcs = [patch for patch in chord.axes[0].patches if patch.get_facecolor()[3] == 1.0]
    assert len(chord.axes[0].texts) == many.obs["domain"].nunique() and len(arcs) >= 40
    plt.close("all")


def test_legends_fit_in_a_plain_savefig_and_filled_colours_differ(adata, tmp_path):
    for fig in (plot_domains(adata, "domain", slide_key="roi"),
                plot_composition(adata, "domain", "cell_type", kind="bars", value="proportions")):
        fig.savefig(tmp_path / "legend.png")  # no bbox_inches="tight"
        renderer = fig.canvas.get_renderer()
        legend = (fig.legends or [ax.get_legend() for ax in fig.axes if ax.get_legend()])[0]
        assert legend.get_window_extent(renderer).x1 <= fig.bbox.width + 1
        plt.close(fig)
    small = plot_domains(adata, "domain", slide_key="roi", panel_size=1.0)  # the slides' names used to be cut off
    small.savefig(tmp_path / "small.png")
    renderer = small.canvas.get_renderer()
    assert all(ax.title.get_window_extent(renderer).y1 <= small.bbox.height + 1 for ax in small.axes)
    plt.close(small)
    colors = domain_colors(adata, "domain", palette=["red"])  # the rest filled in
    assert len(set(colors.values())) == 4


def test_a_long_legend_of_cell_types_beside_a_few_bars_fits_too(tmp_path):
    # 27 cell types beside 3 domains: the legend is taller than the bars' rows
    many = synthetic_tissue(n_cells=3_000, n_slides=1, n_domains=3, n_cell_types=27, n_markers=54, random_state=0)
    fig = plot_composition(many, "domain", "cell_type", kind="bars")
    fig.savefig(tmp_path / "bars.png")  # no bbox_inches="tight"
    renderer = fig.canvas.get_renderer()
    legend = fig.axes[0].get_legend().get_window_extent(renderer)
    assert len(fig.axes[0].get_legend().get_texts()) == 27
    assert legend.y0 >= -1 and legend.y1 <= fig.bbox.height + 1 and legend.x1 <= fig.bbox.width + 1
    assert fig.axes[0].yaxis.label.get_window_extent(renderer).x0 >= -1  # "domain" not cut off
    plt.close(fig)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # scanpy's own plotting, on matplotlib 3.10
@pytest.mark.parametrize("n_domains", [3, 12, 25])
def test_default_colours_are_those_scanpy_gives(n_domains):
    import scanpy as sc

    tissue = synthetic_tissue(n_cells=2_000, n_slides=1, n_domains=n_domains, random_state=0)
    tissue.obs["domain"] = tissue.obs["domain"].astype("category")
    by_scanpy = tissue.copy()
    sc.pl.embedding(by_scanpy, basis="spatial", color="domain", show=False)
    plt.close("all")
    assert list(domain_colors(tissue, "domain").values()) == list(by_scanpy.uns["domain_colors"])

