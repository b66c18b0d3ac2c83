"""Time and memory of every stage of utag on synthetic IMC-like data.

Usage (from the repository root, with utag installed)::

    python benchmarks/run.py --cells 1e5 --slides 15
    python benchmarks/run.py --cells 1e6 --slides 150 --downstream --out docs/benchmark.md

Prints a markdown table: stage, cells, seconds, peak resident memory (GB) of the process
while the stage ran. ``--downstream`` adds the analysis functions of ``utag.analysis`` on
the result (each builds its own spatial graph with ``max_dist``).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import threading
import time

import psutil

import utag.segmentation
from utag import analysis
from utag import utag as run_utag
from utag.datasets import synthetic_tissue


class MemorySampler:
    """Resident memory of this process, sampled every few milliseconds in a thread."""

    def __init__(self, interval: float = 0.005):
        self.samples: list[tuple[float, int]] = []
        self._process = psutil.Process(os.getpid())
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self._process.memory_info().rss))
            time.sleep(self._interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()

    def peak(self, start: float, end: float) -> float:
        """Peak RSS in GB between two ``perf_counter`` times."""
        inside = [rss for t, rss in self.samples if start <= t <= end]
        nearest = min(self.samples, key=lambda s: abs(s[0] - end))[1] if self.samples else 0
        return max(inside or [nearest]) / 1e9


class RecordingStopwatch(utag.segmentation.Stopwatch):
    """utag's stopwatch, also keeping when each stage started and ended."""

    intervals: list[tuple[str, float, float]] = []

    @contextlib.contextmanager
    def __call__(self, stage: str):
        started = time.perf_counter()
        with super().__call__(stage):
            yield
        RecordingStopwatch.intervals.append((stage, started, time.perf_counter()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=float, default=1e5, help="number of cells (e.g. 1e6)")
    parser.add_argument("--slides", type=int, default=15)
    parser.add_argument("--markers", type=int, default=40)
    parser.add_argument("--max-dist", type=float, default=20.0)
    parser.add_argument("--method", nargs="+", default=["leiden"], choices=["leiden", "parc", "kmeans"])
    parser.add_argument("--resolutions", nargs="+", type=float, default=[0.05, 0.1, 0.3])
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--downstream", action="store_true", help="also time the analysis functions")
    parser.add_argument("--permutations", type=int, default=100, help="for the colocalisation test")
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args()
    n_cells = int(args.cells)

    adata = synthetic_tissue(n_cells=n_cells, n_slides=args.slides, n_markers=args.markers, random_state=0)
    utag.segmentation.Stopwatch = RecordingStopwatch
    rows = []
    with MemorySampler() as memory:
        started = time.perf_counter()
        result = run_utag(adata, slide_key="roi", max_dist=args.max_dist, clustering_method=args.method,
                          resolutions=args.resolutions, processes=args.processes, progress=False)
        ended = time.perf_counter()
        merged: dict[str, list] = {}
        for stage, start, end in RecordingStopwatch.intervals:
            entry = merged.setdefault(stage, [0.0, 0.0])
            entry[0] += end - start
            entry[1] = max(entry[1], memory.peak(start, end))
        rows += [(stage, seconds, peak) for stage, (seconds, peak) in merged.items()]
        rows.append(("**utag() total**", ended - started, memory.peak(started, ended)))

        if args.downstream:
            key = result.uns["utag"]["label_keys"][0]
            common = dict(slide_key="roi", max_dist=args.max_dist)
            calls = {
                "domain_connectivity": lambda: analysis.domain_connectivity(result, key, **common),
                "celltype_connectivity": lambda: analysis.celltype_connectivity(result, key, "cell_type", **common),
                "domain_composition": lambda: analysis.domain_composition(result, key, "cell_type", slide_key="roi"),
                f"colocalization ({args.permutations} permutations)":
                    lambda: analysis.measure_per_domain_cell_type_colocalization(
                        result, key, "cell_type", n_permutations=args.permutations, **common),
                "evaluate_clustering": lambda: analysis.evaluate_clustering(result, key, "cell_type", **common),
                "evaluate_performance": lambda: analysis_scores(result, key),
            }
            for name, call in calls.items():
                started = time.perf_counter()
                call()
                ended = time.perf_counter()
                rows.append((name, ended - started, memory.peak(started, ended)))

    header = (f"{n_cells:,} cells, {args.slides} slides, {args.markers} markers, max_dist {args.max_dist:g}, "
              f"methods {', '.join(args.method)}, resolutions {', '.join(map(str, args.resolutions))}; "
              f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
              f"Python {platform.python_version()}")
    lines = [header, "", "| stage | cells | seconds | peak memory (GB) |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {stage} | {n_cells:,} | {seconds:.2f} | {peak:.2f} |" for stage, seconds, peak in rows]
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "a") as handle:
            handle.write(table + "\n\n")


def analysis_scores(result, key):
    from utag.evaluation import evaluate_performance

    return evaluate_performance(result, truth_key="domain", pred_keys=key, batch_key="roi")


if __name__ == "__main__":
    main()
