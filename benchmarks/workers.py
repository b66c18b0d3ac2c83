"""Each stage of ``utag()`` with 1 and with 2 workers: how much the second core buys.

Usage (from the repository root, with utag installed)::

    python benchmarks/workers.py --out docs/generated/performance_workers.md    # 1M cells, 150 slides
    python benchmarks/workers.py --cells 2e5 --slides 30                          # quick

On a synthetic tissue (40 markers, 5 domains, ``max_dist=20``), ``utag()`` with Leiden at
resolutions 0.05, 0.1 and 0.3 runs with ``processes=w, n_jobs=w`` for each number of
workers ``w``. Before each timed run, a small run with the same ``w`` compiles the numba
code and starts the ``w`` worker processes that the timed run then uses, as a second
call in a notebook would; a second small run right after it shows what starting them
cost (the first call's extra seconds, a row of its own, not in the total). The numbers
of workers take turns for ``--repeats`` rounds (3: a shared machine's speed drifts by
10-20% between runs). Per stage (``uns['utag']['timings']``): the median seconds with
each number of workers and the speed-up.
The labels must be the same with any number of workers; the script checks it.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from labelled import markdown, publish
from measure import provenance

from utag import utag
from utag.datasets import synthetic_tissue

RESOLUTIONS = [0.05, 0.1, 0.3]
#: The row of the seconds that starting the worker processes adds to the first call.
START_UP = "starting the workers (first call only; not in the total)"
TOTAL = "utag() total"


def column(workers: int) -> str:
    return f"{workers} worker{'s' if workers > 1 else ''} (s)"


def table(timings: dict[int, dict[str, float]], totals: dict[int, float]) -> list[dict]:
    """Rows of stage seconds per number of workers (ascending), with the speed-up from the
    fewest to the most workers; the total, then the workers' start-up (no speed-up)."""
    counts = sorted(timings)
    first, last = counts[0], counts[-1]
    speed_up = f"speed-up {first} → {last}"
    rows = []
    for stage in [stage for stage in timings[first] if stage != START_UP]:
        row = {"stage": stage, **{column(w): timings[w].get(stage, float("nan")) for w in counts}}
        row[speed_up] = row[column(first)] / max(row[column(last)], 1e-9)
        rows.append(row)
    rows.append({"stage": "**utag() total**", **{column(w): totals[w] for w in counts},
                 speed_up: totals[first] / totals[last]})
    rows.append({"stage": START_UP, **{column(w): timings[w][START_UP] for w in counts}, speed_up: "-"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=float, default=1e6)
    parser.add_argument("--slides", type=int, default=150)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per number of workers (median)")
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args()

    options = dict(slide_key="roi", max_dist=20, clustering_method="leiden", resolutions=RESOLUTIONS, progress=False)
    most = max(args.workers)  # the small runs have a slide for each worker: each worker starts
    warm = synthetic_tissue(n_cells=max(6_000, 500 * most), n_slides=max(2, most), random_state=1)
    utag(warm, processes=1, n_jobs=1, **options)  # compiles the numba code
    adata = synthetic_tissue(n_cells=int(args.cells), n_slides=args.slides, random_state=0)
    timings, totals, labels = {}, {}, {}
    runs: dict[int, list[dict]] = {w: [] for w in args.workers}
    start_up: dict[int, float] = {}
    for repeat in range(args.repeats):  # the numbers of workers take turns
        for workers in args.workers:
            if repeat == 0:  # starts a pool of `workers` processes (none for one), timed against a second call
                started = time.perf_counter()
                utag(warm, processes=workers, n_jobs=workers, **options)
                first = time.perf_counter() - started
                started = time.perf_counter()
                utag(warm, processes=workers, n_jobs=workers, **options)
                start_up[workers] = max(first - (time.perf_counter() - started), 0.0)
            started = time.perf_counter()
            result = utag(adata, processes=workers, n_jobs=workers, **options)
            runs[workers].append({**result.uns["utag"]["timings"], TOTAL: time.perf_counter() - started})
            labels.setdefault(workers, [result.obs[key].to_numpy() for key in result.uns["utag"]["label_keys"]])
            stages = ", ".join(f"{stage} {value:.2f}" for stage, value in runs[workers][-1].items())
            print(f"{workers} workers: {stages}", flush=True)
            del result
    for workers, measured in runs.items():
        timings[workers] = {stage: float(np.median([run[stage] for run in measured])) for stage in measured[0]}
        totals[workers] = timings[workers].pop(TOTAL)
        timings[workers][START_UP] = start_up[workers]
    same = all(np.array_equal(a, b) for w in args.workers[1:] for a, b in zip(labels[args.workers[0]], labels[w]))
    text = (f"{int(args.cells):,} cells, {args.slides} slides, Leiden at {', '.join(map(str, RESOLUTIONS))}; "
            f"median of {args.repeats} runs per number of workers, taking turns; workers = `processes` = `n_jobs`. "
            f"Labels identical with every number of workers: "
            f"{'yes' if same else 'NO'}.\n\n" + markdown(table(timings, totals), digits=2) + "\n\n" + provenance())
    publish(args.out, "workers.py", text, None if same else "the labels differ between numbers of workers")


if __name__ == "__main__":
    main()
