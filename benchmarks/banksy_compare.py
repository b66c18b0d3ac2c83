"""BANKSY (the ``pybanksy`` package) beside both flavours of ``utag()`` on the labelled real sections.

Usage (from the repository root; pybanksy is not a dependency of utag, install it beside)::

    pip install pybanksy
    python benchmarks/banksy_compare.py --out docs/generated/banksy.md
    python benchmarks/banksy_compare.py --kinds merfish          # the MERFISH slides only

Issue 12 set utag's ``flavor="multiscale"`` the target of beating BANKSY's best. This
script runs BANKSY itself, through its own functions, on the same cells and scores every
method the same way: the ARI against the experts at the best fixed resolution of a
sweep, each resolution's ARI being the mean over two seeds (``NoAnnotation`` cells left
out). Each method gets a small grid of its own main parameters, and its best setting
per dataset is reported:

* BANKSY, domain setting (``lambda = 0.8``, 20 principal components, its Leiden on a
  50-neighbour shared-nearest-neighbour graph iterated to convergence, the package's
  recommended route). On the MERFISH slides: ``k_geom`` 15 (its default) and 30, with
  and without the azimuthal Gabor filter (``max_m`` 1 and 0), resolutions
  ``geomspace(0.02, 4, 15)``, seeds 0 and 1. On the spleen sections (82,000 cells, where
  one BANKSY Leiden run takes about 45 s on 2 cores): ``k_geom`` 15 and 60 (larger
  neighbourhoods suit the spleen's domains) with the filter, resolutions 0.02, 0.05,
  0.1, 0.2 and 0.5, seed 0;
* ``utag()`` with ``flavor="utag"`` and ``"multiscale"``, Leiden: ``max_dist`` 1 and
  1.41 times the dataset's usual radius (as in ``benchmarks/accuracy.py``); the
  resolutions of ``resolutions="auto"``'s sweep.

BANKSY's features are standardised per column by the package, and its PCA is
scikit-learn's default, which on these shapes (many more cells than features) is the
exact covariance solver: two runs of the MERFISH rows gave the same table.
"""
from __future__ import annotations

import contextlib
import io
import time
from typing import NamedTuple

import labelled
import matplotlib
import numpy as np
from labelled import labelled_datasets, markdown, publish
from measure import best_fixed

from utag import utag
from utag.tuning import DEFAULT_RESOLUTIONS

matplotlib.use("Agg")

SEEDS = (0, 1)


class BanksyGrid(NamedTuple):
    settings: tuple  # (k_geom, max_m) pairs
    resolutions: tuple
    seeds: tuple


BANKSY_GRID = BanksyGrid(tuple((k_geom, max_m) for k_geom in (15, 30) for max_m in (1, 0)),
                         tuple(float(r) for r in np.round(np.geomspace(0.02, 4.0, 15), 4)), SEEDS)
#: On the 82,000-cell spleen sections: fewer runs (see the module docstring).
BANKSY_GRID_LARGE = BanksyGrid(((15, 1), (60, 1)), (0.02, 0.05, 0.1, 0.2, 0.5), (0,))
RADIUS_MULTIPLES = (1.0, 1.41)


def _quiet():
    """pybanksy prints its progress; keep the benchmark's output to the table."""
    return contextlib.redirect_stdout(io.StringIO())


def banksy_labels(adata, k_geom: int, max_m: int, grid: BanksyGrid, lambda_param: float = 0.8,
                  pca_dims: int = 20) -> dict:
    """BANKSY's Leiden labels per ``(resolution, seed)``, through the package's own steps."""
    import leidenalg
    from banksy.embed_banksy import generate_banksy_matrix
    from banksy.initialize_banksy import initialize_banksy
    from banksy.main import LeidenPartition
    from banksy_utils.umap_pca import pca_umap

    cells = adata.copy()
    cells.obsm["xy"] = np.asarray(cells.obsm["spatial"], dtype=float)
    cells.obs["x"], cells.obs["y"] = cells.obsm["xy"][:, 0], cells.obsm["xy"][:, 1]
    with _quiet():
        settings = initialize_banksy(cells, ("x", "y", "xy"), num_neighbours=k_geom, max_m=max_m,
                                     plt_edge_hist=False, plt_nbr_weights=False, plt_agf_angles=False,
                                     plt_theta=False)
        settings, _ = generate_banksy_matrix(cells, settings, [lambda_param], max_m, verbose=False)
        pca_umap(settings, pca_dims=[pca_dims], plt_remaining_var=False, add_umap=False)
        embedding = settings["scaled_gaussian"][lambda_param]["adata"].obsm[f"reduced_pc_{pca_dims}"]
        partitioner = LeidenPartition(embedding, num_nn=50, nns_have_weights=True, compute_shared_nn=True,
                                      filter_shared_nn=True, shared_nn_max_rank=3, shared_nn_min_shared_nbrs=5,
                                      verbose=False)
        labels = {}
        for resolution in grid.resolutions:
            for seed in grid.seeds:
                label, _ = partitioner.partition(resolution=resolution,
                                                 partition_metric=leidenalg.RBConfigurationVertexPartition,
                                                 n_iterations=-1, seed=seed)
                labels[resolution, seed] = np.asarray(label.dense)
    return labels


def utag_labels(dataset, flavor: str, max_dist: float) -> dict:
    """``utag()``'s Leiden labels per ``(resolution, seed)``."""
    labels = {}
    for seed in SEEDS:
        result = utag(dataset.adata, slide_key=dataset.slide_key, max_dist=max_dist, clustering_method="leiden",
                      resolutions=list(DEFAULT_RESOLUTIONS), flavor=flavor, random_state=seed, progress=False)
        for resolution in DEFAULT_RESOLUTIONS:
            labels[resolution, seed] = result.obs[f"UTAG Label_leiden_{resolution}"].to_numpy()
    return labels


def main() -> None:
    parser = labelled.parser(__doc__)
    parser.set_defaults(kinds=["merfish", "spleen"])
    args = parser.parse_args()
    try:
        import banksy  # noqa: F401
    except ImportError as error:
        raise SystemExit("This benchmark runs BANKSY itself: `pip install pybanksy` first.") from error
    rows = []
    for dataset in labelled_datasets(args.kinds):
        truth = dataset.truth()
        grid = BANKSY_GRID_LARGE if dataset.adata.n_obs > 50_000 else BANKSY_GRID
        runs = [(f"k_geom={k_geom}, {'with' if max_m else 'no'} AGF", "BANKSY",
                 lambda k_geom=k_geom, max_m=max_m: banksy_labels(dataset.adata, k_geom, max_m, grid))
                for k_geom, max_m in grid.settings]
        runs += [(f"max_dist={multiple * dataset.max_dist:.3g}", f"utag, flavor={flavor!r}",
                  lambda flavor=flavor, multiple=multiple: utag_labels(dataset, flavor, multiple * dataset.max_dist))
                 for flavor in ("utag", "multiscale") for multiple in RADIUS_MULTIPLES]
        for setting, method, labels in runs:
            started = time.perf_counter()
            ari, resolution, domains = best_fixed(labels(), truth)
            rows.append({"dataset": dataset.name, "method": method, "setting": setting, "ARI best fixed": ari,
                         "resolution": f"{resolution:g}", "domains": f"{domains:g}",
                         "seconds": time.perf_counter() - started})
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    best = {}
    for row in rows:
        key = (row["dataset"], row["method"])
        if key not in best or row["ARI best fixed"] > best[key]["ARI best fixed"]:
            best[key] = row
    methods = list(dict.fromkeys(row["method"] for row in rows))
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    summary = [{"dataset": name, **{method: f"{best[name, method]['ARI best fixed']:.3f} "
                                            f"({best[name, method]['setting']})"
                                    for method in methods}} for name in datasets]
    for prefix, label in (("MERFISH", "MERFISH, mean per slide"), ("spleen B", "spleen sections, mean")):
        names = [name for name in datasets if name.startswith(prefix)]
        if names:
            summary.append({"dataset": f"**{label}**",
                            **{method: f"{np.mean([best[n, method]['ARI best fixed'] for n in names]):.3f}"
                               for method in methods}})
    text = ("ARI against the experts at the best fixed resolution (each resolution's ARI the mean over the "
            "seeds; see the script's docstring for each method's grid); per method, its best setting on each "
            "dataset:\n\n" + markdown(summary)
            + "\n\nEvery setting:\n\n" + markdown(rows, digits=3))
    publish(args.out, "banksy_compare.py", text)


if __name__ == "__main__":
    main()
