import numpy as np
import pytest
import scipy.sparse as sp

from utag import graph, message_passing
from utag.message_passing import aggregate, pass_messages


def _brute_force(coords, features, codes, max_dist, mean=True):
    """Neighbourhood mean/sum from all pairwise distances (O(n^2), small n only)."""
    dist = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    neighbours = (dist <= max_dist) & (codes[:, None] == codes[None])
    total = neighbours.astype(float) @ features
    return total / neighbours.sum(axis=1, keepdims=True) if mean else total


@pytest.fixture
def small_case():
    rng = np.random.default_rng(3)
    coords = rng.uniform(0, 60, size=(250, 2))
    features = rng.gamma(2.0, size=(250, 6))
    codes = rng.integers(0, 3, size=250)  # interleaved slides
    return coords, features, codes


@pytest.mark.parametrize("mode, mean", [("l1_norm", True), ("sum", False)])
def test_matches_brute_force(small_case, mode, mean):
    coords, features, codes = small_case
    aggregated, _, _ = pass_messages(coords, features, codes, 9.0, mode, parallel=False)
    expected = _brute_force(coords, features, codes, 9.0, mean=mean)
    assert aggregated.dtype == np.float32
    np.testing.assert_allclose(aggregated, expected, rtol=1e-5)


def test_isolated_cell_keeps_its_own_profile(small_case):
    coords, features, codes = small_case
    coords = coords.copy()
    coords[0] = [1e6, 1e6]
    aggregated, _, _ = pass_messages(coords, features, codes, 9.0, parallel=False)
    np.testing.assert_allclose(aggregated[0], features[0], rtol=1e-6)


def test_sparse_features_give_the_same_result(small_case):
    coords, features, codes = small_case
    features[features < 2] = 0
    dense, _, _ = pass_messages(coords, features, codes, 9.0, parallel=False)
    sparse, _, _ = pass_messages(coords, sp.csr_matrix(features), codes, 9.0, parallel=False)
    assert sp.issparse(sparse) and sparse.dtype == np.float32
    np.testing.assert_allclose(sparse.toarray(), dense, rtol=1e-6)


@pytest.mark.parametrize("sparse_input", [False, True])
def test_serial_and_parallel_are_identical(small_case, sparse_input):
    coords, features, codes = small_case
    features = sp.csr_matrix(features) if sparse_input else features
    serial, serial_edges, serial_graph = pass_messages(coords, features, codes, 9.0, parallel=False, keep_graph=True)
    pooled, pooled_edges, pooled_graph = pass_messages(coords, features, codes, 9.0, parallel=True, processes=2,
                                                       keep_graph=True)
    if sparse_input:
        serial, pooled = serial.toarray(), pooled.toarray()
    np.testing.assert_array_equal(serial, pooled)
    assert serial_edges == pooled_edges == (serial_graph[0].nnz - len(coords)) // 2
    for ours, theirs in zip(serial_graph, pooled_graph):
        assert (ours != theirs).nnz == 0


@pytest.mark.parametrize("processes, pool_min_cells, expected", [
    (None, None, 1),  # the default on a small input: this process
    (None, 0, None),  # the default on an input of POOL_MIN_CELLS or more: one worker per core
    (2, None, 2),     # a number of processes is always honoured
])
def test_worker_processes_only_for_inputs_worth_them(small_case, monkeypatch, processes, pool_min_cells, expected):
    coords, features, codes = small_case
    if pool_min_cells is not None:
        monkeypatch.setattr(graph, "POOL_MIN_CELLS", pool_min_cells)
    asked = []
    per_slide = message_passing.per_slide

    def recording(*args, processes=None, **kwargs):
        asked.append(processes)
        return per_slide(*args, processes=1, **kwargs)

    monkeypatch.setattr(message_passing, "per_slide", recording)
    pass_messages(coords, features, codes, 9.0, processes=processes)
    assert asked == [expected]


def test_result_does_not_depend_on_cell_order(small_case):
    coords, features, codes = small_case
    order = np.random.default_rng(0).permutation(len(coords))
    reference, _, _ = pass_messages(coords, features, codes, 9.0, parallel=False)
    shuffled, _, _ = pass_messages(coords[order], features[order], codes[order], 9.0, parallel=False)
    np.testing.assert_allclose(shuffled, reference[order], rtol=1e-6)


def test_aggregate_on_hand_made_graph():
    adjacency = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]], dtype=np.float32))
    features = np.array([[3.0], [6.0], [9.0]], dtype=np.float32)
    np.testing.assert_allclose(aggregate(adjacency, features), [[4.5], [6.0], [7.5]])
    np.testing.assert_allclose(aggregate(adjacency, features, "sum"), [[9.0], [18.0], [15.0]])


@pytest.mark.parametrize("multiscale", [False, True])
def test_knn_edges_count_each_linked_pair_once(multiscale):
    # k = 1 on a line at 0, 1, 3 and 10, 11, 13: 0 and 1 hold each other, 3 holds 1 (directed)
    coords = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [10.0, 0.0], [11.0, 0.0], [13.0, 0.0]])
    codes = np.array([0, 0, 0, 1, 1, 1])
    features = np.arange(12.0).reshape(6, 2)
    aggregated, n_edges, (connectivities, _) = pass_messages(
        coords, features, codes, 5.0, parallel=False, keep_graph=True, spatial_graph_kind="knn",
        n_spatial_neighbors=1, kernel_widths=(1.0,) if multiscale else None)
    dense = connectivities.toarray()
    linked = (dense + dense.T) > 0
    assert n_edges == np.triu(linked, k=1).sum() == 4
    if not multiscale:
        np.testing.assert_allclose(aggregated, dense @ features / dense.sum(axis=1, keepdims=True), rtol=1e-6)
