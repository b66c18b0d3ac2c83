"""The ``utag`` command line."""
import subprocess
import sys

import anndata
import numpy as np
import pandas as pd
import pytest

from utag import utag
from utag.cli import main
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
    from utag.cli import atomic_output

    target = tmp_path / "result.h5ad"
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(target) as temporary:
            temporary.write_text("half")
            raise KeyboardInterrupt
    assert not target.exists() and not list(tmp_path.iterdir())


def test_demo_runs_on_bundled_data_and_saves(tmp_path, capsys):
    out = tmp_path / "demo.h5ad"
    assert main(["demo", "--quiet", "--resolutions", "0.05", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "35,145 cells" in printed and "UTAG Label_leiden_0.05" in printed
    result = anndata.read_h5ad(out)
    assert result.n_obs == 35_145 and result.obs["UTAG Label_leiden_0.05"].nunique() >= 2


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
