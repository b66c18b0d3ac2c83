"""Each stage of ``utag()`` with 1 and with 2 workers: how much the second core buys.

Usage (from the repository root, with utag installed)::

    python benchmarks/workers.py --out docs/generated/performance_workers.md    # 1M cells, 150 slides
    python benchmarks/workers.py --cells 2e5 --slides 30                          # quick

On a synthetic tissue (40 markers, 5 domains, ``max_dist=20``), ``utag()`` with Leiden at
resolutions 0.05, 0.1 and 0.3 runs with ``processes=w, n_jobs=w`` for each number of
workers ``w`` (after a small warm-up run that compiles the numba code and starts the
worker processes). Per stage (``uns['utag']['timings']``): seconds with each number of
workers and the speed-up. The labels must be the same with any number of workers; the
script checks it.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from labelled import markdown, write_generated
from measure import provenance

from utag import utag
from utag.datasets import synthetic_tissue

RESOLUTIONS = [0.05, 0.1, 0.3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=float, default=1e6)
    parser.add_argument("--slides", type=int, default=150)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args()

    options = dict(slide_key="roi", max_dist=20, clustering_method="leiden", resolutions=RESOLUTIONS, progress=False)
    warm = synthetic_tissue(n_cells=6_000, n_slides=2, random_state=1)
    for workers in args.workers:
        utag(warm, processes=workers, n_jobs=workers, **options)
    adata = synthetic_tissue(n_cells=int(args.cells), n_slides=args.slides, random_state=0)
    timings, totals, labels = {}, {}, {}
    for workers in args.workers:
        started = time.perf_counter()
        result = utag(adata, processes=workers, n_jobs=workers, **options)
        totals[workers] = time.perf_counter() - started
        timings[workers] = dict(result.uns["utag"]["timings"])
        labels[workers] = [result.obs[key].to_numpy() for key in result.uns["utag"]["label_keys"]]
        del result
    first = args.workers[0]
    same = all(np.array_equal(a, b) for w in args.workers[1:] for a, b in zip(labels[first], labels[w]))
    rows = []
    for stage in timings[first]:
        row = {"stage": stage}
        for workers in args.workers:
            row[f"{workers} worker{'s' if workers > 1 else ''} (s)"] = timings[workers].get(stage, float("nan"))
        row["speed-up"] = row[next(iter(row.keys() - {"stage"}))] / max(list(row.values())[-1], 1e-9)
        rows.append(row)
    total = {"stage": "**utag() total**",
             **{f"{w} worker{'s' if w > 1 else ''} (s)": totals[w] for w in args.workers},
             "speed-up": totals[first] / totals[args.workers[-1]]}
    text = (f"{int(args.cells):,} cells, {args.slides} slides, Leiden at {', '.join(map(str, RESOLUTIONS))}; "
            f"workers = `processes` = `n_jobs`. Labels identical with every number of workers: "
            f"{'yes' if same else 'NO'}.\n\n" + markdown(rows + [total], digits=2) + "\n\n" + provenance())
    print(text)
    write_generated(args.out, "workers.py", text)
    if not same:
        raise SystemExit("the labels differ between numbers of workers")


if __name__ == "__main__":
    main()
