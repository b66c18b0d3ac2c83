"""The 1,000,000-cell benchmark before and after squidpy built utag's spatial graphs.

Usage (from the repository root, with utag installed from it)::

    python benchmarks/squidpy_switch.py --out docs/generated/squidpy_switch.md

Checks out ``--before`` (the last commit with utag's own KD-tree graph code) into a
temporary git worktree and runs ``benchmarks/run.py`` there against that source, then
against the working tree, one right after the other on the same machine.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BEFORE = "bd198ff"

#: Runs a script against the utag source in UTAG_SOURCE instead of the installed (editable) utag.
_WITH_SOURCE = """
import os, runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, os.environ["UTAG_SOURCE"])
sys.path.insert(0, os.path.dirname(sys.argv[1]))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default=BEFORE, help=f"commit measured as 'before' (default {BEFORE})")
    parser.add_argument("--cells", default="1e6")
    parser.add_argument("--slides", default="150")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.unlink(missing_ok=True)
    common = [str(HERE / "run.py"), "--cells", args.cells, "--slides", args.slides, "--out", str(out)]
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(source), args.before], cwd=ROOT, check=True)
        try:
            environment = {**os.environ, "UTAG_SOURCE": str(source)}
            subprocess.run([sys.executable, "-c", _WITH_SOURCE, *common, "--label",
                            f"before ({args.before}: utag's own KD-tree graphs)"], env=environment, check=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(source)], cwd=ROOT, check=True)
    subprocess.run([sys.executable, *common, "--label", "after (squidpy builds the graphs)"], check=True)
    print(out.read_text())


if __name__ == "__main__":
    main()
