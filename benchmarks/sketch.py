"""Sketch clustering against clustering every cell: time, memory and agreement.

Usage (from the repository root, with utag installed)::

    python benchmarks/sketch.py --out docs/generated/sketch.md
    python benchmarks/sketch.py --cells 2e5 --slides 30 --sizes 20000 --no-spleen   # quick

On synthetic tissue (``--cells`` cells on ``--slides`` slides, 5 domains, ``max_dist``
40) and (unless ``--no-spleen``) on each full CODEX spleen section from ``shared/``
(``max_dist`` 150): ``utag()`` with Leiden at resolutions 0.05, 0.1 and 0.3, twice on
every cell (``sketch_size=None``; ``random_state`` 0 and 1, the second showing how far
two unsketched runs are apart) and once per sketch size (``random_state=0``). Each run is in this process,
one after the other; the peak is the process's resident high-water mark during the run
(``VmHWM``, reset before each).

Per run and resolution: seconds (and per stage of ``utag()``), peak memory, the ARI of the sketched labels against the
unsketched ones, the ARI of each against the truth, and how many true domains holding
at least 0.5% of the cells are found (a predicted domain whose cells are mostly of that
domain and which holds at least half of it).
"""
from __future__ import annotations

import argparse
import gc
import sys
import time

import numpy as np
from labelled import SPLEEN, markdown, publish
from measure import peak_memory, provenance, reset_peak_memory, scored_cells
from sklearn.metrics import adjusted_rand_score

from utag import utag
from utag.datasets import codex_mouse_spleen, synthetic_tissue

RESOLUTIONS = [0.05, 0.1, 0.3]


def domains_found(truth: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    """(true domains of >= 0.5% of the cells that some predicted domain recovers, how many there are)."""
    kept = scored_cells(truth)
    truth, labels = truth[kept], labels[kept]
    names, truth_codes = np.unique(truth, return_inverse=True)
    _, label_codes = np.unique(labels, return_inverse=True)
    table = np.zeros((len(names), label_codes.max() + 1))
    np.add.at(table, (truth_codes, label_codes), 1)
    large = table.sum(axis=1) >= 0.005 * len(truth)
    purity = table / table.sum(axis=0, keepdims=True)  # share of each predicted domain that is each true one
    coverage = table / table.sum(axis=1, keepdims=True)  # share of each true domain in each predicted one
    found = ((purity > 0.5) & (coverage >= 0.5)).any(axis=1)
    return int((found & large).sum()), int(large.sum())


def runs(name: str, adata, slide_key: str, max_dist: float, sizes: list[int]) -> list[dict]:
    truth = adata.obs["domain"].astype(str).to_numpy()
    rows, reference = [], None
    # every cell with another seed: how far two unsketched runs are apart (seed noise)
    for size, seed in [(None, 0), (None, 1), *((size, 0) for size in sizes)]:
        gc.collect()
        reset_peak_memory()
        started = time.perf_counter()
        result = utag(adata, slide_key=slide_key, max_dist=max_dist, clustering_method="leiden",
                      resolutions=RESOLUTIONS, sketch_size=size, random_state=seed, progress=False)
        seconds, peak = time.perf_counter() - started, peak_memory()
        labels = {r: result.obs[f"UTAG Label_leiden_{r}"].to_numpy() for r in RESOLUTIONS}
        if reference is None:
            reference = labels
        scored = scored_cells(truth)
        for resolution in RESOLUTIONS:
            found, large = domains_found(truth, labels[resolution])
            rows.append({
                "data": name, "sketch": (f"every cell, random_state={seed}" if size is None
                                         else f"{result.uns['utag']['sketch']['size']:,}"),
                "seconds": seconds, "peak GB": peak, "resolution": resolution,
                "ARI vs every cell": adjusted_rand_score(reference[resolution], labels[resolution]),
                "ARI vs truth": adjusted_rand_score(truth[scored], labels[resolution][scored]),
                "domains": len(np.unique(labels[resolution])), "true domains >= 0.5% found": f"{found} of {large}",
                "stages (s)": ", ".join(f"{stage} {seconds:.1f}" for stage, seconds
                                        in result.uns["utag"]["timings"].items() if seconds >= 0.5)})
        print(markdown(rows[-len(RESOLUTIONS):]), flush=True)
        del result
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=float, default=1e6)
    parser.add_argument("--slides", type=int, default=150)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 200_000])
    parser.add_argument("--no-spleen", dest="spleen", action="store_false",
                        help="skip the full spleen sections from shared/ (run by default)")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    rows = runs(f"synthetic, {int(args.cells):,} cells", synthetic_tissue(n_cells=int(args.cells),
                n_slides=args.slides, random_state=0), "roi", 40.0, args.sizes)
    if args.spleen:
        if not SPLEEN.exists():
            sys.exit(f"{SPLEEN} not found")
        full = codex_mouse_spleen(SPLEEN)
        for section in full.obs["slide"].cat.categories:
            one = full[full.obs["slide"] == section].copy()
            rows += runs(f"spleen {section}", one, "slide", 150.0, [20_000, 40_000])
    text = provenance() + "\n\n" + markdown(rows)
    publish(args.out, "sketch.py", text)


if __name__ == "__main__":
    main()
