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
the seconds of each stage per configuration and the ratio of each ``utag()`` total to
the one before.
"""
from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from measure import checkout, provenance, run_script

HERE = Path(__file__).resolve().parent
BEFORE = "fa5aa15"
#: (label, options of today's run.py)
TODAY = [
    ("today, defaults", []),
    ("today, every cell clustered", ["--sketch-size", "none"]),
    ("today, every cell, kNN on X_pca", ["--sketch-size", "none", "--use-rep", "X_pca"]),
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
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args()

    runs = {}
    with checkout(args.before) as before:
        runs[f"before ({args.before})"] = timed(before / "benchmarks" / "run.py", [], before, args)
    for label, options in TODAY:
        runs[label] = timed(HERE / "run.py", options, None, args)

    stages = list(dict.fromkeys(stage for seconds in runs.values() for stage in seconds))
    labels = list(runs)
    lines = ["| stage | " + " | ".join(labels) + " |", "| --- |" + " ---: |" * len(labels)]
    for stage in stages:
        lines.append(f"| {stage} | " + " | ".join(f"{runs[label][stage]:.2f}" if stage in runs[label] else "-"
                                                  for label in labels) + " |")
    total = "utag() total"
    base = runs[labels[0]][total]
    lines.append("| ratio of the totals to before | "
                 + " | ".join(f"{runs[label][total] / base:.2f}" for label in labels) + " |")
    table = (f"`python benchmarks/no_slowdown.py --cells {args.cells} --slides {args.slides}`: seconds per stage "
             f"of `utag()` (Leiden at 0.05, 0.1 and 0.3, 40 markers, `max_dist=20`), each configuration in its "
             f"own process after a compiling warm-up; {provenance()}\n\n" + "\n".join(lines) + "\n")
    print(table)
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
