"""The route a user would otherwise take to UTAG domains: squidpy's ``flavor="utag"`` niches.

:func:`run_reference` runs :func:`squidpy_utag` on a copy of an AnnData in a separate
Python process (this file run as a script), with a time limit, and returns its labels, the
seconds and peak resident memory of each stage, or how far it got before the limit.

The reference route, and why these options (squidpy 1.8)::

    sq.gr.spatial_neighbors_radius(adata, radius=max_dist, library_key=slide_key, set_diag=True)
    sq.gr.calculate_niche(adata, flavor="utag", n_neighbors=15, resolutions=resolutions)

* ``spatial_neighbors_radius`` is what the deprecated ``spatial_neighbors(coord_type="generic",
  radius=max_dist)`` dispatches to (same ``RadiusBuilder``). With the old call, ``delaunay``
  must stay at its default ``False``: with ``delaunay=True`` a scalar ``radius`` is ignored.
* ``set_diag=True``: the radius query (``NearestNeighbors.radius_neighbors()``) leaves each
  cell out of its own neighbourhood, so without it the diagonal is 0. UTAG includes the cell
  itself; with ``set_diag=True`` the graph equals utag's (``utag/tests/test_graph.py``).
  The radius is inclusive in both.
* ``library_key=slide_key`` in the graph keeps edges within slides, as UTAG does.
* No ``library_key`` in ``calculate_niche``: with it, squidpy runs the whole UTAG flavour
  (message passing, PCA, kNN graph, Leiden) separately on each slide and prefixes the
  labels with the slide (``f"lib={lib}_{label}"``, ``squidpy/gr/_niche.py``), so domains are
  not shared between slides. UTAG embeds and clusters all slides jointly; since the graph
  has no edges across slides, message passing over the whole graph is already per slide.
* Everything else is squidpy's default: ``sc.tl.pca`` (50 components, capped below the
  number of features), ``sc.pp.neighbors`` (UMAP connectivities; exact neighbours below
  8,192 cells, pynndescent from there on) and ``sc.tl.leiden`` (leidenalg on the directed
  kNN graph, iterated until it converges).

One compatibility shim, in the child process only: with pynndescent 0.7 (which returns
``scipy.sparse.csr_array``) and SciPy >= 1.14 (whose sparse arrays have no ``getnnz``),
scanpy 1.11's ``sc.pp.neighbors`` fails from 8,192 cells on with ``AttributeError:
'csr_array' object has no attribute 'getnnz'``. The child gives ``csr_array`` that method
back (SciPy's own ``_getnnz``), which changes nothing else; the result records whether it
was installed.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import gc
import os
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

#: Label columns squidpy writes, one per resolution.
NICHE_KEY = "utag_niche_res={}"
#: Stage row of the whole route.
TOTAL = "**squidpy route total**"
#: From this many cells on, ``sc.pp.neighbors`` uses pynndescent (numba, compiled at first use).
PYNNDESCENT_CELLS = 8192


def squidpy_utag(adata, slide_key: str | None, max_dist: float, resolutions: list[float], n_neighbors: int = 15,
                 stages=None) -> dict[float, np.ndarray]:
    """Squidpy's UTAG route on ``adata`` (modified in place); labels per resolution.

    ``stages``: a :class:`measure.Stages` to time the spatial graph and ``calculate_niche``.
    """
    import squidpy as sq

    stages = stages or (lambda name: contextlib.nullcontext())
    if slide_key is not None and adata.obs[slide_key].dtype != "category":
        adata.obs[slide_key] = adata.obs[slide_key].astype("category")  # squidpy requires it
    build_graph = getattr(sq.gr, "spatial_neighbors_radius", None)
    with stages("spatial graph (spatial_neighbors)"):
        if build_graph is not None:
            build_graph(adata, radius=max_dist, library_key=slide_key, set_diag=True)
        else:  # squidpy before spatial_neighbors_radius existed
            sq.gr.spatial_neighbors(adata, library_key=slide_key, coord_type="generic", radius=max_dist,
                                    delaunay=False, set_diag=True)
    with stages("calculate_niche(flavor='utag')"):
        sq.gr.calculate_niche(adata, flavor="utag", n_neighbors=n_neighbors, resolutions=list(resolutions))
    return {resolution: adata.obs[NICHE_KEY.format(resolution)].to_numpy() for resolution in resolutions}


def _time_scanpy_calls(stages) -> None:
    """Time the scanpy calls inside ``calculate_niche`` (the rest is copies and message passing)."""
    import scanpy as sc

    def timed(module, name, describe):
        original = getattr(module, name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            with stages(describe(kwargs)):
                return original(*args, **kwargs)

        setattr(module, name, wrapper)

    timed(sc.tl, "pca", lambda kwargs: "calculate_niche: sc.tl.pca")
    timed(sc.pp, "neighbors", lambda kwargs: "calculate_niche: sc.pp.neighbors")
    timed(sc.tl, "leiden", lambda kwargs: f"calculate_niche: sc.tl.leiden {kwargs.get('resolution')}")


@dataclass
class ReferenceRun:
    """Outcome of :func:`run_reference`."""

    seconds: float  # the route's wall time; with ``timed_out``, the time at which it was stopped
    peak_gb: float  # peak resident memory of the route's process (a lower bound if stopped)
    timed_out: bool = False
    error: str | None = None
    stages: list[tuple[str, float, float]] = field(default_factory=list)
    labels: dict[float, np.ndarray] = field(default_factory=dict)
    start_gb: float = 0.0  # resident memory of the route's process when it started (data loaded)
    shim: bool = False  # whether the getnnz compatibility shim was installed (SciPy lacked it)

    @property
    def finished(self) -> bool:
        return not self.timed_out and self.error is None


def run_reference(adata, slide_key: str | None, max_dist: float, resolutions: list[float], n_neighbors: int = 15,
                  timeout: float = 1800, warmup: bool = True) -> ReferenceRun:
    """:func:`squidpy_utag` on a copy of ``adata`` in a new process, stopped after ``timeout`` seconds.

    The copy travels through a temporary ``.h5ad`` file; reading it, and with ``warmup`` one
    untimed run on a random subset of the cells (9,000 cells, so that pynndescent's numba
    code is compiled, where the data is large enough to use it; numba's one-off compilation
    takes ~30 s), happen before the clock starts.
    """
    with tempfile.TemporaryDirectory(prefix="utag_reference_") as folder:
        folder = Path(folder)
        adata.write_h5ad(folder / "input.h5ad")
        command = [sys.executable, str(Path(__file__).resolve()), str(folder), "--max-dist", repr(max_dist),
                   "--n-neighbors", str(n_neighbors), "--resolutions", *map(repr, resolutions)]
        command += ["--slide-key", slide_key] if slide_key is not None else []
        command += [] if warmup else ["--no-warmup"]
        with open(folder / "log.txt", "w") as log:
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        watched = psutil.Process(child.pid)
        try:
            while not (folder / "ready").exists() and child.poll() is None:
                time.sleep(0.05)
            started, peak = time.perf_counter(), 0.0
            start_gb = float((folder / "ready").read_text()) if (folder / "ready").exists() else 0.0
            while child.poll() is None and time.perf_counter() - started < timeout:
                peak = max(peak, _tree_rss(watched))
                time.sleep(0.1)
            seconds = time.perf_counter() - started
            timed_out = child.poll() is None
        finally:  # out of time, or interrupted
            if child.poll() is None:
                _kill_tree(watched)
                child.wait()
        if timed_out:
            return ReferenceRun(seconds=seconds, peak_gb=peak, timed_out=True, start_gb=start_gb)
        if child.returncode != 0 or not (folder / "result.pkl").exists():
            log = (folder / "log.txt").read_text()[-3000:]
            return ReferenceRun(seconds=seconds, peak_gb=peak,
                                error=f"exit code {child.returncode}; end of its output:\n{log}")
        with open(folder / "result.pkl", "rb") as handle:
            outcome = pickle.load(handle)
    _, seconds, route_peak = next(row for row in outcome["stages"] if row[0] == TOTAL)
    return ReferenceRun(seconds=seconds, peak_gb=max(route_peak, peak), stages=outcome["stages"],
                        labels=outcome["labels"], start_gb=start_gb, shim=outcome["shim"])


def _restore_getnnz() -> bool:
    """Give ``scipy.sparse.csr_array`` back the ``getnnz`` scanpy 1.11 calls (see the module docstring)."""
    import scipy.sparse as sp

    if hasattr(sp.csr_array, "getnnz") or not hasattr(sp.csr_array, "_getnnz"):
        return False
    sp.csr_array.getnnz = sp.csr_array._getnnz
    return True


def _release_memory() -> None:
    """Hand memory freed by the warm-up back to the system, so that it does not count as the route's."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _tree_rss(process: psutil.Process) -> float:
    """Resident memory (GB) of a process and its descendants; 0 once it has gone."""
    try:
        family = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += member.memory_info().rss
    return total / 1e9


def _kill_tree(process: psutil.Process) -> None:
    """Kill a process we started and its descendants, by pid."""
    with contextlib.suppress(psutil.NoSuchProcess):
        for member in [*process.children(recursive=True), process]:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()


def main() -> None:
    """Child process: read ``folder/input.h5ad``, signal ``folder/ready``, run, write ``folder/result.pkl``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--slide-key")
    parser.add_argument("--max-dist", type=float, required=True)
    parser.add_argument("--resolutions", type=float, nargs="+", required=True)
    parser.add_argument("--n-neighbors", type=int, default=15)
    parser.add_argument("--no-warmup", action="store_true")
    args = parser.parse_args()

    import anndata
    import squidpy  # noqa: F401  (imported before the clock starts)
    from measure import Stages

    shim = _restore_getnnz()
    adata = anndata.read_h5ad(args.folder / "input.h5ad")
    if not args.no_warmup:
        size = 9_000 if adata.n_obs >= PYNNDESCENT_CELLS else 2_000
        cells = np.random.default_rng(0).choice(adata.n_obs, size=min(adata.n_obs, size), replace=False)
        squidpy_utag(adata[np.sort(cells)].copy(), args.slide_key, args.max_dist, args.resolutions[:1],
                     args.n_neighbors)
        _release_memory()
    stages = Stages()
    _time_scanpy_calls(stages)
    (args.folder / "ready.part").write_text(str(psutil.Process().memory_info().rss / 1e9))
    os.replace(args.folder / "ready.part", args.folder / "ready")  # memory at the start, in GB
    with stages(TOTAL):
        labels = squidpy_utag(adata, args.slide_key, args.max_dist, args.resolutions, args.n_neighbors, stages)
    codes = {resolution: np.unique(values.astype(str), return_inverse=True)[1].astype(np.int32)
             for resolution, values in labels.items()}
    with open(args.folder / "result.pkl.part", "wb") as handle:
        pickle.dump({"stages": stages.rows, "labels": codes, "shim": shim}, handle)
    os.replace(args.folder / "result.pkl.part", args.folder / "result.pkl")


if __name__ == "__main__":
    main()
