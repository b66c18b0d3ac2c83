"""The 1,000,000-cell benchmark before and after squidpy built utag's spatial graphs.

Usage (from the repository root, with utag installed from it)::

    python benchmarks/squidpy_switch.py --out docs/generated/squidpy_switch.md

Checks out ``--before`` (the last commit with utag's own KD-tree graph code) into a
temporary git worktree and runs its own ``benchmarks/run.py`` against its own source, then
the working tree's against the working tree, one right after the other on the same machine.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from measure import checkout, run_script

HERE = Path(__file__).resolve().parent
BEFORE = "bd198ff"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default=BEFORE, help=f"commit measured as 'before' (default {BEFORE})")
    parser.add_argument("--cells", default="1e6")
    parser.add_argument("--slides", default="150")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.write_text(f"**before** ({args.before}: utag's own KD-tree graphs):\n\n")
    common = ["--cells", args.cells, "--slides", args.slides, "--out", str(out)]
    with checkout(args.before) as before:  # that commit's own run.py (it may lack today's options)
        run_script(before / "benchmarks" / "run.py", common, source=before)
    run_script(HERE / "run.py", [*common, "--label", "after (squidpy builds the graphs)"])
    print(out.read_text())


if __name__ == "__main__":
    main()
