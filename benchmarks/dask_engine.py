"""utag() on Dask: a ``.zarr`` store through a LocalCluster, against the in-process sketch route.

Usage (from the repository root, with utag installed)::

    python benchmarks/dask_engine.py --out docs/generated/dask_engine.md     # 1M and 3M cells
    python benchmarks/dask_engine.py --cells 1e6 3e6 1e7 --out docs/generated/dask_engine.md
    python benchmarks/dask_engine.py --cells 2e5 --sketch-size 20000          # quick

For each size: a synthetic tissue (150 slides per million cells, 40 markers, 5 domains,
``max_dist=20``, as ``run.py``) is written to a ``.zarr`` store (not timed). Then, one
after the other:

1. **in process** (up to ``--in-process-max`` cells): the tissue in memory, ``utag(...,
   sketch_size=S)``;
2. **Dask**: ``utag.io.read_lazy(store)`` and ``utag(...)`` with the same ``sketch_size``
   inside a ``LocalCluster`` of ``--workers`` worker processes of one thread each.

Both run Leiden at resolutions 0.05, 0.1 and 0.3. Reported: seconds end to end and per
stage (``uns['utag']['timings']``), peak resident memory (the client alone, the largest
worker, and every process together; sampled every 50 ms, after the memory freed by the
earlier runs is handed back to the operating system), the ARI of the Dask labels
against the in-process ones (1.0: the same labels) and against the truth. Below the
table, how time grows with cells on Dask: the exponent of a power law through each
pair of sizes (1: linear).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from labelled import markdown, publish
from measure import TreeMemory, provenance, release_memory
from sklearn.metrics import adjusted_rand_score

from utag import utag
from utag.datasets import synthetic_tissue
from utag.io import read_lazy, write_domains

RESOLUTIONS = [0.05, 0.1, 0.3]
KEY = "UTAG Label_leiden_0.1"


def _stages(result) -> str:
    return ", ".join(f"{name} {seconds:.0f}" for name, seconds in result.uns["utag"]["timings"].items()
                     if seconds >= 0.5)


#: Where each stage of the Dask route runs: on the workers (cost per cell, divided among
#: them), in the client for every cell, or in the client on the sketch only (fixed: the
#: kNN graph and clustering of the sketch, and the vote's index of the sampled cells).
WORKER_STAGES = ("graph and message passing", "PCA", "assigning the other cells", "probabilities")
CLIENT_PER_CELL_STAGES = ("reading coordinates", "sketch")


def projection(timings: dict, n_cells: int, workers: int, client_gb: float, targets=(1e8,),
               worker_counts=(2, 8, 32, 128)) -> list:
    """Expected seconds for ``targets`` cells on each number of workers, from one
    measured run (``timings`` of ``n_cells`` cells on ``workers`` workers): worker
    stages scale with cells / workers, client stages with cells, the sketch's
    clustering is fixed; and the client's memory, grown in proportion to cells from its
    measured peak ``client_gb``."""
    on_workers = sum(t for name, t in timings.items() if name in WORKER_STAGES) * workers / n_cells
    in_client = sum(t for name, t in timings.items() if name in CLIENT_PER_CELL_STAGES) / n_cells
    fixed = sum(t for name, t in timings.items() if name not in WORKER_STAGES + CLIENT_PER_CELL_STAGES)
    return [{"cells": f"{target:,.0f}", "workers": count,
             "workers' share (s)": on_workers * target / count, "client, per cell (s)": in_client * target,
             "sketch clustering (s)": fixed,
             "expected minutes": (on_workers * target / count + in_client * target + fixed) / 60,
             "client GB": client_gb * target / n_cells}
            for target in targets for count in worker_counts]


def figure(rows: list[dict], path: str) -> None:
    """Seconds and peak memory against cells, one line per route."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for route in dict.fromkeys(row["route"] for row in rows):
        mine = [row for row in rows if row["route"] == route]
        cells = [int(row["cells"].replace(",", "")) for row in mine]
        left.plot(cells, [row["seconds"] for row in mine], "o-", label=route)
        right.plot(cells, [row["all GB"] for row in mine], "o-", label=f"{route}, all processes")
        if route.startswith("Dask"):
            right.plot(cells, [row["largest worker GB"] for row in mine], "o--", label=f"{route}, largest worker")
    for axis, label in ((left, "seconds"), (right, "peak resident memory (GB)")):
        axis.set(xscale="log", yscale="log", xlabel="cells", ylabel=label)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def measure(n_cells: int, args, store: Path) -> list[dict]:
    tissue = synthetic_tissue(n_cells=n_cells, n_slides=max(1, round(150 * n_cells / 1e6)), random_state=0)
    truth = tissue.obs["domain"].to_numpy()
    write_domains(tissue, store, features=True)
    options = dict(slide_key="roi", max_dist=20, clustering_method="leiden", resolutions=RESOLUTIONS,
                   sketch_size=args.sketch_size, random_state=0, progress=False)
    rows, in_process = [], None
    if n_cells <= args.in_process_max:
        release_memory()
        with TreeMemory() as memory:
            started = time.perf_counter()
            result = utag(tissue, **options)
            seconds = time.perf_counter() - started
        in_process = result.obs[KEY].to_numpy()
        rows.append({"cells": f"{n_cells:,}", "route": "in process", "seconds": seconds,
                     "client GB": memory.gb()[0], "largest worker GB": float("nan"), "all GB": memory.gb()[2],
                     "ARI vs in process": 1.0, "ARI vs truth": adjusted_rand_score(truth, in_process),
                     "stages (s)": _stages(result)})
        del result
    del tissue
    release_memory()

    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit=None) as cluster, Client(cluster), TreeMemory() as memory:
        started = time.perf_counter()
        result = utag(read_lazy(store), **options)
        seconds = time.perf_counter() - started
    labels = result.obs[KEY].to_numpy()
    rows.append({"cells": f"{n_cells:,}", "route": f"Dask, {args.workers} workers", "seconds": seconds,
                 "client GB": memory.gb()[0], "largest worker GB": memory.gb()[1], "all GB": memory.gb()[2],
                 "ARI vs in process": adjusted_rand_score(in_process, labels) if in_process is not None
                 else float("nan"),
                 "ARI vs truth": adjusted_rand_score(truth, labels), "stages (s)": _stages(result),
                 "timings": dict(result.uns["utag"]["timings"])})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=float, nargs="+", default=[1e6, 3e6])
    parser.add_argument("--sketch-size", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--in-process-max", type=float, default=3e6,
                        help="run the in-process route up to this many cells (default 3e6)")
    parser.add_argument("--out", help="also write the table to this markdown file")
    parser.add_argument("--figure", help="also draw time and memory against cells to this image")
    args = parser.parse_args()

    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="utag-distributed-"))
    try:
        for n_cells in sorted(int(c) for c in args.cells):
            rows += measure(n_cells, args, scratch / f"cells_{n_cells}.zarr")
            print(markdown([{k: v for k, v in row.items() if k != "timings"} for row in rows]), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    dask_rows = [row for row in rows if row["route"].startswith("Dask")]
    growth = []
    for small, large in zip(dask_rows[:-1], dask_rows[1:]):
        cells = [int(row["cells"].replace(",", "")) for row in (small, large)]
        exponent = np.log(large["seconds"] / small["seconds"]) / np.log(cells[1] / cells[0])
        growth.append({"from": small["cells"], "to": large["cells"], "time exponent": float(exponent)})
    shown = [{k: v for k, v in row.items() if k != "timings"} for row in rows]
    text = (f"sketch_size={args.sketch_size:,}; Leiden at {', '.join(map(str, RESOLUTIONS))}; ARI columns for "
            f"resolution 0.1.\n\n" + markdown(shown, digits=2))
    if growth:
        text += "\n\nHow the Dask route's time grows with cells (1: linear):\n\n" + markdown(growth, digits=2)
    largest = dask_rows[-1]
    text += (f"\n\nOn paper: 100 million cells, from the stage times of the {largest['cells']}-cell Dask run "
             f"(worker stages {', '.join(WORKER_STAGES)} divided among the workers; client stages "
             f"{', '.join(CLIENT_PER_CELL_STAGES)} growing with cells; the sketch's clustering fixed):\n\n"
             + markdown(projection(largest["timings"], int(largest["cells"].replace(",", "")), args.workers,
                                   largest["client GB"]), digits=0))
    if args.figure:
        figure(rows, args.figure)
    text += "\n\n" + provenance()
    publish(args.out, "dask_engine.py", text)


if __name__ == "__main__":
    main()
