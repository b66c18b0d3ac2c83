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
from labelled import markdown, publish
from measure import provenance

from utag import utag
from utag.datasets import synthetic_tissue

RESOLUTIONS = [0.05, 0.1, 0.3]


def column(workers: int) -> str:
    return f"{workers} worker{'s' if workers > 1 else ''} (s)"


def table(timings: dict[int, dict[str, float]], totals: dict[int, float]) -> list[dict]:
    """Rows of stage seconds per number of workers (ascending), with the speed-up from the
    fewest to the most workers."""
    counts = sorted(timings)
    first, last = counts[0], counts[-1]
    rows = []
    for stage in timings[first]:
        row = {"stage": stage, **{column(w): timings[w].get(stage, float("nan")) for w in counts}}
        row[f"speed-up {first} → {last}"] = row[column(first)] / max(row[column(last)], 1e-9)
        rows.append(row)
    return rows + [{"stage": "**utag() total**", **{column(w): totals[w] for w in counts},
                    f"speed-up {first} → {last}": totals[first] / totals[last]}]


def rerender(path: str) -> None:
    """Rewrite the table in ``path`` (written by this script) from its own seconds: the
    derived speed-up column of tables written before it was computed right (it divided a
    column picked in set order by the last one)."""
    lines = open(path).read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| stage"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    counts = [int(name.split()[0]) for name in header[1:] if "worker" in name]
    timings = {w: {} for w in counts}
    totals = {}
    for line in lines[start + 2:end]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        for w, value in zip(counts, cells[1:]):
            if cells[0] == "**utag() total**":
                totals[w] = float(value)
            else:
                timings[w][cells[0]] = float(value)
    lines[start:end] = markdown(table(timings, totals), digits=2).splitlines()
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=float, default=1e6)
    parser.add_argument("--slides", type=int, default=150)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", help="also write the table to this markdown file")
    parser.add_argument("--rerender", metavar="FILE", help="recompute the speed-up column of a "
                        "table this script wrote (it used to divide a column picked in set order), then exit")
    args = parser.parse_args()
    if args.rerender:
        rerender(args.rerender)
        return

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
        print(f"{workers} workers: {totals[workers]:.2f} s,",
              ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in timings[workers].items()), flush=True)
        del result
    same = all(np.array_equal(a, b) for w in args.workers[1:] for a, b in zip(labels[args.workers[0]], labels[w]))
    text = (f"{int(args.cells):,} cells, {args.slides} slides, Leiden at {', '.join(map(str, RESOLUTIONS))}; "
            f"workers = `processes` = `n_jobs`. Labels identical with every number of workers: "
            f"{'yes' if same else 'NO'}.\n\n" + markdown(table(timings, totals), digits=2) + "\n\n" + provenance())
    publish(args.out, "workers.py", text, None if same else "the labels differ between numbers of workers")


if __name__ == "__main__":
    main()
