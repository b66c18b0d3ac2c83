"""Does a denser, unweighted kNN graph (BANKSY's kind) find better domains?

Usage (from the repository root, with utag installed)::

    python benchmarks/clustering_graph.py --out docs/generated/clustering_graph.md
    python benchmarks/clustering_graph.py --kinds merfish synthetic   # quicker

BANKSY (``benchmarks/banksy_compare.py``) clusters a 20-component PCA on a 50-nearest-
neighbour graph whose weights hardly fall with distance; utag, as the original and
``sc.pp.neighbors``, uses 10 components (or the features themselves, up to 50) and 15
neighbours with UMAP's weights, which fall steeply after the nearest few. A scratch run
on the MERFISH slides (BANKSY's own embedding clustered on utag's graph scored far below
the same embedding on BANKSY's graph) pointed at the graph. This script measures the graph
on its own, through keywords ``utag()`` already has:

* ``default``: ``utag()``'s defaults;
* ``dense``: ``n_neighbors=50``, ``pca_kwargs={"n_comps": 20}``,
  ``leiden_kwargs={"use_weights": False}`` (every edge of the 50-neighbour graph weighs the
  same).

Both flavours, every labelled dataset (the bundled spleen subset, the full spleen
sections, the MERFISH slides, synthetic tissues of the three layouts), at each dataset's
usual radius. Scores: the ARI against the truth at the best fixed Leiden resolution of
``utag.tuning.DEFAULT_RESOLUTIONS``, each resolution's ARI the mean over seeds 0, 1 and 2;
and the ARI of ``resolutions="auto"``'s choice, mean over seeds 0 and 1.
"""
from __future__ import annotations

import time

import labelled
import numpy as np
from labelled import labelled_datasets, markdown, publish
from measure import best_fixed, scored_cells
from sklearn.metrics import adjusted_rand_score

from utag import utag
from utag.tuning import DEFAULT_RESOLUTIONS

SEEDS = (0, 1, 2)
AUTO_SEEDS = (0, 1)
GRAPHS = {"default": {},
          "dense": {"n_neighbors": 50, "pca_kwargs": {"n_comps": 20}, "leiden_kwargs": {"use_weights": False}}}
FLAVORS = ("utag", "multiscale")


def best_fixed_run(dataset, flavor: str, graph: dict) -> tuple[float, float, float]:
    """``(ARI, resolution, seconds per call)`` at the resolution whose mean ARI over the seeds is highest."""
    labels = {}
    start = time.perf_counter()
    for seed in SEEDS:
        result = utag(dataset.adata, slide_key=dataset.slide_key, max_dist=dataset.max_dist, flavor=flavor,
                      clustering_method="leiden", resolutions=list(DEFAULT_RESOLUTIONS), random_state=seed,
                      progress=False, **graph)
        for resolution in DEFAULT_RESOLUTIONS:
            labels[resolution, seed] = result.obs[f"UTAG Label_leiden_{resolution}"].to_numpy()
    seconds = (time.perf_counter() - start) / len(SEEDS)
    ari, resolution, _ = best_fixed(labels, dataset.truth())
    return ari, resolution, seconds


def auto_choice(dataset, flavor: str, graph: dict) -> float:
    """The ARI of ``resolutions="auto"``'s labelling, mean over :data:`AUTO_SEEDS`."""
    truth = dataset.truth()
    scored = scored_cells(truth)
    scores = []
    for seed in AUTO_SEEDS:
        result = utag(dataset.adata, slide_key=dataset.slide_key, max_dist=dataset.max_dist, flavor=flavor,
                      clustering_method="leiden", resolutions="auto", random_state=seed, progress=False, **graph)
        labels = result.obs[result.uns["utag"]["label_keys"][0]].to_numpy()
        scores.append(adjusted_rand_score(truth[scored], labels[scored]))
    return float(np.mean(scores))


def main() -> None:
    args = labelled.parser(__doc__).parse_args()
    rows = []
    gains = {(flavor, score): [] for flavor in FLAVORS for score in ("best fixed", "auto")}
    for dataset in labelled_datasets(args.kinds, synthetic_seeds=(0,),
                                     synthetic_layouts=("voronoi", "layers", "islands")):
        row = {"dataset": dataset.name}
        for flavor in FLAVORS:
            found = {name: best_fixed_run(dataset, flavor, graph) for name, graph in GRAPHS.items()}
            chosen = {name: auto_choice(dataset, flavor, graph) for name, graph in GRAPHS.items()}
            for name, (ari, resolution, seconds) in found.items():
                row[f"{flavor}, {name} graph"] = f"{ari:.3f} ({resolution:g}; {seconds:.1f} s); auto {chosen[name]:.3f}"
            gains[flavor, "best fixed"].append(found["dense"][0] - found["default"][0])
            gains[flavor, "auto"].append(chosen["dense"] - chosen["default"])
            row[f"{flavor}: dense - default"] = (f"{gains[flavor, 'best fixed'][-1]:.3f}; "
                                                 f"auto {gains[flavor, 'auto'][-1]:.3f}")
        rows.append(row)
        print(row, flush=True)
    summary = [{"flavor": flavor, "score": score, "datasets": len(values), "mean gain": float(np.mean(values)),
                "datasets better": int(np.sum(np.asarray(values) > 0)),
                "worst": float(np.min(values)), "best": float(np.max(values))}
               for (flavor, score), values in gains.items()]
    text = ("ARI against the truth at the best fixed resolution (that resolution; seconds per `utag()` call), "
            f"mean over seeds {', '.join(map(str, SEEDS))}; then the ARI of `resolutions=\"auto\"`, mean over seeds "
            f"{', '.join(map(str, AUTO_SEEDS))}; graphs as in the script's docstring.\n\n"
            + markdown(rows) + "\n\nDense graph minus default graph, over the datasets:\n\n" + markdown(summary))
    publish(args.out, "clustering_graph.py", text)


if __name__ == "__main__":
    main()
