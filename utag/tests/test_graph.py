"""The spatial graph (:mod:`utag.graph`): squidpy's radius graph per slide, the k-nearest and
Delaunay options, each against brute force, and the memory checks made before any graph is built."""
import re
import time

import numpy as np
import pytest
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial import Delaunay
from scipy.spatial.distance import cdist

from utag import graph, utag
from utag._memory import available_memory, cgroup_headroom
from utag.datasets import synthetic_tissue
from utag.graph import (
    GraphTooLargeError,
    check_graph_fits,
    estimate_pairs,
    radius_graph,
    slide_pairs,
    spatial_graph,
    spatial_neighbors,
    upper_pairs,
)
from utag.transfer import transfer_labels


def _squidpy_graph(adata, radius, library_key):
    import squidpy as sq

    reference = adata.copy()
    sq.gr.spatial_neighbors_radius(reference, radius=radius, set_diag=True, library_key=library_key)
    return reference.obsp["spatial_connectivities"], reference.obsp["spatial_distances"]


def _assert_same_sparse(ours, theirs, exact=True):
    ours, theirs = sp.csr_matrix(ours), sp.csr_matrix(theirs)
    ours.sort_indices(), theirs.sort_indices()
    np.testing.assert_array_equal(ours.indptr, theirs.indptr)
    np.testing.assert_array_equal(ours.indices, theirs.indices)
    if exact:
        np.testing.assert_array_equal(ours.data, theirs.data)
    else:
        np.testing.assert_allclose(ours.data, theirs.data, rtol=1e-12)


def test_graph_equals_squidpy_with_interleaved_slides(interleaved):
    adata = interleaved.copy()
    spatial_neighbors(adata, max_dist=20, slide_key="roi")
    connectivities, distances = _squidpy_graph(interleaved, 20, "roi")
    _assert_same_sparse(adata.obsp["spatial_connectivities"], connectivities)
    _assert_same_sparse(adata.obsp["spatial_distances"], distances, exact=False)
    assert adata.obsp["spatial_connectivities"].dtype == connectivities.dtype


def test_graph_equals_squidpy_on_grid_with_duplicates_and_boundary_distances():
    # integer grid: many pairs lie exactly at max_dist = 2 (inclusive) and at sqrt(5) > 2
    grid = np.stack(np.meshgrid(np.arange(12), np.arange(10)), axis=-1).reshape(-1, 2).astype(float)
    coords = np.vstack([grid, grid[:7]])  # 7 duplicated centroids
    adata = AnnData(np.ones((len(coords), 1), dtype=np.float32), obsm={"spatial": coords})
    ours = spatial_neighbors(adata, max_dist=2.0, slide_key=None, copy=True)
    connectivities, distances = _squidpy_graph(adata, 2.0, None)
    _assert_same_sparse(ours.obsp["spatial_connectivities"], connectivities)
    _assert_same_sparse(ours.obsp["spatial_distances"], distances, exact=False)
    # an interior grid cell: itself, 4 at distance 1, 4 at sqrt(2), 4 at exactly 2
    interior = 5 * 12 + 5
    assert ours.obsp["spatial_connectivities"][interior].nnz == 13


def test_graph_of_tiny_slides_equals_squidpy_and_restores_the_thread_limits():
    # slides of a handful of cells take scikit-learn's brute-force route, which utag runs in one thread
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_info

    adata = synthetic_tissue(n_cells=300, n_slides=60, random_state=0)
    before = [pool["num_threads"] for pool in threadpool_info()]
    coords = adata.obsm["spatial"]
    with ThreadPoolExecutor(4) as pool:  # as Dask's threaded scheduler builds slides at once
        list(pool.map(lambda start: radius_graph(coords[start:start + 5], 30), range(0, 300, 5)))
    assert [pool["num_threads"] for pool in threadpool_info()] == before
    ours = spatial_neighbors(adata, max_dist=30, slide_key="roi", copy=True)
    connectivities, distances = _squidpy_graph(adata, 30, "roi")
    _assert_same_sparse(ours.obsp["spatial_connectivities"], connectivities)
    _assert_same_sparse(ours.obsp["spatial_distances"], distances, exact=False)
    assert connectivities.nnz > adata.n_obs  # some cells are linked to others, not only to themselves


def test_radius_graph_matches_brute_force():
    coords = np.random.default_rng(0).uniform(0, 50, size=(300, 2))
    dist = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    expected = {(i, j) for i, j in zip(*np.nonzero(dist <= 7.5)) if i < j}
    connectivities, distances = radius_graph(coords, 7.5)
    assert {tuple(p) for p in upper_pairs(connectivities)} == expected
    pairs = upper_pairs(connectivities)
    np.testing.assert_allclose(np.asarray(distances[pairs[:, 0], pairs[:, 1]]).ravel(),
                               dist[pairs[:, 0], pairs[:, 1]], rtol=1e-12)


def test_radius_graph_of_one_cell_is_its_self_loop():
    connectivities, distances = radius_graph(np.zeros((1, 2)), 5.0)
    assert connectivities.toarray().tolist() == [[1.0]] and distances.nnz <= 1


def test_no_edge_crosses_slides():
    coords = np.random.default_rng(0).uniform(0, 30, size=(400, 2))
    codes = np.repeat([0, 1], 200)
    coords[200:] = coords[:200]  # the second slide sits on top of the first
    pairs = slide_pairs(coords, codes, 10.0)
    assert len(pairs) > 0
    assert (codes[pairs[:, 0]] == codes[pairs[:, 1]]).all()


def test_adjacency_is_symmetric_with_self_loops():
    coords = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0], [2.0, 0.0], [9.0, 9.0]])
    dense = radius_graph(coords, 1.0)[0].toarray()
    np.testing.assert_array_equal(dense, dense.T)
    np.testing.assert_array_equal(np.diag(dense), np.ones(5))
    assert dense.sum() == 5 + 4  # edges 0-1 and 1-3, both ways


def test_spatial_neighbors_does_not_touch_input_with_copy(tissue):
    result = spatial_neighbors(tissue, max_dist=15, slide_key="roi", copy=True)
    assert "spatial_connectivities" not in tissue.obsp
    assert result.uns["spatial_neighbors"]["params"]["radius"] == 15.0


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_spatial_neighbors_rejects_bad_max_dist(tissue, bad):
    with pytest.raises(ValueError, match="max_dist"):
        spatial_neighbors(tissue, max_dist=bad, slide_key="roi", copy=True)


# --- memory safety ----------------------------------------------------------------------

def _coords_codes(adata, slide_key="roi"):
    return adata.obsm["spatial"], adata.obs[slide_key].cat.codes.to_numpy().astype(np.int64)


@pytest.mark.parametrize("max_dist", [20, 60])
@pytest.mark.parametrize("n_slides", [1, 3])
def test_estimate_pairs_within_ten_percent_of_exact_count(max_dist, n_slides):
    adata = synthetic_tissue(n_cells=30_000, n_slides=n_slides, n_markers=2, random_state=2)
    coords, codes = _coords_codes(adata)
    exact = len(slide_pairs(coords, codes, max_dist))
    for seed in range(3):
        assert estimate_pairs(coords, codes, max_dist, random_state=seed) == pytest.approx(exact, rel=0.10)


def test_estimate_pairs_counts_every_pair_when_max_dist_spans_the_slide():
    coords = np.random.default_rng(0).uniform(0, 1_000, size=(150_000, 2))
    codes = np.zeros(len(coords), dtype=np.int64)
    n = len(coords)
    assert estimate_pairs(coords, codes, 1e9) == pytest.approx(n * (n - 1) / 2, rel=1e-9)
    # 3 slides sharing one frame: no pair crosses slides
    codes = np.arange(n) % 3
    assert estimate_pairs(coords, codes, 1e9) == pytest.approx(3 * (n / 3) * (n / 3 - 1) / 2, rel=0.01)


@pytest.fixture(scope="module")
def one_big_slide():
    """200,000 cells on one ~5.5 mm slide: a slide-sized max_dist means ~2e10 pairs."""
    return synthetic_tissue(n_cells=200_000, n_slides=1, n_markers=3, random_state=0)


def _snapshot(adata):
    return (adata.X.copy(), adata.obs.copy(), adata.obsm["spatial"].copy(), set(adata.obsp.keys()),
            set(adata.uns.keys()), set(adata.obsm.keys()))


def _assert_unchanged(adata, snapshot):
    X, obs, spatial, obsp, uns, obsm = snapshot
    np.testing.assert_array_equal(adata.X, X)
    assert adata.obs.equals(obs)
    np.testing.assert_array_equal(adata.obsm["spatial"], spatial)
    assert (set(adata.obsp.keys()), set(adata.uns.keys()), set(adata.obsm.keys())) == (obsp, uns, obsm)


@pytest.mark.parametrize("build", ["utag", "spatial_neighbors"])
def test_slide_sized_max_dist_raises_before_building_the_graph(one_big_slide, build):
    if available_memory() is None:
        pytest.skip("this platform does not report its memory, so nothing is checked")
    adata = one_big_slide
    before = _snapshot(adata)
    diagonal = float(np.linalg.norm(np.ptp(adata.obsm["spatial"], axis=0)))
    max_dist = 2 * diagonal
    start = time.perf_counter()
    with pytest.raises(GraphTooLargeError) as raised:
        if build == "utag":
            utag(adata, slide_key=None, max_dist=max_dist, clustering_method="kmeans", resolutions=[0.3],
                 progress=False)
        else:
            spatial_neighbors(adata, max_dist=max_dist, slide_key=None)
    assert time.perf_counter() - start < 5  # no graph of 2e10 pairs was built
    error = raised.value
    assert isinstance(error, MemoryError) and isinstance(error, ValueError)
    n = adata.n_obs
    assert error.n_pairs == pytest.approx(n * (n - 1) / 2, rel=1e-6)
    message = str(error)
    assert f"max_dist={max_dist:g}" in message
    assert "2.0e10 spatial edges" in message
    assert error.suggested_max_dist is not None and 0 < error.suggested_max_dist < diagonal
    assert f"max_dist={error.suggested_max_dist:g}" in message
    _assert_unchanged(adata, before)


def test_suggested_max_dist_fits_and_runs(tissue, monkeypatch):
    monkeypatch.setattr(graph, "available_memory", lambda: 40_000_000)
    coords, codes = _coords_codes(tissue)
    with pytest.raises(GraphTooLargeError) as raised:
        utag(tissue, slide_key="roi", max_dist=150, clustering_method="kmeans", resolutions=[0.3], progress=False)
    suggested = raised.value.suggested_max_dist
    assert suggested < 150
    bytes_per_cell = (graph.MESSAGE_PASSING_BYTES_PER_CELL
                      + graph.MESSAGE_PASSING_BYTES_PER_FEATURE * tissue.n_vars)
    max_pairs = (graph.MEMORY_FRACTION * 40_000_000 - bytes_per_cell * tissue.n_obs) / \
        graph.MESSAGE_PASSING_BYTES_PER_PAIR
    assert estimate_pairs(coords, codes, suggested) <= max_pairs
    assert estimate_pairs(coords, codes, 2 * suggested) > max_pairs  # not needlessly small
    result = utag(tissue, slide_key="roi", max_dist=suggested, clustering_method="kmeans", resolutions=[0.3],
                  progress=False)
    n_pairs = len(graph.slide_pairs(coords, codes, suggested))
    assert 0 < n_pairs <= 1.1 * max_pairs
    assert result.obs["UTAG Label_kmeans_0.3"].notna().all()


def test_multiscale_error_names_max_dist_values_that_fit(tissue, monkeypatch):
    from utag.multiscale import graph_radius, kernel_widths

    # the multiscale flavour builds its graph at a radius above max_dist; the error must
    # still name the max_dist given and suggest one that then runs in that flavour
    monkeypatch.setattr(graph, "available_memory", lambda: 40_000_000)
    with pytest.raises(GraphTooLargeError, match=r"`max_dist=150` \(a spatial graph of radius") as raised:
        utag(tissue, slide_key="roi", max_dist=150, flavor="multiscale", clustering_method="kmeans",
             resolutions=[0.3], progress=False)
    suggested = raised.value.suggested_max_dist
    assert raised.value.max_dist == 150 and suggested < 150
    coords, codes = _coords_codes(tissue)
    radius_per_max_dist = graph_radius(suggested, kernel_widths(suggested)) / suggested
    assert radius_per_max_dist > 1
    # not needlessly small: twice the suggestion would not have fitted at its own radius
    bytes_per_cell = (graph.MESSAGE_PASSING_BYTES_PER_CELL
                      + graph.MESSAGE_PASSING_BYTES_PER_FEATURE * tissue.n_vars * len(kernel_widths(suggested)))
    max_pairs = (graph.MEMORY_FRACTION * 40_000_000 - bytes_per_cell * tissue.n_obs) / \
        graph.MESSAGE_PASSING_BYTES_PER_PAIR
    assert estimate_pairs(coords, codes, 2 * suggested * radius_per_max_dist) > max_pairs
    result = utag(tissue, slide_key="roi", max_dist=suggested, flavor="multiscale", clustering_method="kmeans",
                  resolutions=[0.3], progress=False)
    assert result.obs["UTAG Label_kmeans_0.3"].notna().all()


def test_knn_spatial_graph_too_large_names_the_neighbours_that_fit(monkeypatch):
    # each cell linked to 2,999 others: ~9e6 pairs, far beyond 40 MB; the radius check
    # did not apply to the kNN graph, which was then built regardless
    adata = synthetic_tissue(n_cells=3_000, n_slides=1, random_state=1)
    monkeypatch.setattr(graph, "available_memory", lambda: 40_000_000)
    with pytest.raises(GraphTooLargeError, match=r"n_spatial_neighbors=2999.*n_spatial_neighbors=(\d+)") as raised:
        utag(adata, slide_key="roi", spatial_graph="knn", n_spatial_neighbors=2999, apply_clustering=False,
             progress=False)
    fitting = int(re.search(r"pass `n_spatial_neighbors=(\d+)`", str(raised.value)).group(1))
    assert 1 <= fitting < 2999
    result = utag(adata, slide_key="roi", spatial_graph="knn", n_spatial_neighbors=fitting, apply_clustering=False,
                  progress=False)  # the value named runs
    assert result.n_obs == adata.n_obs


def test_a_knn_spatial_graph_over_most_of_the_slide_is_flagged(caplog):
    tissue = synthetic_tissue(n_cells=1_500, n_slides=2, random_state=0)  # 750 cells a slide
    options = dict(slide_key="roi", spatial_graph="knn", clustering_method="kmeans", resolutions=[0.3], progress=False)
    with caplog.at_level("WARNING", logger="utag"):
        utag(tissue, n_spatial_neighbors=15, **options)
        assert "most of its slide" not in caplog.text
        utag(tissue, n_spatial_neighbors=5_000, **options)  # used to be capped at the slide, silently
    assert "n_spatial_neighbors=5000 links each cell to most of its slide (750 cells" in caplog.text


def test_analysis_checks_the_graph_it_builds(tissue, monkeypatch):
    from utag.analysis import domain_connectivity

    monkeypatch.setattr(graph, "available_memory", lambda: 10_000_000)
    adata = tissue.copy()
    with pytest.raises(GraphTooLargeError, match="max_dist=500"):
        domain_connectivity(adata, "domain", slide_key="roi", max_dist=500)
    assert "domain_connectivity" not in adata.uns


def test_no_check_when_memory_is_unknown(tissue, monkeypatch):
    monkeypatch.setattr(graph, "available_memory", lambda: None)
    coords, codes = _coords_codes(tissue)
    assert check_graph_fits(coords, codes, 1e6) is None


def test_no_max_dist_fits_when_the_cells_alone_do_not(tissue, monkeypatch):
    monkeypatch.setattr(graph, "available_memory", lambda: 1_000)
    coords, codes = _coords_codes(tissue)
    with pytest.raises(GraphTooLargeError, match="No max_dist fits") as raised:
        check_graph_fits(coords, codes, 20, bytes_per_cell=100)
    assert raised.value.suggested_max_dist is None


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_headroom_v2_counts_reclaimable_cache(tmp_path):
    _write(tmp_path / "cgroup", "0::/job\n")
    _write(tmp_path / "fs" / "job" / "memory.max", "1000000000\n")
    _write(tmp_path / "fs" / "job" / "memory.current", "400000000\n")
    _write(tmp_path / "fs" / "job" / "memory.stat", "anon 300000000\ninactive_file 100000000\n")
    _write(tmp_path / "fs" / "memory.max", "max\n")  # the root: no limit
    _write(tmp_path / "fs" / "memory.current", "5\n")
    assert cgroup_headroom(str(tmp_path / "cgroup"), str(tmp_path / "fs")) == 700_000_000


def test_cgroup_headroom_v1_takes_the_tightest_ancestor(tmp_path):
    _write(tmp_path / "cgroup", "4:memory:/slurm/job_1/step_0\n3:cpu:/\n")
    memory = tmp_path / "fs" / "memory"
    _write(memory / "slurm" / "job_1" / "memory.limit_in_bytes", "2000000000\n")
    _write(memory / "slurm" / "job_1" / "memory.usage_in_bytes", "1500000000\n")
    _write(memory / "slurm" / "job_1" / "step_0" / "memory.limit_in_bytes", str(2**63 - 4096))  # unlimited
    _write(memory / "slurm" / "job_1" / "step_0" / "memory.usage_in_bytes", "1000000000\n")
    assert cgroup_headroom(str(tmp_path / "cgroup"), str(tmp_path / "fs")) == 500_000_000
    assert cgroup_headroom(str(tmp_path / "missing"), str(tmp_path / "fs")) is None


def test_cells_exactly_max_dist_apart_stay_linked_in_any_units():
    # whole-pixel centroids put many pairs exactly max_dist apart (3-4-5 triangles at 5 px);
    # scaled to other units with max_dist, float rounding must not drop any of them
    rng = np.random.default_rng(0)
    coords = np.unique(rng.integers(0, 40, size=(400, 2)).astype(float), axis=0)
    in_pixels = graph.spatial_graph(coords, 5.0)[0]
    lengths = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    assert np.isclose(lengths, 5.0).sum() > 100
    np.testing.assert_array_equal(in_pixels.toarray() > 0, lengths <= 5.0)  # inclusive, as brute force
    for scale in (0.377, 0.65, 1 / 3, 2.2):
        scaled = graph.spatial_graph(coords * scale, 5.0 * scale)[0]
        assert (scaled != in_pixels).nnz == 0, scale


def test_delaunay_keeps_edges_exactly_max_dist_long_in_any_units():
    # generic positions (one triangulation); max_dist the length of some of its edges
    rng = np.random.default_rng(1)
    coords = rng.random((300, 2)) * 100
    full = graph.spatial_graph(coords, np.inf, "delaunay")[0].tocoo()
    lengths = np.linalg.norm(coords[full.row] - coords[full.col], axis=1)
    for max_dist in np.quantile(lengths[full.row != full.col], [0.3, 0.5, 0.7, 0.9], method="nearest"):
        kept = graph.spatial_graph(coords, max_dist, "delaunay")[0]
        assert kept.nnz == (lengths <= max_dist).sum()
        for scale in (0.377, 0.65, 1 / 3, 2.2, 0.1):
            scaled = graph.spatial_graph(coords * scale, max_dist * scale, "delaunay")[0]
            assert (scaled != kept).nnz == 0, (max_dist, scale)


# --- spatial graph options (utag(spatial_graph=...)): the k nearest cells, and Delaunay with long
# edges removed, each equal to brute force ------------------------------------------------

def _knn_brute_force(coords: np.ndarray, k: int) -> np.ndarray:
    distances = cdist(coords, coords)
    np.fill_diagonal(distances, np.inf)
    adjacency = np.eye(len(coords))
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :k]
    adjacency[np.repeat(np.arange(len(coords)), k), nearest.ravel()] = 1
    return adjacency


def _delaunay_brute_force(coords: np.ndarray, max_dist: float) -> np.ndarray:
    adjacency = np.eye(len(coords))
    for simplex in Delaunay(coords).simplices:
        for a in simplex:
            for b in simplex:
                if a != b and np.linalg.norm(coords[a] - coords[b]) <= max_dist:
                    adjacency[a, b] = 1
    return adjacency


@pytest.fixture(scope="module")
def points():
    return np.random.default_rng(0).uniform(0, 100, size=(300, 2))


def test_knn_graph_holds_each_cells_nearest_cells_and_itself(points):
    connectivities, distances = spatial_graph(points, max_dist=20, kind="knn", n_neighbors=6)
    np.testing.assert_array_equal(connectivities.toarray(), _knn_brute_force(points, 6))
    assert np.allclose(distances[connectivities.nonzero()], np.linalg.norm(
        points[connectivities.nonzero()[0]] - points[connectivities.nonzero()[1]], axis=1))


def test_delaunay_graph_drops_edges_longer_than_max_dist(points):
    connectivities, distances = spatial_graph(points, max_dist=8, kind="delaunay")
    np.testing.assert_array_equal(connectivities.toarray(), _delaunay_brute_force(points, 8))
    assert distances.max() <= 8


def test_delaunay_graph_does_not_change_when_the_tissue_lies_far_from_the_origin(points):
    # stage coordinates of a whole-slide scan can be 1e7 cell spacings from the origin, where
    # Qhull loses precision on the raw positions
    expected = _delaunay_brute_force(points, 8)
    for offset in (1e6, 1e8, -3e9):
        moved, _ = spatial_graph(points + offset, max_dist=8, kind="delaunay")
        np.testing.assert_array_equal(moved.toarray(), expected, err_msg=str(offset))


def test_delaunay_cells_at_one_position_share_its_neighbours(points):
    # Qhull leaves repeated points out of the triangulation; each copy gets the position's edges
    repeated = np.concatenate([points, points[:20]])
    connectivities, distances = spatial_graph(repeated, max_dist=8, kind="delaunay")
    alone = _delaunay_brute_force(points, 8)
    copies = np.concatenate([np.arange(len(points)), np.arange(20)])  # each cell's position
    expected = alone[np.ix_(copies, copies)]
    np.testing.assert_array_equal(connectivities.toarray(), expected)
    assert distances[len(points), 0] == 0 and connectivities[len(points), 0] == 1
    # a constant third coordinate (a flat z) gives the 2-D triangulation, not the radius graph
    flat, _ = spatial_graph(np.column_stack([points, np.full(len(points), 3.0)]), max_dist=8, kind="delaunay")
    np.testing.assert_array_equal(flat.toarray(), alone)


def test_delaunay_graph_kept_in_the_result_survives_h5ad(tmp_path):
    import anndata

    tissue = synthetic_tissue(n_cells=1_000, n_slides=2, random_state=0)
    result = utag(tissue, slide_key="roi", max_dist=20, spatial_graph="delaunay", keep_spatial_connectivity=True,
                  clustering_method="kmeans", resolutions=[0.3], progress=False)
    result.write_h5ad(tmp_path / "delaunay.h5ad")
    params = anndata.read_h5ad(tmp_path / "delaunay.h5ad").uns["spatial_neighbors"]["params"]
    assert list(params["radius"]) == [0.0, 20.0]


@pytest.mark.parametrize("kind", ["knn", "delaunay"])
def test_tiny_or_flat_slides_still_get_a_graph(kind):
    for coords in (np.zeros((1, 2)), np.array([[0.0, 0.0], [1.0, 0.0]]),
                   np.column_stack([np.arange(5.0), np.zeros(5)])):  # on a line: no triangulation
        connectivities, _ = spatial_graph(coords, max_dist=1.5, kind=kind, n_neighbors=6)
        assert (connectivities.diagonal() == 1).all()


@pytest.mark.parametrize("kind", ["knn", "delaunay"])
def test_message_passing_averages_over_the_chosen_graph(kind):
    tissue = synthetic_tissue(n_cells=900, n_slides=3, n_markers=5, random_state=1)
    result = utag(tissue, slide_key="roi", max_dist=15, spatial_graph=kind, n_spatial_neighbors=5,
                  clustering_method="kmeans", resolutions=[0.3], keep_spatial_connectivity=True, progress=False)
    features = np.asarray(tissue.X, dtype=np.float64)
    expected = np.empty_like(features)
    for slide in tissue.obs["roi"].unique():
        cells = np.flatnonzero(tissue.obs["roi"].to_numpy() == slide)
        coords = tissue.obsm["spatial"][cells]
        adjacency = _knn_brute_force(coords, 5) if kind == "knn" else _delaunay_brute_force(coords, 15)
        expected[cells] = adjacency @ features[cells] / adjacency.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(result.X, expected, rtol=1e-5, atol=1e-5)
    stored = result.obsp["spatial_connectivities"]
    assert sp.issparse(stored) and (stored.diagonal() == 1).all()
    assert result.uns["utag"]["spatial_graph"] == kind


def test_transfer_uses_the_graph_of_the_model():
    tissue = synthetic_tissue(n_cells=1_200, n_slides=2, n_markers=6, random_state=2)
    result = utag(tissue, slide_key="roi", max_dist=15, spatial_graph="knn", n_spatial_neighbors=8,
                  clustering_method="kmeans", resolutions=[0.3], progress=False)
    transferred = transfer_labels(result, tissue, slide_key="roi", n_jobs=1)
    np.testing.assert_allclose(transferred.X, result.X, rtol=1e-5, atol=1e-4)


def test_unknown_spatial_graph_is_refused():
    tissue = synthetic_tissue(n_cells=300, n_slides=1, random_state=0)
    with pytest.raises(ValueError, match=r"spatial_graph.*'radius', 'knn', 'delaunay'"):
        utag(tissue, slide_key="roi", spatial_graph="grid", progress=False)


def test_delaunay_cells_qhull_cannot_tell_apart_keep_their_neighbours(points):
    # 1e-10 apart at coordinates of about 1,000: Qhull leaves such points out of the
    # triangulation; each must get the edges of the position it cannot be told from
    far = points * 10
    near = np.concatenate([far, far[:3] + 1e-10])
    connectivities, distances = spatial_graph(near, max_dist=80, kind="delaunay")
    copies = np.concatenate([np.arange(len(far)), np.arange(3)])
    expected = _delaunay_brute_force(far, 80)[np.ix_(copies, copies)]
    np.testing.assert_array_equal(connectivities.toarray(), expected)
    assert connectivities[len(far), 0] == 1 and connectivities[len(far)].sum() > 2  # linked, not alone
    rows, columns = connectivities.nonzero()
    np.testing.assert_allclose(distances[rows, columns].A1, np.linalg.norm(near[rows] - near[columns], axis=1))


def test_delaunay_graph_of_cells_on_a_line_or_a_tilted_plane(points):
    # on a line, a circle through two cells holds every cell between them: only neighbours
    # along the line are Delaunay neighbours (the radius graph would also skip over cells)
    rng = np.random.default_rng(1)
    line = np.outer(rng.uniform(0, 50, size=20), [0.6, 0.8]) + 3.0
    connectivities, distances = spatial_graph(line, max_dist=8, kind="delaunay")
    along = np.argsort(line[:, 0])
    expected = np.eye(len(line))
    for a, b in zip(along[:-1], along[1:]):
        if np.linalg.norm(line[a] - line[b]) <= 8:
            expected[a, b] = expected[b, a] = 1
    np.testing.assert_array_equal(connectivities.toarray(), expected)
    assert distances.max() <= 8
    # a slide in 3-D on a tilted plane: the triangulation within the plane
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    tilted = np.column_stack([points, np.zeros(len(points))]) @ rotation.T + 5.0
    connectivities, _ = spatial_graph(tilted, max_dist=8, kind="delaunay")
    np.testing.assert_array_equal(connectivities.toarray(), _delaunay_brute_force(points, 8))
