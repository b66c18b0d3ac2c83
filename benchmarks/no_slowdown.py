"""Did the fidelity work (issue 14) slow ``utag()`` down? Before and after, in one run.

Usage (from the repository root, with utag installed from it)::

    python benchmarks/no_slowdown.py --out docs/generated/no_slowdown.md     # 1M cells, 150 slides
    python benchmarks/no_slowdown.py --cells 1e5 --slides 15                 # quick

Checks out ``--before`` (default ``fa5aa15``, the last commit before the faithful Leiden,
the kNN graph on ``X`` and the merging of small domains) into a temporary git worktree
and times its own ``benchmarks/run.py`` against its own source; then times the working
tree's ``run.py`` at its defaults and with each change undone that can be undone by an
option (``--use-rep X_pca``: the kNN graph on the 10 principal components as before;
``--sketch-size none``: every cell clustered, no sketch). Every configuration first runs
once on a small tissue, so that numba's compilation (cached on disk) is not timed. Prints
the median seconds of each stage per configuration over ``--repeats`` runs (the
configurations take turns, so that a slow spell of the machine falls on all of them), every
run's ``utag()`` total, and the ratio of each median total to the one before. A single
1,000,000-cell run varies by about 10% from one run to the next on this machine, as much as
the target, hence the repeats.
"""
from __future__ import annotations

import argparse
import re
import statistics
import tempfile
from pathlib import Path

from measure import checkout, provenance, run_script

HERE = Path(__file__).resolve().parent
BEFORE = "fa5aa15"
#: (label, options of today's run.py)
TODAY = [
    ("today, defaults", []),  # at a million cells the default clusters every cell (no sketch)
    ("today, kNN on X_pca", ["--use-rep", "X_pca"]),
]


def stage_seconds(markdown: str) -> dict[str, float]:
    """Seconds per stage from the first stage table that ``run.py --out`` wrote."""
    seconds = {}
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"[\d.]+", cells[2]):
            seconds.setdefault(cells[0].strip("*"), float(cells[2]))
    return seconds


def timed(script: Path, options: list[str], source: Path | None, args) -> dict[str, float]:
    size = ["--cells", args.cells, "--slides", args.slides]
    run_script(script, ["--cells", "2e4", "--slides", "4", *options], source=source, capture=True)  # compile
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "table.md"
        run_script(script, [*size, *options, "--out", str(out)], source=source, capture=True)
        return stage_seconds(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default=BEFORE, help=f"commit measured as 'before' (default {BEFORE})")
    parser.add_argument("--cells", default="1e6")
    parser.add_argument("--slides", default="150")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each configuration (default 3)")
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args()

    runs: dict[str, list[dict[str, float]]] = {}
    with checkout(args.before) as before:
        configurations = [(f"before ({args.before})", before / "benchmarks" / "run.py", [], before)]
        configurations += [(label, HERE / "run.py", options, None) for label, options in TODAY]
        for _ in range(args.repeats):
            for label, script, options, source in configurations:
                runs.setdefault(label, []).append(timed(script, options, source, args))

    median = {label: {stage: statistics.median(run[stage] for run in repeats if stage in run)
                      for stage in dict.fromkeys(stage for run in repeats for stage in run)}
              for label, repeats in runs.items()}
    stages = list(dict.fromkeys(stage for seconds in median.values() for stage in seconds))
    labels = list(runs)
    lines = ["| stage (median seconds) | " + " | ".join(labels) + " |", "| --- |" + " ---: |" * len(labels)]
    for stage in stages:
        lines.append(f"| {stage} | " + " | ".join(f"{median[label][stage]:.2f}" if stage in median[label] else "-"
                                                  for label in labels) + " |")
    total = "utag() total"
    lines.append("| utag() total, every run | "
                 + " | ".join(", ".join(f"{run[total]:.1f}" for run in runs[label]) for label in labels) + " |")
    base = median[labels[0]][total]
    lines.append("| ratio of the median totals to before | "
                 + " | ".join(f"{median[label][total] / base:.2f}" for label in labels) + " |")
    table = (f"`python benchmarks/no_slowdown.py --cells {args.cells} --slides {args.slides}`: seconds per stage "
             f"of `utag()` (Leiden at 0.05, 0.1 and 0.3, 40 markers, `max_dist=20`), the median of {args.repeats} "
             f"runs per configuration, the configurations taking turns, each run in its own process after a "
             f"compiling warm-up; {provenance()}\n\n" + "\n".join(lines) + "\n")
    print(table)
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
