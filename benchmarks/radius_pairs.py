"""squidpy's radius graph against ``utag.graph.radius_connectivities`` (built from
``radius_pairs``) on the same slides: same graph? how long per slide?

Usage (from the repository root, with utag installed; nothing else running)::

    python benchmarks/radius_pairs.py --out docs/generated/radius_pairs.md

Message passing needs only the edges of each slide's radius graph, not squidpy's stored
distances, and takes them from :func:`utag.graph.radius_connectivities` (the edges of
:func:`utag.graph.radius_pairs`, a scipy KD-tree then scikit-learn's own test, in
squidpy's CSR layout). For slides of a synthetic tissue (about 6,700 cells each, as in
the 1,000,000-cell benchmarks) and for every slide of the shared CODEX spleen and MERFISH
data (when ``shared/`` is there), at several radii, the script times both routes (best of
``--repeats`` runs per slide, summed over the slides) and checks that they give the same
connectivities (every array of the CSR).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from labelled import SHARED, markdown, publish
from measure import provenance

from utag.datasets import synthetic_tissue
from utag.graph import radius_connectivities, radius_graph, slide_cells


def best_seconds(function, repeats: int):
    """The result of ``function()`` and its fastest time over ``repeats`` runs."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - start)
    return result, min(seconds)


def slides_of(name: str):
    """``(coords of each slide, radii)`` of one dataset, or ``None`` if it is not there."""
    if name == "synthetic":
        tissue = synthetic_tissue(n_cells=100_000, n_slides=15, n_markers=5, random_state=0)
        codes, radii = tissue.obs["roi"].cat.codes.to_numpy(), (20.0, 40.0)
    else:
        path = SHARED / name / f"{name}.h5ad"
        if not path.is_file():
            return None
        import anndata

        tissue = anndata.read_h5ad(path, backed="r")
        codes = tissue.obs["slide"].astype("category").cat.codes.to_numpy()
        radii = (150.0, 200.0) if name == "codex_mouse_spleen" else (50.0, 75.0)
    coords = np.asarray(tissue.obsm["spatial"], dtype=np.float64)
    return [coords[cells] for cells in slide_cells(codes)], radii


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_argument("--repeats", type=int, default=3)
    options.add_argument("--out")
    args = options.parse_args()
    rows = []
    for name in ("synthetic", "codex_mouse_spleen", "merfish_hypothalamus"):
        found = slides_of(name)
        if found is None:
            continue
        slides, radii = found
        for radius in radii:
            squidpy_s = fast_s = 0.0
            same, n_edges = True, 0
            for coords in slides:
                (expected, _), seconds = best_seconds(lambda: radius_graph(coords, radius), args.repeats)
                squidpy_s += seconds
                got, seconds = best_seconds(lambda: radius_connectivities(coords, radius), args.repeats)
                fast_s += seconds
                same &= all(np.array_equal(getattr(got, part), getattr(expected, part))
                            for part in ("indptr", "indices", "data"))
                n_edges += (expected.nnz - len(coords)) // 2
            rows.append({"data": name, "slides": len(slides), "cells": sum(map(len, slides)), "max_dist": radius,
                         "edges": f"{n_edges:,}", "squidpy RadiusBuilder (s)": squidpy_s,
                         "radius_connectivities (s)": fast_s, "speed-up": squidpy_s / fast_s,
                         "same connectivities": same})
    failure = None if all(row["same connectivities"] for row in rows) else "radius_connectivities differs from squidpy"
    publish(args.out, "radius_pairs.py", markdown(rows, digits=2) + "\n\n" + provenance(), failure)


if __name__ == "__main__":
    main()
