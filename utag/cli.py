"""Command line: ``utag run`` (a cell table or .h5ad to domains) and ``utag demo``."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from .io import TABLE_SUFFIXES, labels_table, read_cell_table

__all__ = ["main", "build_parser"]

EXAMPLES = """examples:
  utag demo                                   run on the bundled CODEX spleen subset, print scores
  utag demo --out spleen_utag.h5ad            ... and save the result
  utag run cells.csv --out domains.h5ad --x-column X_centroid --y-column Y_centroid \\
      --slide-column image --max-dist 20 --resolutions 0.05 0.1 0.3 --labels-csv domains.csv
  utag run cells.h5ad --out domains.h5ad --slide-key roi --method leiden kmeans
"""

class UsageError(Exception):
    """A problem with the command line's inputs, reported without a traceback."""


@contextmanager
def atomic_output(path: Path):
    """Yield a temporary path next to ``path``; move it into place only on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _run(args: argparse.Namespace) -> int:
    import anndata

    from . import utag

    source = Path(args.input)
    if not source.is_file():
        raise UsageError(f"input file {source} does not exist.")
    suffix = source.suffix.lower()
    if suffix == ".h5ad":
        adata = anndata.read_h5ad(source)
        if args.markers:
            missing = [m for m in args.markers if m not in adata.var_names]
            if missing:
                raise UsageError(f"--markers {missing} are not in {source.name}'s var_names {list(adata.var_names)}.")
    elif suffix in TABLE_SUFFIXES:
        adata = read_cell_table(source, x_column=args.x_column, y_column=args.y_column,
                                slide_column=args.slide_key, marker_columns=args.markers,
                                exclude_columns=args.exclude, id_column=args.id_column)
    else:
        raise UsageError(f"{source.name}: unknown input type {suffix!r}; use .h5ad, .csv, .tsv or .parquet.")
    out = Path(args.out)
    if out.suffix.lower() != ".h5ad":
        raise UsageError(f"--out must end in .h5ad, got {out}.")
    _say(args, f"{source.name}: {adata.n_obs:,} cells, {adata.n_vars} markers"
               + (f", slides in '{args.slide_key}'" if args.slide_key else ", one slide"))
    started = time.perf_counter()
    result = utag(adata, channels_to_use=args.markers if suffix == ".h5ad" else None,
                  slide_key=args.slide_key, max_dist=args.max_dist, clustering_method=args.method,
                  resolutions=args.resolutions, processes=args.processes, random_state=args.random_state,
                  progress=not args.quiet)
    keys = result.uns["utag"]["label_keys"]
    _say(args, f"UTAG took {time.perf_counter() - started:.1f} s; domains per labelling: "
               + ", ".join(f"{k}: {result.obs[k].nunique()}" for k in keys))
    with atomic_output(out) as temporary:
        result.write_h5ad(temporary)
    _say(args, f"wrote {out}")
    if args.labels_csv:
        with atomic_output(Path(args.labels_csv)) as temporary:
            labels_table(result, keys).to_csv(temporary, index_label="cell")
        _say(args, f"wrote {args.labels_csv}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from . import utag
    from .datasets import codex_mouse_spleen
    from .evaluation import evaluate_performance

    adata = codex_mouse_spleen()
    print(f"Bundled CODEX mouse spleen subset: {adata.n_obs:,} cells, {adata.n_vars} features, "
          f"slides {', '.join(adata.obs['slide'].cat.categories)}")
    started = time.perf_counter()
    result = utag(adata, slide_key="slide", max_dist=args.max_dist, clustering_method=args.method,
                  resolutions=args.resolutions, random_state=args.random_state, progress=not args.quiet)
    elapsed = time.perf_counter() - started
    scores = evaluate_performance(result, truth_key="domain")
    table = scores[["pred_key", "n_domains", "adjusted_rand", "nmi"]].round(3)
    print(f"\nUTAG (max_dist={args.max_dist:g} px) took {elapsed:.1f} s. Agreement with the expert compartments:")
    print(table.to_string(index=False))
    if args.out:
        with atomic_output(Path(args.out)) as temporary:
            result.write_h5ad(temporary)
        print(f"\nSaved the result to {args.out}")
    return 0


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr)


def _add_common(parser: argparse.ArgumentParser, max_dist: float) -> None:
    parser.add_argument("--max-dist", type=float, default=max_dist,
                        help=f"neighbourhood radius in the units of the coordinates (default {max_dist:g})")
    parser.add_argument("--method", nargs="+", default=["leiden"], choices=["leiden", "parc", "kmeans"],
                        help="clustering method(s) (default leiden)")
    parser.add_argument("--resolutions", nargs="+", type=float, default=[0.05, 0.1, 0.3],
                        help="clustering resolution(s) (default 0.05 0.1 0.3)")
    parser.add_argument("--random-state", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or messages")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="utag", description="Find microanatomical domains in single-cell spatial data (UTAG).",
        epilog=EXAMPLES, formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"utag {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="find domains in a cell table (.csv/.tsv/.parquet) or an .h5ad file",
                              description="Find domains in INPUT and write them to an .h5ad file.",
                              epilog=EXAMPLES, formatter_class=formatter)
    run.add_argument("input", help=".h5ad (centroids in obsm['spatial']) or a table with one row per cell")
    run.add_argument("--out", required=True, help="output .h5ad file (written atomically)")
    run.add_argument("--labels-csv", help="also write the domain labels of every cell to this CSV")
    run.add_argument("--x-column", default="x", help="table column of the x centroid (default x)")
    run.add_argument("--y-column", default="y", help="table column of the y centroid (default y)")
    run.add_argument("--slide-key", "--slide-column", dest="slide_key", metavar="COLUMN",
                     help="column naming each cell's image/slide: of obs for .h5ad input (as utag()'s slide_key), "
                          "of the table for tables (default: one image)")
    run.add_argument("--id-column", help="table column of cell identifiers (default: row number)")
    run.add_argument("--markers", nargs="+", help="marker columns (default: every numeric column not used above)")
    run.add_argument("--exclude", nargs="+", help="numeric table columns that are not markers (e.g. area)")
    run.add_argument("--processes", type=int, help="worker processes for slides (default: one per core)")
    _add_common(run, max_dist=20.0)
    run.set_defaults(handler=_run)

    demo = commands.add_parser("demo", help="run UTAG on the bundled CODEX mouse spleen subset",
                               epilog=EXAMPLES, formatter_class=formatter)
    demo.add_argument("--out", help="save the result to this .h5ad file")
    _add_common(demo, max_dist=200.0)
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except (UsageError, ValueError, ImportError) as error:
        parser.exit(2, f"utag {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
