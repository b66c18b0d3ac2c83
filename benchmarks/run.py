"""Time and memory of every stage of utag on synthetic IMC-like data.

Usage (from the repository root, with utag installed)::

    python benchmarks/run.py --cells 1e5 --slides 15
    python benchmarks/run.py --cells 1e6 --slides 150 --downstream --out docs/benchmark.md
    python benchmarks/run.py --cells 1e5 --slides 15 --compare --timeout 1800

Prints a markdown table: stage, cells, seconds, peak resident memory (GB) of the process
while the stage ran. ``--downstream`` adds the analysis functions of ``utag.analysis`` on
the result (each builds its own spatial graph with ``max_dist``).

``--flavor utag multiscale`` runs ``utag()`` with each flavour in turn on the same data
(after an untimed warm-up run of each on 6,000 cells) and prints the ratio of their times.

``--compare`` also runs the route a user would otherwise take on the same data in the same
run, squidpy's ``spatial_neighbors_radius`` + ``calculate_niche(flavor="utag")`` (see
``benchmarks/reference.py`` for the options and why), in a separate process stopped after
``--timeout`` seconds, and prints its stages, a table of both routes (seconds, peak memory,
speed-up = reference seconds / utag seconds) and the adjusted Rand index of each route's
labels against the synthetic truth (``obs['domain']``) at every resolution. Generating the
data, writing it for the other process and reading it there are not timed. Peak memory is
that of the process running the route (utag's message-passing workers, a few MB per
slide, are not counted).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import time
from importlib.metadata import version

import psutil
from measure import (
    MemorySampler,
    ari_by_resolution,
    ari_table,
    peak_memory,
    provenance,
    reset_peak_memory,
    stage_table,
    utag_labellings,
)
from reference import TOTAL, run_reference

import utag
import utag.segmentation
from utag import analysis, evaluation
from utag import utag as run_utag
from utag.datasets import synthetic_tissue


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
    parser.add_argument("--flavor", nargs="+", default=["utag"], choices=["utag", "multiscale"],
                        help="utag() flavour(s); with both, each is run in turn on the same data and the "
                             "ratio of their times printed")
    parser.add_argument("--sketch-size", default="auto",
                        help="utag()'s sketch_size: auto (default), none (every cell), a fraction or a number of cells")
    parser.add_argument("--use-rep", choices=["X", "X_pca"], help="kNN graph on X or X_pca (default: utag's choice)")
    parser.add_argument("--downstream", action="store_true", help="also time the analysis functions")
    parser.add_argument("--permutations", type=int, default=100, help="for the colocalisation test")
    parser.add_argument("--compare", action="store_true",
                        help="also run squidpy's UTAG route on the same data (separate process) and compare")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="with --compare: stop the squidpy route after this many seconds (default 1800)")
    parser.add_argument("--no-warmup", action="store_true",
                        help="with --compare: count numba's one-off compilation in the squidpy route")
    parser.add_argument("--out", help="also write the table(s) to this markdown file")
    parser.add_argument("--label", help="a title for the run in the output (e.g. the version measured)")
    args = parser.parse_args()
    n_cells = int(args.cells)

    adata = synthetic_tissue(n_cells=n_cells, n_slides=args.slides, n_markers=args.markers, random_state=0)
    utag.segmentation.Stopwatch = RecordingStopwatch
    sections, totals = [], {}
    if len(args.flavor) > 1:  # compile and start workers first, so that no flavour pays for it
        small = synthetic_tissue(n_cells=6_000, n_slides=2, n_markers=args.markers, random_state=1)
        for flavor in args.flavor:
            run_utag(small, slide_key="roi", max_dist=args.max_dist, clustering_method=args.method,
                     resolutions=args.resolutions, processes=args.processes, progress=False, flavor=flavor)
    with MemorySampler() as memory:
        for flavor in args.flavor:
            rows, result, utag_total, start_gb = time_utag(adata, args, memory, flavor)
            totals[flavor] = utag_total
            if args.downstream and flavor == args.flavor[0]:
                rows += time_downstream(result, args, memory)
            if flavor != args.flavor[-1]:
                del result
                gc.collect()
            header = ((f"**{args.label}**: " if args.label else "")
                      + f"{n_cells:,} cells, {args.slides} slides, {args.markers} markers, max_dist {args.max_dist:g}, "
                      f"flavor {flavor}, methods {', '.join(args.method)}, resolutions "
                      f"{', '.join(map(str, args.resolutions))}; {provenance()}")
            sections.append(header + "\n\n" + stage_table(rows, n_cells))
            print(sections[-1] + "\n", flush=True)
    if len(totals) > 1:
        base = totals[args.flavor[0]]
        ratios = "; ".join(f"{flavor}: {total[1] / base[1]:.2f}x the time, peak {total[2]:.2f} GB"
                           for flavor, total in totals.items() if flavor != args.flavor[0])
        sections.append(f"Against flavor {args.flavor[0]} ({base[1]:.2f} s, peak {base[2]:.2f} GB) in the same run: "
                        f"{ratios}.")
        print(sections[-1], flush=True)
    utag_total = totals[args.flavor[-1]]
    if args.compare:
        compared = compare_routes(adata, result, (*utag_total[1:], start_gb), args)
        sections += compared
        print("\n\n" + "\n\n".join(compared))
    if args.out:
        with open(args.out, "a") as handle:
            handle.write("\n\n".join([command_line(), *sections]) + "\n\n")


def command_line() -> str:
    """How this run was started, without ``--out FILE``, as the tables' first line."""
    words = sys.argv[1:]
    if "--out" in words:
        del words[words.index("--out"):words.index("--out") + 2]
    words = [word for word in words if not word.startswith("--out=")]
    return f"`python benchmarks/run.py {' '.join(words)}`"


def time_utag(adata, args, memory, flavor: str):
    """One ``utag()`` run: rows (stage, seconds, peak GB), the result, the total row and
    the memory at the start (GB)."""
    RecordingStopwatch.intervals = []
    gc.collect()
    start_gb = psutil.Process().memory_info().rss / 1e9
    reset_peak_memory()
    started = time.perf_counter()
    extra = {"use_rep": args.use_rep} if args.use_rep else {}
    extra["sketch_size"] = {"auto": "auto", "none": None}.get(args.sketch_size.lower()) \
        if args.sketch_size.lower() in ("auto", "none") else float(args.sketch_size)
    result = run_utag(adata, slide_key="roi", max_dist=args.max_dist, clustering_method=args.method,
                      resolutions=args.resolutions, processes=args.processes, progress=False, flavor=flavor,
                      **extra)
    ended = time.perf_counter()
    merged: dict[str, list] = {}
    for stage, start, end in RecordingStopwatch.intervals:
        entry = merged.setdefault(stage, [0.0, 0.0])
        entry[0] += end - start
        entry[1] = max(entry[1], memory.peak(start, end))
    rows = [(stage, seconds, peak) for stage, (seconds, peak) in merged.items()]
    utag_total = ("**utag() total**", ended - started, max(memory.peak(started, ended), peak_memory()))
    return rows + [utag_total], result, utag_total, start_gb


def time_downstream(result, args, memory) -> list[tuple[str, float, float]]:
    """Rows of the analysis functions run on ``result``."""
    key = result.uns["utag"]["label_keys"][0]
    common = dict(slide_key="roi", max_dist=args.max_dist)
    calls = {
        "domain_connectivity": lambda: analysis.domain_connectivity(result, key, **common),
        "celltype_connectivity": lambda: analysis.celltype_connectivity(result, key, "cell_type", **common),
        "domain_composition": lambda: analysis.domain_composition(result, key, "cell_type", slide_key="roi"),
        f"colocalization ({args.permutations} permutations)":
            lambda: analysis.measure_per_domain_cell_type_colocalization(
                result, key, "cell_type", n_permutations=args.permutations, **common),
        "evaluate_clustering": lambda: evaluation.evaluate_clustering(result, key, "cell_type", **common),
        "evaluate_performance": lambda: analysis_scores(result, key),
    }
    rows = []
    for name, call in calls.items():
        started = time.perf_counter()
        call()
        ended = time.perf_counter()
        rows.append((name, ended - started, memory.peak(started, ended)))
    return rows


def compare_routes(adata, result, utag_run: tuple[float, float, float], args) -> list[str]:
    """Run squidpy's UTAG route on ``adata``; markdown sections comparing it with utag's ``result``.

    Both routes cluster at the same resolutions with 15 neighbours, each with its own Leiden
    (utag: igraph, 2 iterations; squidpy via ``sc.tl.leiden``: leidenalg until convergence),
    which is what a user of each gets; the ARI table shows what that costs in accuracy.
    ``utag_run``: utag's seconds, peak memory and memory at the start (GB).
    """
    print(f"\nrunning the squidpy route (timeout {args.timeout:g} s) ...", flush=True)
    reference = run_reference(adata, "roi", args.max_dist, args.resolutions, timeout=args.timeout,
                              warmup=not args.no_warmup)
    n_cells = adata.n_obs
    versions = f"squidpy {version('squidpy')}, scanpy {version('scanpy')}, leidenalg {version('leidenalg')}"
    if reference.error:
        return [f"The squidpy route failed ({versions}) after {reference.seconds:.1f} s: {reference.error}"]
    sections = []
    if reference.finished:
        stages = sorted(reference.stages, key=lambda row: row[0] == TOTAL)  # total last, as in utag's table
        sections.append(f"squidpy route ({versions}; separate process, numba compiled beforehand: "
                        f"{'no' if args.no_warmup else 'yes'})\n\n" + stage_table(stages, n_cells))

    utag_seconds, utag_peak, utag_start = utag_run
    bound = ">" if reference.timed_out else ""
    lines = ["| route | cells | seconds | peak memory (GB) | memory at start (GB) | speed-up |",
             "| --- | ---: | ---: | ---: | ---: | ---: |",
             f"| utag: `utag()` | {n_cells:,} | {utag_seconds:.2f} | {utag_peak:.2f} | {utag_start:.2f} | "
             f"{bound}{reference.seconds / utag_seconds:.1f} |",
             f"| squidpy: `spatial_neighbors_radius` + `calculate_niche(flavor='utag')` | {n_cells:,} | "
             f"{bound}{reference.seconds:.2f} | {'>=' if bound else ''}{reference.peak_gb:.2f} | "
             f"{reference.start_gb:.2f} | 1 |"]
    note = (f"\n\nThe squidpy route was stopped after {reference.seconds:.0f} s (--timeout); its time and memory "
            "are lower bounds." if reference.timed_out else "")
    if reference.shim:
        note += ("\n\nscipy.sparse.csr_array.getnnz was restored in the squidpy process (from 8,192 cells on, "
                 "scanpy 1.11 + pynndescent 0.7 + SciPy >= 1.14 fail without it; see benchmarks/reference.py).")
    if set(args.method) != {"leiden"}:
        note += (f"\n\nutag's time includes its {', '.join(m for m in args.method if m != 'leiden')} runs, "
                 "which the squidpy route does not do.")
    sections.append("speed-up = squidpy seconds / utag seconds; memory at start: the process's resident memory "
                    "with its libraries imported and the data loaded\n\n" + "\n".join(lines) + note)

    truth = adata.obs["domain"]
    scores = {f"utag {method}": ari_by_resolution(truth, labels) for method, labels in utag_labellings(result).items()}
    if reference.finished:
        scores["squidpy"] = ari_by_resolution(truth, reference.labels)
    sections.append("Adjusted Rand index against the truth (obs['domain']), pooled over slides\n\n" + ari_table(scores))
    return sections


def analysis_scores(result, key):
    from utag.evaluation import evaluate_performance

    return evaluate_performance(result, truth_key="domain", pred_keys=key, batch_key="roi")


if __name__ == "__main__":
    main()
