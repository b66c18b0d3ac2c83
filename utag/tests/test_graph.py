import re
import time

import numpy as np
import pytest
import scipy.sparse as sp
from anndata import AnnData

from utag import graph, utag
from utag._memory import available_memory, cgroup_headroom
from utag.datasets import synthetic_tissue
from utag.graph import (
    GraphTooLargeError,
    check_graph_fits,
    estimate_pairs,
    radius_graph,
    slide_pairs,
    spatial_neighbors,
    upper_pairs,
)


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
