"""How time and memory of ``utag()`` grow with the number of cells.

Usage (from the repository root)::

    python benchmarks/scaling.py --cells 1e4 1e5 1e6

After a small run that fills numba's cache (a fresh checkout compiles its code on first
use), every size runs in a fresh process (so that its peak memory is its own) on IMC-like
synthetic data with one slide per ~6,667 cells, ``max_dist=20``, Leiden at 0.05, 0.1 and
0.3. Prints a markdown table of seconds and peak resident memory per size, and the
exponent ``b`` of ``seconds ~ cells^b`` (and of memory) fitted by least squares on the
logarithms. For comparison, ``n log n`` between 10,000 and 1,000,000 cells has an
exponent of 1.09.
"""
from __future__ import annotations

import argparse
import multiprocessing
import time

import numpy as np
from measure import peak_memory, provenance, reset_peak_memory


def _one_size(n_cells: int, queue) -> None:
    from utag import utag
    from utag.datasets import synthetic_tissue

    adata = synthetic_tissue(n_cells=n_cells, n_slides=max(1, round(n_cells / 6_667)), random_state=0)
    reset_peak_memory()
    started = time.perf_counter()
    utag(adata, slide_key="roi", max_dist=20, clustering_method="leiden", resolutions=[0.05, 0.1, 0.3],
         progress=False)
    queue.put((time.perf_counter() - started, peak_memory()))


def measure(n_cells: int) -> tuple[float, float]:
    """Seconds and peak resident memory (GB) of one run in a fresh process."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_one_size, args=(n_cells, queue))
    child.start()
    seconds, memory = queue.get()
    child.join()
    return seconds, memory


def exponent(cells, values) -> float:
    """Slope of log(values) against log(cells)."""
    return float(np.polyfit(np.log(cells), np.log(values), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=float, nargs="+", default=[1e4, 1e5, 1e6])
    parser.add_argument("--out", help="also append the table to this markdown file")
    args = parser.parse_args()
    sizes = [int(n) for n in args.cells]
    measure(2_000)  # compiles the numba code into its cache, which a fresh checkout lacks
    runs = [measure(n) for n in sizes]
    seconds, memory = zip(*runs)
    lines = ["| cells | seconds | peak memory (GB) |", "| ---: | ---: | ---: |"]
    lines += [f"| {n:,} | {s:.2f} | {m:.2f} |" for n, s, m in zip(sizes, seconds, memory)]
    n_log_n = exponent(sizes, [n * np.log(n) for n in sizes])
    over = ", ".join(f"{n:,}" for n in sizes)
    lines += ["", f"Fitted exponent over {over} cells: time {exponent(sizes, seconds):.2f}, "
              f"peak memory {exponent(sizes, memory):.2f} (n log n: {n_log_n:.2f})."]
    command = f"`python benchmarks/scaling.py --cells {' '.join(f'{n:.0e}'.replace('+0', '') for n in sizes)}`"
    table = command + "\n\n" + provenance() + "\n\n" + "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "a") as handle:
            handle.write(table + "\n\n")


if __name__ == "__main__":
    main()
