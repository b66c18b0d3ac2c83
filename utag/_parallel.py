"""Process pools that never hang: a lost worker or one Ctrl-C ends the run within seconds.

``multiprocessing.Pool`` (and ``parmap``, built on it) waits forever for the result of a
worker that died, which is what the out-of-memory killer does to the worker holding the
largest slide, and a terminal's Ctrl-C reaches every worker, so the pool swallows the
first one. Forked workers also inherit the parent's OpenMP runtime, and the first
OpenMP loop in such a worker (scikit-learn's radius search in squidpy's graph builder)
waits forever once the parent has run one (k-means, a serial utag() run).

:func:`map_processes` therefore runs its items in a loky process pool (loky is joblib's
engine, shipped with scikit-learn; the pool is utag's own, not the one joblib shares):
fresh worker processes, kept for the next call, that need no ``if __name__ ==
"__main__"`` guard in scripts. A dead worker is noticed: the error names the item that
worker held, the signal that ended it and what to change. On ``KeyboardInterrupt`` every
worker is stopped before it is re-raised; workers ignore SIGINT themselves, the main
process decides. ``start="fork"`` (for work that shares a large object with its workers
and runs no OpenMP) forks a pool for the call instead, and so does every call from R:
reticulate's process carries R's ``LD_LIBRARY_PATH``, which makes a fresh Python load
the system's libpython instead of its own.
"""
from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import signal
import sys
import tempfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from ._progress import tqdm

__all__ = ["WorkerLostError", "map_processes", "map_threads", "n_threads"]

#: Seconds idle loky workers wait for the next call before they exit.
IDLE_WORKER_SECONDS = 300


def n_threads(n_jobs: int | None) -> int:
    """Threads for ``n_jobs``: ``None`` or ``-1`` every core, else that many (at least 1)."""
    return os.cpu_count() or 1 if n_jobs in (None, -1) else max(1, int(n_jobs))


def map_threads(function, items, n_jobs: int | None = None) -> list:
    """``[function(item) for item in items]`` in ``n_jobs`` threads (:func:`n_threads`),
    in the items' order. For work that releases the GIL (numpy, numba ``nogil``): each
    item is computed as it would be alone, so the results do not depend on ``n_jobs``."""
    items = list(items)
    workers = min(n_threads(n_jobs), len(items))
    if workers <= 1:
        return [function(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(function, items))


class WorkerLostError(RuntimeError):
    """A worker process died before returning its result."""


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _call(index: int, markers: str, function, item, args):
    """Run one item, leaving a note while it runs."""
    marker = Path(markers, str(index))
    marker.touch()
    result = function(item, *args)
    marker.unlink()
    return result


def _stop(executor) -> None:
    """Kill the workers of ``executor``, reap them and wait for its manager thread."""
    processes = dict(getattr(executor, "_processes", None) or {})
    for pid in processes:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for process in processes.values():
        with contextlib.suppress(Exception):
            process.join(timeout=5)
    with contextlib.suppress(Exception):
        executor.shutdown(wait=True)


def _killed(processes: list) -> bool:
    """Whether one of ``processes`` ended by SIGKILL."""
    return any(process.exitcode == -signal.SIGKILL for process in processes)


def map_processes(function, items: list, *args, n_workers: int, names: list | None = None,
                  what: str = "item", hint: str = "", desc: str | None = None, progress: bool = False,
                  start: str = "loky") -> list:
    """``[function(item, *args) for item in items]`` in ``n_workers`` processes (1: in this
    process), results in the order of ``items``.

    ``start``: ``"loky"`` (fresh, reusable workers) or ``"fork"`` (a forked pool that
    shares this process's memory). A worker that dies raises :class:`WorkerLostError`
    naming the ``what`` it held (``names[i]``, default the index), how it ended and
    ``hint``; Ctrl-C stops all workers and raises ``KeyboardInterrupt``. ``desc`` and
    ``progress`` draw a bar.
    """
    bar = tqdm(total=len(items), desc=desc, disable=not progress or not items)
    try:
        if n_workers <= 1 or len(items) <= 1:
            results = []
            for item in items:
                results.append(function(item, *args))
                bar.update()
            return results
        return _map_pool(function, items, args, min(n_workers, len(items)), names, what, hint, bar, start)
    finally:
        bar.close()


def _executor(n_workers: int, start: str):
    if "rpycall" in sys.modules:  # inside R (reticulate): fresh Python processes would get R's
        start = "fork"            # LD_LIBRARY_PATH and with it the system's libpython
    if start == "fork" and "fork" in multiprocessing.get_all_start_methods():
        return ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("fork"),
                                   initializer=_ignore_sigint)
    return _own_executor(n_workers)


#: utag's own loky pool: ``(process id, workers, executor)``.
_pool: list = []


def _own_executor(n_workers: int):
    """A loky process pool of at least ``n_workers``, kept for the next call of this process.

    It is utag's own, not loky's shared ``get_reusable_executor()``: joblib takes that
    one over for ``joblib.Parallel`` and expects it to be its own kind, so sharing it made
    every ``Parallel(n_jobs=2)`` after ``utag()`` fail. A pool of at least ``n_workers``
    is used again (:func:`_map_pool` keeps no more than ``n_workers`` items in it at a
    time) while all its workers are alive: starting workers costs seconds each, as each
    imports squidpy. A pool whose workers broke or left (idle for
    :data:`IDLE_WORKER_SECONDS`: loky would start them all again), or a smaller one, is
    replaced by one of ``n_workers``.
    """
    from joblib.externals.loky import ProcessPoolExecutor

    if _pool:
        pid, workers, executor = _pool[0]
        flags = getattr(executor, "_flags", None)
        usable = flags is not None and not flags.broken and not flags.shutdown
        whole = len(getattr(executor, "_processes", None) or {}) == workers
        if pid == os.getpid() and workers >= n_workers and usable and (whole or workers == n_workers):
            return executor
        if pid == os.getpid():
            _stop(executor)
        _pool.clear()
    executor = ProcessPoolExecutor(n_workers, timeout=IDLE_WORKER_SECONDS, initializer=_ignore_sigint)
    _pool.append((os.getpid(), n_workers, executor))
    _stop_at_exit()
    return executor


_stopping_at_exit: set = set()


def _stop_at_exit() -> None:
    """Stop the pool's idle workers when this process ends.

    A process that multiprocessing started (a ``Process``, a pool's worker) joins its
    children as it ends, and idle loky workers only leave after
    :data:`IDLE_WORKER_SECONDS`: without this, such a process would take five minutes to
    end after calling ``utag()``. Finalizers with an exit priority run before that join.
    """
    from multiprocessing import util

    if os.getpid() not in _stopping_at_exit:
        _stopping_at_exit.add(os.getpid())
        util.Finalize(None, _stop_pool, exitpriority=100)


def _stop_pool() -> None:
    if _pool and _pool[0][0] == os.getpid():
        _stop(_pool[0][2])
    _pool.clear()


def _map_pool(function, items, args, n_workers, names, what, hint, bar, start) -> list:
    executor = _executor(n_workers, start)
    results: list = [None] * len(items)
    processes: list = []
    waiting = iter(enumerate(items))
    with tempfile.TemporaryDirectory(prefix="utag-workers-") as markers:
        try:
            # a pool of more workers gets at most n_workers items at a time; one of n_workers gets them
            # all at once, so that each worker finds its next item sent while it works on one
            window = n_workers if getattr(executor, "_max_workers", n_workers) > n_workers else len(items)
            pending = {executor.submit(_call, i, markers, function, item, args): i
                       for i, item in itertools.islice(waiting, window)}
            processes = list((getattr(executor, "_processes", None) or {}).values())
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    results[pending.pop(future)] = future.result()
                    bar.update()
                for i, item in itertools.islice(waiting, len(done)):
                    pending[executor.submit(_call, i, markers, function, item, args)] = i
        except BrokenProcessPool as error:
            with contextlib.suppress(Exception):  # the pool's manager thread stops and reaps the other workers
                executor.shutdown(wait=True)
            ended = "SIGKILL" if "SIGKILL" in str(error) or _killed(processes) else "an unexpected exit"
            _stop(executor)
            labels = list(names or range(len(items)))
            running = [repr(labels[i]) for i in _lost_items(markers)]
            held = (f"{what} {running[0]}" if len(running) == 1 else
                    f"one of the {what}s {', '.join(running)}" if running else f"a {what}")
            raise WorkerLostError(
                f"a worker process died ({ended}) while computing {held}. SIGKILL is what the out-of-memory "
                f"killer sends, so memory is the likely cause: {hint or 'use fewer processes'}.") from None
        except BaseException:
            _stop(executor)
            raise
    if isinstance(executor, ProcessPoolExecutor):  # forked for this call; loky's workers wait for the next
        executor.shutdown(wait=True)
    return results


def _lost_items(markers: str) -> list[int]:
    """The items that were running when the pool broke: the dead worker held one of them."""
    return sorted(int(marker.name) for marker in Path(markers).iterdir())
