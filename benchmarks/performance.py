"""Write the timing tables of ``docs/performance.md``, one file per benchmark.

Usage (from the repository root, with utag installed; nothing else running, as every
table is a timing)::

    python benchmarks/performance.py                 # all of them (about an hour on 2 cores)
    python benchmarks/performance.py 100k 1m         # some of them

Each benchmark runs in its own process and replaces
``docs/generated/performance_<name>.md``, which ``docs/performance.md`` includes. Every
table starts with the machine, the utag commit and the date it was measured on.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GENERATED = HERE.parent / "docs" / "generated"

#: name -> (script, arguments)
BENCHMARKS = {
    "100k": ("run.py", ["--cells", "1e5", "--slides", "15"]),
    "1m": ("run.py", ["--cells", "1e6", "--slides", "150", "--downstream"]),
    "1m-one-slide": ("run.py", ["--cells", "1e6", "--slides", "1"]),
    "1m-parc": ("run.py", ["--cells", "1e6", "--slides", "150", "--method", "parc"]),
    "1m-kmeans": ("run.py", ["--cells", "1e6", "--slides", "150", "--method", "kmeans"]),
    "1m-multiscale": ("run.py", ["--cells", "1e6", "--slides", "150", "--flavor", "utag", "multiscale"]),
    "5m": ("run.py", ["--cells", "5e6", "--slides", "750", "--sketch-size", "none"]),
    "scaling": ("scaling.py", ["--cells", "1e4", "1e5", "1e6"]),
    "squidpy-100k": ("run.py", ["--cells", "1e5", "--slides", "15", "--compare", "--timeout", "1800"]),
    "graph-memory": ("graph_memory.py", []),
    "workers": ("workers.py", []),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default all): {', '.join(BENCHMARKS)}")
    names = parser.parse_args().names or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    GENERATED.mkdir(parents=True, exist_ok=True)
    for name in names:
        script, arguments = BENCHMARKS[name]
        out = GENERATED / f"performance_{name}.md"
        out.unlink(missing_ok=True)
        command = [sys.executable, str(HERE / script), *arguments, "--out", str(out)]
        print(f"== {name}: python benchmarks/{script} {' '.join(arguments)}", flush=True)
        subprocess.run(command, check=True)
        text = out.read_text().rstrip() + "\n"
        line = f"`python benchmarks/{script} {' '.join(arguments)}`"
        if not text.startswith(line):  # run.py may name its command itself
            out.write_text(f"{line}\n\n{text}")


if __name__ == "__main__":
    main()
