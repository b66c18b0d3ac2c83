"""Reading cell tables: markers are never lost to a few entries that are not numbers."""
import logging

import numpy as np
import pandas as pd
import pytest

from utag.io import read_cell_table, storable_obs


@pytest.fixture
def table():
    """Five cells: ids, centroids, image, a cell type (text) and two clean markers."""
    return pd.DataFrame({"cell": [f"c{i}" for i in range(5)], "x": np.arange(5.0), "y": np.arange(5.0),
                         "image": ["r1"] * 5, "cell_type": ["T", "B", "T", "B", "T"],
                         "CD3": [1.5, 0.0, 2.0, 0.5, 1.0], "CD20": [0.1, 2.2, 0.3, 1.9, 0.2]})


def _with_entry(table, value, row=3):
    """``table`` with CD20 as text, as pandas reads it when one entry is not a number."""
    table = table.copy()
    table["CD20"] = table["CD20"].astype(object)
    table.loc[row, "CD20"] = value
    return table


@pytest.mark.parametrize("value", ["1,5", "<LOD", "n/a"])
def test_a_few_entries_that_are_not_numbers_are_an_error_naming_column_rows_and_values(table, value):
    with pytest.raises(ValueError, match="non_numeric='missing'") as error:
        read_cell_table(_with_entry(table, value), slide_column="image", id_column="cell")
    message = str(error.value)
    assert "'CD20'" in message and "cell c3" in message and repr(value) in message
    # without id_column, rows are named by their number
    with pytest.raises(ValueError, match=f"row 3: {value!r}"):
        read_cell_table(_with_entry(table, value), slide_column="image")


def test_text_columns_still_go_to_obs(table):
    table["empty"] = np.nan  # entirely empty: no marker (utag() could not use it), kept in obs
    adata = read_cell_table(table, slide_column="image", id_column="cell")
    assert list(adata.var_names) == ["CD3", "CD20"]
    assert list(adata.obs.columns) == ["cell", "x", "y", "image", "cell_type", "empty"]


def test_non_numeric_missing_reads_those_entries_as_nan_and_says_how_many(table, caplog):
    odd = _with_entry(_with_entry(table, "<LOD", row=1), "1,5", row=4)
    with caplog.at_level(logging.WARNING, logger="utag"):
        adata = read_cell_table(odd, slide_column="image", id_column="cell", non_numeric="missing")
    assert list(adata.var_names) == ["CD3", "CD20"]
    expected = table["CD20"].to_numpy(dtype=np.float32)
    expected[[1, 4]] = np.nan
    np.testing.assert_array_equal(adata.X[:, 1], expected)
    assert "2 marker entries" in caplog.text and "'CD20': 2" in caplog.text and "impute" in caplog.text


def test_named_marker_columns_report_rows_and_values_and_take_non_numeric(table):
    odd = _with_entry(table, "<LOD")
    with pytest.raises(ValueError, match=r"must be numeric(.|\n)*cell c3: '<LOD'"):
        read_cell_table(odd, marker_columns=["CD3", "CD20"], id_column="cell")
    adata = read_cell_table(odd, marker_columns=["CD20"], non_numeric="missing")
    assert np.isnan(adata.X[3, 0]) and np.isfinite(np.delete(adata.X[:, 0], 3)).all()


def test_a_text_column_named_as_marker_is_an_error_even_with_missing(table):
    with pytest.raises(ValueError, match=r"'cell_type': 5 of 5 entries, e.g. row 0: 'T'"):
        read_cell_table(table, marker_columns=["CD3", "cell_type"], non_numeric="missing")


def test_a_table_with_decimal_commas_is_reported_not_read_without_its_markers(table, tmp_path):
    path = tmp_path / "cells.tsv"
    table.to_csv(path, sep="\t", index=False, decimal=",")  # as a spreadsheet in a German locale saves it
    with pytest.raises(ValueError, match=r"'CD3': 5 of 5 entries, e.g. row 0: '1,5'") as error:
        read_cell_table(path, slide_column="image", non_numeric="missing")
    assert "cells.tsv" in str(error.value) and "'x'" not in str(error.value)


def test_non_numeric_drop_leaves_those_cells_out_and_says_how_many(table, caplog):
    odd = _with_entry(_with_entry(table, "<LOD", row=1), "1,5", row=4)
    with caplog.at_level(logging.WARNING, logger="utag"):
        adata = read_cell_table(odd, slide_column="image", id_column="cell", non_numeric="drop")
    kept = [i for i in range(len(table)) if i not in (1, 4)]
    assert list(adata.obs_names) == table["cell"].iloc[kept].tolist()
    np.testing.assert_array_equal(adata.X[:, 1], table["CD20"].to_numpy(dtype=np.float32)[kept])
    np.testing.assert_array_equal(adata.obsm["spatial"][:, 0], table["x"].to_numpy()[kept])
    assert "left out 2 of" in caplog.text


def test_non_numeric_must_be_error_missing_or_drop(table):
    with pytest.raises(ValueError, match="`non_numeric` must be 'error', 'missing' or 'drop'"):
        read_cell_table(table, non_numeric="ignore")


def test_centroids_that_are_not_numbers_are_an_error_naming_rows_and_values():
    table = pd.DataFrame({"cell": ["a", "b", "c"], "x": ["1.5", "2,5", "3"], "y": [0.0, 1.0, 2.0],
                          "CD3": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match=r"centroid column 'x'.*cell b: '2,5'"):
        read_cell_table(table, id_column="cell")
    # an empty centroid is an error too, whatever non_numeric says about the markers
    empty = table.assign(x=[1.5, None, 3.0])
    for non_numeric in ("error", "drop", "missing"):
        with pytest.raises(ValueError, match=r"centroid column 'x' is empty for 1 cells, e.g. cell b"):
            read_cell_table(empty, id_column="cell", non_numeric=non_numeric)


def test_ids_must_be_present_and_unique(table):
    with pytest.raises(ValueError, match="id_column.*repeats 1 ids.*'c1'"):
        read_cell_table(table.assign(cell=["c0", "c1", "c1", "c3", "c4"]), slide_column="image", id_column="cell")
    with pytest.raises(ValueError, match="id_column.*empty in 1 rows"):
        read_cell_table(table.assign(cell=["c0", None, "c2", "c3", "c4"]), slide_column="image", id_column="cell")
    # integer ids name the cells as text, and the AnnData can be written
    adata = read_cell_table(table.assign(cell=[10, 11, 12, 13, 14]), slide_column="image", id_column="cell")
    assert list(adata.obs_names) == ["10", "11", "12", "13", "14"] and adata.obs.index.name is None


def test_empty_columns_are_not_markers(table, caplog):
    with caplog.at_level(logging.WARNING, logger="utag"):
        adata = read_cell_table(table.assign(CD45=np.nan), slide_column="image", id_column="cell")
    assert list(adata.var_names) == ["CD3", "CD20"] and "CD45" in adata.obs
    assert "'CD45' is empty" in caplog.text


def test_columns_of_cell_ids_are_not_markers(table, tmp_path, caplog):
    # MCMICRO's CellID counting from 1, and the row index to_csv writes for a filtered table
    filtered = table.assign(CellID=np.arange(1, 6))
    path = tmp_path / "cells.csv"
    filtered.iloc[::2].to_csv(path)  # "Unnamed: 0" holds 0, 2, 4
    with caplog.at_level(logging.WARNING, logger="utag"):
        adata = read_cell_table(path, slide_column="image", id_column="cell")
    assert list(adata.var_names) == ["CD3", "CD20"]
    assert "'CellID' holds cell ids" in caplog.text and "'Unnamed: 0' holds cell ids" in caplog.text
    named = read_cell_table(filtered, slide_column="image", id_column="cell", marker_columns=["CD3", "CellID"])
    assert list(named.var_names) == ["CD3", "CellID"]  # named, it is used
    # markers whose names end in "id" but are no ids keep their place
    stains = table.assign(Amyloid=[3, 1, 4, 5, 9], Lipid=[2, 7, 1, 8, 6])
    assert list(read_cell_table(stains, slide_column="image", id_column="cell").var_names) == [
        "CD3", "CD20", "Amyloid", "Lipid"]


def test_ids_that_restart_in_each_image_and_flag_columns_are_not_markers(table, tmp_path, caplog):
    # several images in one table (MCMICRO): CellID counts from 1 in each image; a QC flag
    # of True/False. Either as a marker dominated the PCA (ARI 0.37 -> 0.03 in a bug hunt)
    cells = pd.concat([table, table.assign(image="r2")], ignore_index=True)
    cells["CellID"] = np.tile(np.arange(1, 6), 2)
    cells["on_edge"] = [True, False] * 5
    path = tmp_path / "cells.csv"
    cells.to_csv(path, index=False)
    with caplog.at_level(logging.WARNING, logger="utag"):
        adata = read_cell_table(path, slide_column="image")
    assert list(adata.var_names) == ["CD3", "CD20"]
    assert "'CellID' holds cell ids" in caplog.text and "'on_edge' holds True/False flags" in caplog.text
    assert {"CellID", "on_edge"} <= set(adata.obs.columns)
    # without the slide column the repeated numbers are no ids: a marker, as before
    assert "CellID" in read_cell_table(cells.drop(columns="image")).var_names
    # repeated within one image: no ids either
    cells.loc[1, "CellID"] = 1
    assert "CellID" in read_cell_table(cells, slide_column="image").var_names

def test_slide_names_stay_text_and_column_names_may_be_one_string(table, tmp_path):
    path = tmp_path / "cells.csv"
    table.assign(image=["001", "001", "010", "010", "010"]).to_csv(path, index=False)
    adata = read_cell_table(path, slide_column="image", exclude_columns="CD20")
    assert adata.obs["image"].tolist() == ["001", "001", "010", "010", "010"]  # not 1 and 10
    assert list(adata.var_names) == ["CD3"]  # "CD20", not the letters C, D, 2, 0
    with pytest.raises(ValueError, match="more than once"):
        read_cell_table(table, marker_columns=["CD3", "CD3"])
    # whole-number slide names: text from a DataFrame as from its file, so that selecting a
    # slide by name works the same for both
    numbered = table.assign(image=[1, 1, 2, 2, 2])
    numbered.to_csv(path, index=False)
    from_file = read_cell_table(path, slide_column="image").obs["image"]
    from_frame = read_cell_table(numbered, slide_column="image").obs["image"]
    assert from_frame.tolist() == from_file.tolist() == ["1", "1", "2", "2", "2"]


def test_labels_table_writes_missing_labels_as_empty_and_whole_numbers_without_a_point():
    from anndata import AnnData

    from utag.io import labels_table

    obs = pd.DataFrame({"k": pd.Categorical(["0", None, "1"]), "f": [1.0, np.nan, 2.0]}, index=list("abc"))
    table = labels_table(AnnData(np.zeros((3, 1)), obs=obs), keys="k", include="f")
    assert table.to_dict("list") == {"f": ["1", "", "2"], "k": ["0", "", "1"]}  # not "nan", "1.0"
    obs = pd.DataFrame({"big": [1e20, 2.0, np.nan], "cat": pd.Categorical([1.0, 2.0, np.nan])}, index=list("abc"))
    table = labels_table(AnnData(np.zeros((3, 1)), obs=obs), keys=["big", "cat"])
    assert table.to_dict("list") == {"big": ["1e+20", "2.0", ""], "cat": ["1", "2", ""]}


def test_a_sparse_store_is_refused_by_the_dask_route_with_the_way_forward(tmp_path):
    import scipy.sparse as sp

    from utag.datasets import synthetic_tissue
    from utag.io import read_lazy, write_domains

    tissue = synthetic_tissue(n_cells=500, n_slides=1, random_state=0)
    tissue.X = sp.csr_matrix(tissue.X)
    write_domains(tissue, tmp_path / "sparse.zarr", features=True)
    with pytest.raises(ValueError, match="stored sparse.*in memory"):
        read_lazy(tmp_path / "sparse.zarr")


def test_storable_obs_renames_slashed_columns_in_a_copy_and_refuses_clashes(caplog):
    obs = pd.DataFrame({"CD16/32": [1.0, 2.0], "roi": ["a", "b"]})
    with caplog.at_level(logging.WARNING, logger="utag"):
        stored = storable_obs(obs)
    assert stored.columns.tolist() == ["CD16_32", "roi"] and stored["CD16_32"].tolist() == [1.0, 2.0]
    assert obs.columns.tolist() == ["CD16/32", "roi"] and "CD16/32" in caplog.text
    assert storable_obs(obs[["roi"]]).columns.tolist() == ["roi"]
    with pytest.raises(ValueError, match="CD16_32"):  # the new name is taken
        storable_obs(obs.assign(CD16_32=0))
    with pytest.raises(ValueError, match="a_b_c"):  # two columns would get the same name
        storable_obs(pd.DataFrame({"a/b_c": [1], "a_b/c": [2]}))
