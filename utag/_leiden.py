"""The Leiden algorithm (Traag, Waltman & van Eck, Sci Rep 2019) compiled with numba.

Why a third implementation next to igraph's and leidenalg's: on the kNN graph of a
million cells (1M nodes, ~10M edges) igraph's C ``community_leiden`` takes ~22 s per
resolution with 2 iterations, Louvain in igraph ~60 s, leidenalg longer still; the same
algorithm written as tight array loops takes a few seconds, and releases the GIL, so
several resolutions run in threads on one shared graph (:class:`Run` advances a run one
level at a time, so that the threads can take turns over the runs).

What is implemented, step by step as in the paper (Algorithm A.2):

1. *Fast local moving*: nodes are visited from a queue (all nodes in random order
   first); a node moves to the neighbouring community (or an empty one) with the
   largest quality gain, and its neighbours outside the new community are queued again.
2. *Refinement*: within each community of step 1, starting from singletons, every
   well-connected node that is still alone joins a well-connected sub-community of the
   same community, chosen at random with probability ``exp(gain / theta)`` among the
   non-negative gains (``theta = 0.01``, igraph's ``beta``).
3. *Aggregation*: the refined sub-communities become the nodes of the next level,
   starting in the community of step 1 that holds them. When the refinement merges
   nothing, the communities of step 1 themselves are aggregated (as in igraph and
   leidenalg), so the algorithm goes on at the coarser level instead of stopping.

Steps repeat until every community is one node; ``n_iterations`` runs of the whole
algorithm start from the previous result (negative: until nothing changes). Nodes are
visited in random order at every level (see :func:`_random_order`).

The quality function is the Constant Potts Model with node weights,
``sum_ij (A_ij - resolution * w_i * w_j) [c_i == c_j]``, which is modularity at
resolution ``gamma`` when ``w_i`` is the weighted degree and ``resolution =
gamma / (2 m)`` (igraph does the same conversion). The diagonal of the input matrix is
ignored: it neither links a node to a community nor counts in its weight. Random numbers
come from a seeded splitmix64 generator held in an array, so a run depends only on its
seed, whichever thread runs it.
"""
from __future__ import annotations

import numba
import numpy as np

from ._numba import jit
from ._order import morton_order

_THETA = 0.01
_BLOCK = 1024
_FULLY_RANDOM_MAX_NODES = 200_000
_UINT64 = numba.uint64


@jit
def _next_random(state):
    """Uniform float in [0, 1) from the splitmix64 generator whose state is ``state[0]``."""
    state[0] += _UINT64(0x9E3779B97F4A7C15)
    z = state[0]
    z = (z ^ (z >> _UINT64(30))) * _UINT64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _UINT64(27))) * _UINT64(0x94D049BB133111EB)
    z = z ^ (z >> _UINT64(31))
    return (z >> _UINT64(11)) * (1.0 / 9007199254740992.0)


@jit
def _shuffle(values, start, stop, state):
    """Fisher-Yates shuffle of ``values[start:stop]`` in place."""
    for i in range(stop - 1, start, -1):
        j = start + int(_next_random(state) * (i - start + 1))
        values[i], values[j] = values[j], values[i]


@jit
def _random_order(n, state):
    """Nodes ``0..n-1`` in random order.

    Up to :data:`_FULLY_RANDOM_MAX_NODES` nodes (and at every aggregated level of that
    size) the order is drawn over all nodes, as in igraph and leidenalg. Above, blocks of
    :data:`_BLOCK` consecutive nodes come in random order, and the nodes of each block in
    random order: node ids are laid out so that graph neighbours are near each other in
    memory (see :func:`leading_columns_order`), and visiting a block's nodes one after the other
    keeps their neighbourhoods in the CPU caches, which makes a pass over a million nodes
    ~3x faster. On smaller graphs that gain is small, and the blocks made runs with
    different seeds more alike than igraph's (``benchmarks/leiden_parity.py``).
    """
    if n <= _FULLY_RANDOM_MAX_NODES:
        order = np.arange(n)
        _shuffle(order, 0, n, state)
        return order
    n_blocks = (n + _BLOCK - 1) // _BLOCK
    blocks = np.arange(n_blocks)
    _shuffle(blocks, 0, n_blocks, state)
    order = np.empty(n, dtype=np.int64)
    k = 0
    for block in blocks:
        start = k
        for v in range(block * _BLOCK, min(n, (block + 1) * _BLOCK)):
            order[k] = v
            k += 1
        _shuffle(order, start, k, state)
    return order


@jit
def _consecutive(labels):
    """Relabel to ``0..k-1`` in order of first appearance; returns (labels, k)."""
    mapping = np.full(labels.max() + 1 if len(labels) else 0, -1, dtype=np.int64)
    relabelled = np.empty(len(labels), dtype=np.int64)
    k = 0
    for i in range(len(labels)):
        label = labels[i]
        if mapping[label] < 0:
            mapping[label] = k
            k += 1
        relabelled[i] = mapping[label]
    return relabelled, k


@jit
def _gather_links(v, indptr, indices, weights, labels, group, same_group_only, link, seen, touched):
    """Add the weight from node ``v`` to each label among its neighbours into ``link``
    (optionally only neighbours of ``v``'s own ``group``); the labels met are listed in
    ``touched`` and flagged in ``seen``. Returns how many were met."""
    n_touched = 0
    for e in range(indptr[v], indptr[v + 1]):
        u = indices[e]
        if u == v or (same_group_only and group[u] != group[v]):
            continue
        c = labels[u]
        if not seen[c]:
            seen[c] = True
            touched[n_touched] = c
            n_touched += 1
        link[c] += weights[e]
    return n_touched


@jit
def _move_nodes_fast(indptr, indices, weights, node_weights, community, resolution, state):
    """Step 1, in place on ``community`` (labels ``0..n-1`` allowed). Returns whether any node moved."""
    n = len(node_weights)
    community_weight = np.zeros(n)
    community_size = np.zeros(n, dtype=np.int64)
    for v in range(n):
        community_weight[community[v]] += node_weights[v]
        community_size[community[v]] += 1
    empty = np.empty(n, dtype=np.int64)
    n_empty = 0
    for c in range(n):
        if community_size[c] == 0:
            empty[n_empty] = c
            n_empty += 1

    queue = _random_order(n, state)
    queued = np.ones(n, dtype=np.bool_)
    head, n_queued = 0, n
    link = np.zeros(n)  # weight from the current node to each community
    seen = np.zeros(n, dtype=np.bool_)
    touched = np.empty(n, dtype=np.int64)
    moved = False
    while n_queued > 0:
        v = queue[head]
        head = (head + 1) % n
        n_queued -= 1
        queued[v] = False
        current = community[v]
        n_touched = _gather_links(v, indptr, indices, weights, community, community, False, link, seen, touched)

        weight_v = node_weights[v]
        community_weight[current] -= weight_v
        community_size[current] -= 1
        best = current
        best_gain = link[current] - resolution * weight_v * community_weight[current]
        for t in range(n_touched):
            c = touched[t]
            gain = link[c] - resolution * weight_v * community_weight[c]
            if gain > best_gain:
                best, best_gain = c, gain
        if best_gain < 0.0 and community_size[current] > 0:  # alone is better: an empty community
            n_empty -= 1
            best = empty[n_empty]
        for t in range(n_touched):
            link[touched[t]] = 0.0
            seen[touched[t]] = False

        community_weight[best] += weight_v
        community_size[best] += 1
        community[v] = best
        if best != current:
            moved = True
            if community_size[current] == 0:
                empty[n_empty] = current
                n_empty += 1
            for e in range(indptr[v], indptr[v + 1]):
                u = indices[e]
                if not queued[u] and community[u] != best:
                    queue[(head + n_queued) % n] = u
                    queued[u] = True
                    n_queued += 1
    return moved


@jit
def _refine(indptr, indices, weights, node_weights, community, resolution, state):
    """Step 2: sub-communities of ``community`` (labels ``0..k-1``), labels ``0..n-1``."""
    n = len(node_weights)
    total = np.zeros(n)  # weight of each community of step 1
    for v in range(n):
        total[community[v]] += node_weights[v]
    refined = np.arange(n)
    refined_weight = node_weights.copy()
    refined_size = np.ones(n, dtype=np.int64)
    inside = np.zeros(n)  # weight from each sub-community to the rest of its community
    for v in range(n):
        for e in range(indptr[v], indptr[v + 1]):
            u = indices[e]
            if u != v and community[u] == community[v]:
                inside[v] += weights[e]

    link = np.zeros(n)
    seen = np.zeros(n, dtype=np.bool_)
    touched = np.empty(n, dtype=np.int64)
    gains = np.empty(n)
    for v in _random_order(n, state):
        own = refined[v]
        if refined_size[own] != 1:
            continue
        group_weight = total[community[v]]
        weight_v = node_weights[v]
        if inside[own] < resolution * weight_v * (group_weight - weight_v):
            continue  # not well connected to its community
        n_touched = _gather_links(v, indptr, indices, weights, refined, community, True, link, seen, touched)
        # candidates: staying alone (gain 0) and every well-connected neighbouring sub-community
        best_gain = 0.0
        for t in range(n_touched):
            c = touched[t]
            gains[t] = -1.0
            if inside[c] >= resolution * refined_weight[c] * (group_weight - refined_weight[c]):
                gains[t] = link[c] - resolution * weight_v * refined_weight[c]
                best_gain = max(best_gain, gains[t])
        cumulative = np.exp((0.0 - best_gain) / _THETA)
        for t in range(n_touched):
            if gains[t] >= 0.0:
                cumulative += np.exp((gains[t] - best_gain) / _THETA)
        draw = _next_random(state) * cumulative
        chosen = own
        running = np.exp((0.0 - best_gain) / _THETA)
        if draw >= running:
            for t in range(n_touched):
                if gains[t] >= 0.0:
                    running += np.exp((gains[t] - best_gain) / _THETA)
                    chosen = touched[t]
                    if draw < running:
                        break
        if chosen != own:
            refined[v] = chosen
            refined_weight[chosen] += weight_v
            refined_size[chosen] += 1
            refined_size[own] = 0
            inside[chosen] += inside[own] - 2.0 * link[chosen]
        for t in range(n_touched):
            link[touched[t]] = 0.0
            seen[touched[t]] = False
    return refined


@jit
def _aggregate(indptr, indices, weights, labels, k):
    """CSR graph of ``k`` nodes whose edge weights sum the edges between label groups
    (edges inside a group dropped)."""
    n = len(labels)
    starts = np.zeros(k + 1, dtype=np.int64)
    for v in range(n):
        starts[labels[v] + 1] += 1
    for a in range(k):
        starts[a + 1] += starts[a]
    members = np.empty(n, dtype=np.int64)
    filled = starts[:-1].copy()
    for v in range(n):
        members[filled[labels[v]]] = v
        filled[labels[v]] += 1

    new_indptr = np.zeros(k + 1, dtype=np.int64)
    new_indices = np.empty(len(indices), dtype=np.int32)
    new_weights = np.empty(len(indices))
    link = np.zeros(k)
    seen = np.zeros(k, dtype=np.bool_)
    touched = np.empty(k, dtype=np.int64)
    nnz = 0
    for a in range(k):
        n_touched = 0
        for m in range(starts[a], starts[a + 1]):
            v = members[m]
            for e in range(indptr[v], indptr[v + 1]):
                b = labels[indices[e]]
                if b == a:
                    continue
                if not seen[b]:
                    seen[b] = True
                    touched[n_touched] = b
                    n_touched += 1
                link[b] += weights[e]
        for t in range(n_touched):
            b = touched[t]
            new_indices[nnz] = b
            new_weights[nnz] = link[b]
            nnz += 1
            link[b] = 0.0
            seen[b] = False
        new_indptr[a + 1] = nnz
    return new_indptr, new_indices[:nnz].copy(), new_weights[:nnz].copy()


@jit
def _level(indptr, indices, weights, level_weights, community, level_of_node, resolution, state):
    """One level of a Leiden iteration: fast local moving of the level's nodes from
    ``community``, then (unless every community is one node: the iteration is over)
    refinement and aggregation. Returns ``(moved, finished, community, level_of_node,
    level_weights, indptr, indices, weights)``: the next level's, or this level's final
    communities when ``finished``."""
    moved = _move_nodes_fast(indptr, indices, weights, level_weights, community, resolution, state)
    community, n_communities = _consecutive(community)
    n_level = len(level_weights)
    if n_communities == n_level:
        return moved, True, community, level_of_node, level_weights, indptr, indices, weights
    refined = _refine(indptr, indices, weights, level_weights, community, resolution, state)
    refined, n_refined = _consecutive(refined)
    if n_refined == n_level:
        # refinement merged nothing: aggregate on the communities of step 1 instead,
        # as igraph and leidenalg do, and go on moving the aggregated nodes
        refined, n_refined = community.copy(), n_communities
    aggregated_community = np.empty(n_refined, dtype=np.int64)
    aggregated_weights = np.zeros(n_refined)
    for v in range(n_level):
        aggregated_community[refined[v]] = community[v]
        aggregated_weights[refined[v]] += level_weights[v]
    indptr, indices, weights = _aggregate(indptr, indices, weights, refined, n_refined)
    return (moved, False, aggregated_community, refined[level_of_node], aggregated_weights, indptr, indices,
            weights)


class Run:
    """One Leiden run on a graph prepared by :func:`_as_graph` (shared read-only between
    threads), advanced one level at a time by :meth:`step`.

    Several runs can thus share a few threads evenly: a level is the unit of work, and
    each run's random numbers live in the run, so its labels are the same whichever
    thread runs which level, and in whatever order the runs take turns.
    """

    def __init__(self, graph, resolution: float, n_iterations: int, random_state: int,
                 initial_membership: np.ndarray | None = None):
        self.indptr, self.indices, self.weights, self.node_weights, two_m, self.order = graph
        if not (np.isfinite(resolution) and resolution >= 0):  # negative: one community; NaN: none
            raise ValueError(f"The Leiden `resolution` must be a finite number >= 0 (typically 0.01-2), "
                             f"got {resolution!r}.")
        n = len(self.node_weights)
        if initial_membership is None:
            self.membership = np.arange(n, dtype=np.int64)
        else:
            membership = _membership(initial_membership, n)
            self.membership = membership if self.order is None else membership[self.order]
        self.resolution = resolution / two_m if two_m > 0 else 0.0
        self.n_iterations = int(n_iterations)
        seed = np.random.SeedSequence(random_state).generate_state(1, dtype=np.uint64)[0]
        self.state = np.array([seed], dtype=np.uint64)  # the splitmix64 state, advanced in place
        self.iteration, self.done, self.level = 0, self.n_iterations == 0, None
        if not self.done:
            self._start_iteration()

    def _start_iteration(self) -> None:
        self.level = (self.indptr, self.indices, self.weights, self.node_weights,
                      _consecutive(self.membership)[0], np.arange(len(self.node_weights)))
        self.changed = False

    def step(self) -> bool:
        """Run the next level; returns whether the run is over."""
        if self.done:
            return True
        indptr, indices, weights, level_weights, community, level_of_node = self.level
        moved, finished, community, level_of_node, level_weights, indptr, indices, weights = _level(
            indptr, indices, weights, level_weights, community, level_of_node, self.resolution, self.state)
        self.changed |= moved
        self.level = (indptr, indices, weights, level_weights, community, level_of_node)
        if finished:
            self.membership = community[level_of_node]
            self.iteration += 1
            if not self.changed or 0 <= self.n_iterations <= self.iteration:
                self.done, self.level = True, None
            else:
                self._start_iteration()
        return self.done

    def labels(self) -> np.ndarray:
        """Community labels ``0..k-1`` in order of first appearance, in the order of the
        original matrix (once :meth:`step` has returned ``True``)."""
        labels = _consecutive(self.membership)[0]
        if self.order is None:
            return labels
        original = np.empty_like(labels)
        original[self.order] = labels
        return original


def leiden(adjacency, resolution: float = 1.0, n_iterations: int = 2, random_state: int = 0,
           initial_membership: np.ndarray | None = None) -> np.ndarray:
    """Leiden communities maximising modularity at ``resolution`` on a symmetric weighted graph.

    Parameters
    ----------
    adjacency
        Symmetric ``scipy.sparse`` matrix of non-negative edge weights (the diagonal is ignored).
    resolution
        Modularity resolution ``gamma`` (higher: more, smaller communities).
    n_iterations
        Runs of the whole algorithm, each starting from the previous result; negative:
        until a run changes nothing. Default 2, as ``scanpy.tl.leiden(flavor="igraph")``.
    random_state
        Seed of the node orders and of the random choices of the refinement.
    initial_membership
        Starting communities (default: every node alone).

    Returns
    -------
    Community labels ``0..k-1`` (int64), in order of first appearance.
    """
    import scipy.sparse as sp

    matrix = sp.csr_matrix(adjacency)
    if matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"`adjacency` must be square, got shape {matrix.shape}.")
    asymmetry = abs(matrix - matrix.T)
    if asymmetry.nnz and asymmetry.max() > 1e-6 * max(abs(matrix).max(), 1.0):
        raise ValueError("`adjacency` must be symmetric (an undirected graph); symmetrise it first, "
                         "e.g. `(adjacency + adjacency.T) / 2`.")
    return run(_as_graph(matrix), resolution, n_iterations, random_state, initial_membership)


def leading_columns_order(embedding: np.ndarray, n_dims: int = 3) -> np.ndarray:
    """Cells sorted along a Z-order curve through the first ``n_dims`` columns of
    ``embedding`` as given (:func:`utag._order.morton_order`): cells near each other in the
    embedding, hence in its kNN graph, get nearby positions. (Unlike
    :func:`utag.embedding.locality_order`, no rotation to principal axes: the PCA's
    columns already are.)"""
    return morton_order(embedding[:, :n_dims])


def _as_graph(adjacency, order: np.ndarray | None = None, n_jobs: int | None = None):
    """``(indptr, indices, weights, node_weights, two_m, order)`` of a symmetric sparse
    matrix in the dtypes the kernels are compiled for, its nodes renumbered by ``order``
    (node ``i`` of the graph is node ``order[i]`` of the matrix; rows renumbered in
    ``n_jobs`` threads, the same arrays for any number)."""
    import scipy.sparse as sp

    matrix = sp.csr_matrix(adjacency)
    if matrix.nnz and not (np.isfinite(matrix.data).all() and matrix.data.min() >= 0):
        raise ValueError("The graph's edge weights must be finite and non-negative.")
    if matrix.diagonal().any():  # ignored, as documented: drop it before it enters the node weights
        entries = matrix.tocoo()
        off = entries.row != entries.col
        matrix = sp.csr_matrix((entries.data[off], (entries.row[off], entries.col[off])), shape=matrix.shape)
    if order is None:
        if not matrix.has_sorted_indices:  # sorted on a copy: never reorder the caller's matrix
            matrix = matrix.sorted_indices()
        indptr, indices = matrix.indptr.astype(np.int64), matrix.indices.astype(np.int32)
        weights = matrix.data.astype(np.float64)  # node weights summed in float64
    else:
        indptr, indices, weights = _permuted(matrix, np.asarray(order, dtype=np.int64), n_jobs)
    node_weights = np.asarray(sp.csr_matrix((weights, indices, indptr), shape=matrix.shape).sum(axis=1),
                              dtype=np.float64).ravel()
    return indptr, indices, weights, node_weights, float(node_weights.sum()), order


def _permuted(matrix, order: np.ndarray, n_jobs: int | None = None) -> tuple:
    """CSR arrays (int64, int32, float64) of ``matrix[order][:, order]`` with sorted
    column indices, built by row blocks in ``n_jobs`` threads in one pass (scipy's
    indexing builds the row-permuted matrix, then the column-permuted one, then sorts)."""
    from ._parallel import map_threads

    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = np.arange(len(order))
    indptr = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(np.diff(matrix.indptr)[order], out=indptr[1:])
    indices = np.empty(indptr[-1], dtype=np.int32)
    weights = np.empty(indptr[-1], dtype=np.float64)
    bounds = np.linspace(0, len(order), 9, dtype=np.int64)  # fixed blocks: any n_jobs fills them alike
    map_threads(lambda block: _permute_rows(matrix.indptr, matrix.indices, matrix.data, order, inverse, indptr,
                                            indices, weights, bounds[block], bounds[block + 1]),
                range(len(bounds) - 1), n_jobs)
    return indptr, indices, weights


@jit
def _permute_rows(old_indptr, old_indices, old_data, order, inverse, indptr, indices, weights, start, stop):
    """Rows ``start..stop-1`` of :func:`_permuted`'s arrays, in place."""
    for i in range(start, stop):
        row, first = order[i], indptr[i]
        for k in range(old_indptr[row + 1] - old_indptr[row]):  # insertion sort by new column: rows are short
            column, value = inverse[old_indices[old_indptr[row] + k]], old_data[old_indptr[row] + k]
            j = first + k
            while j > first and indices[j - 1] > column:
                indices[j], weights[j] = indices[j - 1], weights[j - 1]
                j -= 1
            indices[j], weights[j] = column, value


def run(graph, resolution: float, n_iterations: int, random_state: int,
        initial_membership: np.ndarray | None = None) -> np.ndarray:
    """Leiden on a graph prepared by :func:`_as_graph` (shared read-only between threads);
    labels in the order of the original matrix."""
    return run_to_end(Run(graph, resolution, n_iterations, random_state, initial_membership))


def run_to_end(leiden_run: Run) -> np.ndarray:
    """The labels of ``leiden_run`` (:meth:`Run.labels`) once every level has run."""
    while not leiden_run.step():
        pass
    return leiden_run.labels()


def _membership(initial_membership, n_nodes: int) -> np.ndarray:
    """``initial_membership`` checked (one integer label per node) and numbered ``0..k-1``."""
    labels = np.asarray(initial_membership)
    if labels.shape != (n_nodes,):
        raise ValueError(f"`initial_membership` must hold one label per node ({n_nodes}), got shape {labels.shape}.")
    if labels.dtype.kind not in "iub" and not (labels.dtype.kind == "f" and np.all(labels == np.round(labels))):
        raise ValueError("`initial_membership` must hold integer community labels.")
    return np.unique(labels, return_inverse=True)[1].ravel().astype(np.int64)
