"""Exact or approximate kNN search: what each costs, and which one ``knn_method="auto"`` picks.

Usage (from the repository root, with utag installed; nothing else running)::

    python benchmarks/knn_methods.py --out docs/generated/knn_methods.md

For each dataset, ``utag()`` (defaults, k-means so that no Leiden runs) gives the points its
kNN graph is built on (``use_rep`` as scanpy chooses it: the message-passed features up to
50 of them, else the 10 principal components). On those points the script times the exact
search (``utag.embedding.exact_neighbors``, a KD-tree) and the approximate one
(``approximate_neighbors``, HNSW), both with every core, and gives the share of the exact
15 neighbours the approximate search finds (recall), the effective dimensions (principal
axes holding 95% of the variance), the cost ``n_cells * min(2**d, n_cells)`` that
``utag.embedding.exact_search`` compares with ``EXACT_SEARCH_BUDGET``, and the search
``knn_method="auto"`` picks.

Datasets: synthetic tissues with 40 markers as ``benchmarks/run.py`` makes them (25,000 to
200,000 cells, one slide per ~6,700 cells), and every labelled dataset of
``benchmarks/labelled.py`` (the bundled spleen subset, the full spleen sections and the
MERFISH slides from ``shared/``, the 20,000-cell synthetic tissues of the accuracy
benchmarks), and both spleen sections pooled (as ``benchmarks/resolution.py`` clusters them).
"""
from __future__ import annotations

import logging
import time

import labelled
import numpy as np
from labelled import labelled_datasets, markdown, publish
from measure import provenance

from utag import utag
from utag.datasets import synthetic_tissue
from utag.embedding import (
    EXACT_NEIGHBORS_MAX_CELLS,
    EXACT_SEARCH_BUDGET,
    approximate_neighbors,
    effective_dimensions,
    exact_neighbors,
    exact_search,
)

N_NEIGHBORS = 15


def points_of(adata, slide_key: str, max_dist: float) -> np.ndarray:
    """The points ``utag()`` builds Leiden's kNN graph on, for ``adata`` at its defaults."""
    result = utag(adata, slide_key=slide_key, max_dist=max_dist, clustering_method="kmeans", resolutions=[0.1],
                  progress=False)
    use_rep = result.uns["neighbors"]["params"]["use_rep"]
    points = result.X if use_rep == "X" else result.obsm[use_rep]
    return np.ascontiguousarray(points.toarray() if hasattr(points, "toarray") else points, dtype=np.float32)


def row(name: str, points: np.ndarray) -> dict:
    started = time.perf_counter()
    exact = exact_neighbors(points, N_NEIGHBORS)[0]
    exact_seconds = time.perf_counter() - started
    started = time.perf_counter()
    approximate = approximate_neighbors(points, N_NEIGHBORS)[0]
    approximate_seconds = time.perf_counter() - started
    found = (exact[:, :, None] == approximate[:, None, :]).any(axis=2).mean()
    dimensions = effective_dimensions(points)
    n_cells = len(points)
    return {"dataset": name, "cells": f"{n_cells:,}", "features": points.shape[1], "effective dimensions": dimensions,
            "cost": f"{n_cells * min(2.0**dimensions, n_cells):.1e}",
            "auto picks": "exact" if exact_search(points, N_NEIGHBORS) else "approximate",
            "exact s": exact_seconds, "approximate s": approximate_seconds, "recall": float(found)}


def main() -> None:
    parser = labelled.parser(__doc__)
    parser.add_argument("--cells", type=float, nargs="+", default=[25_000, 50_000, 100_000, 200_000])
    args = parser.parse_args()
    logging.getLogger("utag").setLevel(logging.ERROR)
    rows = []
    for n_cells in map(int, args.cells):
        tissue = synthetic_tissue(n_cells=n_cells, n_slides=max(1, round(n_cells / 6_667)), n_markers=40,
                                  random_state=0)
        rows.append(row("synthetic, 40 markers (benchmarks/run.py)", points_of(tissue, "roi", 20.0)))
        print(markdown(rows[-1:]), flush=True)
    for dataset in labelled_datasets(args.kinds, synthetic_domains=(3, 5, 8), synthetic_seeds=(0,),
                                     synthetic_layouts=("voronoi", "layers", "islands"), pooled_spleen=True):
        rows.append(row(dataset.name, points_of(dataset.adata, dataset.slide_key, dataset.max_dist)))
        print(markdown(rows[-1:]), flush=True)
    publish(args.out, "knn_methods.py",
            f"{N_NEIGHBORS} neighbours; exact up to `EXACT_NEIGHBORS_MAX_CELLS` = {EXACT_NEIGHBORS_MAX_CELLS:,} "
            f"cells within the budget (`EXACT_SEARCH_BUDGET`) {EXACT_SEARCH_BUDGET:.0e}; "
            f"{provenance()}\n\n{markdown(rows, digits=2)}")


if __name__ == "__main__":
    main()
