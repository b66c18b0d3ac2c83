"""Spatial graphs of many small slides (tissue microarray cores, small ROIs).

Usage (from the repository root, with utag installed; nothing else running)::

    python benchmarks/tiny_slides.py

For slides of a few to a few hundred cells (400 slides each), the script times the
spatial graph built the way a squidpy user would
(``squidpy.gr.spatial_neighbors_radius(..., library_key=...)``) and utag's per-slide
graphs, in one process and in worker processes (as ``utag()`` builds them from
``utag.graph.POOL_MIN_CELLS`` cells on, or when given ``processes``), each with
scikit-learn's threads left as they are (what utag did before
``utag.graph.ONE_THREAD_BELOW_CELLS``) and as utag builds them now. It checks that all
give the same graph and prints the table (best of three runs each).
"""
from __future__ import annotations

import argparse
import logging
import os
import time
import warnings

from labelled import markdown, publish
from measure import provenance

from utag import graph
from utag._parallel import map_processes
from utag.datasets import synthetic_tissue


def best_seconds(function, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def per_slide_graphs(adata, max_dist: float, one_thread_below: int = graph.ONE_THREAD_BELOW_CELLS):
    """utag's per-slide graphs in this process, in one thread for slides under ``one_thread_below`` cells
    (0: every slide with scikit-learn's default threads, as before)."""
    codes = adata.obs["roi"].cat.codes.to_numpy()
    slides = graph.slide_cells(codes)
    coords = adata.obsm["spatial"]
    below = graph.ONE_THREAD_BELOW_CELLS
    graph.ONE_THREAD_BELOW_CELLS = one_thread_below
    try:
        return graph.combine_slides([graph.radius_graph(coords[cells], max_dist) for cells in slides], slides,
                                    max_dist)[0]
    finally:
        graph.ONE_THREAD_BELOW_CELLS = below


def _slide_graph(coords, max_dist: float, one_thread_below: int):
    """One slide's graph in a worker process, with the threshold the parent asked for."""
    graph.ONE_THREAD_BELOW_CELLS = one_thread_below
    return graph.radius_graph(coords, max_dist)


def graphs_in_workers(adata, max_dist: float, one_thread_below: int, workers: int):
    """utag's per-slide graphs in ``workers`` worker processes (utag's own pool)."""
    codes = adata.obs["roi"].cat.codes.to_numpy()
    slides = graph.slide_cells(codes)
    coords = adata.obsm["spatial"]
    built = map_processes(_slide_graph, [coords[cells] for cells in slides], max_dist, one_thread_below,
                          n_workers=workers)
    return graph.combine_slides(built, slides, max_dist)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slides", type=int, default=400)
    parser.add_argument("--cells-per-slide", type=int, nargs="+", default=[5, 10, 30, 100, 300])
    parser.add_argument("--max-dist", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", help="also write the table (markdown, with machine and date) to this file")
    args = parser.parse_args()
    logging.getLogger("utag").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    import squidpy as sq

    rows, same = [], True
    for cells_per_slide in args.cells_per_slide:
        adata = synthetic_tissue(n_cells=cells_per_slide * args.slides, n_slides=args.slides, random_state=0)
        squidpy_copy, utag_copy = adata.copy(), adata.copy()
        squidpy_s = best_seconds(lambda: sq.gr.spatial_neighbors_radius(
            squidpy_copy, radius=args.max_dist, set_diag=True, library_key="roi"))
        before_s = best_seconds(lambda: per_slide_graphs(adata, args.max_dist, one_thread_below=0))
        now_s = best_seconds(lambda: per_slide_graphs(adata, args.max_dist))
        graphs_in_workers(adata, args.max_dist, 0, args.workers)  # starts the workers
        workers_before_s = best_seconds(lambda: graphs_in_workers(adata, args.max_dist, 0, args.workers))
        workers_now_s = best_seconds(lambda: graphs_in_workers(adata, args.max_dist, graph.ONE_THREAD_BELOW_CELLS,
                                                               args.workers))
        before = per_slide_graphs(adata, args.max_dist, one_thread_below=0)
        graph.spatial_neighbors(utag_copy, max_dist=args.max_dist, slide_key="roi")
        for other in (squidpy_copy.obsp["spatial_connectivities"], utag_copy.obsp["spatial_connectivities"],
                      per_slide_graphs(adata, args.max_dist),
                      graphs_in_workers(adata, args.max_dist, graph.ONE_THREAD_BELOW_CELLS, args.workers)):
            same &= (abs(other - before) > 0).nnz == 0
        rows.append({"cells per slide": cells_per_slide, "slides": args.slides, "squidpy, library_key (s)": squidpy_s,
                     "one process, before (s)": before_s, "one process, now (s)": now_s,
                     f"{args.workers} workers, before (s)": workers_before_s,
                     f"{args.workers} workers, now (s)": workers_now_s})
    text = (f"radius {args.max_dist:g}; best of 3 runs (workers started beforehand). Same graph from every route: "
            f"{'yes' if same else 'NO'}."
            f"\n\n{markdown(rows, digits=3)}\n\n{provenance()}")
    publish(args.out, "tiny_slides.py", text, None if same else "the routes gave different graphs")


if __name__ == "__main__":
    main()
