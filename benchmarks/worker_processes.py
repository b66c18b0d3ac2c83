"""When worker processes pay off for the slides' graphs and message passing.

Usage (from the repository root, with utag installed; nothing else running)::

    python benchmarks/worker_processes.py --out docs/generated/worker_processes.md

For synthetic tissues of 20,000 to 1,000,000 cells (one slide per ~6,700 cells, as
``benchmarks/run.py`` makes them), each in a fresh Python process, the script times
``utag.message_passing.pass_messages`` (step 1 and 2 of UTAG on every slide) in that
process (``processes=1``), then in worker processes (one per core) on a first call,
which starts them (each imports squidpy), and on a second call, which finds them
started. ``utag()`` uses worker processes by default only from
``utag.graph.POOL_MIN_CELLS`` cells on.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from labelled import markdown, publish
from measure import provenance

ONE_SIZE = """
import json, sys, time, warnings
warnings.filterwarnings("ignore")
from utag.datasets import synthetic_tissue
from utag.message_passing import pass_messages

n_cells, n_slides, workers = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

def timed(adata, processes):
    codes = adata.obs["roi"].cat.codes.to_numpy()
    started = time.perf_counter()
    pass_messages(adata.obsm["spatial"], adata.X, codes, 20.0, processes=processes)
    return time.perf_counter() - started

timed(synthetic_tissue(n_cells=2_000, n_slides=2, random_state=1), 1)  # imports and compiled code, in this process
adata = synthetic_tissue(n_cells=n_cells, n_slides=n_slides, random_state=0)
print(json.dumps({"in": timed(adata, 1), "first": timed(adata, workers), "second": timed(adata, workers)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=float, nargs="+", default=[20_000, 100_000, 300_000, 1_000_000])
    parser.add_argument("--out", help="also write the table (markdown, with machine and date) to this file")
    args = parser.parse_args()
    from utag.graph import POOL_MIN_CELLS

    workers = os.cpu_count() or 1
    rows = []
    for n_cells in map(int, args.cells):
        n_slides = max(2, round(n_cells / 6_667))
        done = subprocess.run([sys.executable, "-c", ONE_SIZE, str(n_cells), str(n_slides), str(workers)],
                              capture_output=True, text=True, check=True)
        seconds = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"cells": f"{n_cells:,}", "slides": n_slides, "in this process (s)": seconds["in"],
                     f"{workers} workers, first call (s)": seconds["first"],
                     f"{workers} workers, second call (s)": seconds["second"],
                     "utag() by default": "worker processes" if n_cells >= POOL_MIN_CELLS else "this process"})
    text = (f"Graph and message passing (`pass_messages`, 40 markers, radius 20), each size in a fresh process; "
            f"`POOL_MIN_CELLS` = {POOL_MIN_CELLS:,}.\n\n{markdown(rows, digits=2)}\n\n{provenance()}")
    publish(args.out, "worker_processes.py", text)


if __name__ == "__main__":
    main()
