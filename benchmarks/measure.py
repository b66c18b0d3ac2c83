"""What the benchmark scripts measure: seconds and peak memory per stage, ARI against the truth.

Shared by ``run.py``, ``squidpy_accuracy.py`` and ``reference.py``; importable because Python puts
the directory of the script it runs (``benchmarks/``) first on ``sys.path``.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import resource
import subprocess
import threading
import time
from datetime import date
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
from sklearn.metrics import adjusted_rand_score

#: Reference labels left out of every score (cells the experts did not annotate).
UNSCORED = ("NoAnnotation",)


class MemorySampler:
    """Resident memory of this process, sampled every few milliseconds in a thread."""

    def __init__(self, interval: float = 0.005):
        self.samples: list[tuple[float, int]] = []
        self._process = psutil.Process(os.getpid())
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self._process.memory_info().rss))
            time.sleep(self._interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()

    def peak(self, start: float, end: float) -> float:
        """Peak RSS in GB between two ``perf_counter`` times."""
        inside = [rss for t, rss in self.samples if start <= t <= end]
        nearest = min(self.samples, key=lambda s: abs(s[0] - end))[1] if self.samples else 0
        return max(inside or [nearest]) / 1e9


class TreeMemory(MemorySampler):
    """Resident memory of this process and of its child processes (a Dask cluster's
    workers): :meth:`gb` gives the peaks of this process, of the largest other
    process and of all of them together, in GB, over the whole sampling."""

    def __init__(self, interval: float = 0.05):
        super().__init__(interval)
        self.peaks = [0, 0, 0]

    def _run(self):
        while not self._stop.is_set():
            own, others = self._process.memory_info().rss, []
            for child in self._process.children(recursive=True):
                with contextlib.suppress(psutil.Error):  # a worker may exit between listing and reading
                    others.append(child.memory_info().rss)
            self.peaks = [max(self.peaks[0], own), max([self.peaks[1], *others]), max(self.peaks[2], own + sum(others))]
            time.sleep(self._interval)

    def gb(self) -> list[float]:
        return [peak / 1e9 for peak in self.peaks]


def release_memory() -> None:
    """Collect garbage and hand the heap memory freed by earlier runs back to the
    operating system (glibc's ``malloc_trim``; a no-op elsewhere), so that a run's peak
    resident memory counts what the run holds, not what earlier runs left behind."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak_memory() -> None:
    """Restart the kernel's record of this process's peak resident memory (Linux only).

    A sampling thread can miss short peaks, and it cannot sample while a C extension
    holds the GIL; the kernel's high-water mark (``VmHWM``) misses nothing.
    """
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")


def peak_memory() -> float:
    """Peak resident memory (GB) of this process since :func:`reset_peak_memory`.

    Where ``/proc`` is missing: the peak over the process's whole life (``ru_maxrss``).
    """
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


class Stages:
    """Seconds and peak resident memory (GB) of named stages of this process; stages may nest.

    >>> stages = Stages()
    >>> with stages("total"):
    ...     with stages("part"):
    ...         pass
    >>> [name for name, _, _ in stages.rows]
    ['total', 'part']
    """

    def __init__(self):
        self._done: list[tuple[float, str, float, float]] = []
        self._open: list[list] = []  # [name, running peak] of the stages not yet ended

    @contextlib.contextmanager
    def __call__(self, name: str):
        self._fold_peak()
        self._open.append([name, 0.0])
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            self._fold_peak()
            _, peak = self._open.pop()
            self._done.append((started, name, seconds, peak))

    def _fold_peak(self):
        # the high-water mark since the last reset belongs to every stage still open
        peak = peak_memory()
        for stage in self._open:
            stage[1] = max(stage[1], peak)
        reset_peak_memory()

    @property
    def rows(self) -> list[tuple[str, float, float]]:
        """``(stage, seconds, peak GB)`` in the order the stages started."""
        return [(name, seconds, peak) for _, name, seconds, peak in sorted(self._done)]


def scored_cells(truth) -> np.ndarray:
    """Boolean mask of the cells with a reference label."""
    return ~np.isin(np.asarray(truth).astype(str), UNSCORED)


def ari_by_resolution(truth, labellings: dict[float, np.ndarray]) -> dict[float, tuple[float, int]]:
    """Adjusted Rand index against ``truth`` (pooled over slides) and number of domains, per resolution."""
    truth = np.asarray(truth).astype(str)
    scored = scored_cells(truth)
    return {
        resolution: (float(adjusted_rand_score(truth[scored], np.asarray(labels)[scored])),
                     int(pd.unique(np.asarray(labels)[scored]).size))
        for resolution, labels in labellings.items()
    }


def best_fixed(labels: dict, truth: np.ndarray) -> tuple[float, float, float]:
    """``(ARI, resolution, domains)`` at the resolution whose mean ARI over the seeds is highest;
    ``labels``: ``{(resolution, seed): labels}``."""
    scored = scored_cells(truth)
    resolutions = sorted({resolution for resolution, _ in labels})
    seeds = sorted({seed for _, seed in labels})
    means = [np.mean([adjusted_rand_score(truth[scored], labels[r, seed][scored]) for seed in seeds])
             for r in resolutions]
    best = int(np.argmax(means))
    domains = np.mean([len(np.unique(labels[resolutions[best], seed])) for seed in seeds])
    return float(means[best]), resolutions[best], float(domains)


def ari_table(scores: dict[str, dict[float, tuple[float, int]]]) -> str:
    """Markdown table, one row per resolution, one ``ARI (domains)`` column per route."""
    resolutions = sorted({r for per_route in scores.values() for r in per_route})
    lines = ["| resolution | " + " | ".join(f"{route} ARI (domains)" for route in scores) + " |",
             "| ---: |" + " ---: |" * len(scores)]
    for resolution in resolutions:
        cells = [f"{per_route[resolution][0]:.3f} ({per_route[resolution][1]:,})" if resolution in per_route
                 else "-" for per_route in scores.values()]
        lines.append(f"| {resolution:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def utag_labellings(result) -> dict[str, dict[float, np.ndarray]]:
    """utag's labels per clustering method and resolution, from ``result.uns['utag']['label_keys']``."""
    labellings: dict[str, dict[float, np.ndarray]] = {}
    for key in result.uns["utag"]["label_keys"]:
        _, method, resolution = key.rsplit("_", 2)  # '{save_key}_{method}_{resolution}'
        labellings.setdefault(method, {})[float(resolution)] = result.obs[key].to_numpy()
    return labellings


def stage_table(rows: list[tuple[str, float, float]], n_cells: int) -> str:
    """Markdown table: stage, cells, seconds, peak memory (GB)."""
    lines = ["| stage | cells | seconds | peak memory (GB) |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {stage} | {n_cells:,} | {seconds:.2f} | {peak:.2f} |" for stage, seconds, peak in rows]
    return "\n".join(lines)


def provenance() -> str:
    """Where and when a table was measured: cores, memory, CPU, Python, the utag commit
    (``+changes`` when its files differ from it), squidpy's version and today's date."""
    import utag

    return (f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"{platform.processor() or platform.machine()}, Python {platform.python_version()}; "
            f"utag {utag.__version__} at {revision(Path(utag.__file__).resolve().parent)}, "
            f"squidpy {version('squidpy')}; {date.today().isoformat()}")


def revision(where: Path) -> str:
    """The short git commit of the checkout holding ``where``, ``+changes`` when files
    under ``where`` differ from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=where, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=where, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return commit + ("+changes" if dirty else "")


#: Runs a script against the utag source in UTAG_SOURCE instead of the installed (editable) utag.
_WITH_SOURCE = """
import os, runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, os.environ["UTAG_SOURCE"])
sys.path.insert(0, os.path.dirname(sys.argv[1]))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@contextlib.contextmanager
def checkout(commit: str):
    """A temporary git worktree of ``commit`` of this repository (its path), removed afterwards."""
    import tempfile

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as folder:
        tree = Path(folder) / commit
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=root, check=True,
                       capture_output=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=root, check=True)


def run_script(script: Path, arguments: list[str], source: Path | None = None, capture: bool = False) -> str:
    """Run ``script`` with ``arguments`` in a fresh Python process, importing utag from
    ``source`` (a checkout) instead of the installed one when given; its output if ``capture``."""
    import sys

    command = [sys.executable, str(script), *arguments]
    environment = dict(os.environ)
    if source is not None:
        command[1:1] = ["-c", _WITH_SOURCE]
        environment["UTAG_SOURCE"] = str(source)
    done = subprocess.run(command, env=environment, check=True, capture_output=capture, text=True)
    return done.stdout if capture else ""
