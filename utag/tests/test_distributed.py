"""utag() on Dask input (utag.distributed) gives the in-process sketch route's result."""
import anndata
import dask.array as da
import numpy as np
import pandas as pd
import pytest

from utag import utag
from utag.datasets import synthetic_tissue
from utag.io import read_lazy, write_domains

KW = dict(slide_key="roi", max_dist=20, progress=False)


def _shuffled_tissue(n_cells: int, n_slides: int = 3, seed: int = 0):
    """A synthetic tissue whose rows are not grouped by slide (the route must restore the order)."""
    tissue = synthetic_tissue(n_cells=n_cells, n_slides=n_slides, random_state=seed)
    return tissue[np.random.default_rng(seed).permutation(tissue.n_obs)].copy()


def _as_dask(adata, chunk_rows: int = 4_000):
    lazy = adata.copy()
    lazy.X = da.from_array(np.asarray(adata.X), chunks=(chunk_rows, -1))
    lazy.obsm["spatial"] = da.from_array(np.asarray(adata.obsm["spatial"]), chunks=(chunk_rows, -1))
    return lazy


def _assert_same_result(expected, got):
    """Same cells in the same order, same domains and sample; the same numbers up to float
    rounding of sums taken in another order."""
    assert list(got.obs_names) == list(expected.obs_names)
    keys = expected.uns["utag"]["label_keys"]
    assert keys and got.uns["utag"]["label_keys"] == keys
    for key in keys:
        np.testing.assert_array_equal(got.obs[key].to_numpy(), expected.obs[key].to_numpy())
        np.testing.assert_allclose(got.obsm[f"{key}_probabilities"], expected.obsm[f"{key}_probabilities"],
                                   atol=1e-5)
    np.testing.assert_allclose(got.obsm["X_pca"], expected.obsm["X_pca"], atol=1e-4)
    np.testing.assert_allclose(np.asarray(got.X), np.asarray(expected.X), rtol=1e-6, atol=1e-6)
    if "sketch" in expected.uns["utag"]:
        np.testing.assert_array_equal(got.uns["utag"]["sketch"]["cells"], expected.uns["utag"]["sketch"]["cells"])
    assert got.uns["utag"]["engine"] == "dask"


@pytest.fixture(scope="module")
def shuffled_tissue():
    return _shuffled_tissue(12_000)


def test_float64_features_on_a_large_background_give_the_in_process_result():
    tissue = _shuffled_tissue(3_000)
    tissue.X = tissue.X.astype(np.float64) + 1e9  # rounded to float32 first, every cell looked alike
    options = dict(clustering_method="kmeans", resolutions=[0.4], **KW)
    expected = utag(tissue, **options)
    assert expected.obs["UTAG Label_kmeans_0.4"].nunique() == 4
    got = utag(_as_dask(tissue, chunk_rows=1_000), **options)
    np.testing.assert_array_equal(got.obs["UTAG Label_kmeans_0.4"].to_numpy(),
                                  expected.obs["UTAG Label_kmeans_0.4"].to_numpy())
    np.testing.assert_allclose(got.obsm["X_pca"], expected.obsm["X_pca"], atol=1e-4)


def test_dask_input_gives_the_in_process_sketch_result(shuffled_tissue):
    options = dict(clustering_method=["leiden", "kmeans"], resolutions=[0.1], sketch_size=3_000, **KW)
    expected = utag(shuffled_tissue, **options)
    lazy = _as_dask(shuffled_tissue)
    got = utag(lazy, **options)
    _assert_same_result(expected, got)
    assert isinstance(got.X, da.Array)  # the message-passed features stay lazy
    assert isinstance(lazy.X, da.Array) and "UTAG Label_leiden_0.1" not in lazy.obs  # the input is untouched
    # the sample holds every slide's share of the cells
    sample = got.uns["utag"]["sketch"]["cells"]
    shares = shuffled_tissue.obs["roi"].iloc[sample].value_counts(normalize=True).sort_index()
    np.testing.assert_allclose(shares, shuffled_tissue.obs["roi"].value_counts(normalize=True).sort_index(), atol=0.01)


def test_the_multiscale_flavour_auto_resolution_and_n_domains_run_on_dask(shuffled_tissue):
    options = dict(clustering_method=["leiden"], resolutions="auto", n_domains=4, flavor="multiscale",
                   sketch_size=0.25, **KW)
    expected = utag(shuffled_tissue, **options)
    got = utag(_as_dask(shuffled_tissue), **options)
    _assert_same_result(expected, got)
    np.testing.assert_allclose(got.uns["utag"]["multiscale"]["block_scales"],
                               expected.uns["utag"]["multiscale"]["block_scales"], rtol=1e-6)
    n_domains_key = [key for key in got.uns["utag"]["label_keys"] if got.obs[key].nunique() == 4]
    assert n_domains_key  # n_domains=4 gave its 4 domains


def test_every_cell_in_the_sketch_gives_the_unsketched_labels(shuffled_tissue):
    options = dict(clustering_method=["leiden"], resolutions=[0.1], **KW)
    unsketched = utag(shuffled_tissue, sketch_size=None, **options)
    got = utag(_as_dask(shuffled_tissue), sketch_size=None, **options)
    np.testing.assert_array_equal(got.obs["UTAG Label_leiden_0.1"].to_numpy(),
                                  unsketched.obs["UTAG Label_leiden_0.1"].to_numpy())
    assert "vote index" not in got.uns["utag"]["timings"]  # nothing to vote on: no index is built
    # the kNN graph of every cell is stored, as in memory, so that scanpy's functions work on the result
    assert got.uns["neighbors"]["connectivities_key"] == "connectivities"
    difference = got.obsp["connectivities"] - unsketched.obsp["connectivities"]
    assert abs(difference).max() < 1e-6 and got.obsp["connectivities"].nnz == unsketched.obsp["connectivities"].nnz
    sketched = utag(shuffled_tissue, sketch_size=0.5, **options)  # a sample's graph is not stored
    assert "connectivities" not in sketched.obsp and "neighbors" not in sketched.uns


def test_a_sketch_of_every_cell_keeps_the_exact_search_of_the_unsketched_route(shuffled_tissue, monkeypatch):
    from utag import _runs

    # above SKETCH_EXACT_KNN a real sketch searches approximately; every cell is no sketch
    monkeypatch.setattr(_runs, "SKETCH_EXACT_KNN", 1_000)
    options = dict(clustering_method=["leiden"], resolutions=[0.1], **KW)
    unsketched = utag(shuffled_tissue, sketch_size=None, **options)
    for got in (utag(shuffled_tissue, sketch_size=shuffled_tissue.n_obs, **options),
                utag(_as_dask(shuffled_tissue), sketch_size=None, **options)):
        np.testing.assert_array_equal(got.obs["UTAG Label_leiden_0.1"].to_numpy(),
                                      unsketched.obs["UTAG Label_leiden_0.1"].to_numpy())


def _no_vote_here(*args, **kwargs):
    raise AssertionError("the client voted: the vote belongs on the workers")


def test_a_local_cluster_of_two_worker_processes_gives_the_in_process_result(monkeypatch):
    from distributed import Client, LocalCluster

    from utag import distributed

    tissue = _shuffled_tissue(50_000, n_slides=8, seed=1)
    options = dict(clustering_method=["leiden"], resolutions=[0.1], sketch_size=10_000, **KW)
    expected = utag(tissue, **options)
    # only this process's module is patched: the workers, fresh processes, vote with the real one
    monkeypatch.setattr(distributed, "vote", _no_vote_here)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster):
        got = utag(_as_dask(tissue, chunk_rows=10_000), **options)
    _assert_same_result(expected, got)


@pytest.mark.parametrize("suffix", [".zarr", ".h5ad"])
def test_input_read_lazily_from_disk_gives_the_in_memory_result(shuffled_tissue, tmp_path, suffix):
    path = tmp_path / f"cells{suffix}"
    if suffix == ".zarr":
        write_domains(shuffled_tissue, path, features=True)  # writes X and obsm['spatial'] as a zarr store
    else:
        shuffled_tissue.write_h5ad(path)
    lazy = read_lazy(path, chunk_rows=5_000)
    assert isinstance(lazy.X, da.Array) and isinstance(lazy.obsm["spatial"], da.Array)
    options = dict(clustering_method=["kmeans"], resolutions=[0.4], sketch_size=3_000, **KW)
    got = utag(lazy, **options)
    _assert_same_result(utag(shuffled_tissue, **options), got)

    out = tmp_path / "domains.zarr"
    write_domains(got, out)
    back = anndata.read_zarr(out)
    np.testing.assert_array_equal(back.obs["UTAG Label_kmeans_0.4"].to_numpy(),
                                  got.obs["UTAG Label_kmeans_0.4"].to_numpy())
    assert back.X is None  # the labels only, unless features=True


def test_odd_stores_read_lazily_or_refused_with_the_fix(shuffled_tissue, tmp_path):
    import scipy.sparse as sp

    # centroids stored as a DataFrame are read (they are small); a store without X is named
    framed = shuffled_tissue.copy()
    framed.obsm["spatial"] = pd.DataFrame(np.asarray(shuffled_tissue.obsm["spatial"]), index=shuffled_tissue.obs_names,
                                          columns=["x", "y"])
    framed.write_h5ad(tmp_path / "framed.h5ad")
    lazy = read_lazy(tmp_path / "framed.h5ad", chunk_rows=5_000)
    np.testing.assert_array_equal(np.asarray(lazy.obsm["spatial"]), np.asarray(shuffled_tissue.obsm["spatial"]))
    anndata.AnnData(obs=shuffled_tissue.obs, obsm={"spatial": np.asarray(shuffled_tissue.obsm["spatial"])}).write_h5ad(
        tmp_path / "no_x.h5ad")
    with pytest.raises(ValueError, match="has no X"):
        read_lazy(tmp_path / "no_x.h5ad")
    with pytest.raises(ValueError, match="chunk_rows"):
        read_lazy(tmp_path / "framed.h5ad", chunk_rows=0)
    # sparse features in memory beside Dask coordinates: named, with the fix
    mixed = shuffled_tissue.copy()
    mixed.X = sp.csr_matrix(np.asarray(shuffled_tissue.X))
    mixed.obsm["spatial"] = da.from_array(np.asarray(shuffled_tissue.obsm["spatial"]), chunks=(4_000, -1))
    with pytest.raises(ValueError, match="sparse.*dense"):
        utag(mixed, clustering_method=["kmeans"], resolutions=[0.3], **KW)


def test_written_domains_keep_the_graphs_their_records_point_to(shuffled_tissue, tmp_path):
    result = utag(shuffled_tissue, clustering_method=["kmeans"], resolutions=[0.3], keep_spatial_connectivity=True,
                  **KW)
    write_domains(result, tmp_path / "domains.zarr")
    back = anndata.read_zarr(tmp_path / "domains.zarr")
    for key in ("connectivities", "spatial_connectivities"):
        assert (back.obsp[key] != result.obsp[key]).nnz == 0


@pytest.mark.parametrize("option", [dict(keep_spatial_connectivity=True), dict(apply_umap=True),
                                    dict(filter_by_variance=True),
                                    dict(pca_kwargs={"n_comps": 5, "svd_solver": "arpack"})])
def test_options_that_need_every_cell_in_one_process_are_refused_on_dask(shuffled_tissue, option):
    with pytest.raises(ValueError, match="cannot run on Dask input"):
        utag(_as_dask(shuffled_tissue), clustering_method=["kmeans"], resolutions=[0.3], **option, **KW)


@pytest.mark.parametrize("scheduler", [None, "local"])
def test_the_command_line_runs_a_zarr_store_on_dask(shuffled_tissue, tmp_path, scheduler):
    from utag.cli import main

    cells = tmp_path / "cells.zarr"
    write_domains(shuffled_tissue, cells, features=True)
    out = tmp_path / "domains.zarr"
    command = ["run", str(cells), "--out", str(out), "--slide-key", "roi", "--max-dist", "20", "--method", "kmeans",
               "--resolutions", "0.4", "--quiet"]
    if scheduler:
        command += ["--dask-scheduler", scheduler, "--processes", "-1"]  # one worker per core (0 used to hang)
    assert main(command) == 0
    written = anndata.read_zarr(out)
    # "auto" on Dask input clusters every cell below 200,000: the unsketched result
    expected = utag(shuffled_tissue, clustering_method="kmeans", resolutions=[0.4], **KW)
    assert list(written.obs_names) == list(shuffled_tissue.obs_names)
    np.testing.assert_array_equal(written.obs["UTAG Label_kmeans_0.4"].to_numpy(),
                                  expected.obs["UTAG Label_kmeans_0.4"].to_numpy())
    with pytest.raises(SystemExit) as exited:  # an existing store is not overwritten
        main(command)
    assert exited.value.code == 2


def test_rows_swapped_in_pairs_come_back_in_the_input_order():
    # slides given in reverse order: the canonical order swaps them back and is its own inverse
    tissue = synthetic_tissue(n_cells=6_000, n_slides=2, random_state=2)  # two slides of 3,000 cells
    second, xy = tissue.obs["roi"].to_numpy() == "roi_1", tissue.obsm["spatial"]
    canonical = tissue[np.lexsort((xy[:, 1], xy[:, 0], second))]
    swapped = canonical[np.r_[3_000:6_000, 0:3_000]].copy()
    options = dict(clustering_method=["kmeans"], resolutions=[0.3], sketch_size=2_000, **KW)
    _assert_same_result(utag(swapped, **options), utag(_as_dask(swapped, chunk_rows=1_000), **options))


@pytest.mark.parametrize("stored", ["slide by slide", "slides out of code order", "interleaved"])
def test_each_slide_task_gets_exactly_its_rows(stored):
    from utag.distributed import _slide_pieces

    rng = np.random.default_rng(0)
    values = rng.normal(size=(1_000, 3)).astype(np.float32)
    slide = {"slide by slide": np.repeat([0, 1, 2], [300, 500, 200]),
             "slides out of code order": np.repeat([2, 0, 1], [300, 500, 200]),
             "interleaved": rng.integers(3, size=1_000)}[stored]
    slides = [np.flatnonzero(slide == code) for code in range(3)]
    pieces = _slide_pieces(da.from_array(values, chunks=(128, 3)), slides)
    for cells, piece in zip(slides, pieces):
        np.testing.assert_array_equal(piece.compute(), values[cells])


def test_another_scheduler_chosen_while_a_client_exists(shuffled_tissue):
    # the vote's index goes to the workers by scatter only when the client is the
    # scheduler in use: futures cannot be read by Dask's threads
    import dask
    from distributed import Client, LocalCluster

    options = dict(clustering_method=["kmeans"], resolutions=[0.3], sketch_size=3_000, **KW)
    expected = utag(shuffled_tissue, **options)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster), dask.config.set(scheduler="threads"):
        got = utag(_as_dask(shuffled_tissue), **options)
    _assert_same_result(expected, got)


def test_writing_over_a_store_needs_overwrite_and_keeps_a_lazy_input_whole(shuffled_tissue, tmp_path):
    # anndata empties a store before writing it: a lazy result written over the store it
    # reads its features from used to write zeros, and anything at the path was lost
    cells = tmp_path / "cells.zarr"
    write_domains(shuffled_tissue, cells, features=True)
    options = dict(clustering_method=["kmeans"], resolutions=[0.4], **KW)
    got = utag(read_lazy(cells, chunk_rows=5_000), **options)
    with pytest.raises(ValueError, match="overwrite=True"):
        write_domains(got, cells, features=True)
    np.testing.assert_array_equal(np.asarray(anndata.read_zarr(cells).X), np.asarray(shuffled_tissue.X))  # untouched
    write_domains(got, cells, features=True, overwrite=True)
    back = anndata.read_zarr(cells)
    np.testing.assert_allclose(np.asarray(back.X), np.asarray(utag(shuffled_tissue, **options).X), rtol=1e-6, atol=1e-6)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cells.zarr"]  # nothing left beside it
    (tmp_path / "empty.zarr").mkdir()  # an empty folder (the command line's temporary store) is written into
    write_domains(got, tmp_path / "empty.zarr")
    assert anndata.read_zarr(tmp_path / "empty.zarr").n_obs == shuffled_tissue.n_obs
    link = tmp_path / "link.zarr"  # a link is replaced, not what it points to
    link.symlink_to(cells)
    write_domains(got, link, overwrite=True)
    assert not link.is_symlink() and anndata.read_zarr(link).n_obs == shuffled_tissue.n_obs and back.X is not None
    assert anndata.read_zarr(cells).X is not None


@pytest.mark.parametrize("dtype", [complex, str])
def test_dask_features_that_are_not_real_numbers_are_refused_as_in_memory(shuffled_tissue, dtype):
    odd = shuffled_tissue.copy()
    odd.X = np.asarray(shuffled_tissue.X).astype(dtype)
    with pytest.raises(ValueError, match="real numbers"):
        utag(odd, clustering_method=["kmeans"], resolutions=[0.4], **KW)
    with pytest.raises(ValueError, match="real numbers"):  # was cast to float32 without a word
        utag(_as_dask(odd), clustering_method=["kmeans"], resolutions=[0.4], **KW)


@pytest.mark.parametrize("value, message", [(1e300, "beyond what float32"), (np.nan, "NaN or infinite")])
@pytest.mark.parametrize("normalization_mode", ["l1_norm", "sum"])
def test_dask_features_out_of_range_get_the_in_memory_message(shuffled_tissue, recwarn, value, message,
                                                              normalization_mode):
    odd = shuffled_tissue.copy()
    odd.X = np.asarray(shuffled_tissue.X, dtype=np.float64)
    odd.X[5, 1] = value  # float32 would make 1e300 an infinity: checked before the cast
    for adata in (odd, _as_dask(odd)):
        with pytest.raises(ValueError, match=message):
            utag(adata, clustering_method=["kmeans"], resolutions=[0.4], normalization_mode=normalization_mode, **KW)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]  # no overflow on the way


def test_dask_input_warns_about_a_max_dist_in_other_units_too(caplog):
    adata = synthetic_tissue(n_cells=3_000, n_slides=2, random_state=0)
    adata.obsm["spatial"] = adata.obsm["spatial"] * 10  # um read as 0.1 um pixels
    with caplog.at_level("WARNING", logger="utag"):
        utag(_as_dask(adata), slide_key="roi", max_dist=20, clustering_method="kmeans", resolutions=[0.3],
             progress=False)
    assert "neighbours on average (almost none" in caplog.text and "About 350 suits" in caplog.text


def test_dask_input_warns_about_a_slide_key_of_cell_ids(caplog):
    adata = synthetic_tissue(n_cells=600, n_slides=2, random_state=0)
    adata.obs["cell_id"] = [f"c{i}" for i in range(adata.n_obs)]
    with caplog.at_level("WARNING", logger="utag"):
        utag(_as_dask(adata), slide_key="cell_id", clustering_method="kmeans", resolutions=[0.3], progress=False)
    assert "slide_key='cell_id' splits 600 cells into 600 slides (1.0 cells each)" in caplog.text


def test_dask_input_gives_the_in_memory_labels_where_the_graph_is_built_on_the_pca():
    # above 50 features Leiden's kNN graph is built on X_pca, as PARC's always is; the PCA
    # used to be projected slide by slide in float32 on Dask and all at once in memory,
    # and the kNN graph turned that rounding into other domains (ARI down to 0.5)
    tissue = synthetic_tissue(n_cells=5_000, n_slides=3, n_markers=60, random_state=1)
    options = dict(clustering_method=["leiden", "parc"], resolutions=[0.3, 1.0], **KW)
    expected = utag(tissue, **options)
    got = utag(_as_dask(tissue, chunk_rows=1_500), **options)
    assert expected.uns["utag"]["use_rep"] == "X_pca"
    np.testing.assert_array_equal(got.obsm["X_pca"], expected.obsm["X_pca"])
    for key in expected.uns["utag"]["label_keys"]:
        np.testing.assert_array_equal(got.obs[key].to_numpy(), expected.obs[key].to_numpy())


def test_a_dask_result_holds_its_coordinates_in_memory_and_names_what_transfer_needs(shuffled_tissue):
    from utag.transfer import transfer_labels

    result = utag(_as_dask(shuffled_tissue), clustering_method="leiden", resolutions=[0.1], **KW)
    assert isinstance(result.obsm["spatial"], np.ndarray)  # scanpy's and squidpy's plots index it
    np.testing.assert_array_equal(result.obsm["spatial"], shuffled_tissue.obsm["spatial"])
    with pytest.raises(ValueError, match="Dask route, which keeps no transfer model"):
        transfer_labels(result, shuffled_tissue, slide_key="roi")


def test_anndatas_own_lazy_reader_works(tmp_path):
    tissue = synthetic_tissue(n_cells=3_000, n_slides=3, random_state=0)
    tissue.write_h5ad(tmp_path / "cells.h5ad")
    lazy = anndata.experimental.read_lazy(tmp_path / "cells.h5ad")  # obs as an xarray Dataset2D
    options = dict(clustering_method="leiden", resolutions=[0.1], **KW)
    got, expected = utag(lazy, **options), utag(tissue, **options)
    assert isinstance(got.obs, pd.DataFrame)
    np.testing.assert_array_equal(got.obs["UTAG Label_leiden_0.1"].to_numpy(),
                                  expected.obs["UTAG Label_leiden_0.1"].to_numpy())


def test_cells_of_one_profile_on_dask_give_one_domain_without_a_stray_warning(recwarn):
    tissue = synthetic_tissue(n_cells=3_000, n_slides=2, random_state=0)
    tissue.X = np.ones_like(tissue.X)
    result = utag(_as_dask(tissue), clustering_method=["kmeans"], resolutions=[0.3], **KW)
    assert result.obs["UTAG Label_kmeans_0.3"].nunique() == 1
    assert not [w for w in recwarn if "ConvergenceWarning" in type(w.message).__name__]
