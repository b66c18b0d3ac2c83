"""Make the figures of docs/downstream.md from the bundled CODEX mouse spleen subset.

Run from the repository root: ``python docs/make_figures.py`` (about half a minute).
"""
from pathlib import Path

import matplotlib

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
    for name, figure in figures.items():
        figure.savefig(OUT / f"{name}.png", dpi=80, bbox_inches="tight")
        print(f"wrote {OUT / name}.png")


if __name__ == "__main__":
    main()
