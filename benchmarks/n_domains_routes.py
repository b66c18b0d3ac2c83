"""Routes to exactly K Leiden domains, on every labelled dataset: which one to keep?

Usage (from the repository root, with utag installed)::

    python benchmarks/n_domains_routes.py --out docs/generated/n_domains_routes.md

For each dataset, with K its number of expert (or synthetic) domains, the ARI against the
truth, mean over seeds 0 and 1, of:

* ``bisection``: ``utag.tuning.resolution_for_n_domains(result, K)``, the route of
  ``utag(..., n_domains=K)`` (a resolution giving K domains after small ones are merged);
* ``from K+1 / 1.5K / 2K / 3K, by modularity on the kNN graph``: bisection to that many
  domains, then merged down to K by ``utag.tuning.merge_to_n_domains`` (the greatest
  modularity gain) on the kNN graph of the embedding;
* ``... on the tissue``: the same, on the graph linking each cell to its nearest cells of
  the same slide (``utag.tuning.spatial_neighbour_graph``), the fallback of the bisection;
* ``... by centroid distance``: the same finer domains merged by Ward's criterion on their
  centroids in the embedding (the pair whose merge adds least within-domain variance);
* ``... by normalised cut on the tissue`` (from 2K and 3K): the same, merging the pair
  whose merge removes the most normalised cut on the tissue graph
  (``merge_to_n_domains(..., criterion="normalised_cut")``): unlike modularity it does
  not hold large domains apart, so a large compartment split in two can join again;
* ``bisection, most coherent of 5 seeds``: the bisection with seeds 0-4 (for seed s,
  seeds s to s + 4), keeping the labelling most coherent on the tissue
  (``utag.tuning.spatial_coherence``, the score ``resolutions="auto"`` uses);
* ``k-means, k=K`` on the same embedding, for reference.
"""
from __future__ import annotations

import logging

import numpy as np
from labelled import labelled_datasets, markdown, parser, publish
from measure import scored_cells
from sklearn.metrics import adjusted_rand_score

from utag import utag
from utag.clustering import cluster, relabel_by_size
from utag.tuning import (
    merge_to_n_domains,
    neighbourhood_of,
    resolution_for_n_domains,
    spatial_coherence,
    spatial_neighbour_graph,
    tissue_of,
)

SEEDS = (0, 1)
FINER = ("K+1", 1.5, 2, 3)


def ward_merge(labels: np.ndarray, embedding: np.ndarray, n_domains: int) -> np.ndarray:
    """Merge domains pairwise by Ward's criterion on their embedding centroids down to ``n_domains``."""
    labels = relabel_by_size(labels)
    n_labels = int(labels.max()) + 1
    sizes = np.bincount(labels, minlength=n_labels).astype(float)
    centroids = np.zeros((n_labels, embedding.shape[1]))
    np.add.at(centroids, labels, embedding.astype(float))
    centroids /= sizes[:, None]
    alive = np.ones(n_labels, dtype=bool)
    mapping = np.arange(n_labels)
    for _ in range(n_labels - n_domains):
        squared = ((centroids[:, None] - centroids[None]) ** 2).sum(-1)
        cost = squared * np.outer(sizes, sizes) / (sizes[:, None] + sizes[None])
        np.fill_diagonal(cost, np.inf)
        cost[~alive] = np.inf
        cost[:, ~alive] = np.inf
        a, b = sorted(np.unravel_index(np.argmin(cost), cost.shape))
        centroids[a] = (centroids[a] * sizes[a] + centroids[b] * sizes[b]) / (sizes[a] + sizes[b])
        sizes[a] += sizes[b]
        alive[b] = False
        mapping[mapping == b] = a
    return relabel_by_size(mapping[labels])


def main() -> None:
    args = parser(__doc__).parse_args()
    logging.getLogger("utag").setLevel(logging.ERROR)
    rows = []
    for dataset in labelled_datasets(kinds=args.kinds, synthetic_domains=(3, 5, 8)):
        truth = dataset.truth()
        scored = scored_cells(truth)
        n_true = len(set(truth[scored]))
        result = utag(dataset.adata, slide_key=dataset.slide_key, max_dist=dataset.max_dist,
                      clustering_method="kmeans", resolutions=[n_true / 10], progress=False)
        neighbourhood = neighbourhood_of(result)
        coords, slide_codes = tissue_of(result)
        on_tissue = spatial_neighbour_graph(coords, slide_codes)
        tissue = {"coords": coords, "slide_codes": slide_codes}  # as utag(..., n_domains=K) passes them

        def score(labels):
            return adjusted_rand_score(truth[scored], np.asarray(labels)[scored])

        scores: dict[str, list[float]] = {}
        for seed in SEEDS:
            scores.setdefault("bisection (default)", []).append(
                score(resolution_for_n_domains(neighbourhood, n_true, random_state=seed, **tissue)[1]))
            for factor in FINER:
                n_finer = n_true + 1 if factor == "K+1" else int(round(factor * n_true))
                start = factor if factor == "K+1" else f"{factor:g}K"
                _, finer = resolution_for_n_domains(neighbourhood, n_finer, random_state=seed, **tissue)
                scores.setdefault(f"from {start}, by modularity on the kNN graph", []).append(
                    score(merge_to_n_domains(finer, neighbourhood.connectivities, n_true)))
                scores.setdefault(f"from {start}, by modularity on the tissue", []).append(
                    score(merge_to_n_domains(finer, on_tissue, n_true)))
                scores.setdefault(f"from {start}, by centroid distance", []).append(
                    score(ward_merge(finer, neighbourhood.embedding, n_true)))
                if factor in (2, 3):
                    scores.setdefault(f"from {start}, by normalised cut on the tissue", []).append(
                        score(merge_to_n_domains(finer, on_tissue, n_true, criterion="normalised_cut")))
            restarts = np.stack([resolution_for_n_domains(neighbourhood, n_true, random_state=seed + run, **tissue)[1]
                                 for run in range(5)])
            coherent = restarts[int(np.argmax(spatial_coherence(restarts, coords, slide_codes)))]
            scores.setdefault("bisection, most coherent of 5 seeds", []).append(score(coherent))
            scores.setdefault("k-means, k=K", []).append(score(cluster("kmeans", neighbourhood, n_true / 10, seed)))
        row = {"dataset": dataset.name, "K": n_true}
        row.update({route: float(np.mean(values)) for route, values in scores.items()})
        rows.append(row)
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    routes = [column for column in rows[0] if column not in ("dataset", "K")]
    best = {route: sum(row[route] >= max(row[r] for r in routes) - 1e-9 for row in rows) for route in routes}
    mean = {route: float(np.mean([row[route] for row in rows])) for route in routes}
    rows.append({"dataset": "**mean**", "K": "", **mean})
    rows.append({"dataset": "**best on (datasets)**", "K": "", **{route: str(best[route]) for route in routes}})
    text = (f"ARI against the truth of each route to K domains, mean over seeds {', '.join(map(str, SEEDS))}\n\n"
            + markdown(rows))
    publish(args.out, "n_domains_routes.py", text)


if __name__ == "__main__":
    main()
