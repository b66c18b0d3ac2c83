"""The ``utag`` command line."""
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest

from utag import utag
from utag.cli import atomic_outputs, main
from utag.datasets import synthetic_tissue


@pytest.fixture(scope="module")
def cell_table(tmp_path_factory):
    """A CSV cell table as imaging software exports it: ids, centroids, image, area, markers."""
    adata = synthetic_tissue(n_cells=1_500, n_slides=2, n_markers=6, random_state=0)
    table = pd.DataFrame(adata.X, columns=[f"CD{i}" for i in range(6)])
    table.insert(0, "cell_id", [f"cell{i}" for i in range(adata.n_obs)])
    table.insert(1, "X_centroid", adata.obsm["spatial"][:, 0])
    table.insert(2, "Y_centroid", adata.obsm["spatial"][:, 1])
    table.insert(3, "image", adata.obs["roi"].to_numpy())
    table.insert(4, "area", 150.0)
    path = tmp_path_factory.mktemp("table") / "cells.csv"
    table.to_csv(path, index=False)
    return path, table


def test_run_turns_a_csv_cell_table_into_domains(cell_table, tmp_path, capsys):
    path, table = cell_table
    out, labels = tmp_path / "domains.h5ad", tmp_path / "labels.csv"
    code = main(["run", str(path), "--out", str(out), "--labels-csv", str(labels), "--x-column", "X_centroid",
                 "--y-column", "Y_centroid", "--slide-column", "image", "--id-column", "cell_id",
                 "--exclude", "area", "--max-dist", "20", "--resolutions", "0.1", "0.3", "--quiet"])
    assert code == 0
    result = anndata.read_h5ad(out)
    assert list(result.obs_names) == list(table["cell_id"])
    assert list(result.var_names) == [f"CD{i}" for i in range(6)]  # area, ids and centroids are not markers
    np.testing.assert_allclose(result.obsm["spatial"][:, 0], table["X_centroid"], rtol=1e-12)
    written = pd.read_csv(labels, index_col="cell")
    assert list(written.columns) == ["UTAG Label_leiden_0.1", "UTAG Label_leiden_0.3"]
    assert list(written.index) == list(table["cell_id"])
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_run_on_h5ad_with_markers_and_tsv(cell_table, tmp_path):
    path, table = cell_table
    tsv = tmp_path / "cells.tsv"
    table.rename(columns={"X_centroid": "x", "Y_centroid": "y"}).to_csv(tsv, sep="\t", index=False)
    first = tmp_path / "first.h5ad"
    assert main(["run", str(tsv), "--out", str(first), "--exclude", "area", "--quiet",
                 "--method", "kmeans", "--resolutions", "0.3"]) == 0
    second = tmp_path / "second.h5ad"
    assert main(["run", str(first), "--out", str(second), "--markers", "CD0", "CD1", "--quiet",
                 "--method", "kmeans", "--resolutions", "0.2"]) == 0
    result = anndata.read_h5ad(second)
    assert list(result.var_names) == ["CD0", "CD1"] and result.obs["UTAG Label_kmeans_0.2"].nunique() == 2


def test_run_takes_slide_key_for_h5ad_like_the_python_call(tmp_path):
    adata = synthetic_tissue(n_cells=1_200, n_slides=2, n_markers=4, random_state=1)
    # the two slides share one frame: treated as one slide they would be wired together
    adata.obsm["spatial"] = adata.obsm["spatial"] - adata.obsm["spatial"].min(axis=0)
    source, out = tmp_path / "cells.h5ad", tmp_path / "domains.h5ad"
    adata.write_h5ad(source)
    assert main(["run", str(source), "--out", str(out), "--slide-key", "roi", "--quiet",
                 "--method", "kmeans", "--resolutions", "0.3"]) == 0
    expected = utag(adata, slide_key="roi", max_dist=20, clustering_method="kmeans", resolutions=0.3, progress=False)
    written = anndata.read_h5ad(out)
    assert written.uns["utag"]["slide_key"] == "roi"
    np.testing.assert_array_equal(written.X, expected.X)


@pytest.mark.parametrize("extra, message", [
    (["--x-column", "xx"], r"no column\(s\) \['xx'\]"),
    (["--slide-column", "slide"], "slide"),
    (["--markers", "image"], "must be numeric"),
    (["--max-dist", "0"], "max_dist"),
])
def test_run_reports_bad_columns_and_values(cell_table, tmp_path, capsys, extra, message):
    path, _ = cell_table
    out = tmp_path / "never.h5ad"
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(path), "--out", str(out), "--x-column", "X_centroid", "--y-column", "Y_centroid",
              "--quiet", *extra])
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err
    assert not out.exists()


def test_run_reports_bad_paths(tmp_path, capsys):
    for argv in (["run", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o.h5ad")],
                 ["run", __file__, "--out", str(tmp_path / "o.h5ad")]):
        with pytest.raises(SystemExit):
            main(argv)
    assert "does not exist" in capsys.readouterr().err


def test_interrupted_write_leaves_no_file(tmp_path):
    targets = [tmp_path / "result.h5ad", tmp_path / "labels.csv"]
    with pytest.raises(KeyboardInterrupt):
        with atomic_outputs(targets) as temporaries:
            temporaries[0].write_text("whole")
            temporaries[1].write_text("half")
            raise KeyboardInterrupt
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("suffix", [".h5ad", ".zarr"])
def test_demo_runs_on_bundled_data_and_saves(tmp_path, capsys, suffix):
    out = tmp_path / f"demo{suffix}"
    options = ["--resolutions", "0.05"] if suffix == ".h5ad" else ["--method", "kmeans", "--resolutions", "0.4"]
    assert main(["demo", "--quiet", *options, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    key = "UTAG Label_leiden_0.05" if suffix == ".h5ad" else "UTAG Label_kmeans_0.4"
    assert "35,145 cells" in printed and key in printed
    result = anndata.read_h5ad(out) if suffix == ".h5ad" else anndata.read_zarr(out)
    assert result.n_obs == 35_145 and result.obs[key].nunique() >= 2
    if suffix == ".zarr":  # a store is a directory: readable and listable, as mkdir would have made it
        assert out.stat().st_mode & 0o700 == 0o700


def test_version_help_and_module_entry_point(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and "utag" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "examples" in capsys.readouterr().out
    completed = subprocess.run([sys.executable, "-m", "utag", "--help"], capture_output=True, text=True)
    assert completed.returncode == 0 and "utag run" in completed.stdout


def test_run_reads_parquet(cell_table, tmp_path):
    path, table = cell_table
    parquet = tmp_path / "cells.parquet"
    table.rename(columns={"X_centroid": "x", "Y_centroid": "y"}).to_parquet(parquet)  # pyarrow comes with squidpy
    out = tmp_path / "from_parquet.h5ad"
    assert main(["run", str(parquet), "--out", str(out), "--slide-column", "image", "--exclude", "area",
                 "--quiet", "--method", "kmeans", "--resolutions", "0.3"]) == 0
    assert anndata.read_h5ad(out).n_obs == len(table)


@pytest.fixture
def read_only_directory(tmp_path):
    """A directory no file can be created in: mode 555, or for root, whom modes do not stop, /proc."""
    if os.geteuid() == 0:
        if not Path("/proc").is_dir():
            pytest.skip("running as root without /proc: no directory root cannot write to")
        yield Path("/proc")
        return
    directory = tmp_path / "read_only"
    directory.mkdir()
    directory.chmod(0o555)
    yield directory
    directory.chmod(0o755)


@pytest.fixture
def no_work(monkeypatch):
    """Reading the input, loading the demo data or running UTAG fail the test."""
    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the outputs were checked")

    for target in ("utag.cli.read_cell_table", "anndata.read_h5ad", "utag.utag", "utag.datasets.codex_mouse_spleen"):
        monkeypatch.setattr(target, forbidden)


@pytest.mark.parametrize("command", ["run", "demo"])
@pytest.mark.parametrize("where, message", [
    ("missing/deeper/out.h5ad", "does not exist; create it first"),
    ("a_directory.h5ad", "is a directory"),
    ("READ_ONLY/out.h5ad", "cannot write to the directory"),
    ("out.csv", "--out must be a file name ending in .h5ad or .zarr"),
    (".h5ad", "--out must be a file name ending in .h5ad or .zarr (e.g. domains.h5ad), got"),
])
def test_outputs_are_checked_before_any_work(cell_table, tmp_path, read_only_directory, no_work, capsys,
                                             command, where, message):
    (tmp_path / "a_directory.h5ad").mkdir()
    out = str(tmp_path / where).replace(str(tmp_path / "READ_ONLY"), str(read_only_directory))
    argv = ["run", str(cell_table[0]), "--out", out] if command == "run" else ["demo", "--out", out]
    started = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--quiet"])
    assert time.perf_counter() - started < 1
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"utag {command}: error: " in err and message in err and "Traceback" not in err
    assert not (tmp_path / "missing").exists()  # no directories made on the way


@pytest.mark.parametrize("labels, message", [
    ("missing/labels.csv", "--labels-csv .* does not exist"),
    ("READ_ONLY/labels.csv", "--labels-csv .* cannot write"),
    ("out.h5ad", "--out and --labels-csv name the same file"),
    ("labels.zarr", "--labels-csv writes a CSV table, not a .zarr store"),
])
def test_labels_csv_is_checked_with_out(cell_table, tmp_path, read_only_directory, no_work, capsys, labels, message):
    labels = str(tmp_path / labels).replace(str(tmp_path / "READ_ONLY"), str(read_only_directory))
    with pytest.raises(SystemExit):
        main(["run", str(cell_table[0]), "--out", str(tmp_path / "out.h5ad"), "--labels-csv", labels])
    assert re.search(message, capsys.readouterr().err)


def _run_small(cell_table, out, labels):
    return main(["run", str(cell_table[0]), "--out", str(out), "--labels-csv", str(labels), "--x-column",
                 "X_centroid", "--y-column", "Y_centroid", "--slide-column", "image", "--exclude", "area",
                 "--method", "kmeans", "--resolutions", "0.3", "--quiet"])


def test_a_failed_labels_csv_leaves_no_h5ad(cell_table, tmp_path, monkeypatch, capsys):
    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full)
    with pytest.raises(SystemExit) as exit_info:
        _run_small(cell_table, tmp_path / "domains.h5ad", tmp_path / "labels.csv")
    assert exit_info.value.code == 2 and "No space left on device" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # neither output nor any temporary file


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def test_outputs_get_the_umask_not_private_temporary_modes(cell_table, tmp_path, umask):
    out, labels = tmp_path / "domains.h5ad", tmp_path / "labels.csv"
    assert _run_small(cell_table, out, labels) == 0
    assert [path.stat().st_mode & 0o777 for path in (out, labels)] == [0o666 & ~umask] * 2


def test_non_numeric_marker_entries_stop_the_run_with_rows_and_values(cell_table, tmp_path, capsys, caplog):
    path, table = cell_table
    table = table.astype({"CD2": object})
    table.loc[[7, 11], "CD2"] = ["<LOD", "1,5"]
    odd = tmp_path / "odd.csv"
    table.to_csv(odd, index=False)
    argv = ["run", str(odd), "--out", str(tmp_path / "domains.h5ad"), "--x-column", "X_centroid",
            "--y-column", "Y_centroid", "--id-column", "cell_id", "--exclude", "area", "--quiet"]
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err
    assert "'CD2': 2 of 1500 entries, e.g. cell_id cell7: '<LOD', cell_id cell11: '1,5'" in err
    assert "--non-numeric drop" in err
    # the suggested fix works: the two cells are left out, counted, and the others keep their order
    out = tmp_path / "dropped.h5ad"
    with caplog.at_level(logging.WARNING, logger="utag"):
        assert main([*argv[:3], str(out), *argv[4:], "--non-numeric", "drop"]) == 0
    assert "left out 2 of 1500 cells" in caplog.text
    kept = anndata.read_h5ad(out)
    assert list(kept.obs_names) == [name for name in table["cell_id"] if name not in ("cell7", "cell11")]
    # read as missing, they are counted; UTAG itself needs every value, which the error says in CLI terms
    with caplog.at_level(logging.WARNING, logger="utag"), pytest.raises(SystemExit):
        main(argv + ["--non-numeric", "missing"])
    assert "'CD2': 2" in caplog.text
    assert "2 marker values are missing (per column: {'CD2': 2})" in capsys.readouterr().err


def test_run_with_the_multiscale_flavour_matches_the_python_call(cell_table, tmp_path):
    path, table = cell_table
    out = tmp_path / "multiscale.h5ad"
    assert main(["run", str(path), "--out", str(out), "--x-column", "X_centroid", "--y-column", "Y_centroid",
                 "--slide-column", "image", "--id-column", "cell_id", "--exclude", "area", "--max-dist", "20",
                 "--method", "kmeans", "--resolutions", "0.3", "--flavor", "multiscale", "--quiet"]) == 0
    written = anndata.read_h5ad(out)
    adata = anndata.AnnData(table[[f"CD{i}" for i in range(6)]].to_numpy(np.float32),
                            obs=pd.DataFrame({"image": table["image"].to_numpy()}, index=table["cell_id"].to_numpy()))
    adata.obsm["spatial"] = table[["X_centroid", "Y_centroid"]].to_numpy()
    expected = utag(adata, slide_key="image", max_dist=20, clustering_method="kmeans", resolutions=[0.3],
                    flavor="multiscale", progress=False)
    assert written.uns["utag"]["flavor"] == "multiscale" and written.n_vars == 18
    np.testing.assert_array_equal(written.obs["UTAG Label_kmeans_0.3"].to_numpy(),
                                  expected.obs["UTAG Label_kmeans_0.3"].to_numpy())


def test_run_with_integer_ids_and_a_written_row_index(cell_table, tmp_path):
    # MCMICRO-style integer CellIDs, with leading zeros here, and the row index pandas writes by default
    path, table = cell_table
    numbered = table.assign(cell_id=[f"{i + 1:05d}" for i in range(len(table))])
    csv = tmp_path / "numbered.csv"
    numbered.to_csv(csv)  # index=True: an "Unnamed: 0" column counting the rows
    out = tmp_path / "numbered.h5ad"
    assert main(["run", str(csv), "--out", str(out), "--x-column", "X_centroid", "--y-column", "Y_centroid",
                 "--slide-column", "image", "--id-column", "cell_id", "--exclude", "area", "--quiet",
                 "--method", "kmeans", "--resolutions", "0.3"]) == 0
    result = anndata.read_h5ad(out)
    assert list(result.obs_names) == list(numbered["cell_id"])  # "00001", not 1
    assert list(result.var_names) == [f"CD{i}" for i in range(6)]  # the row index is not a marker


def test_run_refuses_table_options_for_h5ad(cell_table, tmp_path, capsys):
    adata = synthetic_tissue(n_cells=300, n_slides=1, n_markers=4, random_state=0)
    source = tmp_path / "cells.h5ad"
    adata.write_h5ad(source)
    (tmp_path / "empty.zarr").mkdir()  # refused before it is read: an empty store is never opened
    for name in ("cells.h5ad", "empty.zarr"):
        with pytest.raises(SystemExit) as stopped:
            main(["run", str(tmp_path / name), "--out", str(tmp_path / "o.h5ad"), "--exclude", "marker_0",
                  "--id-column", "c"])
        assert stopped.value.code == 2
        assert "--exclude, --id-column apply to cell tables" in capsys.readouterr().err
        assert not (tmp_path / "o.h5ad").exists()


def test_run_never_writes_over_its_input(cell_table, tmp_path, capsys):
    path, table = cell_table
    source = tmp_path / "cells.csv"
    table.to_csv(source, index=False)
    before = source.read_bytes()
    common = ["--x-column", "X_centroid", "--y-column", "Y_centroid", "--quiet"]
    with pytest.raises(SystemExit) as stopped:
        main(["run", str(source), "--out", str(tmp_path / "o.h5ad"), "--labels-csv", str(source), *common])
    assert stopped.value.code == 2 and "would overwrite the input" in capsys.readouterr().err
    assert source.read_bytes() == before
    h5ad = tmp_path / "cells.h5ad"
    synthetic_tissue(n_cells=300, n_slides=1, n_markers=4, random_state=0).write_h5ad(h5ad)
    before = h5ad.read_bytes()
    with pytest.raises(SystemExit) as stopped:
        main(["run", str(h5ad), "--out", str(tmp_path / "." / "cells.h5ad"), "--quiet"])
    assert stopped.value.code == 2 and "would overwrite the input" in capsys.readouterr().err
    assert h5ad.read_bytes() == before


def test_run_takes_auto_for_the_resolution_and_the_radius(cell_table, tmp_path, capsys):
    path, _ = cell_table
    out = tmp_path / "auto.h5ad"
    assert main(["run", str(path), "--out", str(out), "--x-column", "X_centroid", "--y-column", "Y_centroid",
                 "--slide-column", "image", "--exclude", "area", "--id-column", "cell_id", "--quiet",
                 "--max-dist", "auto", "--resolutions", "auto"]) == 0
    result = anndata.read_h5ad(out)
    assert len(result.uns["utag"]["label_keys"]) == 1 and result.uns["utag"]["max_dist"] > 0
    with pytest.raises(SystemExit):
        main(["run", str(path), "--out", str(out), "--resolutions", "auto", "0.1"])
    assert "give 'auto' alone" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", str(path), "--out", str(out), "--max-dist", "far"])
    assert "a number or 'auto'" in capsys.readouterr().err


@pytest.mark.parametrize("processes", ["0", "-2"])
def test_run_refuses_a_number_of_processes_that_starts_no_worker(tmp_path, capsys, processes):
    # a LocalCluster of 0 or -1 workers waits for ever
    h5ad = tmp_path / "cells.h5ad"
    synthetic_tissue(n_cells=300, n_slides=1, n_markers=4, random_state=0).write_h5ad(h5ad)
    with pytest.raises(SystemExit) as stopped:
        main(["run", str(h5ad), "--out", str(tmp_path / "o.zarr"), "--dask-scheduler", "local",
              "--processes", processes, "--quiet"])
    assert stopped.value.code == 2 and "--processes must be" in capsys.readouterr().err


def test_run_names_a_folder_that_is_no_zarr_store(tmp_path, capsys):
    folder = tmp_path / "cells"
    folder.mkdir()
    with pytest.raises(SystemExit) as stopped:
        main(["run", str(folder), "--out", str(tmp_path / "o.h5ad"), "--quiet"])
    assert stopped.value.code == 2 and "is a folder" in capsys.readouterr().err


def test_errors_of_utag_name_the_options_that_set_them(tmp_path, capsys):
    h5ad = tmp_path / "cells.h5ad"
    synthetic_tissue(n_cells=300, n_slides=1, n_markers=4, random_state=0).write_h5ad(h5ad)
    with pytest.raises(SystemExit) as stopped:
        main(["run", str(h5ad), "--out", str(tmp_path / "o.h5ad"), "--max-dist", "-5", "--quiet"])
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and "`max_dist` must be > 0" in error
    assert "On the command line: --max-dist." in error


@pytest.mark.parametrize("suffix", [".zarr", ".h5ad"])
def test_run_writes_columns_whose_names_hold_a_slash(cell_table, tmp_path, caplog, suffix):
    # exports name columns "CD16/32" or "Class/Name"; zarr refuses '/' in a key, and .h5ad will
    path, table = cell_table
    slashed = tmp_path / "slashed.csv"
    table.assign(**{"Class/Name": "tumour"}).to_csv(slashed, index=False)
    out = tmp_path / f"domains{suffix}"
    with caplog.at_level(logging.WARNING, logger="utag"):
        assert main(["run", str(slashed), "--out", str(out), "--x-column", "X_centroid", "--y-column", "Y_centroid",
                     "--slide-column", "image", "--exclude", "area", "--method", "kmeans", "--resolutions", "0.3",
                     "--quiet"]) == 0
    written = anndata.read_zarr(out) if suffix == ".zarr" else anndata.read_h5ad(out)
    assert (written.obs["Class_Name"] == "tumour").all() and "Class/Name" not in written.obs
    assert "Class/Name" in caplog.text


@pytest.mark.parametrize("suffix", [".zarr", ".h5ad"])
def test_a_slide_column_with_a_slash_stays_the_recorded_slide_key(cell_table, tmp_path, suffix):
    from utag.analysis import spatial_edges

    # written as "Image_Name", the column was still recorded as "Image/Name": read back,
    # every downstream function found no slides and linked cells across them
    path, table = cell_table
    slashed = tmp_path / "slashed.csv"
    table.rename(columns={"image": "Image/Name"}).to_csv(slashed, index=False)
    out = tmp_path / f"domains{suffix}"
    assert main(["run", str(slashed), "--out", str(out), "--x-column", "X_centroid", "--y-column", "Y_centroid",
                 "--slide-column", "Image/Name", "--exclude", "area", "--method", "kmeans", "--resolutions", "0.3",
                 "--quiet"]) == 0
    written = anndata.read_zarr(out) if suffix == ".zarr" else anndata.read_h5ad(out)
    assert written.uns["utag"]["slide_key"] == "Image_Name"
    edges = spatial_edges(written, max_dist=20)  # slide_key="auto": the recorded one
    slides = written.obs["Image_Name"].to_numpy()
    assert len(edges.source) > 0 and (slides[edges.source] == slides[edges.target]).all()


def test_a_slashed_column_whose_new_name_is_taken_is_refused_before_any_work(cell_table, tmp_path, capsys,
                                                                            monkeypatch):
    path, table = cell_table
    clash = tmp_path / "clash.csv"
    table.assign(**{"Class/Name": "a", "Class_Name": "b"}).to_csv(clash, index=False)
    monkeypatch.setattr("utag.utag", lambda *args, **kwargs: pytest.fail("UTAG ran"))
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(clash), "--out", str(tmp_path / "out.h5ad"), "--x-column", "X_centroid", "--y-column",
              "Y_centroid", "--slide-column", "image", "--exclude", "area", "--quiet"])
    assert exit_info.value.code == 2
    assert "clash.csv: `obs` columns ['Class/Name'] contain '/'" in capsys.readouterr().err


def test_run_names_an_input_it_cannot_read(tmp_path, capsys):
    (tmp_path / "text.h5ad").write_text("hello")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "bad.parquet").write_text("hello")
    for name, message in [("text.h5ad", "could not be read as an .h5ad"), ("empty.csv", "empty.csv is empty"),
                          ("bad.parquet", "bad.parquet could not be read as a parquet table")]:
        with pytest.raises(SystemExit):
            main(["run", str(tmp_path / name), "--out", str(tmp_path / "o.h5ad"), "--quiet"])
        assert message in capsys.readouterr().err


def test_run_refuses_a_column_named_as_marker_and_excluded(cell_table, tmp_path, capsys):
    path, _ = cell_table
    with pytest.raises(SystemExit):
        main(["run", str(path), "--out", str(tmp_path / "o.h5ad"), "--x-column", "X_centroid", "--y-column",
              "Y_centroid", "--markers", "area", "CD0", "--exclude", "area", "--quiet"])
    error = capsys.readouterr().err
    assert "['area'] are named both in `marker_columns` and in `exclude_columns`" in error and "--exclude" in error
