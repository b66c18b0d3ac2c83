"""Step 3b of UTAG: clustering the joint embedding into domains.

Every backend is a function ``(neighbourhood, resolution, random_state, **kwargs) ->
integer labels`` registered in :data:`BACKENDS`; the pipeline only knows their names.

* ``leiden``: the kNN connectivities as an igraph graph, built once and reused for every
  resolution. Default flavour ``"igraph"`` (igraph's C ``community_leiden``, modularity
  objective, 2 iterations, as ``scanpy.tl.leiden(flavor="igraph")``); ``flavor="leidenalg"``
  runs ``leidenalg.find_partition`` with ``RBConfigurationVertexPartition`` until
  convergence, as the original UTAG did through ``scanpy.tl.leiden``.
* ``parc``: PARC 0.40 on the PCA embedding and the same kNN graph, with a work-around for
  its ``small_pop`` ``NameError`` (see :func:`_parc_small_pop_fix`).
* ``kmeans``: scikit-learn k-means on the PCA embedding with ``k = ceil(10 * resolution)``.

Labels are renumbered by decreasing cluster size (``"0"`` is the largest domain), and
:func:`soft_assignments` gives each cell a probability over the domains.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import random
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.special import softmax

logger = logging.getLogger(__name__)


@dataclass
class Neighbourhood:
    """What the backends cluster: the embedding and its kNN connectivities."""

    embedding: np.ndarray
    connectivities: sp.csr_matrix
    _graph: object = field(default=None, repr=False)

    @property
    def graph(self):
        """Undirected weighted igraph graph of the connectivities (built on first use)."""
        if self._graph is None:
            import igraph as ig

            upper = sp.triu(self.connectivities, k=1).tocoo()
            graph = ig.Graph(n=self.connectivities.shape[0])
            graph.add_edges(np.column_stack([upper.row, upper.col]))  # twice as fast as Graph(edges=...)
            graph.es["weight"] = upper.data.astype(np.float64)
            self._graph = graph
        return self._graph


@contextlib.contextmanager
def _igraph_seed(random_state: int):
    """Seed igraph's random number generator for one call, then restore the default."""
    import igraph as ig

    ig.set_random_number_generator(random.Random(random_state))
    try:
        yield
    finally:
        ig.set_random_number_generator(random)


def leiden(neighbourhood: Neighbourhood, resolution: float, random_state: int = 0, **kwargs) -> np.ndarray:
    """Leiden communities of the kNN graph at ``resolution``.

    ``kwargs``: ``flavor`` (``"igraph"`` default, or ``"leidenalg"``), ``use_weights``
    (default True), ``n_iterations`` (default 2 for igraph, -1 = until convergence for
    leidenalg), ``partition_type`` (leidenalg only) and any other keyword of
    ``igraph.Graph.community_leiden`` or ``leidenalg.find_partition``.
    """
    kwargs = dict(kwargs)
    flavor = kwargs.pop("flavor", "igraph")
    weights = "weight" if kwargs.pop("use_weights", True) else None
    kwargs.pop("directed", None)  # modularity of a symmetric graph is the same either way
    graph = neighbourhood.graph
    if flavor == "igraph":
        kwargs.setdefault("n_iterations", 2)
        kwargs.setdefault("objective_function", "modularity")
        with _igraph_seed(random_state):
            membership = graph.community_leiden(weights=weights, resolution=resolution, **kwargs).membership
    elif flavor == "leidenalg":
        import leidenalg

        partition_type = kwargs.pop("partition_type", leidenalg.RBConfigurationVertexPartition)
        kwargs.setdefault("n_iterations", -1)
        membership = leidenalg.find_partition(
            graph, partition_type, weights=weights, resolution_parameter=resolution, seed=random_state, **kwargs
        ).membership
    else:
        raise ValueError(f"`leiden_kwargs['flavor']` must be 'igraph' or 'leidenalg', got {flavor!r}.")
    return np.asarray(membership)


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


def parc(neighbourhood: Neighbourhood, resolution: float, random_state: int = 0, **kwargs) -> np.ndarray:
    """PARC clusters of the embedding, reusing the kNN graph (``kwargs`` go to ``parc.PARC``)."""
    from parc import PARC

    kwargs = dict(kwargs)
    kwargs.setdefault("random_seed", random_state)
    kwargs.setdefault("resolution_parameter", resolution)
    kwargs.setdefault("neighbor_graph", neighbourhood.connectivities)
    model = PARC(neighbourhood.embedding, **kwargs)
    chatter = io.StringIO()
    with _parc_small_pop_fix(model.small_pop), contextlib.redirect_stdout(chatter):
        model.run_PARC()
    logger.debug("PARC output:\n%s", chatter.getvalue())
    return np.asarray(model.labels)


def kmeans(neighbourhood: Neighbourhood, resolution: float, random_state: int = 0, **kwargs) -> np.ndarray:
    """k-means of the embedding with ``k = ceil(10 * resolution)`` (or ``n_clusters`` from ``kwargs``;
    the other ``kwargs`` go to ``KMeans``)."""
    from sklearn.cluster import KMeans

    n_clusters = min(kwargs.pop("n_clusters", math.ceil(10 * resolution)), len(neighbourhood.embedding))
    kwargs.setdefault("n_init", "auto")
    model = KMeans(n_clusters=n_clusters, random_state=random_state, **kwargs)
    return model.fit_predict(neighbourhood.embedding)


BACKENDS = {"leiden": leiden, "parc": parc, "kmeans": kmeans}


def relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0..k-1 by decreasing cluster size (ties: first-seen order)."""
    _, first_seen, codes, counts = np.unique(labels, return_index=True, return_inverse=True, return_counts=True)
    ranking = np.lexsort((first_seen, -counts))
    new_code = np.empty_like(ranking)
    new_code[ranking] = np.arange(len(ranking))
    return new_code[codes.ravel()]


def cluster(method: str, neighbourhood: Neighbourhood, resolution: float, random_state: int = 0,
            **kwargs) -> np.ndarray:
    """Integer labels (0 = largest cluster) from the backend named ``method``."""
    labels = BACKENDS[method](neighbourhood, resolution, random_state=random_state, **kwargs)
    return relabel_by_size(np.asarray(labels).ravel())


def cluster_means(values, labels: np.ndarray) -> np.ndarray:
    """Mean row of ``values`` (dense or sparse) per label ``0..k-1``, float64 (k x columns)."""
    n_clusters = int(labels.max()) + 1
    membership = sp.csr_matrix(
        (np.ones(len(labels), dtype=np.float64), (labels, np.arange(len(labels)))),
        shape=(n_clusters, len(labels)),
    )
    sizes = np.maximum(np.bincount(labels, minlength=n_clusters), 1)
    sums = membership @ values
    sums = sums.toarray() if sp.issparse(sums) else sums
    return np.asarray(sums, dtype=np.float64) / sizes[:, None]


def soft_assignments(features, labels: np.ndarray) -> np.ndarray:
    """Probability of each cell belonging to each cluster (cells x clusters, rows sum to 1).

    Features are z-scored; a cluster's centroid ``c`` is the mean z-scored profile of its
    cells; a cell's similarity to a centroid is ``-||z - c||^2 / 2`` and its
    probabilities are the softmax of those similarities (the posterior of equal-weight,
    unit-variance Gaussians at the centroids), so the most probable cluster is the
    nearest centroid. The original UTAG used the bare dot product ``x @ c``, which
    favours centroids with large norms over near ones. Computed without densifying
    sparse features: the softmax only needs ``z @ c - ||c||^2 / 2`` and
    ``z @ c = x @ (c / sd) - (mean / sd) @ c``.
    """
    mean = np.asarray(features.mean(axis=0), dtype=np.float64).ravel()
    if sp.issparse(features):
        mean_sq = np.asarray(features.multiply(features).mean(axis=0), dtype=np.float64).ravel()
    else:
        mean_sq = np.einsum("ij,ij->j", features, features, dtype=np.float64) / features.shape[0]
    sd = np.sqrt(np.clip(mean_sq - mean**2, 0, None))
    sd[sd == 0] = 1.0
    centroids = (cluster_means(features, labels) - mean) / sd
    scaled = (centroids / sd).T
    similarity = np.asarray(features @ scaled.astype(np.float32), dtype=np.float64)
    similarity -= (mean / sd) @ centroids.T + 0.5 * (centroids**2).sum(axis=1)
    return softmax(similarity, axis=1).astype(np.float32)
