"""Parallel stages never hang: a worker that dies or a Ctrl-C ends the run within seconds,
with an error naming the slide and no worker processes left behind."""
from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import utag.clustering as clustering
import utag.message_passing as message_passing
from utag import utag
from utag._parallel import WorkerLostError, map_processes
from utag.datasets import synthetic_tissue


def _die_on_three(value: int) -> int:
    if value == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.05)
    return value * 2


def test_map_processes_returns_results_in_order():
    assert map_processes(_die_on_three, [0, 1, 2, 4, 5], n_workers=2) == [0, 2, 4, 8, 10]


def test_lost_worker_names_its_item_and_leaves_no_process():
    start = time.perf_counter()
    with pytest.raises(WorkerLostError, match=r"\(SIGKILL\).*slide.*'d'.*out-of-memory"):
        map_processes(_die_on_three, [0, 1, 2, 3, 4, 5], n_workers=2, names=list("abcdef"), what="slide")
    assert time.perf_counter() - start < 10
    assert multiprocessing.active_children() == []


_ORIGINAL_SLIDE_MESSAGES = message_passing.slide_messages


def _dies_on_one_slide(doomed_size: int, slide, *args):
    if len(slide[0]) == doomed_size:
        os.kill(os.getpid(), signal.SIGKILL)
    return _ORIGINAL_SLIDE_MESSAGES(slide, *args)


def test_utag_raises_when_a_slide_worker_dies(monkeypatch):
    tissue = synthetic_tissue(n_cells=1_200, n_slides=4, n_markers=6, n_domains=2, n_cell_types=3,
                              random_state=0)
    tissue.obs["roi"] = tissue.obs["roi"].astype(str).map(lambda name: f"slide {name}")
    doomed = sorted(tissue.obs["roi"].unique())[2]
    sizes = tissue.obs["roi"].value_counts()
    tissue = tissue[(tissue.obs["roi"] != doomed) | (np.arange(tissue.n_obs) % 2 == 0)].copy()  # a unique size
    doomed_size = int((tissue.obs["roi"] == doomed).sum())
    assert sizes.drop(doomed).ne(doomed_size).all()
    monkeypatch.setattr(message_passing, "slide_messages", functools.partial(_dies_on_one_slide, doomed_size))
    start = time.perf_counter()
    with pytest.raises(WorkerLostError, match=rf"SIGKILL.*slide.*'{doomed}'.*processes=1"):
        utag(tissue, slide_key="roi", max_dist=20, resolutions=[0.1], processes=2)
    assert time.perf_counter() - start < 30
    assert multiprocessing.active_children() == []


def _killed_at_high_resolution(method, neighbourhood, resolution, *args, **kwargs):
    if resolution > 0.5:
        os.kill(os.getpid(), signal.SIGKILL)
    return np.zeros(neighbourhood.connectivities.shape[0], dtype=np.int64)


def test_cluster_many_raises_when_a_forked_leiden_worker_dies(monkeypatch):
    tissue = synthetic_tissue(n_cells=600, n_slides=1, n_markers=6, n_domains=2, n_cell_types=3, random_state=0)
    neighbourhood = clustering.Neighbourhood(tissue.X, _knn(tissue.X)[0])

    monkeypatch.setattr(clustering, "FORK_MIN_CELLS", 0)
    monkeypatch.setattr(clustering, "cluster", _killed_at_high_resolution)
    tasks = [("leiden", resolution, 0, {"flavor": "igraph"}) for resolution in (0.1, 1.0, 0.2)]
    with pytest.raises(WorkerLostError, match=r"SIGKILL.*run 'leiden at resolution 1.0'"):
        clustering.cluster_many(neighbourhood, tasks, n_jobs=2)
    assert multiprocessing.active_children() == []


def _knn(points):
    from utag.embedding import knn_graph

    return knn_graph(np.asarray(points, dtype=np.float32), 10)


_INTERRUPTED_RUN = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if started in the background
    import utag.message_passing as message_passing
    from utag import utag
    from utag.datasets import synthetic_tissue

    tissue = synthetic_tissue(n_cells=2_000, n_slides=20, n_markers=6, n_domains=2, n_cell_types=3,
                              random_state=0)

    def slow(slide, *args):
        time.sleep(60)

    message_passing.slide_messages = slow
    print("started", flush=True)
    try:
        utag(tissue, slide_key="roi", max_dist=20, resolutions=[0.1], processes=2)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(3)
""")


def _living_processes(group: int) -> list[int]:
    """Processes of process group ``group`` that are not zombies (exited helpers, such as
    the resource trackers, wait as zombies until init reaps them)."""
    living = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == group and fields[0] != "Z":
                living.append(int(stat.parent.name))
    return living


@pytest.mark.parametrize("whole_group", [True, False], ids=["terminal", "jupyter"])
def test_one_ctrl_c_stops_parallel_message_passing(tmp_path, whole_group):
    """A terminal's Ctrl-C reaches every process of the group; Jupyter's interrupt only
    the kernel. Either way one SIGINT ends the run in seconds and no worker survives."""
    script = tmp_path / "run.py"
    script.write_text(_INTERRUPTED_RUN)
    run = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        assert run.stdout.readline().strip() == "started"
        time.sleep(4)  # imports, the memory check and the pool's start
        if whole_group:
            os.killpg(run.pid, signal.SIGINT)
        else:
            os.kill(run.pid, signal.SIGINT)
        start = time.perf_counter()
        output, _ = run.communicate(timeout=20)
        assert time.perf_counter() - start < 10
        assert run.returncode == 3 and "interrupted" in output
        time.sleep(0.5)
        assert _living_processes(run.pid) == []  # no worker left in the run's process group
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)


_PARMAP_WITH_A_DEAD_WORKER = textwrap.dedent("""
    import os, signal, parmap

    def die_on_three(value):
        if value == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return value

    parmap.map(die_on_three, range(6), pm_processes=2, pm_pbar=True)
    print("returned", flush=True)
""")


def test_parmap_waits_forever_for_a_dead_worker(tmp_path):
    """Why utag's pools are not parmap's (README, "Known dependency issues"): parmap's
    ``multiprocessing.Pool`` never returns once a worker dies; :func:`map_processes` raises."""
    script = tmp_path / "parmap_run.py"
    script.write_text(_PARMAP_WITH_A_DEAD_WORKER)
    run = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           text=True, start_new_session=True)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            run.communicate(timeout=8)
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.communicate()


_PARALLEL_AFTER_OPENMP = textwrap.dedent("""
    import numpy as np, pandas as pd
    from anndata import AnnData
    from utag import utag

    rng = np.random.default_rng(0)
    tissue = AnnData(rng.integers(0, 4, (60, 3)).astype(np.float32),
                     obs=pd.DataFrame({"roi": rng.integers(0, 3, 60).astype(str)}, index=[f"c{i}" for i in range(60)]),
                     obsm={"spatial": rng.integers(0, 10, (60, 2)) * 5.0})
    options = dict(slide_key="roi", max_dist=10, clustering_method="kmeans", resolutions=[0.3], progress=False)
    serial = utag(tissue, parallel=False, **options)  # scikit-learn's radius search runs OpenMP here
    parallel = utag(tissue, parallel=True, processes=2, **options)
    assert (serial.obs["UTAG Label_kmeans_0.3"] == parallel.obs["UTAG Label_kmeans_0.3"]).all()
    print("finished", flush=True)
""")



def test_parallel_run_after_openmp_in_this_process_finishes(tmp_path):
    """Forked workers inherit the parent's OpenMP runtime and wait forever in the first
    OpenMP loop (scikit-learn's radius search): parmap's pool hangs on this script;
    utag's workers are not forked."""
    script = tmp_path / "after_openmp.py"
    script.write_text(_PARALLEL_AFTER_OPENMP)
    run = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    try:
        output, errors = run.communicate(timeout=90)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 0 and "finished" in output, errors[-2000:]


_RUN_IN_A_PROCESS = textwrap.dedent("""
    import multiprocessing, sys, time

    def work(queue):
        from utag._parallel import map_processes

        queue.put(map_processes(abs, [-1, -2, -3], n_workers=2))

    if __name__ == "__main__":
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        child = context.Process(target=work, args=(queue,))
        child.start()
        print(queue.get(), flush=True)
        started = time.perf_counter()
        child.join(timeout=120)
        print(f"ended after {time.perf_counter() - started:.1f} s" if child.exitcode is not None else "still running")
""")


def test_a_process_that_used_the_workers_ends_at_once(tmp_path):
    # multiprocessing joins a process's children as it ends; idle loky workers would
    # keep such a process alive for IDLE_WORKER_SECONDS (5 minutes)
    script = tmp_path / "run.py"
    script.write_text(_RUN_IN_A_PROCESS)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    lines = done.stdout.split("\n")
    assert lines[0] == "[1, 2, 3]", done.stderr[-2000:]
    assert lines[1].startswith("ended after") and float(lines[1].split()[2]) < 30


def test_joblib_still_works_after_the_slide_workers():
    # utag keeps its own pool: joblib takes loky's shared one over and expects its own kind
    from joblib import Parallel, delayed

    assert map_processes(abs, [-1, -2, -3], n_workers=2) == [1, 2, 3]
    assert Parallel(n_jobs=2)(delayed(abs)(i) for i in [-4, -5]) == [4, 5]
    assert map_processes(abs, [-6, -7], n_workers=2) == [6, 7]  # and the pool is there for the next call


_FORKED_AFTER_THE_POOL = textwrap.dedent("""
    import multiprocessing

    from utag._parallel import map_processes

    def work(queue):
        queue.put(map_processes(abs, [-1, -2, -3], n_workers=2))

    if __name__ == "__main__":
        print(map_processes(abs, [-4, -5], n_workers=2), flush=True)
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=work, args=(queue,))
        child.start()
        print(queue.get(timeout=120), flush=True)
        child.join(timeout=60)
        print("ended" if child.exitcode == 0 else "still running")
""")


def test_a_forked_process_gets_a_pool_of_its_own(tmp_path):
    # a forked child inherits the parent's pool object, whose workers are not its children
    script = tmp_path / "run.py"
    script.write_text(_FORKED_AFTER_THE_POOL)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.stdout.split("\n")[:3] == ["[4, 5]", "[1, 2, 3]", "ended"], done.stderr[-2000:]


def _hold(item: tuple[str, int]) -> int:
    """Leave a file in the folder while holding the item, and return the process id."""
    folder, index = item
    marker = Path(folder, str(index))
    marker.touch()
    time.sleep(0.3)
    running = len(list(Path(folder).iterdir()))
    marker.unlink()
    return running * 10**7 + os.getpid()


def test_a_larger_pool_is_kept_and_runs_no_more_items_at_once_than_asked(tmp_path):
    # starting workers costs seconds (each imports squidpy): a call for fewer workers
    # uses the pool that a call for more started, but keeps to its own number
    from utag import _parallel

    map_processes(_hold, [(str(tmp_path), i) for i in range(4)], n_workers=4)
    executor = _parallel._pool[0][2]
    # the pool's own workers (under load, one worker may take two of four items, so the
    # process ids the items report need not name every worker)
    workers = set(executor._processes)
    small = map_processes(_hold, [(str(tmp_path), i) for i in range(6)], n_workers=2)
    assert max(value // 10**7 for value in small) <= 2
    assert _parallel._pool[0][2] is executor and len(workers) >= 4
    assert {value % 10**7 for value in small} <= workers
