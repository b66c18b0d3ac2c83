"""Command line: ``utag run`` (a cell table or .h5ad to domains) and ``utag demo``."""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from .io import (
    TABLE_SUFFIXES,
    labels_table,
    read_cell_table,
    read_lazy,
    remove_path,
    storable_names,
    storable_obs,
    storable_uns,
    write_domains,
)

__all__ = ["main", "build_parser"]

EXAMPLES = """examples:
  utag demo                                   run on the bundled CODEX spleen subset, print scores
  utag demo --out spleen_utag.h5ad            ... and save the result
  utag run cells.csv --out domains.h5ad --x-column X_centroid --y-column Y_centroid \\
      --slide-column image --max-dist 20 --resolutions 0.05 0.1 0.3 --labels-csv domains.csv
  utag run cells.h5ad --out domains.h5ad --slide-key roi --method leiden kmeans --resolutions 0.3 0.5
  utag run cells.zarr --out domains.zarr --slide-key roi --dask-scheduler local
                                              on Dask: a local cluster, one worker per core
"""

class UsageError(Exception):
    """A problem with the command line's inputs, reported without a traceback."""


#: Options that name files a command writes, by their attribute in the parsed arguments.
OUTPUT_OPTIONS = {"out": "--out", "labels_csv": "--labels-csv"}


def _output_paths(args: argparse.Namespace) -> dict[str, Path]:
    """The command's output files by option, checked before any work: each can be written."""
    given = {option: getattr(args, name, None) for name, option in OUTPUT_OPTIONS.items()}
    outputs = {option: Path(value) for option, value in given.items() if value}
    if "--out" in outputs and outputs["--out"].suffix.lower() not in (".h5ad", ".zarr"):
        raise UsageError(f"--out must be a file name ending in .h5ad or .zarr (e.g. domains.h5ad), got "
                         f"{outputs['--out']}.")
    if "--labels-csv" in outputs and outputs["--labels-csv"].suffix.lower() == ".zarr":
        raise UsageError(f"--labels-csv writes a CSV table, not a .zarr store; give a name such as labels.csv, got "
                         f"{outputs['--labels-csv']}.")
    for option, path in outputs.items():
        if path.suffix.lower() == ".zarr" and path.exists():
            raise UsageError(f"{option} {path} exists; remove it or choose another name (a .zarr store is not "
                             "overwritten).")
        if path.is_dir():
            raise UsageError(f"{option} {path} is a directory; give a file name in it.")
        if not path.parent.is_dir():
            raise UsageError(f"{option} {path}: the directory {path.parent} does not exist; create it first.")
        try:  # creating a file, not os.access, which says yes to root whatever the permissions
            with tempfile.NamedTemporaryFile(prefix=".utag-check-", dir=path.parent):
                pass
        except OSError as error:
            raise UsageError(f"{option} {path}: cannot write to the directory {path.parent} ({error.strerror}); "
                             "choose another one or make it writable.") from None
    if len({path.resolve() for path in outputs.values()}) < len(outputs):
        raise UsageError(f"{' and '.join(outputs)} name the same file; give each its own.")
    return outputs


@contextmanager
def atomic_outputs(paths: list[Path]):
    """Yield temporary paths next to ``paths``; move them all into place only if every one was written.

    The files get the mode a plain ``open()`` gives (``0o666`` less the umask), not the
    ``0o600`` of temporary files.
    """
    temporaries = []
    try:
        for path in paths:
            if path.suffix.lower() == ".zarr":  # a store is a directory
                temporaries.append(Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".zarr", dir=path.parent)))
                continue
            handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp",
                                                 dir=path.parent)
            os.close(handle)
            temporaries.append(Path(temporary))
        yield temporaries
        umask = _umask()
        moved = []
        try:
            for temporary, path in zip(temporaries, paths):
                # as open() and mkdir() would have made them: a store is a directory, which needs x
                os.chmod(temporary, (0o777 if temporary.is_dir() else 0o666) & ~umask)
                os.replace(temporary, path)
                moved.append(path)
        except BaseException:
            for path in moved:  # all outputs or none
                remove_path(path)
            raise
    finally:
        for temporary in temporaries:
            remove_path(temporary)


def _umask() -> int:
    """The process's umask; reading it means setting it, so it is set straight back."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _run(args: argparse.Namespace) -> int:
    import anndata

    from . import utag

    outputs = _output_paths(args)
    resolutions = _resolutions(args.resolutions)
    if args.processes is not None and (args.processes == 0 or args.processes < -1):
        raise UsageError(f"--processes must be a number of workers (1 or more), or -1 for one per core; got "
                         f"{args.processes}.")
    source = Path(args.input)
    suffix = source.suffix.lower()
    if source.is_dir() and suffix != ".zarr":
        raise UsageError(f"input {source} is a folder; utag reads a .zarr store (a folder named *.zarr), an .h5ad "
                         "file or a cell table (.csv, .tsv, .txt, .parquet).")
    if not (source.is_file() or (suffix == ".zarr" and source.is_dir())):
        raise UsageError(f"input {source} does not exist.")
    overwritten = [option for option, path in outputs.items()  # samefile: also on case-insensitive disks
                   if path.resolve() == source.resolve() or (path.exists() and os.path.samefile(path, source))]
    if overwritten:
        raise UsageError(f"{' and '.join(overwritten)} would overwrite the input {source}; give the output "
                         "another name.")
    lazy = suffix == ".zarr" or args.dask_scheduler is not None
    if lazy and suffix not in (".h5ad", ".zarr"):
        raise UsageError(f"--dask-scheduler reads an .h5ad file or a .zarr store, got {source.name}.")
    if suffix in (".h5ad", ".zarr"):  # before reading it: a large file takes a while
        table_only = {"--exclude": args.exclude is not None, "--id-column": args.id_column is not None,
                      "--x-column": args.x_column != "x", "--y-column": args.y_column != "y",
                      "--non-numeric": args.non_numeric != "error"}
        if any(table_only.values()):
            options = [o for o, given in table_only.items() if given]
            raise UsageError(f"{', '.join(options)} appl{'ies' if len(options) == 1 else 'y'} to cell tables "
                             f"(.csv, .tsv, .parquet), not to {source.name}: an AnnData holds its markers in X "
                             "(choose them with --markers) and its centroids in obsm['spatial'].")
    try:
        if lazy:
            adata = read_lazy(source)
        elif suffix == ".h5ad":
            adata = anndata.read_h5ad(source)
    except OSError as error:  # h5py's (a file that is no HDF5 file) names neither the file nor its kind
        kind = "a .zarr store" if suffix == ".zarr" else "an .h5ad (HDF5) file"
        raise UsageError(f"{source.name} could not be read as {kind}: {error}") from None
    if lazy:
        suffix = ".h5ad"  # the same options as an .h5ad file
    if suffix == ".h5ad":
        if args.markers:
            missing = [m for m in args.markers if m not in adata.var_names]
            if missing:
                raise UsageError(f"--markers {missing} are not in {source.name}'s var_names {list(adata.var_names)}.")
    elif suffix in TABLE_SUFFIXES:
        adata = read_cell_table(source, x_column=args.x_column, y_column=args.y_column,
                                slide_column=args.slide_key, marker_columns=args.markers,
                                exclude_columns=args.exclude, id_column=args.id_column,
                                non_numeric=args.non_numeric)
        _check_no_missing_markers(adata, source.name)
    else:
        raise UsageError(f"{source.name}: unknown input type {suffix!r}; use .h5ad, .zarr, .csv, .tsv, .txt or "
                         ".parquet.")
    try:  # a column name with '/' is written with '_': refused now if that name is taken
        storable_names(adata.obs)
    except ValueError as error:
        raise UsageError(f"{source.name}: {error}") from None
    _say(args, f"{source.name}: {adata.n_obs:,} cells, {adata.n_vars} markers"
               + (f", slides in '{args.slide_key}'" if args.slide_key else ", one slide"))
    started = time.perf_counter()
    with _dask_client(args.dask_scheduler, args.processes):
        result = utag(adata, channels_to_use=args.markers if suffix == ".h5ad" else None,
                      slide_key=args.slide_key, max_dist=args.max_dist, clustering_method=args.method,
                      resolutions=resolutions, processes=args.processes,
                      random_state=args.random_state, flavor=args.flavor, progress=not args.quiet)
    keys = result.uns["utag"]["label_keys"]
    _say(args, f"UTAG took {time.perf_counter() - started:.1f} s; domains per labelling: "
               + ", ".join(f"{k}: {result.obs[k].nunique()}" for k in keys))
    with atomic_outputs(list(outputs.values())) as temporaries:
        written = dict(zip(outputs, temporaries))
        if args.with_features and outputs["--out"].suffix.lower() != ".zarr":
            _say(args, "--with-features: an .h5ad --out always holds the message-passed features (X)")
        _write_result(result, written["--out"], features=args.with_features)
        if "--labels-csv" in written:
            labels_table(result, keys).to_csv(written["--labels-csv"], index_label="cell")
    _say(args, "wrote " + " and ".join(str(path) for path in outputs.values()))
    return 0


@contextmanager
def _dask_client(scheduler: str | None, processes: int | None):
    """A Dask client for ``--dask-scheduler``: ``local`` starts a cluster of ``processes``
    workers (default: one per core) for the run; an address connects to a running
    scheduler; ``None``: nothing (Dask's local threads, for .zarr input)."""
    if scheduler is None:
        yield None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError as error:
        raise UsageError(f"--dask-scheduler needs the 'distributed' package ({error}).") from None
    # the scheduler's and workers' INFO lines (ports, plugins, workers joining) drown utag's own
    dask_logger = logging.getLogger("distributed")
    level = dask_logger.level
    dask_logger.setLevel(logging.WARNING)
    try:
        if scheduler == "local":
            every_core = processes is None or processes == -1
            with LocalCluster(n_workers=os.cpu_count() or 1 if every_core else processes, threads_per_worker=1,
                              dashboard_address=":0", silence_logs=logging.WARNING) as cluster, \
                    Client(cluster) as client:  # any free port
                yield client
        else:
            with Client(scheduler) as client:
                yield client
    finally:
        dask_logger.setLevel(level)


def _write_result(result, path: Path, features: bool) -> None:
    """``result`` to ``path``: a ``.zarr`` store (:func:`utag.io.write_domains`, with the
    message-passed features if ``features``) or an ``.h5ad`` file (which always holds
    them); ``obs`` columns named with '/' are written with '_' either way."""
    if path.suffix.lower() == ".zarr":
        write_domains(result, path, features=features)
    else:
        result.uns = storable_uns(result.uns, result.obs)  # the command's own result
        result.obs = storable_obs(result.obs)
        result.write_h5ad(path)


def _check_no_missing_markers(adata, name: str) -> None:
    """utag() rejects missing marker values; say so in the command line's terms before it runs."""
    missing = pd.Series(np.isnan(adata.X).sum(axis=0), index=adata.var_names)
    if missing.any():
        raise UsageError(f"{name}: {missing.sum()} marker values are missing (per column: "
                         f"{missing[missing > 0].to_dict()}); UTAG needs every marker of every cell. "
                         "Fill them in the table, remove those rows, or pass --non-numeric drop to leave "
                         "those cells out.")


def _demo(args: argparse.Namespace) -> int:
    from . import utag
    from .datasets import codex_mouse_spleen
    from .evaluation import evaluate_performance

    outputs = _output_paths(args)
    adata = codex_mouse_spleen()
    print(f"Bundled CODEX mouse spleen subset: {adata.n_obs:,} cells, {adata.n_vars} features, "
          f"slides {', '.join(adata.obs['slide'].cat.categories)}")
    started = time.perf_counter()
    result = utag(adata, slide_key="slide", max_dist=args.max_dist, clustering_method=args.method,
                  resolutions=_resolutions(args.resolutions), random_state=args.random_state, progress=not args.quiet,
                  flavor=args.flavor)
    elapsed = time.perf_counter() - started
    scores = evaluate_performance(result, truth_key="domain")
    table = scores[["pred_key", "n_domains", "adjusted_rand", "nmi"]].round(3)
    max_dist = result.uns["utag"]["max_dist"]
    print(f"\nUTAG (max_dist={max_dist:g} px) took {elapsed:.1f} s. Agreement with the expert compartments:")
    print(table.to_string(index=False))
    if outputs:
        with atomic_outputs([outputs["--out"]]) as (temporary,):
            _write_result(result, temporary, features=True)
        print(f"\nSaved the result to {args.out}")
    return 0


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr)


def _add_common(parser: argparse.ArgumentParser, max_dist: float) -> None:
    parser.add_argument("--max-dist", type=_number_or_auto, default=max_dist,
                        help=f"neighbourhood radius in the units of the coordinates, or 'auto' (chosen from the "
                             f"cells' spacing) (default {max_dist:g})")
    parser.add_argument("--method", nargs="+", default=["leiden"], choices=["leiden", "parc", "kmeans"],
                        help="clustering method(s) (default leiden)")
    parser.add_argument("--resolutions", nargs="+", type=_number_or_auto, default=[0.05, 0.1, 0.3],
                        help="clustering resolution(s), or 'auto' (one chosen by a sweep) (default 0.05 0.1 0.3)")
    parser.add_argument("--flavor", choices=["utag", "multiscale"], default="utag",
                        help="utag: the published neighbourhood mean (default); multiscale: Gaussian means at "
                             "max_dist/4, max_dist/2 and max_dist side by side")
    parser.add_argument("--random-state", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or messages")


def _number_or_auto(text: str):
    """A command-line number, or ``"auto"``."""
    if text.lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def _resolutions(values: list):
    """``--resolutions`` as ``utag()`` takes them: ``"auto"`` alone, or numbers."""
    if "auto" in values:
        if len(values) > 1:
            raise UsageError("--resolutions auto chooses one resolution: give 'auto' alone, or numbers.")
        return "auto"
    return values


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="utag", description="Find microanatomical domains in single-cell spatial data (UTAG).",
        epilog=EXAMPLES, formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"utag {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="find domains in a cell table (.csv/.tsv/.txt/.parquet), an .h5ad file "
                                          "or a .zarr store",
                              description="Find domains in INPUT and write them to an .h5ad file or a .zarr "
                                          "store.",
                              epilog=EXAMPLES, formatter_class=formatter)
    run.add_argument("input", help=".h5ad or .zarr (centroids in obsm['spatial']) or a table with one row per cell")
    run.add_argument("--out", required=True,
                     help="output .h5ad file or .zarr store (written, with --labels-csv, all or nothing)")
    run.add_argument("--labels-csv", help="also write the domain labels of every cell to this CSV")
    run.add_argument("--x-column", default="x", help="table column of the x centroid (default x)")
    run.add_argument("--y-column", default="y", help="table column of the y centroid (default y)")
    run.add_argument("--slide-key", "--slide-column", dest="slide_key", metavar="COLUMN",
                     help="column naming each cell's image/slide: of obs for .h5ad input (as utag()'s slide_key), "
                          "of the table for tables (default: one image)")
    run.add_argument("--id-column", help="table column of cell identifiers (default: row number)")
    run.add_argument("--markers", nargs="+", help="marker columns (default: every numeric column not used above)")
    run.add_argument("--exclude", nargs="+", help="numeric table columns that are not markers (e.g. area)")
    run.add_argument("--non-numeric", choices=["error", "drop", "missing"], default="error",
                     help="marker entries of a table that are not numbers (e.g. '<LOD', '1,5'): error (default) "
                          "names them and stops; drop leaves their cells out and counts them; missing reads "
                          "them as missing values (for a Python user who imputes them: the run itself then stops)")
    run.add_argument("--processes", type=int,
                     help="worker processes for slides (default, or -1: one per core, from 250,000 cells on; "
                          "none below)")
    run.add_argument("--dask-scheduler", metavar="ADDRESS|local",
                     help="run on Dask (utag.distributed): 'local' starts a cluster of --processes workers, an "
                          "address (tcp://host:8786) uses a running scheduler. INPUT (.h5ad or .zarr) is read "
                          "lazily; a .zarr INPUT always runs on Dask (local threads without this option)")
    run.add_argument("--with-features", action="store_true",
                     help="with a .zarr --out: also write the message-passed features (default: labels, PCA "
                          "and soft assignments only)")
    _add_common(run, max_dist=20.0)
    run.set_defaults(handler=_run)

    demo = commands.add_parser("demo", help="run UTAG on the bundled CODEX mouse spleen subset",
                               epilog=EXAMPLES, formatter_class=formatter)
    demo.add_argument("--out", help="save the result to this .h5ad file (or .zarr store)")
    _add_common(demo, max_dist=200.0)
    demo.set_defaults(handler=_demo)
    return parser


#: utag()'s parameters that an option of the command line sets, as its errors name them.
FLAGS = {"max_dist": "--max-dist", "clustering_method": "--method", "resolutions": "--resolutions",
         "flavor": "--flavor", "random_state": "--random-state", "slide_key": "--slide-key",
         "channels_to_use": "--markers", "processes": "--processes", "marker_columns": "--markers",
         "exclude_columns": "--exclude"}


def _with_flags(message: str) -> str:
    """``message`` (from ``utag()``) followed by the options that set the parameters it names."""
    named = [flag for name, flag in FLAGS.items() if re.search(rf"`{name}\b", message)]
    return f"{message} On the command line: {', '.join(named)}." if named else message


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except UsageError as error:
        parser.exit(2, f"utag {args.command}: error: {error}\n")
    except (ValueError, ImportError, OSError) as error:
        parser.exit(2, f"utag {args.command}: error: {_with_flags(str(error))}\n")


if __name__ == "__main__":
    sys.exit(main())
