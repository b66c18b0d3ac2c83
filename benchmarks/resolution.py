"""How good is the automatic choice of resolution? And how long does a sweep take?

Usage (from the repository root, with utag installed)::

    python benchmarks/resolution.py                     # synthetic + bundled spleen subset
    python benchmarks/resolution.py --spleen ../shared/data/codex_mouse_spleen/codex_mouse_spleen.h5ad
    python benchmarks/resolution.py --timing-cells 1e6  # time of a 10 x 5 sweep at a million cells

For every dataset: ``utag()``, then :func:`utag.tuning.resolution_sweep` (default grid:
12 resolutions from 0.02 to 2, 5 seeded runs each); the adjusted Rand index (ARI) against
the truth of the recommended labelling and of the best resolution in hindsight, and the
number of domains chosen vs true. Prints markdown tables.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import adjusted_rand_score

from utag import utag
from utag.datasets import codex_mouse_spleen, synthetic_tissue
from utag.tuning import resolution_sweep


def score(name, adata, slide_key, max_dist, truth_key="domain"):
    result = utag(adata, slide_key=slide_key, max_dist=max_dist, clustering_method="leiden", resolutions=[0.1],
                  progress=False)
    started = time.perf_counter()
    table = resolution_sweep(result, n_runs=5, progress=False)
    seconds = time.perf_counter() - started
    truth = adata.obs[truth_key].astype(str).to_numpy()
    scored = truth != "NoAnnotation"
    labels = result.uns["utag_resolution_sweep"]["labels"]
    table["ari"] = [adjusted_rand_score(truth[scored], labelling[scored]) for labelling in labels]
    chosen = table[table["rank"] == 1].iloc[0]
    best = table.loc[table["ari"].idxmax()]
    return {
        "dataset": name, "cells": adata.n_obs, "true domains": len(np.unique(truth[scored])),
        "chosen resolution": chosen["resolution"], "chosen domains": int(chosen["n_domains"]),
        "ARI chosen": chosen["ari"], "best resolution": best["resolution"], "best domains": int(best["n_domains"]),
        "ARI best": best["ari"], "gap": best["ari"] - chosen["ari"], "sweep seconds": seconds,
    }


def markdown(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        cells = [f"{v:.3f}" if isinstance(v, float) and not k.endswith("seconds") and "resolution" not in k
                 else (f"{v:.1f}" if k.endswith("seconds") else f"{v:g}" if isinstance(v, float) else f"{v:,}"
                       if isinstance(v, int) else str(v)) for k, v in row.items()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--domains", type=int, nargs="+", default=[3, 5, 8])
    parser.add_argument("--cells", type=float, default=20_000)
    parser.add_argument("--spleen", help="the full CODEX spleen .h5ad (per section and pooled)")
    parser.add_argument("--timing-cells", type=float, help="only time a 10 resolutions x 5 runs sweep at this size")
    args = parser.parse_args()

    if args.timing_cells:
        n_cells = int(args.timing_cells)
        adata = synthetic_tissue(n_cells=n_cells, n_slides=max(1, n_cells // 6_700), random_state=0)
        started = time.perf_counter()
        result = utag(adata, slide_key="roi", clustering_method="leiden", resolutions=[0.1], progress=False)
        print(f"utag() on {n_cells:,} cells: {time.perf_counter() - started:.0f} s")
        resolutions = np.round(np.geomspace(0.02, 2.0, 10), 4)
        started = time.perf_counter()
        table = resolution_sweep(result, resolutions=resolutions, n_runs=5, progress=False)
        print(f"resolution_sweep, 10 resolutions x 5 runs, {n_cells:,} cells: {time.perf_counter() - started:.0f} s")
        print(table.round(3).to_string())
        return

    rows = []
    for seed in args.seeds:
        for n_domains in args.domains:
            adata = synthetic_tissue(n_cells=int(args.cells), n_slides=2, n_domains=n_domains, random_state=seed)
            rows.append(score(f"synthetic K={n_domains} seed={seed}", adata, "roi", 20))
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    rows.append(score("CODEX spleen bundled subset", codex_mouse_spleen(), "slide", 200))
    if args.spleen:
        full = codex_mouse_spleen(args.spleen)
        rows.append(score("CODEX spleen, both sections", full, "slide", 200))
        for section in full.obs["slide"].cat.categories:
            rows.append(score(f"CODEX spleen, {section}", full[full.obs["slide"] == section].copy(), "slide", 200))
    print()
    print(markdown(rows))
    close = sum(row["gap"] <= 0.05 for row in rows)
    print(f"\nchosen within 0.05 ARI of the best in hindsight: {close} of {len(rows)}")


if __name__ == "__main__":
    main()
