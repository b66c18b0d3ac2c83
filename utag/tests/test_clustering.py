import contextlib
import io

import numpy as np
import pytest
import scipy.sparse as sp

from utag.clustering import Neighbourhood, cluster, relabel_by_size, soft_assignments
from utag.embedding import fuzzy_connectivities, nearest_neighbors


def _blobs(sizes, seed=0, spread=8.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, spread, size=(len(sizes), 5))
    points = np.vstack([rng.normal(c, 1.0, size=(n, 5)) for c, n in zip(centres, sizes)]).astype(np.float32)
    return points, np.repeat(np.arange(len(sizes)), sizes)


def _neighbourhood(points):
    indices, distances = nearest_neighbors(points, 15)
    return Neighbourhood(points, fuzzy_connectivities(indices, distances))


@pytest.fixture(scope="module")
def blobs():
    points, truth = _blobs([400, 300, 200])
    return _neighbourhood(points), truth


@pytest.mark.parametrize("method, kwargs", [
    ("leiden", {}),
    ("leiden", {"flavor": "igraph"}),
    ("leiden", {"flavor": "leidenalg"}),
    ("parc", {}),
    ("parc", {"flavor": "parc", "time_smallpop": 1}),  # the package's small-cluster loop: 15 s by default
    ("kmeans", {}),
])
def test_every_backend_separates_blobs(blobs, method, kwargs):
    from sklearn.metrics import homogeneity_score

    neighbourhood, truth = blobs
    labels = cluster(method, neighbourhood, 0.3, random_state=0, **kwargs)
    assert labels.shape == truth.shape
    assert labels.max() + 1 >= 3
    assert homogeneity_score(truth, labels) > 0.95  # no cluster mixes blobs
    assert labels.min() == 0 and np.bincount(labels).argmax() == 0


def test_kmeans_uses_ceil_of_ten_times_resolution(blobs, caplog):
    neighbourhood, _ = blobs
    for resolution, k in [(0.05, 1), (0.1, 1), (0.25, 3), (0.71, 8)]:
        caplog.clear()
        with caplog.at_level("WARNING", logger="utag.clustering"):
            assert cluster("kmeans", neighbourhood, resolution).max() + 1 == k
        # one domain, as in the original code, but said
        assert ("k = ceil(10 * resolution) = 1: every cell in one domain" in caplog.text) == (k == 1)
    caplog.clear()
    with caplog.at_level("WARNING", logger="utag.clustering"):  # k asked for (n_domains=1): nothing to say
        assert cluster("kmeans", neighbourhood, 0.1, n_clusters=1).max() == 0
    assert not caplog.text


def test_kmeans_finds_the_same_clusters_on_any_scale_of_features(blobs):
    # squared distances of an embedding of 1e20 overflow float32 (of 1e-25, underflow): one cluster
    neighbourhood, truth = blobs
    expected = cluster("kmeans", neighbourhood, 0.3)
    assert len(np.unique(expected)) == 3
    for factor in (1e-25, 1e-8, 1e8, 1e20):
        scaled = Neighbourhood(neighbourhood.embedding * np.float32(factor), neighbourhood.connectivities)
        np.testing.assert_array_equal(cluster("kmeans", scaled, 0.3), expected, err_msg=str(factor))


@pytest.mark.parametrize("method", ["leiden", "parc", "kmeans"])
def test_backends_are_deterministic(blobs, method):
    neighbourhood, _ = blobs
    first = cluster(method, neighbourhood, 1.0, random_state=3)
    second = cluster(method, Neighbourhood(neighbourhood.embedding, neighbourhood.connectivities), 1.0,
                     random_state=3)
    np.testing.assert_array_equal(first, second)


def test_leiden_resolution_controls_granularity(blobs):
    neighbourhood, _ = blobs
    coarse = cluster("leiden", neighbourhood, 0.1).max()
    fine = cluster("leiden", neighbourhood, 3.0).max()
    assert fine > coarse


def test_unknown_leiden_flavor_is_rejected(blobs):
    with pytest.raises(ValueError, match="flavor"):
        cluster("leiden", blobs[0], 1.0, flavor="louvain")


# PARC 0.40 refers to an undefined `small_pop` in run_toobig_subPARC, which runs when
# its first cluster holds more than 40% of the cells: a big blob with two small ones.
@pytest.fixture(scope="module")
def parc_trigger():
    points, truth = _blobs([1400, 300, 300], seed=1)
    return _neighbourhood(points), truth


def test_upstream_parc_fails_on_a_dominant_cluster(parc_trigger):
    from parc import PARC

    neighbourhood, _ = parc_trigger
    model = PARC(neighbourhood.embedding, neighbor_graph=neighbourhood.connectivities,
                 resolution_parameter=0.1, random_seed=0)
    with pytest.raises(NameError, match="small_pop"), contextlib.redirect_stdout(io.StringIO()):
        model.run_PARC()


def test_parc_backend_survives_a_dominant_cluster(parc_trigger, monkeypatch):
    from parc import PARC

    neighbourhood, truth = parc_trigger
    calls = []
    original = PARC.run_toobig_subPARC

    def spy(self, *args, **kwargs):
        calls.append(len(args[0]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PARC, "run_toobig_subPARC", spy)
    labels = cluster("parc", neighbourhood, 0.1, random_state=0, flavor="parc", time_smallpop=1)
    assert calls and calls[0] > 0.4 * len(truth)  # the buggy code path really ran
    assert labels.shape == truth.shape and labels.max() >= 2
    import parc._parc

    assert not hasattr(parc._parc, "small_pop")  # the work-around cleans up after itself


def test_relabel_by_size_orders_clusters_by_population():
    labels = np.array([7, 7, 3, 3, 3, 9, 3, 9, 9, 9, 9])
    np.testing.assert_array_equal(relabel_by_size(labels), [2, 2, 1, 1, 1, 0, 1, 0, 0, 0, 0])


def _softmax_reference(features, labels):
    z = (features - features.mean(0)) / features.std(0)
    centroids = np.stack([z[labels == k].mean(0) for k in range(labels.max() + 1)])
    scores = -0.5 * ((z[:, None, :] - centroids[None]) ** 2).sum(-1)
    scores = np.exp(scores - scores.max(1, keepdims=True))
    return scores / scores.sum(1, keepdims=True)


@pytest.mark.parametrize("sparse_input", [False, True])
def test_soft_assignments_match_their_definition(sparse_input):
    rng = np.random.default_rng(0)
    features = rng.gamma(1.0, size=(200, 6))
    features[features < 0.5] = 0
    labels = rng.integers(0, 4, size=200)
    data = sp.csr_matrix(features, dtype=np.float32) if sparse_input else features.astype(np.float32)
    probabilities = soft_assignments(data, labels)
    assert probabilities.shape == (200, 4) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probabilities, _softmax_reference(features, labels), rtol=1e-3, atol=1e-6)


def test_soft_assignments_favour_the_assigned_cluster(blobs):
    neighbourhood, truth = blobs
    probabilities = soft_assignments(neighbourhood.embedding, truth)
    assert (probabilities.argmax(axis=1) == truth).mean() > 0.95


def _brute_force_links(adjacency, labels):
    """Edge weight between every pair of labels, pair by pair."""
    dense = sp.csr_matrix(adjacency).toarray()
    k = labels.max() + 1
    return np.array([[dense[np.ix_(labels == a, labels == b)].sum() for b in range(k)] for a in range(k)])


def test_small_domains_join_the_domain_they_link_to_most(blobs):
    from utag.clustering import merge_small_domains

    neighbourhood, truth = blobs
    rng = np.random.default_rng(3)
    labels = truth.copy()
    # carve 6 fragments of 5-20 cells out of the blobs
    for fragment, size in enumerate(rng.integers(5, 21, size=6)):
        cells = rng.choice(np.flatnonzero(labels < 3), size=size, replace=False)
        labels[cells] = 3 + fragment
    links = _brute_force_links(neighbourhood.connectivities, labels)
    merged = merge_small_domains(labels, neighbourhood.connectivities, neighbourhood.embedding, min_cells=50)
    assert merged.max() + 1 == 3
    assert np.bincount(merged).min() >= 50
    for fragment in range(3, 9):
        cells = labels == fragment
        # every cell of the fragment went to the large domain it shares most edge weight with
        best = np.argmax(links[fragment, :3])
        assert len(np.unique(merged[cells])) == 1
        assert np.all(merged[cells] == merged[labels == best][0])


def test_domains_that_all_start_small_pair_up_instead_of_snowballing():
    from utag.clustering import merge_small_domains

    # 40 cliques of 60-140 cells on a ring, each linked to the next by a few edges, and a
    # minimum size of 300: every domain starts small. Joining the domain linked to most
    # made the first domains to grow draw in the others (up to 1,021 cells here, and one
    # domain of every cell on a synthetic tissue at Leiden 2.0)
    rng = np.random.default_rng(0)
    sizes = rng.integers(60, 140, size=40)
    labels = np.repeat(np.arange(40), sizes)
    starts = np.r_[0, np.cumsum(sizes)]
    rows = np.concatenate([rng.integers(starts[d], starts[d + 1], 5) for d in range(40)])
    cols = np.concatenate([rng.integers(starts[(d + 1) % 40], starts[(d + 1) % 40 + 1], 5) for d in range(40)])
    ring = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(labels), len(labels)))
    adjacency = (sp.block_diag([sp.csr_matrix(np.ones((n, n)) - np.eye(n)) for n in sizes]) + ring + ring.T).tocsr()
    merged = merge_small_domains(labels, adjacency, np.zeros((len(labels), 2)), min_cells=300)
    counts = np.bincount(merged)
    assert counts.min() >= 300 and counts.max() < 3 * 300
    assert len(counts) >= len(labels) // (3 * 300) + 1
    # each merged domain is a run of neighbours on the ring: merges follow the links
    for domain in range(len(counts)):
        members = np.unique(labels[merged == domain])
        gaps = np.diff(np.r_[members, members[0] + 40])
        assert (gaps > 1).sum() <= 1


def test_a_large_minimum_size_keeps_several_domains_at_a_high_resolution():
    from utag import utag
    from utag.datasets import synthetic_tissue

    tissue = synthetic_tissue(n_cells=4_000, n_slides=2, random_state=11)
    result = utag(tissue, slide_key="roi", max_dist=20, clustering_method=["leiden", "parc"], resolutions=[2.0],
                  min_domain_size=300, progress=False)
    for key in result.uns["utag"]["label_keys"]:
        counts = result.obs[key].value_counts()
        assert len(counts) >= 5 and counts.min() >= 300  # was one domain of 4,000 cells


def test_a_component_of_its_own_joins_the_nearest_domain():
    from utag.clustering import merge_small_domains

    points, truth = _blobs([200, 200, 6], seed=1, spread=30.0)
    neighbourhood = _neighbourhood(points[:400])
    # the 6 far-away cells: a component of their own (no edge to the rest)
    adjacency = sp.block_diag([neighbourhood.connectivities, sp.csr_matrix(np.ones((6, 6)) - np.eye(6))]).tocsr()
    merged = merge_small_domains(truth, adjacency, points, min_cells=10)
    centroids = np.array([points[truth == d].mean(axis=0) for d in range(3)])
    nearest = np.argmin(((centroids[:2] - centroids[2]) ** 2).sum(axis=1))
    assert merged.max() + 1 == 2
    assert np.all(merged[truth == 2] == merged[truth == nearest][0])


def test_min_domain_size_as_fraction_or_cells():
    from utag.clustering import min_domain_cells

    assert min_domain_cells(0.01, 5_000) == 50
    assert min_domain_cells(25, 5_000) == 25
    assert min_domain_cells(0, 5_000) == 0
    assert min_domain_cells(None, 1_000) == 10  # the parc package's default small_pop at least
    assert min_domain_cells(None, 100_000) == 200
    for bad in (-1, float("nan"), "5", True):
        with pytest.raises(ValueError, match="min_domain_size"):
            min_domain_cells(bad, 100)


def test_leidenalg_partition_without_a_resolution_is_refused_clearly(blobs):
    leidenalg = pytest.importorskip("leidenalg")
    neighbourhood, truth = blobs
    # ModularityVertexPartition takes no resolution: a ValueError naming the keyword and the fix,
    # not leidenalg's TypeError about `resolution_parameter`
    with pytest.raises(ValueError, match=r"partition_type.*RBConfigurationVertexPartition"):
        cluster("leiden", neighbourhood, 1.0, flavor="leidenalg", partition_type=leidenalg.ModularityVertexPartition)
    # partitions with a resolution still take it: RBConfiguration at 1.0 is plain modularity
    labels = cluster("leiden", neighbourhood, 1.0, flavor="leidenalg",
                     partition_type=leidenalg.RBConfigurationVertexPartition)
    graph = neighbourhood.graph
    modularity = graph.modularity(labels, weights="weight")
    reference = leidenalg.find_partition(graph, leidenalg.ModularityVertexPartition, weights="weight", seed=0,
                                         n_iterations=-1)
    assert modularity >= reference.modularity - 1e-3


def test_sparse_features_keep_the_small_spread_of_a_bright_flat_channel():
    from utag.clustering import feature_spread

    # channel 0 sits at 10,000 and differs by 1e-4 between cells: E[x^2] - E[x]^2 cancels to nothing
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=300)
    features = rng.normal(size=(300, 3))
    features[:, 0] = 1e4 + 1e-4 * (rng.normal(size=300) + labels)
    features[rng.random(300) < 0.3, 1] = 0
    mean, spread = feature_spread(sp.csr_matrix(features))
    np.testing.assert_allclose(mean, features.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(spread, features.std(axis=0), rtol=1e-6)
    np.testing.assert_allclose(soft_assignments(sp.csr_matrix(features), labels), soft_assignments(features, labels),
                               rtol=1e-4, atol=1e-5)


def test_sparse_features_give_a_constant_channel_no_spread():
    from utag.clustering import feature_spread

    # a constant channel (7 everywhere) has no spread, as for dense features: a rounding
    # residue of the mean (~1e-13) would be z-scored up to the other channels' size
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=3000)
    features = rng.poisson(2.0, size=(3000, 4)).astype(np.float32)
    for column, value in enumerate((7.0, 0.1, 1.0)):
        features[:, column] = value
    _, spread = feature_spread(sp.csr_matrix(features))
    assert spread[:3].tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(soft_assignments(sp.csr_matrix(features), labels), soft_assignments(features, labels),
                               atol=1e-6)


def test_every_method_has_one_backend_one_graph_and_one_set_of_keyword_rules():
    from utag import _validation
    from utag.clustering import BACKENDS, RESERVED_KWARGS

    assert set(BACKENDS) == set(_validation.CLUSTERING_METHODS)
    assert set(RESERVED_KWARGS) == {f"{method}_kwargs" for method in _validation.CLUSTERING_METHODS}


def test_the_leidenalg_flavour_is_scanpys_call():
    import warnings

    import scanpy as sc
    from anndata import AnnData

    from utag.clustering import Neighbourhood, leiden
    from utag.datasets import synthetic_tissue
    from utag.embedding import embed

    # scanpy.tl.leiden, and so the original UTAG, gives leidenalg the directed graph; on
    # the undirected one the same seed gives another partition (ARI 0.49 at 1.0 here)
    tissue = synthetic_tissue(n_cells=4_000, n_slides=1, random_state=0)
    embedded = embed(np.asarray(tissue.X), use_rep="X")
    adata = AnnData(np.asarray(tissue.X), obsp={"connectivities": embedded.connectivities})
    adata.uns["neighbors"] = {"connectivities_key": "connectivities", "params": {"method": "umap"}}
    neighbourhood = Neighbourhood(embedded.pca["embedding"], embedded.connectivities)
    for resolution, directed in ((0.3, True), (1.0, True), (1.0, False)):
        with warnings.catch_warnings():  # scanpy's notes that igraph is (or will be) its default, and faster
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", "The `igraph` implementation of leiden", UserWarning)
            sc.tl.leiden(adata, resolution=resolution, random_state=0, flavor="leidenalg", key_added="scanpy",
                         directed=directed)
        ours = leiden(neighbourhood, resolution, 0, flavor="leidenalg", directed=directed)
        np.testing.assert_array_equal(ours, adata.obs["scanpy"].astype(int).to_numpy())
