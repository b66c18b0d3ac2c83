"""The array-kernel PARC (utag._parc) against its definition and against the parc package."""
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score

from utag import _parc
from utag.clustering import Neighbourhood, cluster
from utag.embedding import fuzzy_connectivities, nearest_neighbors


def _blobs(sizes, seed=0, spread=6.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, spread, size=(len(sizes), 6))
    points = np.vstack([rng.normal(c, 1.0, size=(n, 6)) for c, n in zip(centres, sizes)]).astype(np.float32)
    indices, distances = nearest_neighbors(points, 15)
    return Neighbourhood(points, fuzzy_connectivities(indices, distances)), np.repeat(np.arange(len(sizes)), sizes)


def test_jaccard_matches_neighbour_sets():
    rng = np.random.default_rng(0)
    upper = sp.triu(sp.random(60, 60, density=0.1, random_state=1), k=1)
    graph = sp.csr_matrix(upper + upper.T)
    graph.setdiag(1.0)  # self-loops are not neighbours
    graph.sort_indices()
    similarity = _parc._jaccard(graph.indptr.astype(np.int64), graph.indices.astype(np.int64))
    neighbours = [set(graph.indices[graph.indptr[i]:graph.indptr[i + 1]]) - {i} for i in range(60)]
    for i in rng.integers(0, 60, size=20):
        for e in range(graph.indptr[i], graph.indptr[i + 1]):
            j = graph.indices[e]
            if j == i:
                continue
            a, b = neighbours[i], neighbours[j]
            assert similarity[e] == pytest.approx(len(a & b) / len(a | b))


def test_pruning_keeps_the_edges_above_the_median():
    neighbourhood, _ = _blobs([200, 200])
    pruned = _parc._pruned(neighbourhood.connectivities)
    assert abs(pruned - pruned.T).max() < 1e-12
    assert 0.3 * neighbourhood.connectivities.nnz < pruned.nnz < 0.55 * neighbourhood.connectivities.nnz


def test_fast_parc_agrees_with_the_parc_package():
    neighbourhood, truth = _blobs([500, 300, 200, 150])
    for resolution in (0.1, 1.0):
        ours = cluster("parc", neighbourhood, resolution, random_state=0, small_pop=10)
        theirs = cluster("parc", neighbourhood, resolution, random_state=0, flavor="parc", small_pop=10)
        # at resolution 1 both split the blobs into ~15 pieces, never across blobs
        assert abs(ours.max() - theirs.max()) <= max(2, 0.2 * theirs.max())
        assert adjusted_rand_score(truth, ours) == pytest.approx(adjusted_rand_score(truth, theirs), abs=0.05)
        from sklearn.metrics import homogeneity_score

        assert homogeneity_score(truth, ours) > 0.99


def test_too_big_cluster_is_clustered_again(monkeypatch):
    neighbourhood, truth = _blobs([1400, 300, 300], seed=1)
    calls = []
    original = _parc._communities

    def spy(adjacency, *args):
        calls.append(adjacency.shape[0])
        return original(adjacency, *args)

    monkeypatch.setattr(_parc, "_communities", spy)
    labels = cluster("parc", neighbourhood, 0.1, random_state=0, small_pop=10)
    assert len(calls) == 2 and calls[0] == 2000 and calls[1] > 0.4 * 2000  # the big cluster was re-clustered
    theirs = cluster("parc", neighbourhood, 0.1, random_state=0, flavor="parc", small_pop=10)
    assert adjusted_rand_score(labels, theirs) == 1.0 == adjusted_rand_score(labels, truth)


def test_no_cluster_is_smaller_than_small_pop():
    neighbourhood, _ = _blobs([500, 300, 200, 150])
    labels = cluster("parc", neighbourhood, 3.0, random_state=0, small_pop=10)
    assert np.bincount(labels).min() >= 10
    unfixed = _parc._communities(neighbourhood.connectivities, None, 3.0, 5, 0)
    assert np.bincount(unfixed).min() < 10  # there were small clusters to reassign


def test_parc_defaults_to_the_original_small_pop(monkeypatch):
    # the original utag() calls PARC(..., small_pop=1000), not the package's default of 10
    import parc

    neighbourhood, truth = _blobs([1500, 300, 200], seed=3)
    default = cluster("parc", neighbourhood, 0.1, random_state=0)
    np.testing.assert_array_equal(default, cluster("parc", neighbourhood, 0.1, random_state=0, small_pop=1000))
    # the re-clustered big blob leaves a piece of < 1000 cells, which then joins the rest again
    assert adjusted_rand_score(truth, default) == 1.0
    assert adjusted_rand_score(truth, cluster("parc", neighbourhood, 0.1, random_state=0, small_pop=10)) < 0.9
    seen = []

    class Spy(parc.PARC):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs["small_pop"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(parc, "PARC", Spy)
    cluster("parc", neighbourhood, 0.1, random_state=0, flavor="parc", time_smallpop=1)
    assert seen == [1000]


def test_fast_parc_is_deterministic():
    neighbourhood, _ = _blobs([300, 300, 300], seed=2)
    np.testing.assert_array_equal(cluster("parc", neighbourhood, 0.5, random_state=3),
                                  cluster("parc", neighbourhood, 0.5, random_state=3))


def test_small_clusters_join_their_neighbours():
    graph = sp.csr_matrix(np.array([[0, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 1], [0, 0, 1, 0]], dtype=float))
    labels = _parc._reassign_small(graph, np.array([0, 0, 0, 1]), small_pop=2, rounds=2)
    np.testing.assert_array_equal(labels, [0, 0, 0, 0])


def test_unknown_fast_parc_option_is_rejected():
    neighbourhood, _ = _blobs([100, 100])
    with pytest.raises(ValueError, match="dist_std_local"):
        cluster("parc", neighbourhood, 1.0, dist_std_local=2)


def test_threads_do_not_change_parc_labels():
    from utag.clustering import cluster_many

    neighbourhood, _ = _blobs([300, 300, 200], seed=4)
    tasks = [("parc", resolution, 0, {}) for resolution in (0.3, 1.0, 2.0)]
    for a, b in zip(cluster_many(neighbourhood, tasks, n_jobs=2), cluster_many(neighbourhood, tasks, n_jobs=1)):
        np.testing.assert_array_equal(a, b)
