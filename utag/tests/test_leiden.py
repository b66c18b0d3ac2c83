"""The compiled Leiden (utag._leiden) against its definition and against igraph's."""
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from utag import _leiden
from utag.clustering import Neighbourhood, cluster_many
from utag.datasets import synthetic_tissue
from utag.embedding import fuzzy_connectivities, nearest_neighbors


def _modularity(adjacency, labels, resolution):
    """Newman modularity with a resolution, from its definition."""
    adjacency = sp.csr_matrix(adjacency, copy=True)
    adjacency.setdiag(0)
    strength = np.asarray(adjacency.sum(axis=1)).ravel()
    two_m = strength.sum()
    membership = sp.csr_matrix((np.ones(len(labels)), (np.arange(len(labels)), labels)))
    inside = (membership.T @ adjacency @ membership).diagonal().sum()
    totals = np.bincount(labels, weights=strength)
    return (inside - resolution * (totals**2).sum() / two_m) / two_m


def _within(adjacency, labels):
    """The edges of ``adjacency`` that join two nodes of the same community."""
    edges = sp.coo_matrix(adjacency)
    keep = labels[edges.row] == labels[edges.col]
    return sp.csr_matrix((edges.data[keep], (edges.row[keep], edges.col[keep])), shape=edges.shape)


def _best_move_gain(adjacency, labels, resolution):
    """Largest modularity gain (x 2m) any single node could still get by changing community."""
    adjacency = sp.csr_matrix(adjacency, dtype=np.float64, copy=True)
    adjacency.setdiag(0)
    adjacency.eliminate_zeros()
    strength = np.asarray(adjacency.sum(axis=1)).ravel()
    scale = resolution / strength.sum()
    n_communities = labels.max() + 1
    membership = sp.csr_matrix((np.ones(len(labels)), (np.arange(len(labels)), labels)),
                               shape=(len(labels), n_communities))
    links = (adjacency @ membership).tocoo()  # weight from each node to each neighbouring community
    totals = np.bincount(labels, weights=strength, minlength=n_communities)
    own_total = totals[labels] - strength  # the node's community without it
    own_link = np.asarray(_within(adjacency, labels).sum(axis=1)).ravel()
    stay = np.zeros(len(labels))
    own = links.col == labels[links.row]
    stay[links.row[own]] = links.data[own]
    stay -= scale * strength * own_total
    np.testing.assert_allclose(stay + scale * strength * own_total, own_link)
    other = ~own
    gain = links.data[other] - scale * strength[links.row[other]] * totals[links.col[other]] - stay[links.row[other]]
    alone = -stay  # an empty community of its own
    return max(gain.max(initial=-np.inf), alone.max())


@pytest.fixture(scope="module")
def tissue_graph():
    adata = synthetic_tissue(n_cells=4_000, n_slides=2, random_state=1)
    from utag import utag

    result = utag(adata, slide_key="roi", clustering_method="kmeans", resolutions=[0.3], progress=False)
    return result.obsp["connectivities"]


def _blob_graph(n_per_blob=300, n_blobs=4, seed=0):
    rng = np.random.default_rng(seed)
    points = np.vstack([rng.normal(8 * b, 1.0, size=(n_per_blob, 4)) for b in range(n_blobs)]).astype(np.float32)
    indices, distances = nearest_neighbors(points, 15)
    return fuzzy_connectivities(indices, distances), np.repeat(np.arange(n_blobs), n_per_blob)


@pytest.mark.parametrize("resolution", [0.05, 0.3, 1.0, 3.0])
def test_converged_partition_leaves_no_node_a_better_community(tissue_graph, resolution):
    labels = _leiden.leiden(tissue_graph, resolution, n_iterations=-1, random_state=0)
    assert _best_move_gain(tissue_graph, labels, resolution) <= 1e-9


@pytest.mark.parametrize("resolution", [0.1, 0.5, 2.0])
def test_every_community_is_connected(tissue_graph, resolution):
    labels = _leiden.leiden(tissue_graph, resolution, random_state=0)
    n_pieces = connected_components(_within(tissue_graph, labels), directed=False)[0]
    assert n_pieces == labels.max() + 1


@pytest.mark.parametrize("resolution", [0.1, 0.3, 1.0])
def test_modularity_matches_igraph(tissue_graph, resolution):
    import random

    import igraph as ig

    upper = sp.triu(tissue_graph, k=1).tocoo()
    graph = ig.Graph(n=tissue_graph.shape[0], edges=np.column_stack([upper.row, upper.col]))
    graph.es["weight"] = upper.data.astype(float)
    ig.set_random_number_generator(random.Random(0))
    theirs = np.array(graph.community_leiden(objective_function="modularity", weights="weight",
                                             resolution=resolution, n_iterations=2).membership)
    ig.set_random_number_generator(random)
    ours = _leiden.leiden(tissue_graph, resolution, n_iterations=2, random_state=0)
    ours_q, theirs_q = _modularity(tissue_graph, ours, resolution), _modularity(tissue_graph, theirs, resolution)
    np.testing.assert_allclose(graph.modularity(ours, weights="weight", resolution=resolution), ours_q, atol=1e-9)
    assert ours_q >= theirs_q - 0.01 * abs(theirs_q)


def test_blobs_are_recovered():
    adjacency, truth = _blob_graph()
    labels = _leiden.leiden(adjacency, 0.5, random_state=0)
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(truth, labels) == 1.0


def test_same_seed_same_labels_other_seed_other_order(tissue_graph):
    first = _leiden.leiden(tissue_graph, 1.0, random_state=4)
    np.testing.assert_array_equal(first, _leiden.leiden(tissue_graph, 1.0, random_state=4))
    assert not np.array_equal(first, _leiden.leiden(tissue_graph, 1.0, random_state=5))


def test_threads_do_not_change_labels(tissue_graph):
    neighbourhood = Neighbourhood(np.zeros((tissue_graph.shape[0], 2), dtype=np.float32), tissue_graph)
    tasks = [("leiden", resolution, 0, {}) for resolution in (0.1, 0.3, 1.0, 2.0)]
    threaded = cluster_many(neighbourhood, tasks, n_jobs=2)
    serial = cluster_many(neighbourhood, tasks, n_jobs=1)
    for a, b in zip(threaded, serial):
        np.testing.assert_array_equal(a, b)


def test_runs_taking_turns_level_by_level_give_each_run_alone(tissue_graph):
    # three runs advanced one level at a time, in turn, as the threads of cluster_many
    # advance them: each run's labels are those of the same run alone
    graph = _leiden._as_graph(tissue_graph)
    runs = [_leiden.Run(graph, resolution, -1, seed) for resolution, seed in ((0.1, 0), (0.5, 1), (2.0, 2))]
    n_steps = [0] * len(runs)
    while not all(run.done for run in runs):
        for index, run in enumerate(runs):
            if not run.done:
                run.step()
                n_steps[index] += 1
    assert max(n_steps) > 2  # several levels each: the turns did interleave
    for run, (resolution, seed) in zip(runs, ((0.1, 0), (0.5, 1), (2.0, 2))):
        np.testing.assert_array_equal(run.labels(), _leiden.run(graph, resolution, -1, seed))


def test_threads_taking_turns_return_in_order_and_raise_the_first_error():
    from utag.clustering import _take_turns

    def counting(n_steps, value):
        for _ in range(n_steps):
            yield
        return value

    assert _take_turns([counting(n, n * 10) for n in (5, 0, 3, 8)], 3) == [50, 0, 30, 80]

    started, ended = [], []  # at most n_threads + 1 generators under way at a time

    def tracked(value):
        started.append(value)
        assert len(started) - len(ended) <= 3
        for _ in range(4):
            yield
        ended.append(value)
        return value

    assert _take_turns([tracked(value) for value in range(12)], 2) == list(range(12))

    def failing():
        yield
        raise ValueError("bad run")

    with pytest.raises(ValueError, match="bad run"):
        _take_turns([counting(50, 1), failing(), counting(50, 2)], 2)


def test_no_iteration_keeps_the_initial_membership(tissue_graph):
    start = np.arange(tissue_graph.shape[0]) % 7
    np.testing.assert_array_equal(_leiden.leiden(tissue_graph, 1.0, n_iterations=0, initial_membership=start),
                                  start)


def test_initial_membership_is_a_starting_point(tissue_graph):
    converged = _leiden.leiden(tissue_graph, 0.3, n_iterations=-1, random_state=0)
    again = _leiden.leiden(tissue_graph, 0.3, n_iterations=1, random_state=9, initial_membership=converged)
    from sklearn.metrics import adjusted_rand_score

    # no node can move any more, so only refined groups of nodes may; quality never drops
    assert adjusted_rand_score(converged, again) > 0.99
    assert _modularity(tissue_graph, again, 0.3) >= _modularity(tissue_graph, converged, 0.3) - 1e-12


def test_graph_without_edges_keeps_every_node_alone():
    labels = _leiden.leiden(sp.csr_matrix((5, 5)), 1.0)
    np.testing.assert_array_equal(labels, np.arange(5))


def test_unweighted_option_ignores_weights():
    adjacency, truth = _blob_graph(n_per_blob=100, n_blobs=3)
    neighbourhood = Neighbourhood(np.zeros((len(truth), 2), dtype=np.float32), adjacency)
    binary = adjacency.copy()
    binary.data[:] = 1.0
    unweighted = cluster_many(neighbourhood, [("leiden", 0.7, 0, {"use_weights": False})])[0]
    expected = cluster_many(Neighbourhood(neighbourhood.embedding, binary), [("leiden", 0.7, 0, {})])[0]
    np.testing.assert_array_equal(unweighted, expected)


def test_unknown_fast_option_is_rejected(tissue_graph):
    from utag.clustering import cluster

    neighbourhood = Neighbourhood(np.zeros((tissue_graph.shape[0], 2), dtype=np.float32), tissue_graph)
    with pytest.raises(ValueError, match="partition_type"):
        cluster("leiden", neighbourhood, 1.0, partition_type=object)


def _small_tissue_graph(n_cells=300, seed=2):
    """The kNN graph of a few hundred cells of a synthetic tissue (under one block of nodes)."""
    from utag import utag

    adata = synthetic_tissue(n_cells=n_cells, n_slides=1, random_state=seed)
    result = utag(adata, slide_key="roi", clustering_method="kmeans", resolutions=[0.3], progress=False)
    return result.obsp["connectivities"]


@pytest.mark.parametrize("resolution", [0.3, 1.0])
def test_seeds_give_different_partitions_of_a_small_graph(resolution):
    # below 1,024 nodes every node used to be visited in the same order for every seed:
    # 10 seeds gave one partition here
    graph = _small_tissue_graph()
    partitions = {tuple(_leiden.leiden(graph, resolution, random_state=seed)) for seed in range(10)}
    assert len(partitions) >= 3


@pytest.mark.parametrize("n_nodes", [300, _leiden._FULLY_RANDOM_MAX_NODES + 5_000])
def test_node_order_is_random(n_nodes):
    state = np.array([7], dtype=np.uint64)
    orders = [_leiden._random_order(n_nodes, state) for _ in range(3)]
    for order in orders:
        np.testing.assert_array_equal(np.sort(order), np.arange(n_nodes))
    assert len({tuple(order[:_leiden._BLOCK]) for order in orders}) == 3
    # the first visited nodes do not come in id order, even inside a block
    assert not any(np.all(np.diff(order[:_leiden._BLOCK]) > 0) for order in orders)


def test_every_level_is_aggregated_until_no_node_moves():
    # a ring of cliques: Leiden must join cliques at the coarser levels too, and its
    # result must be as good as igraph's (which aggregates the unrefined partition)
    n_cliques, size = 30, 6
    blocks = sp.block_diag([sp.csr_matrix(np.ones((size, size)) - np.eye(size))] * n_cliques, format="lil")
    for c in range(n_cliques):
        a, b = c * size, ((c + 1) % n_cliques) * size + 1
        blocks[a, b] = blocks[b, a] = 1.0
    graph = sp.csr_matrix(blocks)
    labels = _leiden.leiden(graph, 0.05, n_iterations=-1, random_state=0)
    assert labels.max() + 1 < n_cliques  # cliques were merged at a coarser level
    assert _best_move_gain(graph, labels, 0.05) <= 1e-9
    n_pieces = connected_components(_within(graph, labels), directed=False)[0]
    assert n_pieces == labels.max() + 1


def test_diagonal_is_ignored(tissue_graph):
    with_loops = tissue_graph + sp.diags(np.full(tissue_graph.shape[0], 5.0))
    np.testing.assert_array_equal(_leiden.leiden(with_loops, 0.5, random_state=3),
                                  _leiden.leiden(tissue_graph, 0.5, random_state=3))


@pytest.mark.parametrize("bad, message", [
    (lambda g: g[:, :-1], "square"),
    (lambda g: sp.triu(g).tocsr(), "symmetric"),
    (lambda g: -g, "non-negative"),
])
def test_bad_graphs_are_refused(tissue_graph, bad, message):
    with pytest.raises(ValueError, match=message):
        _leiden.leiden(bad(tissue_graph), 1.0)


@pytest.mark.parametrize("membership, message", [
    (lambda n: np.zeros(n - 1, dtype=int), "one label per node"),
    (lambda n: np.full(n, 0.5), "integer"),
])
def test_bad_initial_membership_is_refused(tissue_graph, membership, message):
    with pytest.raises(ValueError, match=message):
        _leiden.leiden(tissue_graph, 1.0, initial_membership=membership(tissue_graph.shape[0]))


def test_initial_membership_may_use_any_integer_labels(tissue_graph):
    start = _leiden.leiden(tissue_graph, 0.3, random_state=0)
    shifted = _leiden.leiden(tissue_graph, 0.3, random_state=1, initial_membership=start * 1000 + 7)
    plain = _leiden.leiden(tissue_graph, 0.3, random_state=1, initial_membership=start)
    np.testing.assert_array_equal(shifted, plain)


@pytest.mark.parametrize("n_jobs", [1, 3])
def test_nodes_are_renumbered_as_scipy_indexes_them(tissue_graph, n_jobs):
    # the compiled renumbering (row blocks in threads) against scipy's fancy indexing
    order = np.random.default_rng(0).permutation(tissue_graph.shape[0])
    expected = sp.csr_matrix(tissue_graph, dtype=np.float64)[order][:, order].sorted_indices()
    indptr, indices, weights, node_weights, two_m, _ = _leiden._as_graph(tissue_graph, order, n_jobs)
    np.testing.assert_array_equal(indptr, expected.indptr)
    np.testing.assert_array_equal(indices, expected.indices)
    np.testing.assert_array_equal(weights, expected.data)
    np.testing.assert_allclose(node_weights, np.asarray(expected.sum(axis=1)).ravel())
    assert indices.dtype == np.int32 and weights.dtype == np.float64


@pytest.mark.parametrize("resolution", [-0.5, float("nan"), float("inf")])
def test_resolution_outside_zero_to_infinity_is_refused(resolution):
    # two cliques with no edge between them: a negative resolution put them in one community,
    # NaN left every node alone; both without a word
    graph = sp.csr_matrix(sp.block_diag([sp.csr_matrix(np.ones((4, 4)) - np.eye(4))] * 2))
    with pytest.raises(ValueError, match="resolution"):
        _leiden.leiden(graph, resolution)


@pytest.mark.parametrize("resolution", [0.0, 1e12])
def test_resolution_zero_joins_components_and_huge_splits_every_node(resolution):
    graph = sp.csr_matrix(sp.block_diag([sp.csr_matrix(np.ones((4, 4)) - np.eye(4))] * 2))
    labels = _leiden.leiden(graph, resolution, n_iterations=-1)
    np.testing.assert_array_equal(labels, np.repeat([0, 1], 4) if resolution == 0 else np.arange(8))


def test_graph_without_nodes_has_no_labels():
    assert _leiden.leiden(sp.csr_matrix((0, 0)), 1.0).shape == (0,)
