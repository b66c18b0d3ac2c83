"""Step 3b of UTAG: clustering the joint embedding into domains.

Every backend is a function ``(neighbourhood, resolution, random_state, **kwargs) ->
integer labels`` registered in :data:`BACKENDS`; the pipeline knows their names, and
:func:`cluster_many` runs the compiled Leiden's and PARC's ``"fast"`` flavours several
resolutions at once on one shared graph.

* ``leiden``: modularity with a resolution on the kNN connectivities, 2 iterations by
  default (as ``scanpy.tl.leiden(flavor="igraph")``). Default flavour ``"fast"``: the
  Leiden algorithm compiled with numba (:mod:`utag._leiden`), several resolutions at once
  in threads on one shared graph; ``"igraph"``: igraph's C ``community_leiden`` on an
  igraph graph built once; ``"leidenalg"``: ``leidenalg.find_partition`` with
  ``RBConfigurationVertexPartition`` until convergence, as the original UTAG did through
  ``scanpy.tl.leiden``.
* ``parc``: PARC's steps on the same kNN graph (default flavour ``"fast"``: array kernels,
  :mod:`utag._parc`, the pruned graph built once for every resolution); ``flavor="parc"``
  runs the PARC 0.40 package, with a work-around for its ``small_pop`` ``NameError`` (see
  :func:`_parc_small_pop_fix`).
* ``kmeans``: scikit-learn k-means on the PCA embedding with ``k = ceil(10 * resolution)``.

Labels are renumbered by decreasing cluster size (``"0"`` is the largest domain), and
:func:`soft_assignments` gives each cell a probability over the domains.
"""
from __future__ import annotations

import collections
import contextlib
import io
import logging
import math
import multiprocessing
import random
import sys
import threading
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from scipy.special import softmax

from . import _leiden
from . import _validation as check
from ._arrays import column_range, row_blocks
from ._numba import jit
from ._parallel import map_processes, map_threads, n_threads
from ._progress import tqdm

__all__ = [
    "Neighbourhood",
    "leiden",
    "parc",
    "kmeans",
    "kmeans_resolution",
    "relabel_by_size",
    "cluster",
    "cluster_many",
    "ClusteringTask",
    "cluster_means",
    "soft_assignments",
    "feature_scale",
    "min_domain_cells",
    "domain_links",
    "merge_small_domains",
    "MIN_DOMAIN_SIZE",
    "MIN_DOMAIN_CELLS",
]

logger = logging.getLogger(__name__)


@dataclass
class Neighbourhood:
    """What the backends cluster: the embedding and its kNN connectivities."""

    embedding: np.ndarray
    connectivities: sp.csr_matrix
    _arrays: dict = field(default_factory=dict, repr=False)

    def leiden_arrays(self, use_weights: bool = True, n_jobs: int | None = None) -> tuple:
        """The connectivities in the layout :mod:`utag._leiden` works on (built on first
        use, in ``n_jobs`` threads)."""
        key = ("leiden", use_weights)
        if key not in self._arrays:
            matrix = self.connectivities
            if not use_weights:
                matrix = matrix.copy()
                matrix.data[:] = 1.0
            self._arrays[key] = _leiden._as_graph(matrix, _leiden.leading_columns_order(self.embedding), n_jobs)
        return self._arrays[key]

    def parc_arrays(self, n_jobs: int | None = None) -> tuple:
        """The Jaccard-pruned connectivities PARC clusters, in :mod:`utag._leiden`'s layout
        (built on first use, in ``n_jobs`` threads, shared by every resolution)."""
        if "parc" not in self._arrays:
            from . import _parc

            self._arrays["parc"] = _parc.prepare(self.connectivities, self.embedding, n_jobs)
        return self._arrays["parc"]

    @property
    def graph(self):
        """Undirected weighted igraph graph of the connectivities, one edge per link (built
        on first use)."""
        if "igraph" not in self._arrays:
            self._arrays["igraph"] = _igraph(sp.triu(self.connectivities, k=1), directed=False)
        return self._arrays["igraph"]

    def scanpy_graph(self, directed: bool = True):
        """The igraph graph ``scanpy.tl.leiden`` gives leidenalg: an edge for every entry of
        the connectivities, in their order (so each link twice, one way each when
        ``directed``, its default), so that the same seed gives its partition (built on
        first use)."""
        key = ("scanpy igraph", bool(directed))
        if key not in self._arrays:
            self._arrays[key] = _igraph(self.connectivities, directed)
        return self._arrays[key]

    def igraph_of(self, leiden_kwargs: dict):
        """The igraph graph a Leiden run with ``leiden_kwargs`` clusters (flavour
        ``"igraph"`` or ``"leidenalg"``)."""
        if leiden_kwargs.get("flavor") == "leidenalg":
            return self.scanpy_graph(leiden_kwargs.get("directed", True))
        return self.graph


def _igraph(matrix: sp.spmatrix, directed: bool):
    """Weighted igraph graph with an edge for every stored entry of ``matrix``, in order."""
    import igraph as ig

    entries = matrix.tocoo()
    graph = ig.Graph(n=matrix.shape[0], directed=directed)
    graph.add_edges(np.column_stack([entries.row, entries.col]))  # twice as fast as Graph(edges=...)
    graph.es["weight"] = entries.data.astype(np.float64)
    return graph


@contextlib.contextmanager
def _igraph_seed(random_state: int):
    """Seed igraph's random number generator for one call, then restore the default
    (Python's ``random`` module: igraph offers no way to read a generator set before)."""
    import igraph as ig

    ig.set_random_number_generator(random.Random(random_state))
    try:
        yield
    finally:
        ig.set_random_number_generator(random)


def leiden(neighbourhood: Neighbourhood, resolution: float, random_state: int = 0, **kwargs) -> np.ndarray:
    """Leiden communities of the kNN graph at ``resolution``.

    ``kwargs``: ``flavor`` (``"fast"`` default, ``"igraph"`` or ``"leidenalg"``),
    ``use_weights`` (default True), ``n_iterations`` (default 2 for ``"fast"`` and
    ``"igraph"``, -1 = until convergence for ``"leidenalg"``), ``initial_membership``,
    and for ``"igraph"``/``"leidenalg"`` any other keyword of
    ``igraph.Graph.community_leiden`` or ``leidenalg.find_partition`` (e.g.
    ``partition_type``). ``"leidenalg"`` runs on the graph ``scanpy.tl.leiden``, and so the
    original UTAG, gives it (directed by default, ``directed=False`` as scanpy builds it
    undirected); the other flavours take the graph undirected (``directed`` makes no
    difference to them).
    """
    random_state = check.seed(random_state)
    kwargs = dict(kwargs)
    flavor = kwargs.pop("flavor", "fast")
    if flavor == "fast":
        return _leiden.run_to_end(_fast_leiden_run(neighbourhood, resolution, random_state, kwargs))
    if flavor not in ("igraph", "leidenalg"):
        raise ValueError(f"`leiden_kwargs['flavor']` must be 'fast', 'igraph' or 'leidenalg', got {flavor!r}.")
    graph = neighbourhood.igraph_of({"flavor": flavor, **kwargs})
    use_weights = kwargs.pop("use_weights", True)
    kwargs.pop("directed", None)  # in the graph: igraph's Leiden takes it undirected, leidenalg as scanpy does
    weights = "weight" if use_weights else None
    if flavor == "igraph":
        kwargs.setdefault("n_iterations", 2)
        kwargs.setdefault("objective_function", "modularity")
        with _igraph_seed(random_state):
            membership = graph.community_leiden(weights=weights, resolution=resolution, **kwargs).membership
    else:
        import leidenalg

        partition_type = kwargs.pop("partition_type", leidenalg.RBConfigurationVertexPartition)
        _check_takes_resolution(partition_type)
        kwargs.setdefault("n_iterations", -1)
        membership = leidenalg.find_partition(
            graph, partition_type, weights=weights, resolution_parameter=resolution, seed=random_state, **kwargs
        ).membership
    return np.asarray(membership)


def _check_takes_resolution(partition_type) -> None:
    """A ``ValueError`` naming the fix when the leidenalg ``partition_type`` has no
    ``resolution_parameter`` (e.g. ``ModularityVertexPartition``), which utag passes for
    each of its resolutions; leidenalg would raise a ``TypeError`` about the keyword."""
    import inspect

    try:
        parameters = inspect.signature(partition_type).parameters
    except (TypeError, ValueError):  # no signature to read: let leidenalg judge
        return
    if "resolution_parameter" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return
    name = getattr(partition_type, "__name__", repr(partition_type))
    raise ValueError(f"`leiden_kwargs['partition_type']` {name} takes no resolution, but Leiden runs at each of "
                     "`resolutions`: use leidenalg.RBConfigurationVertexPartition (modularity at a resolution; "
                     "at 1.0 it is ModularityVertexPartition) or another partition with a resolution_parameter "
                     "(CPMVertexPartition, RBERVertexPartition).")


def _fast_leiden_run(neighbourhood: Neighbourhood, resolution: float, random_state: int,
                     kwargs: dict) -> _leiden.Run:
    """The compiled Leiden's run for ``leiden_kwargs`` ``kwargs`` (flavour ``"fast"``),
    not started yet."""
    # "directed" makes no difference: the modularity of a symmetric graph is the same either way
    kwargs = {key: value for key, value in kwargs.items() if key not in ("flavor", "directed")}
    use_weights = kwargs.pop("use_weights", True)
    n_iterations = kwargs.pop("n_iterations", 2)
    initial = kwargs.pop("initial_membership", None)
    if kwargs:
        raise ValueError(f"`leiden_kwargs` {sorted(kwargs)} are not options of the 'fast' Leiden flavour "
                         "(it takes n_iterations, use_weights, initial_membership); pass "
                         "flavor='igraph' or 'leidenalg' to use them.")
    return _leiden.Run(neighbourhood.leiden_arrays(bool(use_weights)), resolution, n_iterations, random_state,
                       initial)


@contextlib.contextmanager
def _parc_small_pop_fix(small_pop: int):
    """Define the global ``small_pop`` that PARC 0.40's ``run_toobig_subPARC`` reads.

    That method refers to a bare ``small_pop`` instead of ``self.small_pop``, so PARC
    raises ``NameError`` whenever its first cluster holds more than ``too_big_factor``
    (40%) of the cells. Python looks an undefined local name up in the module's
    globals, so providing it there for the duration of the call fixes the lookup
    without changing PARC's algorithm.
    """
    import parc._parc as parc_module

    had_value = hasattr(parc_module, "small_pop")
    previous = getattr(parc_module, "small_pop", None)
    parc_module.small_pop = small_pop
    try:
        yield
    finally:
        if had_value:
            parc_module.small_pop = previous
        else:
            del parc_module.small_pop


#: PARC's ``small_pop`` as the original ``utag()`` passes it (``PARC(..., small_pop=1000)``;
#: the ``parc`` package's own default is 10): cells of clusters smaller than this join
#: their kNN neighbours' most common larger cluster.
ORIGINAL_PARC_SMALL_POP = 1000


def parc(neighbourhood: Neighbourhood, resolution: float, random_state: int = 0, **kwargs) -> np.ndarray:
    """PARC clusters of the embedding, reusing the kNN graph.

    ``kwargs``: ``flavor`` (``"fast"`` default: PARC's steps on array kernels,
    :mod:`utag._parc`, minutes faster at a million cells; ``"parc"``: the ``parc`` package);
    ``too_big_factor`` (0.4), ``small_pop`` (1000, :data:`ORIGINAL_PARC_SMALL_POP`, as the
    original ``utag()`` passes it), ``n_iter_leiden`` (5); with ``flavor="parc"`` any other
    keyword of ``parc.PARC``. The ``parc`` package goes on moving the cells of small
    clusters until none is left or ``time_smallpop`` seconds (15) have passed; a cluster
    below ``small_pop`` with no larger neighbour never goes away, so with 1000 each call
    of that flavour usually takes those 15 s more (``time_smallpop`` shortens it; the
    number of passes then depends on the machine's speed). The fast flavour makes a
    fixed number of passes.
    """
    random_state = check.seed(random_state)
    kwargs = dict(kwargs)
    kwargs.setdefault("small_pop", ORIGINAL_PARC_SMALL_POP)
    flavor = kwargs.pop("flavor", "fast")
    if flavor == "fast":
        from . import _parc

        options = {"too_big_factor": kwargs.pop("too_big_factor", 0.4), "small_pop": kwargs.pop("small_pop"),
                   "n_iterations": kwargs.pop("n_iter_leiden", 5)}
        if kwargs:
            raise ValueError(f"`parc_kwargs` {sorted(kwargs)} are not options of the 'fast' PARC flavour (it takes "
                             "too_big_factor, small_pop, n_iter_leiden); pass flavor='parc' to use them.")
        return _parc.parc(neighbourhood.connectivities, neighbourhood.embedding, resolution, random_state, **options,
                          prepared=neighbourhood.parc_arrays())
    if flavor != "parc":
        raise ValueError(f"`parc_kwargs['flavor']` must be 'fast' or 'parc', got {flavor!r}.")
    from parc import PARC

    kwargs.setdefault("random_seed", random_state)
    kwargs.setdefault("resolution_parameter", resolution)
    kwargs.setdefault("neighbor_graph", neighbourhood.connectivities)
    model = PARC(neighbourhood.embedding, **kwargs)
    chatter = io.StringIO()
    with _parc_small_pop_fix(model.small_pop), contextlib.redirect_stdout(chatter):
        model.run_PARC()
    logger.debug("PARC output:\n%s", chatter.getvalue())
    return np.asarray(model.labels)


def kmeans_resolution(k: int) -> float:
    """The resolution whose k-means has ``k`` domains (:func:`kmeans` takes ``k =
    ceil(10 * resolution)``), under which a k-means run for ``n_domains=k`` is written.

    >>> kmeans_resolution(3)
    0.3
    """
    return k / 10


def kmeans(neighbourhood: Neighbourhood, resolution: float, random_state: int = 0, **kwargs) -> np.ndarray:
    """k-means of the embedding with ``k = ceil(10 * resolution)`` (or ``n_clusters`` from ``kwargs``;
    the other ``kwargs`` go to ``KMeans``)."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    random_state = check.seed(random_state)
    asked = kwargs.pop("n_clusters", None)
    k = math.ceil(10 * resolution) if asked is None else asked
    if asked is None and k == 1:
        logger.warning("k-means at resolution %g takes k = ceil(10 * resolution) = 1: every cell in one domain. "
                       "Resolutions of 0.2 and more give k = 2 and more (or pass n_domains=k).", resolution)
    n_clusters = min(k, len(neighbourhood.embedding))
    kwargs.setdefault("n_init", "auto")
    model = KMeans(n_clusters=n_clusters, random_state=random_state, **kwargs)
    with warnings.catch_warnings():  # fewer distinct points than k: said below, in words
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = model.fit_predict(_in_float32_range(neighbourhood.embedding))
    found = len(np.unique(labels))
    if found < n_clusters:
        logger.warning("k-means found %d clusters for k = %d: the embedding has only %d distinct points",
                       found, n_clusters, found)
    return labels


#: k-means' squared distances stay far inside float32's range for embeddings of a root mean
#: square between these (others are rescaled: the same labels, without over- or underflow).
KMEANS_SCALES = (1e-6, 1e6)


def _in_float32_range(embedding: np.ndarray) -> np.ndarray:
    """``embedding``, divided by its root mean square where that lies outside
    :data:`KMEANS_SCALES` (features far from unit scale: k-means' squared distances would
    over- or underflow float32 and collapse its clusters).

    >>> _in_float32_range(np.full((2, 2), 1e20, dtype=np.float32)).tolist()
    [[1.0, 1.0], [1.0, 1.0]]
    """
    scale = float(np.sqrt(np.mean(np.square(embedding, dtype=np.float64)))) if embedding.size else 1.0
    if scale == 0 or KMEANS_SCALES[0] <= scale <= KMEANS_SCALES[1]:
        return embedding
    return (embedding / scale).astype(embedding.dtype, copy=False)


#: Every method gets one :class:`Neighbourhood`, as in the original UTAG: the PCA and the kNN
#: graph of ``sc.pp.neighbors`` (on ``use_rep``). Leiden clusters that graph, PARC too (the
#: original passes it as PARC's ``neighbor_graph``, with the PCA as PARC's data), k-means the
#: PCA; small domains are merged along that graph for every method.
BACKENDS = {"leiden": leiden, "parc": parc, "kmeans": kmeans}

#: Backend keywords utag sets itself, with the parameter of ``utag()`` that sets them.
RESERVED_KWARGS = {"leiden_kwargs": {"random_state": "random_state", "seed": "random_state",
                                     "resolution": "resolutions", "resolution_parameter": "resolutions",
                                     "weights": "leiden_kwargs['use_weights']"},
                   "parc_kwargs": {"random_state": "random_state", "random_seed": "random_state",
                                   "resolution_parameter": "resolutions", "neighbor_graph": "n_neighbors"},
                   "kmeans_kwargs": {"random_state": "random_state", "n_clusters": "resolutions"}}
#: What a reserved keyword's ``utag()`` keyword means, where its name does not say it.
RESERVED_NOTES = {"n_clusters": " (k-means takes k = ceil(10 * resolution)), or `n_domains=k`"}


#: Backend keywords that take whole numbers, with their smallest value (a negative number
#: of Leiden iterations: until nothing changes).
WHOLE_NUMBER_KWARGS = {"leiden_kwargs": {"n_iterations": -sys.maxsize},
                       "parc_kwargs": {"small_pop": 0, "n_iter_leiden": -sys.maxsize},
                       "kmeans_kwargs": {"max_iter": 1}}


def check_backend_kwargs(n_cells: int, leiden_kwargs, parc_kwargs, kmeans_kwargs) -> tuple[dict, dict, dict]:
    """Refuse backend keywords that ``utag()`` sets itself, whole-number keywords that are
    not, a Leiden ``partition_type`` that is not a class, and an initial membership that is
    not one label per cell. Returns copies of the
    three dicts with those whole numbers as ints (R sends ``2`` as ``2.0``)."""
    given = {"leiden_kwargs": leiden_kwargs, "parc_kwargs": parc_kwargs, "kmeans_kwargs": kmeans_kwargs}
    checked = {}
    for name, kwargs in given.items():
        kwargs = check.kwargs_dict(name, kwargs)
        for key, instead in RESERVED_KWARGS[name].items():
            if key in kwargs:
                raise ValueError(f"`{name}[{key!r}]` is set by utag(): pass `{instead}=` to utag() instead"
                                 f"{RESERVED_NOTES.get(key, '')}.")
        for key, minimum in WHOLE_NUMBER_KWARGS.get(name, {}).items():  # before any work, naming the keyword
            if key in kwargs:
                kwargs[key] = check.as_int(f"{name}[{key!r}]", kwargs[key], minimum=minimum)
        checked[name] = kwargs
    leiden_kwargs = checked["leiden_kwargs"]
    partition_type = leiden_kwargs.get("partition_type")
    if partition_type is not None and not callable(partition_type):
        raise ValueError("`leiden_kwargs['partition_type']` must be a leidenalg partition class (e.g. "
                         f"leidenalg.RBConfigurationVertexPartition), got {partition_type!r}.")
    membership = leiden_kwargs.get("initial_membership")
    if membership is not None and np.shape(membership) != (n_cells,):
        raise ValueError(f"`leiden_kwargs['initial_membership']` must hold one label per cell ({n_cells}, in the "
                         f"order of adata's rows), got shape {np.shape(membership)}.")
    if checked["kmeans_kwargs"]:
        from sklearn.cluster import KMeans

        check.known_keywords("kmeans_kwargs", checked["kmeans_kwargs"], KMeans().get_params(), "sklearn's KMeans")
    return checked["leiden_kwargs"], checked["parc_kwargs"], checked["kmeans_kwargs"]


def relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0..k-1 by decreasing cluster size (ties: first-seen order)."""
    _, first_seen, codes, counts = np.unique(labels, return_index=True, return_inverse=True, return_counts=True)
    ranking = np.lexsort((first_seen, -counts))
    new_code = np.empty_like(ranking)
    new_code[ranking] = np.arange(len(ranking))
    return new_code[codes.ravel()]


def cluster(method: str, neighbourhood: Neighbourhood, resolution: float, random_state: int = 0,
            min_cells: int = 0, *, keep: int = 1, **kwargs) -> np.ndarray:
    """Integer labels (0 = largest cluster) from the backend named ``method``, domains of
    fewer than ``min_cells`` cells merged into their neighbours while more than ``keep``
    are left (:func:`merge_small_domains`)."""
    random_state = check.seed(random_state)
    labels = BACKENDS[method](neighbourhood, resolution, random_state=random_state, **kwargs)
    return _merged(labels, neighbourhood, min_cells, keep)


def _merged(labels, neighbourhood: Neighbourhood, min_cells: int, keep: int = 1) -> np.ndarray:
    """``labels`` numbered by size, domains of fewer than ``min_cells`` cells merged while
    more than ``keep`` are left."""
    labels = np.asarray(labels).ravel()
    if min_cells > 1:
        return merge_small_domains(labels, neighbourhood.connectivities, neighbourhood.embedding, min_cells, keep)
    return relabel_by_size(labels)


class ClusteringTask(NamedTuple):
    """One run of :func:`cluster_many`: ``method`` at ``resolution``, seeded with
    ``random_state``, with the backend's keywords ``kwargs``."""

    method: str
    resolution: float
    random_state: int
    kwargs: dict

    def is_threaded(self) -> bool:
        """Whether the run is the compiled Leiden or PARC (``flavor="fast"``), which
        releases the GIL: such runs share one graph in threads."""
        return self.method in ("leiden", "parc") and self.kwargs.get("flavor", "fast") == "fast"


def _cluster_steps(neighbourhood: Neighbourhood, task: ClusteringTask, min_cells: int):
    """:func:`cluster` for ``task`` as a generator that returns the labels: a compiled
    Leiden run yields after each level of the algorithm, anything else runs in one step."""
    method, resolution, seed, kwargs = task
    if method == "leiden" and kwargs.get("flavor", "fast") == "fast":
        leiden_run = _fast_leiden_run(neighbourhood, resolution, check.seed(seed), kwargs)
        while not leiden_run.step():
            yield
        return _merged(leiden_run.labels(), neighbourhood, min_cells)
    return cluster(method, neighbourhood, resolution, seed, min_cells, **kwargs)


def _take_turns(steps: list, n_threads: int, on_done=None) -> list:
    """The return values of the generators ``steps``, each run to its end by ``n_threads``
    threads that take turns: a thread takes the generator first in line, advances it one
    step and puts it back at the end of the line. Three Leiden runs thus share two
    threads evenly instead of two runs first and the third alone. At most ``n_threads +
    1`` generators are in the line at a time (each Leiden run in it holds its current
    level's graph); the next one joins when one ends. The first error stops every thread
    after its current step and is raised; so is Ctrl-C."""
    results: list = [None] * len(steps)
    waiting = collections.deque(enumerate(steps))
    line = collections.deque(waiting.popleft() for _ in range(min(len(steps), n_threads + 1)))
    lock, stop, errors = threading.Lock(), threading.Event(), []

    def work() -> None:
        while not stop.is_set():
            with lock:
                if not line:
                    return
                index, generator = line.popleft()
            try:
                next(generator)
            except StopIteration as end:
                results[index] = end.value
                if on_done is not None:
                    on_done()
                with lock:
                    if waiting:
                        line.append(waiting.popleft())
                continue
            except BaseException as error:  # noqa: BLE001 (raised in the calling thread)
                errors.append(error)
                stop.set()
                return
            with lock:
                line.append((index, generator))

    threads = [threading.Thread(target=work, daemon=True) for _ in range(max(1, min(n_threads, len(steps))))]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    finally:  # on Ctrl-C, return at once: each thread ends after its current step
        stop.set()
    if errors:
        raise errors[0]
    return results


# Runs in forked workers read the neighbourhood from here instead of receiving a pickled
# copy of a graph with millions of edges.
_SHARED: dict = {}


#: Leiden flavours other than the compiled one run in forked processes from this many cells.
FORK_MIN_CELLS = 100_000


def _shared_run(task) -> np.ndarray:
    method, resolution, seed, kwargs = task
    return cluster(method, _SHARED["neighbourhood"], resolution, seed, _SHARED["min_cells"], **kwargs)


def cluster_many(neighbourhood: Neighbourhood, tasks: list, n_jobs: int | None = None,
                 progress: bool = False, min_cells: int = 0) -> list[np.ndarray]:
    """:func:`cluster` for every task, a :class:`ClusteringTask` or a tuple ``(method,
    resolution, random_state, kwargs)``, in order (domains under ``min_cells`` cells
    merged).

    The compiled Leiden and PARC (``flavor="fast"``, the default) release the GIL, so their
    runs share one graph in ``n_jobs`` threads (default: one per core), which take turns
    level by level of the Leiden runs (:func:`_take_turns`). Other Leiden
    flavours run in forked worker processes when the graph is large enough (100,000 cells)
    for that to pay; the parc package and k-means run one after the other (scikit-learn
    uses the cores itself).
    Every run is seeded on its own, so the labels do not depend on ``n_jobs``.
    """
    tasks = [ClusteringTask(*task) for task in tasks]
    cores = n_threads(n_jobs)  # None and -1: every core
    n_jobs = max(1, min(cores, len(tasks)))
    bar = tqdm(total=len(tasks), desc="clustering", disable=not progress or not tasks)

    def run(task: ClusteringTask):
        labels = cluster(task.method, neighbourhood, task.resolution, task.random_state, min_cells, **task.kwargs)
        bar.update()
        return labels

    results: list = [None] * len(tasks)
    threaded = [i for i, task in enumerate(tasks) if task.is_threaded()]
    forked = [i for i, task in enumerate(tasks) if task.method == "leiden" and not task.is_threaded()]
    large = neighbourhood.connectivities.shape[0] >= FORK_MIN_CELLS
    try:
        # built once, in every thread allowed, before the runs share them
        for use_weights in {tasks[i].kwargs.get("use_weights", True) for i in threaded if tasks[i].method == "leiden"}:
            neighbourhood.leiden_arrays(bool(use_weights), cores)
        if any(tasks[i].method == "parc" for i in threaded):
            neighbourhood.parc_arrays(cores)
        if threaded and n_jobs > 1:
            steps = [_cluster_steps(neighbourhood, tasks[i], min_cells) for i in threaded]
            for i, labels in zip(threaded, _take_turns(steps, n_jobs, bar.update)):
                results[i] = labels
        if forked and n_jobs > 1 and large and "fork" in multiprocessing.get_all_start_methods():
            for i in forked:  # build once, before forking
                neighbourhood.igraph_of(tasks[i].kwargs)
            _SHARED.update(neighbourhood=neighbourhood, min_cells=min_cells)
            runs = map_processes(_shared_run, [tasks[i] for i in forked], n_workers=n_jobs,
                                 names=[f"{tasks[i].method} at resolution {tasks[i].resolution}" for i in forked],
                                 what="run", hint="pass fewer n_jobs (or parallel=False) or cluster fewer cells",
                                 start="fork")  # the workers share the graph; igraph runs no OpenMP
            for i, labels in zip(forked, runs):
                results[i] = labels
                bar.update()
        for i, task in enumerate(tasks):
            if results[i] is None:
                results[i] = run(task)
    finally:
        _SHARED.clear()
        bar.close()
    return results


def cluster_means(values, labels: np.ndarray, n_jobs: int | None = 1) -> np.ndarray:
    """Mean row of ``values`` (dense or sparse) per label ``0..k-1``, float64 (k x columns);
    dense blocks of rows in ``n_jobs`` threads (the same numbers for any number)."""
    n_clusters = int(labels.max()) + 1
    sizes = np.maximum(np.bincount(labels, minlength=n_clusters), 1)
    if sp.issparse(values):
        membership = sp.csr_matrix((np.ones(len(labels), dtype=np.float64), (labels, np.arange(len(labels)))),
                                   shape=(n_clusters, len(labels)))
        sums = (membership @ values).toarray()
    else:  # a block of rows at a time, in threads: no float64 copy of every cell's values
        sums = sum(map_threads(lambda rows: cluster_sums(values[rows], labels[rows], n_clusters),
                               row_blocks(len(values)), n_jobs))
    return np.asarray(sums, dtype=np.float64) / sizes[:, None]


def cluster_sums(block: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """Float64 column sums of a dense block of rows per label ``0..n_clusters-1``
    (clusters x columns), rows added in order: summed over blocks, what
    :func:`cluster_means` divides by the cluster sizes."""
    return _cluster_sums(np.ascontiguousarray(block), np.asarray(labels, dtype=np.int64), n_clusters)


@jit
def _cluster_sums(values, labels, n_clusters):
    sums = np.zeros((n_clusters, values.shape[1]))
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            sums[labels[i], j] += values[i, j]
    return sums


def soft_assignments(features, labels: np.ndarray, n_jobs: int | None = 1,
                     scale: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Probability of each cell belonging to each cluster (cells x clusters, rows sum to 1).

    Features are z-scored; a cluster's centroid ``c`` is the mean z-scored profile of its
    cells; a cell's similarity to a centroid is ``-||z - c||^2 / 2`` and its
    probabilities are the softmax of those similarities (the posterior of equal-weight,
    unit-variance Gaussians at the centroids), so the most probable cluster is the
    nearest centroid. The original UTAG used the bare dot product ``x @ c``, which
    favours centroids with large norms over near ones.

    Computed in float64 on centred features (a background offset in float32 features
    would otherwise cancel away the differences between cells), a block of rows at a
    time; sparse features stay sparse: ``z @ c = x @ (c / sd) - (mean / sd) @ c``.
    Stored as float32. Dense blocks run in ``n_jobs`` threads (``None``: every core; the
    same numbers for any number). ``scale``: :func:`feature_scale` of ``features``, when
    several labellings of the same features are scored.
    """
    mean, sd = feature_scale(features, n_jobs) if scale is None else scale
    if sp.issparse(features):
        features = sp.csr_matrix(features, dtype=np.float64)
    centroids = (cluster_means(features, labels, n_jobs) - mean) / sd
    if sp.issparse(features):
        similarity = np.asarray(features @ (centroids / sd).T, dtype=np.float64)
        similarity -= (mean / sd) @ centroids.T + 0.5 * (centroids**2).sum(axis=1)
        return softmax(similarity, axis=1).astype(np.float32)
    return np.concatenate(map_threads(lambda rows: soft_block(features[rows], mean, sd, centroids),
                                      row_blocks(len(features)), n_jobs))


def feature_scale(features, n_jobs: int | None = 1) -> tuple[np.ndarray, np.ndarray]:
    """Each feature's mean and standard deviation (:func:`feature_spread`, a zero deviation
    replaced by 1), by which :func:`soft_assignments` z-scores the features."""
    mean, sd = feature_spread(features, n_jobs)
    sd[sd == 0] = 1.0
    return mean, sd


def feature_spread(features, n_jobs: int | None = 1) -> tuple[np.ndarray, np.ndarray]:
    """Each feature's mean and standard deviation, float64 (deviations from the mean for
    dense features, so a bright, flat channel keeps its small spread); dense blocks of
    rows in ``n_jobs`` threads, summed in order (the same numbers for any number)."""
    if sp.issparse(features):
        features = sp.csr_matrix(features, dtype=np.float64)
        if not features.has_canonical_format:  # one entry per cell and feature, on a copy
            features = features.copy()
            features.sum_duplicates()
        n_cells, n_features = features.shape
        mean = np.asarray(features.mean(axis=0)).ravel()
        # deviations of the stored values, and of the implicit zeros (E[x^2] - E[x]^2 cancels
        # the spread of a bright, flat channel away)
        squares = np.bincount(features.indices, weights=(features.data - mean[features.indices]) ** 2,
                              minlength=n_features)
        zeros = n_cells - np.bincount(features.indices, minlength=n_features)
        spread = np.sqrt((squares + zeros * mean**2) / max(n_cells, 1))
        # a constant channel has none (as dense): not the residue of the mean's rounding
        spread[column_range(features) == 0] = 0.0
        return mean, spread
    mean = np.asarray(features.mean(axis=0, dtype=np.float64)).ravel()
    squares = map_threads(lambda rows: squared_deviations(features[rows], mean), row_blocks(len(features)), n_jobs)
    return mean, np.sqrt(sum(squares) / max(len(features), 1))


def squared_deviations(block: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Each column's sum of squared deviations from ``mean`` over a dense block of rows,
    in float64: summed over blocks, the spread :func:`feature_scale` divides by."""
    return ((np.asarray(block, dtype=np.float64) - mean) ** 2).sum(axis=0)


def soft_block(block: np.ndarray, mean: np.ndarray, sd: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """:func:`soft_assignments` of a dense block of rows, given every cell's feature
    ``mean`` and ``sd`` (zeros replaced by 1) and the z-scored cluster ``centroids``."""
    centroids = np.ascontiguousarray(centroids, dtype=np.float64)
    return _softmax_rows(np.ascontiguousarray(block), np.asarray(mean, dtype=np.float64),
                         np.asarray(sd, dtype=np.float64), centroids, 0.5 * (centroids**2).sum(axis=1))


@jit
def _softmax_rows(block, mean, sd, centroids, half_norms):
    """Row by row, in float64: ``z = (x - mean) / sd``, then the softmax over the clusters
    of ``z @ centroids.T - half_norms``; float32. One pass, no cells x features temporaries,
    and no lock held, so blocks run side by side in threads."""
    n_rows, n_features = block.shape
    n_clusters = centroids.shape[0]
    out = np.empty((n_rows, n_clusters), dtype=np.float32)
    z = np.empty(n_features)
    scores = np.empty(n_clusters)
    for i in range(n_rows):
        for j in range(n_features):
            z[j] = (np.float64(block[i, j]) - mean[j]) / sd[j]
        top = -np.inf
        for c in range(n_clusters):
            score = -half_norms[c]
            for j in range(n_features):
                score += z[j] * centroids[c, j]
            scores[c] = score
            top = max(top, score)
        total = 0.0
        for c in range(n_clusters):
            scores[c] = np.exp(scores[c] - top)
            total += scores[c]
        for c in range(n_clusters):
            out[i, c] = scores[c] / total
    return out


#: Default smallest domain, as a fraction of the cells (see :func:`merge_small_domains`).
MIN_DOMAIN_SIZE = 0.002
#: ... but never fewer cells than this (the ``parc`` package's default ``small_pop``).
MIN_DOMAIN_CELLS = 10


def min_domain_cells(min_domain_size: float | int | None, n_cells: int) -> int:
    """``min_domain_size`` in cells: a fraction of ``n_cells`` if below 1, else a count;
    ``None``: the default (:data:`MIN_DOMAIN_SIZE` of the cells, at least :data:`MIN_DOMAIN_CELLS`)."""
    if min_domain_size is None:
        return min(n_cells, max(MIN_DOMAIN_CELLS, math.ceil(MIN_DOMAIN_SIZE * n_cells)))
    if isinstance(min_domain_size, bool) or not isinstance(min_domain_size, (int, float, np.integer, np.floating)) \
            or not np.isfinite(min_domain_size) or min_domain_size < 0:
        raise ValueError("`min_domain_size` must be a fraction of the cells in [0, 1) or a number of cells >= 1 "
                         f"(0 keeps every domain), got {min_domain_size!r}.")
    if min_domain_size < 1:
        return math.ceil(float(min_domain_size) * n_cells)
    return int(min_domain_size)


def domain_links(connectivities: sp.csr_matrix, labels: np.ndarray, n_labels: int) -> np.ndarray:
    """Total edge weight between every pair of labels (dense ``n_labels x n_labels``; the
    number of domains is small), the diagonal holding each label's internal weight.

    Examples
    --------
    >>> edges = sp.csr_matrix(np.array([[0, 2, 1], [2, 0, 0], [1, 0, 0]], dtype=float))
    >>> domain_links(edges, np.array([0, 0, 1]), 2).tolist()
    [[4.0, 1.0], [1.0, 0.0]]
    """
    connectivities = sp.csr_matrix(connectivities)
    return _label_links(connectivities.indptr, connectivities.indices, connectivities.data,
                        np.asarray(labels, dtype=np.int64), int(n_labels))


@jit
def _label_links(indptr, indices, data, labels, n_labels):  # one pass over the edges, float64 sums
    links = np.zeros((n_labels, n_labels))
    for row in range(len(indptr) - 1):
        mine = links[labels[row]]
        for position in range(indptr[row], indptr[row + 1]):
            mine[labels[indices[position]]] += data[position]
    return links


def merge_small_domains(labels: np.ndarray, connectivities: sp.csr_matrix, embedding: np.ndarray,
                        min_cells: int, keep: int = 1) -> np.ndarray:
    """Merge every domain of fewer than ``min_cells`` cells into the domain it links to most,
    as long as more than ``keep`` domains are left.

    Small domains are merged one at a time, smallest first: each joins the domain with
    which its cells share the most kNN edge weight (a domain that is not small if it
    touches one); a domain with no edge to any other (a connected component of the kNN
    graph of its own) joins the domain whose centroid in ``embedding`` is nearest. Links,
    sizes and centroids are updated after each merge. Returns labels ``0..k-1`` by
    decreasing size.

    When small domains hold most of the cells (``min_cells`` near the run's typical domain
    size), the first domains to grow would draw in every other by their summed links and
    leave one domain. Each small domain then joins the neighbour with the most edge weight
    per cell of it instead, so that small domains pair up into domains of about
    ``min_cells``.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> edges = sp.csr_matrix(np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=float))
    >>> merge_small_domains(np.array([0, 0, 1]), edges, np.zeros((3, 2)), min_cells=2).tolist()
    [0, 0, 0]
    """
    labels = relabel_by_size(np.asarray(labels))
    n_labels = int(labels.max()) + 1 if len(labels) else 0
    sizes = np.bincount(labels, minlength=n_labels).astype(np.float64)
    if n_labels <= 1 or sizes.min() >= min_cells:
        return labels
    links = domain_links(connectivities, labels, n_labels)
    np.fill_diagonal(links, 0.0)
    centroids = cluster_means(np.asarray(embedding), labels)  # float64 sums of blocks: no float64 copy
    alive = np.ones(n_labels, dtype=bool)
    mostly_small = sizes[sizes < min_cells].sum() > sizes.sum() / 2
    mapping = np.arange(n_labels)
    for label in np.argsort(sizes, kind="stable"):  # smallest first (ties: larger label first)
        if sizes[label] >= min_cells or alive.sum() <= keep:
            continue
        alive[label] = False
        row = np.where(alive, links[label], 0.0)
        large = alive & (sizes >= min_cells)
        if row.max() > 0:
            if mostly_small:
                target = int(np.argmax(row / sizes))
            elif row[large].max(initial=0) > 0:
                target = int(np.argmax(np.where(large, row, 0.0)))
            else:
                target = int(row.argmax())
        else:
            candidates = np.flatnonzero(large if large.any() else alive)
            target = int(candidates[((centroids[candidates] - centroids[label]) ** 2).sum(axis=1).argmin()])
        weight = sizes[label] / (sizes[label] + sizes[target])
        centroids[target] = (1 - weight) * centroids[target] + weight * centroids[label]
        sizes[target] += sizes[label]
        merge_domain_links(links, mapping, target, label)
        links[target, target] = 0.0
    return relabel_by_size(mapping[labels])


def merge_domain_links(links: np.ndarray, mapping: np.ndarray, into: int, away: int) -> None:
    """Domain ``away`` merged into ``into``, in place: its links to every domain (the
    domains x domains matrix of :func:`domain_links`) added to ``into``'s, both ways, and
    its labels in ``mapping`` (label -> domain) pointed at ``into``. The diagonal is the
    caller's: it then holds the links within the merged domain."""
    links[into] += links[away]
    links[:, into] += links[:, away]
    mapping[mapping == away] = into
