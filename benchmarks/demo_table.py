"""Keep the README's demo table equal to what ``utag demo`` prints.

Usage (from the repository root, with utag installed)::

    python benchmarks/demo_table.py --write              # run the demo, put its table in README.md
    utag demo > demo.log && python benchmarks/demo_table.py --check demo.log   # what CI does

The table sits in README.md between the markers ``<!-- demo table -->`` and
``<!-- end demo table -->``. ``--check`` exits 1, showing both tables, when the demo's
output (a log of ``utag demo``) no longer matches the README.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import platform
import re
import sys
from datetime import date
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- demo table -->", "<!-- end demo table -->"
HEADING = "Agreement with the expert compartments:"


def demo_table(output: str) -> str:
    """The table ``utag demo`` printed in ``output`` (the lines after its heading)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.rstrip().endswith(HEADING)) + 1
    table = []
    for line in lines[start:]:
        if not line.strip():
            break
        table.append(line.rstrip())
    return "\n".join(table)


def readme_table(readme: str) -> str:
    block = re.search(re.escape(START) + r"(.*?)" + re.escape(END), readme, re.S).group(1)
    return re.search(r"```\n(.*?)\n```", block, re.S).group(1)


def run_demo() -> str:
    from utag.cli import main

    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        main(["demo", "--quiet"])
    return captured.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="run the demo and write its table into README.md")
    action.add_argument("--check", metavar="LOG", help="compare the table in a log of `utag demo` with README.md")
    args = parser.parse_args()
    readme = README.read_text()
    if args.check:
        printed, expected = demo_table(Path(args.check).read_text()), readme_table(readme)
        if printed != expected:
            print(f"README.md's demo table is stale.\nREADME:\n{expected}\n`utag demo` printed:\n{printed}\n"
                  "Run `python benchmarks/demo_table.py --write`.", file=sys.stderr)
            return 1
        print("README.md's demo table is what `utag demo` prints.")
        return 0
    table = demo_table(run_demo())
    block = (f"{START}\n<!-- written by benchmarks/demo_table.py on {date.today().isoformat()}, "
             f"Python {platform.python_version()}, {platform.machine()} -->\n```\n{table}\n```\n{END}")
    README.write_text(re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, readme, flags=re.S))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
