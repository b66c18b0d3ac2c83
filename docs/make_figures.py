"""Make the figures of docs/downstream.md and docs/multiscale.md from the bundled CODEX
mouse spleen subset.

Run from the repository root: ``python docs/make_figures.py`` (about a minute).
"""
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")

from utag import utag  # noqa: E402
from utag.analysis import (  # noqa: E402
    domain_connectivity,
    measure_per_domain_cell_type_colocalization,
)
from utag.datasets import codex_mouse_spleen  # noqa: E402
from utag.plotting import (  # noqa: E402
    plot_chord,
    plot_colocalization,
    plot_composition,
    plot_domain_network,
    plot_domains,
)

OUT = Path(__file__).parent / "figures"
KEY = "UTAG Label_leiden_0.05"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    adata = codex_mouse_spleen()
    result = utag(adata, slide_key="slide", max_dist=200, clustering_method=["leiden"], resolutions=[0.05],
                  keep_spatial_connectivity=True, progress=False)
    figures = {
        "domains_on_tissue": plot_domains(result, KEY, slide_key="slide", ncols=2, scale_bar=265,
                                          scale_bar_label="100 um"),
        "expert_compartments": plot_domains(result, "domain", slide_key="slide", ncols=2),
    }
    domain_connectivity(result, KEY, slide_key="slide")
    figures["domain_network"] = plot_domain_network(result, KEY)
    figures["domain_chord"] = plot_chord(result, KEY)
    figures["composition_heatmap"] = plot_composition(result, KEY, "cell_type", value="enrichment")
    figures["composition_bars"] = plot_composition(result, KEY, "cell_type", kind="bars")
    table = measure_per_domain_cell_type_colocalization(result, KEY, "cell_type", slide_key="slide",
                                                        n_permutations=100)
    common_types = result.obs["cell_type"].value_counts().index[:10]
    figures["colocalization"] = plot_colocalization(table, cell_types=common_types)
    figures["multiscale_scales"] = multiscale_figure(adata)
    for name, figure in figures.items():
        figure.savefig(OUT / f"{name}.png", dpi=80, bbox_inches="tight")
        print(f"wrote {OUT / name}.png")


def multiscale_figure(adata, max_dist: float = 200.0, cell_type: str = "B cells"):
    """The kernels of both flavours against distance, then one cell type's share around
    every cell of one slide: UTAG's plain mean within ``max_dist`` and the multiscale
    flavour's Gaussian means at max_dist / 4, / 2 and max_dist (before scaling)."""
    import matplotlib.pyplot as plt

    from utag import multiscale

    one = adata[adata.obs["slide"] == adata.obs["slide"].cat.categories[0]].copy()
    widths = multiscale.kernel_widths(max_dist)
    plain = utag(one, slide_key="slide", max_dist=max_dist, apply_clustering=False, progress=False)
    scaled = utag(one, slide_key="slide", max_dist=max_dist, apply_clustering=False, flavor="multiscale",
                  progress=False)
    scales = scaled.uns["utag"]["multiscale"]["block_scales"]
    figure, axes = plt.subplots(1, 5, figsize=(22, 4.2))
    distance = np.linspace(0, 2.5 * max_dist, 400)
    axes[0].plot(distance, (distance <= max_dist).astype(float), color="black", label=f"utag: mean within {max_dist:g}")
    for width in widths:
        passes = multiscale.kernel_passes(width, max_dist)
        weight = np.exp(-(distance**2) / (2 * width**2))  # p passes of width w / sqrt(p): about width w
        label = f"multiscale: width {width:g}" + (f" ({passes} passes of {width / np.sqrt(passes):g})"
                                                  if passes > 1 else "")
        axes[0].plot(distance, np.where(distance <= 2.5 * width, weight, 0), label=label)
    axes[0].set(xlabel="distance from the cell (px)", ylabel="weight (before normalising)",
                title="neighbour weights")
    axes[0].legend(fontsize=8)
    panels = [("utag", plain[:, cell_type].X.ravel())]
    panels += [(f"multiscale, width {width:g}", scaled[:, f"{cell_type}@{width:g}"].X.ravel() / scale)
               for width, scale in zip(widths, scales)]
    coords = one.obsm["spatial"]
    for axis, (title, values) in zip(axes[1:], panels):
        axis.scatter(coords[:, 0], coords[:, 1], c=values, s=1, cmap="viridis", vmin=0, vmax=1, rasterized=True)
        axis.set(title=f"{cell_type} share: {title}", xticks=[], yticks=[], aspect="equal")
    figure.tight_layout()
    return figure


if __name__ == "__main__":
    main()
