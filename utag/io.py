"""Reading cell tables exported by imaging software into the AnnData layout utag uses."""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from . import _validation as check
from ._keys import written_labels

__all__ = ["read_cell_table", "labels_table", "read_lazy", "storable_obs", "write_domains"]

logger = logging.getLogger(__name__)

#: Table file types and their column separators (parquet needs pyarrow).
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".txt": "\t", ".parquet": None}


def read_cell_table(
    path: str | Path | pd.DataFrame,
    x_column: str = "x",
    y_column: str = "y",
    slide_column: str | None = None,
    marker_columns: list[str] | None = None,
    exclude_columns: list[str] | None = None,
    id_column: str | None = None,
    non_numeric: str = "error",
) -> AnnData:
    """An AnnData from a table with one row per cell.

    Parameters
    ----------
    path
        A ``.csv``, ``.tsv``/``.txt`` or ``.parquet`` file (parquet needs pyarrow), or a
        DataFrame, with one row per cell (e.g. the single-cell table of steinbock,
        MCMICRO, QuPath or HALO).
    x_column, y_column
        Columns of the cell centroids (default ``"x"`` and ``"y"``); they go to
        ``obsm['spatial']`` as float64 (and stay in ``obs``). An entry that is not a
        number, or is empty, raises a ValueError naming the cells.
    slide_column
        Column naming each cell's image/slide, read as text (kept in ``obs``; pass it to
        ``utag`` as ``slide_key``). Default ``None``: no such column.
    marker_columns
        Column name or names of marker intensities, in that order, for ``X``. Default
        ``None``: every column
        other than the ones named here and ``exclude_columns`` whose entries are numbers,
        or at least half of whose filled entries are (a few like ``"<LOD"`` or ``"1,5"``
        do not hide a marker: see ``non_numeric``). Columns of text go to ``obs``, and so
        do, with a log message, empty columns, True/False columns (flags, not
        intensities) and columns of cell ids: whole numbers unique in the table, or
        within each slide of ``slide_column`` (ids that restart in each image), in a
        column named ``Unnamed: ...`` (a row index written with the table) or ending in
        ``id`` as a word of its own (``CellID``, ``cell_id``; not ``Lipid``).
    exclude_columns
        Column name or names of numeric columns that are not markers (cell area,
        eccentricity, ...); kept in ``obs``. Default ``None``: none.
    id_column
        Column of cell identifiers for ``obs_names``, read as text (``"00012"`` stays so);
        each cell needs one, and no two the same. Default ``None``: the row number
        (``"0"``, ``"1"``, ...).
    non_numeric
        What to do with marker entries that are not numbers: ``"error"`` (default) raises a
        ValueError naming the column, rows and values; ``"missing"`` reads them as NaN and
        logs how many there were per column. ``utag()`` does not accept NaN, so impute
        those entries or drop their cells before running it; ``"drop"`` leaves out the
        cells with a missing or non-numeric marker entry, and logs how many.

    Returns
    -------
    AnnData
        ``X`` (float32 markers, cells x markers, ``var_names`` the marker columns), ``obs``
        (every non-marker column, the centroid and slide columns among them) and
        ``obsm['spatial']`` (x, y per cell).

    Examples
    --------
    >>> table = pd.DataFrame({"cell": ["a", "b"], "x": [0.0, 5.0], "y": [1.0, 2.0], "image": ["r1", "r1"],
    ...                       "area": [90, 120], "CD3": [1.5, 0.0], "CD20": [0.1, 2.2]})
    >>> adata = read_cell_table(table, slide_column="image", exclude_columns=["area"], id_column="cell")
    >>> list(adata.var_names), list(adata.obs.columns), adata.obsm["spatial"].tolist()
    (['CD3', 'CD20'], ['cell', 'x', 'y', 'image', 'area'], [[0.0, 1.0], [5.0, 2.0]])
    """
    if non_numeric not in ("error", "missing", "drop"):
        raise ValueError(f"`non_numeric` must be 'error', 'missing' or 'drop', got {non_numeric!r}.")
    text_columns = [c for c in (id_column, slide_column) if c is not None]  # "00012" stays "00012"
    table, name = ((path, "the table") if isinstance(path, pd.DataFrame)
                   else (_read(Path(path), text_columns), Path(path).name))
    exclude_columns = _names(exclude_columns)
    marker_columns = None if marker_columns is None else _names(marker_columns)
    repeated = sorted({c for c in marker_columns or [] if marker_columns.count(c) > 1})
    if repeated:
        raise ValueError(f"`marker_columns` names {repeated} more than once; name each marker once.")
    both = [c for c in marker_columns or [] if c in exclude_columns]
    if both:
        raise ValueError(f"{both} are named both in `marker_columns` and in `exclude_columns`: name each in one "
                         "of them.")
    columns = list(table.columns)
    needed = [c for c in [x_column, y_column, slide_column, id_column] if c is not None]
    missing = [c for c in needed + list(marker_columns or []) + exclude_columns if c not in columns]
    if missing:
        raise ValueError(f"{name} has no column(s) {missing}; its columns are {columns}. Name the right ones "
                         "(x_column/y_column/slide_column/marker_columns; --x-column etc. on the command line).")
    if marker_columns is None:
        used = set(needed) | set(exclude_columns) | _not_markers(table, name, slide_column)
        marker_columns = [c for c in columns if c not in used and _looks_numeric(table[c])]
    marker_columns = list(marker_columns)
    if not marker_columns:
        raise ValueError(f"{name} has no numeric marker columns besides {needed}; name them with marker_columns.")
    cells = _cell_names(table, id_column, name)
    markers = _marker_values(table[marker_columns], pd.Index(cells), id_column or "row",
                             "missing" if non_numeric == "drop" else non_numeric, name, quiet=non_numeric == "drop")
    obs = table.drop(columns=marker_columns)
    if slide_column is not None:  # as text from any source (a DataFrame, parquet), as read_csv reads it
        slides = obs[slide_column]
        obs[slide_column] = slides.astype(object).where(slides.isna(), slides.astype(str))
    obs.index = pd.Index(cells.to_numpy(), name=None)  # a named index clashing with its column cannot be written
    adata = AnnData(
        X=markers,
        obs=obs,
        var=pd.DataFrame(index=[str(c) for c in marker_columns]),
        obsm={"spatial": _coordinates(table, [x_column, y_column], cells, id_column or "row", name)},
    )
    if non_numeric == "drop":
        incomplete = np.isnan(markers).any(axis=1)
        if incomplete.all():
            raise ValueError(f"{name}: every cell has a missing or non-numeric marker entry; nothing is left.")
        if incomplete.any():
            logger.warning("%s: left out %d of %d cells with a missing or non-numeric marker entry "
                           "(non_numeric='drop')", name, int(incomplete.sum()), len(markers))
            adata = adata[~incomplete].copy()
    return adata


def _cell_names(table: pd.DataFrame, id_column: str | None, name: str) -> pd.Index:
    """The cells' names: ``id_column`` as text (each present and unique), else the row numbers."""
    if id_column is None:
        return pd.Index(pd.RangeIndex(len(table)).astype(str))
    ids = table[id_column]
    empty = ids.isna() | ids.astype(str).str.strip().eq("")
    if empty.any():
        rows = np.flatnonzero(empty.to_numpy())
        raise ValueError(f"{name}: the id column {id_column!r} (id_column, --id-column) is empty in {rows.size} "
                         f"rows, e.g. rows {rows[:5].tolist()}; fill them, or leave id_column out to name the "
                         "cells by row number.")
    cells = pd.Index(ids.astype(str).to_numpy())
    if cells.has_duplicates:
        repeated = cells[cells.duplicated()].unique()
        raise ValueError(f"{name}: the id column {id_column!r} (id_column, --id-column) repeats "
                         f"{len(repeated)} ids, e.g. {repeated[:5].tolist()}; cells need unique ids (with "
                         "several images, ids often repeat per image: leave id_column out to name the cells "
                         "by row number).")
    return cells


#: How to use a column that :func:`read_cell_table` left out of the markers, in Python and in the CLI.
_TO_USE_IT = "name it in marker_columns, or --markers on the command line, to use it"


def _not_markers(table: pd.DataFrame, name: str, slide_column: str | None = None) -> set:
    """Columns that look numeric but are no markers: columns of cell ids
    (:func:`_looks_like_ids`, unique in the table or within each slide of
    ``slide_column``), True/False columns and columns with no entry at all; each is logged
    and kept in ``obs`` (name it in ``marker_columns`` to use it)."""
    slides = None if slide_column is None else table[slide_column]
    left_out = set()
    for column in table.columns:
        entries = table[column]
        if entries.isna().all() or (entries.dtype == object and entries.astype(str).str.strip().eq("").all()):
            logger.warning("%s: column %r is empty; it is not a marker (kept in obs)", name, column)
            left_out.add(column)
        elif pd.api.types.is_bool_dtype(entries.dtype):
            logger.warning("%s: column %r holds True/False flags; it is not a marker (kept in obs; %s)",
                           name, column, _TO_USE_IT)
            left_out.add(column)
        elif column != slide_column and _looks_like_ids(column, entries, slides):
            logger.warning("%s: column %r holds cell ids (whole numbers unique in the table or in each slide; a "
                           "row index written with the table, e.g. by DataFrame.to_csv, or an id column); it is "
                           "not a marker (kept in obs; %s)", name, column, _TO_USE_IT)
            left_out.add(column)
    return left_out


def _looks_like_ids(column, entries: pd.Series, slides: pd.Series | None = None) -> bool:
    """Whole numbers, unique in the table or within each of ``slides`` (ids that restart
    in each image, as in MCMICRO's tables), in a column named ``Unnamed: ...`` (a row
    index pandas wrote with the table) or ending in ``id`` as a word of its own
    (``CellID``, ``cell_id``)."""
    name = str(column).strip()  # "CellID", "cell_id", "Object ID"; not "Amyloid" or "Lipid"
    named = name.startswith("Unnamed: ") or re.search(r"(^|[\s_.\-])id$", name, re.IGNORECASE) is not None \
        or re.search(r"[a-z0-9](ID|Id)$", name) is not None
    if not (named and pd.api.types.is_integer_dtype(entries.dtype)):
        return False
    if entries.is_unique:
        return True
    if slides is None:
        return False
    return not pd.DataFrame({"slide": slides.to_numpy(), "id": entries.to_numpy()}).duplicated().any()


def _names(value) -> list:
    """A column name or a list of them, as a list (``None``: none)."""
    return [] if value is None else check.as_list(value)


def _coordinates(table: pd.DataFrame, columns: list[str], cells: pd.Index, row_name: str, name: str) -> np.ndarray:
    """The centroid columns as float64; an entry that is not a number, or is empty, is an
    error naming it (a cell without a position cannot be placed on the tissue)."""
    values = []
    for column in columns:
        numbers, text = _parse_numbers(table[column])
        if text.any():
            rows = np.flatnonzero(text.to_numpy())
            examples = ", ".join(f"{row_name} {cells[r]}: {table[column].iloc[r]!r}" for r in rows[:5])
            raise ValueError(f"{name}: the centroid column {column!r} has {rows.size} entries that are not numbers, "
                             f"e.g. {examples}. Fix them in the table (a decimal point, not a comma).")
        if numbers.isna().any():
            rows = np.flatnonzero(numbers.isna().to_numpy())
            examples = ", ".join(f"{row_name} {cells[r]}" for r in rows[:5])
            raise ValueError(f"{name}: the centroid column {column!r} is empty for {rows.size} cells, e.g. "
                             f"{examples}. Every cell needs a position: fill them or drop those rows.")
        values.append(numbers.to_numpy(dtype=np.float64, na_value=np.nan))
    return np.column_stack(values)


def _parse_numbers(column: pd.Series) -> tuple[pd.Series, pd.Series]:
    """The column's entries as numbers (NaN where they are not), and a mask of its filled entries that are not."""
    numbers = pd.to_numeric(column, errors="coerce")
    filled = column.notna() & column.astype(str).str.strip().ne("")
    return numbers, filled & numbers.isna()


def _looks_numeric(column: pd.Series) -> bool:
    """Whether a column is a marker: numbers, or text at least half of whose filled entries are numbers.

    Decimal commas count as numbers here, so a table exported with them is reported, not
    read without its markers.
    """
    if pd.api.types.is_numeric_dtype(column.dtype):
        return True
    if not pd.api.types.is_string_dtype(column.dtype):
        return False
    numbers, text = _parse_numbers(column)
    commas = pd.to_numeric(column[text].astype(str).str.replace(",", ".", regex=False), errors="coerce").notna()
    n_numbers = numbers.notna().sum() + commas.sum()
    return bool(n_numbers > 0 and n_numbers >= text.sum() - commas.sum())


def _marker_values(markers: pd.DataFrame, cells: pd.Index, row_name: str, non_numeric: str, name: str,
                   quiet: bool = False) -> np.ndarray:
    """The markers as a float32 array; entries that are not numbers raise or, if ``non_numeric="missing"``, are NaN.

    Columns with more text than numbers raise either way: reading them as missing would lose the marker.
    """
    values, problems, n_missing, fixable = [], [], {}, False
    for position, column in enumerate(markers.columns):
        entries = markers.iloc[:, position]
        numbers, text = (entries, None) if pd.api.types.is_numeric_dtype(entries.dtype) else _parse_numbers(entries)
        values.append(numbers.to_numpy(dtype=np.float32, na_value=np.nan))
        if text is None or not text.any():
            continue
        n_numbers = numbers.notna().sum()
        mostly_numbers = 0 < n_numbers >= text.sum()
        if non_numeric == "missing" and mostly_numbers:
            n_missing[column] = int(text.sum())
            continue
        fixable |= mostly_numbers
        rows = np.flatnonzero(text.to_numpy())
        examples = ", ".join(f"{row_name} {cells[r]}: {entries.iloc[r]!r}" for r in rows[:5])
        problems.append(f"  {column!r}: {rows.size} of {len(markers)} entries, e.g. {examples}")
    if problems:
        fixes = ["fix those entries in the table (numbers with a decimal point, empty where a value is missing)",
                 "take columns that are not markers out (exclude_columns/--exclude, or leave them out of "
                 "marker_columns/--markers)"]
        if fixable:
            fixes.append("pass non_numeric='drop' (--non-numeric drop) to leave out the cells with entries that "
                         "are not numbers in mostly numeric columns, or non_numeric='missing' to read them as "
                         "missing values and impute them yourself")
        raise ValueError(f"{name}: marker columns must be numeric, but these have entries that are not numbers:\n"
                         + "\n".join(problems) + "\nTo go on: " + "; or ".join(fixes) + ".")
    if n_missing and not quiet:
        logger.warning("%s: read %d marker entries that are not numbers as missing values (per column: %s). "
                       "utag() does not accept missing values: impute them or drop those cells first, "
                       "e.g. adata = adata[~np.isnan(adata.X).any(axis=1)].copy()",
                       name, sum(n_missing.values()), n_missing)
    return np.column_stack(values)


def _read(path: Path, text_columns: list[str] = ()) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ValueError(f"{path.name}: unknown table type {suffix!r}; use .csv, .tsv, .txt or .parquet.")
    kind = "a parquet" if suffix == ".parquet" else f"a {'comma' if suffix == '.csv' else 'tab'}-separated"
    try:
        if suffix != ".parquet":
            return pd.read_csv(path, sep=TABLE_SUFFIXES[suffix], dtype={column: str for column in text_columns})
        try:
            return pd.read_parquet(path)
        except ImportError as error:
            raise ImportError(f"reading {path.name} needs pyarrow: pip install pyarrow ({error})") from None
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path.name} is empty: a cell table needs a header line and one row per cell.") from None
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (ValueError, OSError) as error:  # pandas' parser errors and pyarrow's are ValueErrors
        raise ValueError(f"{path.name} could not be read as {kind} table: {error}") from None


def labels_table(adata: AnnData, keys: list[str] | None = None, include: list[str] | None = None) -> pd.DataFrame:
    """Domain labels of every cell as a plain table of strings, indexed by cell.

    Columns are plain strings, not pandas categoricals, which keeps the table easy to
    write to CSV and to hand to R: reticulate 1.28 (Debian 12) cannot convert categorical
    columns under NumPy 2. A cell without a label has an empty string; whole numbers
    stored as floats are written without ``.0``. Nothing is written to ``adata``.

    Parameters
    ----------
    adata
        Cells with the labellings in ``obs``.
    keys
        Label column or columns. Default ``None``: those ``utag()`` wrote
        (``uns['utag']['label_keys']``), then every other ``obs`` column starting with
        ``"UTAG Label_"``.
    include
        Other ``obs`` column or columns to add first (e.g. the slide); default ``None``:
        none.

    Returns
    -------
    pandas.DataFrame
        One row per cell (index: ``obs_names``), the ``include`` columns then the ``keys``
        columns, all of text.

    Examples
    --------
    >>> adata = AnnData(np.zeros((2, 1)), obs=pd.DataFrame(
    ...     {"roi": ["r1", "r2"], "UTAG Label_leiden_0.1": pd.Categorical(["0", "1"])}, index=["a", "b"]))
    >>> labels_table(adata, include=["roi"]).to_dict("list")
    {'roi': ['r1', 'r2'], 'UTAG Label_leiden_0.1': ['0', '1']}
    """
    if keys is None:
        keys = written_labels(adata)
    columns = _names(include) + _names(keys)
    missing = [c for c in columns if c not in adata.obs.columns]
    if missing:
        raise ValueError(f"`adata.obs` has no column(s) {missing}; columns: {list(adata.obs.columns)}.")
    return pd.DataFrame({c: _as_text(adata.obs[c]) for c in columns}, index=adata.obs_names.copy())


def _as_text(column: pd.Series) -> np.ndarray:
    """Entries as strings, missing ones as empty strings (an empty cell in CSV; reticulate
    cannot convert ``None`` in a column of strings); whole numbers held as floats without ``.0``."""
    values = column
    if isinstance(values.dtype, pd.CategoricalDtype):
        float_categories = pd.api.types.is_float_dtype(values.cat.categories.dtype)
        values = values.astype("float64" if float_categories else object)
    finite = values.dropna()
    if pd.api.types.is_float_dtype(values.dtype) and np.all(np.mod(finite, 1) == 0) \
            and np.all(np.abs(finite) < 2**53):  # whole numbers that an Int64 holds exactly
        values = values.astype("Int64")
    return values.astype("string").to_numpy(dtype=object, na_value="")


def read_lazy(path, chunk_rows: int = 65_536) -> AnnData:
    """An ``.h5ad`` or ``.zarr`` AnnData with ``X`` and ``obsm['spatial']`` left on disk
    as Dask arrays: ``utag()`` then runs on Dask (:mod:`utag.distributed`) and reads each
    slide's rows where its task runs. ``obs`` and ``var`` are read into memory; other
    ``obsm`` entries, ``layers`` and ``uns`` are not read. An ``.h5ad`` file stays open
    while the arrays are in use.

    Parameters
    ----------
    path
        An ``.h5ad`` file or a ``.zarr`` store (any folder is read as one), with dense
        ``X`` and ``obsm['spatial']``; sparse ``X`` raises a ValueError.
    chunk_rows
        Cells per Dask chunk of ``X`` and ``obsm['spatial']`` (default ``65_536``).

    Returns
    -------
    AnnData
        ``X`` and ``obsm['spatial']`` as Dask arrays (centroids stored as a DataFrame are
        read into memory, then wrapped as one), ``obs`` and ``var`` in memory.

    Examples
    --------
    >>> import tempfile, os
    >>> from utag.datasets import synthetic_tissue
    >>> path = os.path.join(tempfile.mkdtemp(), "cells.h5ad")
    >>> synthetic_tissue(n_cells=1_000, random_state=0).write_h5ad(path)
    >>> lazy = read_lazy(path)
    >>> type(lazy.X).__name__, lazy.shape
    ('Array', (1000, 40))
    """
    import anndata
    import dask.array as da
    from anndata.experimental import read_elem_lazy

    chunk_rows = check.as_int("chunk_rows", chunk_rows, minimum=1)

    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path} does not exist; read_lazy takes an .h5ad file or a .zarr store.")
    if path.suffix.lower() == ".zarr" or path.is_dir():
        import zarr

        store = zarr.open(str(path), mode="r")
    elif path.suffix.lower() == ".h5ad":
        import h5py

        store = h5py.File(path, "r")
    else:
        raise ValueError(f"{path}: read_lazy takes an .h5ad file or a .zarr store (by its suffix).")
    if "obsm" not in store or "spatial" not in store["obsm"]:
        raise ValueError(f"{path} has no obsm['spatial']: store the cell centroids there.")
    if "X" not in store:
        raise ValueError(f"{path} has no X: store the markers in X (e.g. adata.X = adata.layers[...]).")
    if dict(store["X"].attrs).get("encoding-type", "array") != "array":
        raise ValueError(f"{path}: X is stored sparse; the Dask route takes dense features. Run it in memory "
                         "instead (anndata.read_zarr or read_h5ad, then utag(); on the command line, write it "
                         "as .h5ad and run that without --dask-scheduler), or store X dense.")
    n_features, spatial = store["X"].shape[1], store["obsm"]["spatial"]
    if dict(spatial.attrs).get("encoding-type", "array") == "dataframe":  # centroids are small: read them
        coords = np.asarray(anndata.io.read_elem(spatial), dtype=np.float64)
        spatial_array = da.from_array(coords, chunks=(chunk_rows, coords.shape[1]))
    else:
        spatial_array = read_elem_lazy(spatial, chunks=(chunk_rows, spatial.shape[1]))
    return AnnData(
        X=read_elem_lazy(store["X"], chunks=(chunk_rows, n_features)),
        obs=anndata.io.read_elem(store["obs"]),
        var=anndata.io.read_elem(store["var"]),
        obsm={"spatial": spatial_array},
    )


def write_domains(result: AnnData, path, features: bool = False, overwrite: bool = False) -> None:
    """Write what ``utag()`` found to a ``.zarr`` store: ``obs`` (with the domain labels),
    ``obsm`` (PCA, soft assignments, coordinates; Dask arrays computed), ``obsp`` (the
    graphs kept, which ``uns['neighbors']`` and ``uns['spatial_neighbors']`` name) and
    ``uns``; with ``features``, also the message-passed features ``X`` (with ``var`` and
    ``varm``), computed chunk by chunk when they are a Dask array. Read it back with
    ``anndata.read_zarr``. ``obs`` columns whose names hold '/' are written with '_'
    instead (:func:`storable_obs`).

    Parameters
    ----------
    result
        The AnnData ``utag()`` returned (in memory or lazy, :func:`read_lazy`).
    path
        The ``.zarr`` store to write (a folder).
    features
        Also write ``X``, ``var`` and ``varm`` (default ``False``: the store holds no
        features, only the cells' labels, embeddings and graphs).
    overwrite
        Replace whatever ``path`` holds (default ``False``). A ``path`` that holds
        anything (a file, a store: the one a lazy result was read from, say) is refused
        with a ValueError unless ``overwrite=True``; the store is then written beside it
        and put in its place once complete, so a lazy result can be written over its
        input. Lazy AnnData read from the old store then read the new one. An empty
        folder is written into either way.

    Examples
    --------
    >>> import tempfile, os, anndata
    >>> from utag import utag
    >>> from utag.datasets import synthetic_tissue
    >>> result = utag(synthetic_tissue(n_cells=1_000, random_state=0), slide_key="roi", clustering_method="kmeans",
    ...               resolutions=[0.3], progress=False)
    >>> path = os.path.join(tempfile.mkdtemp(), "domains.zarr")
    >>> write_domains(result, path)
    >>> anndata.read_zarr(path).obs["UTAG Label_kmeans_0.3"].nunique()
    3
    """
    if str(path).strip() in ("", "."):
        raise ValueError(f"`path` must name the .zarr store to write (e.g. 'domains.zarr'), got {str(path)!r}.")
    path = Path(path)
    if path.suffix.lower() == ".h5ad":  # a store named .h5ad is a folder that read_h5ad cannot open
        raise ValueError(f"write_domains writes a .zarr store, but `path` {str(path)!r} ends in .h5ad: name it "
                         "'....zarr', or write an .h5ad file with `result.write_h5ad(path)`.")
    if not isinstance(overwrite, (bool, np.bool_)):
        raise ValueError(f"`overwrite` must be True or False, got {overwrite!r}.")
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):  # nothing there to lose
        _write_store(result, path, features)
    elif not overwrite:
        raise ValueError(f"`path` {str(path)!r} already exists: pass overwrite=True to replace it, or another path.")
    else:  # beside it first: a lazy result may still read its features from `path`
        beside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".zarr", dir=path.parent))
        old = beside.with_name(beside.name + ".old")
        try:
            _write_store(result, beside, features)
            os.replace(path, old)  # the old store (or file, or link) stays whole until the new one is in place
            try:
                os.replace(beside, path)
            except BaseException:
                os.replace(old, path)
                raise
            remove_path(old)
        finally:
            remove_path(beside)


def remove_path(path: Path) -> None:
    """Remove a file, a link (not what it points to) or a folder (a .zarr store), if there."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def storable_obs(obs: pd.DataFrame) -> pd.DataFrame:
    """``obs`` as it can be written to ``.zarr`` and ``.h5ad``: a '/' in a column name
    (``CD16/32``, ``Class/Name`` from a cell table) becomes '_', with a warning naming
    those columns. zarr refuses such names, as a path inside the store, and anndata
    will refuse them in ``.h5ad`` too. ``obs`` itself is not changed.

    Examples
    --------
    >>> storable_obs(pd.DataFrame({"CD16/32": [1.0], "roi": ["a"]})).columns.tolist()
    ['CD16_32', 'roi']
    """
    renamed = storable_names(obs)
    if not renamed:
        return obs
    logger.warning("obs columns %s contain '/', which .zarr and .h5ad files cannot store: written as %s.",
                   list(renamed), list(renamed.values()))
    return obs.rename(columns=renamed)


def storable_names(obs: pd.DataFrame) -> dict:
    """``{column: name it is written under}`` for the ``obs`` columns with '/' in their
    name (see :func:`storable_obs`); a ValueError when a new name is taken, which callers
    can check before any work."""
    renamed = {column: str(column).replace("/", "_") for column in obs.columns if "/" in str(column)}
    targets = list(renamed.values())
    taken = sorted({new for new in targets if new in obs.columns or targets.count(new) > 1})
    if taken:
        raise ValueError(f"`obs` columns {sorted(renamed)} contain '/', which .zarr and .h5ad files cannot store, "
                         f"and replacing it by '_' would give names twice ({taken}). Rename those columns "
                         "(adata.obs.rename(columns=...), or in the cell table) before writing.")
    return renamed


def storable_uns(uns, obs: pd.DataFrame) -> dict:
    """``uns`` as it is written beside :func:`storable_obs`'s ``obs``: the slide column
    ``utag()`` recorded (``uns['utag']['slide_key']``) under its written name, so that
    the functions that find it there still find it after reading the file back."""
    uns = dict(uns)
    record = uns.get("utag")
    renamed = storable_names(obs)
    if isinstance(record, dict) and record.get("slide_key") in renamed:
        uns["utag"] = {**record, "slide_key": renamed[record["slide_key"]]}
    return uns


def _write_store(result: AnnData, path: Path, features: bool) -> None:
    """:func:`write_domains` into ``path`` (absent, or an empty folder)."""
    import dask.array as da

    obsm = {key: value.compute() if isinstance(value, da.Array) else value for key, value in result.obsm.items()}
    obsp = dict(result.obsp)  # the graphs uns['neighbors'] and uns['spatial_neighbors'] point to
    obs, uns = storable_obs(result.obs), storable_uns(result.uns, result.obs)
    if features:
        written = AnnData(X=result.X, obs=obs, var=result.var, obsm=obsm, varm=dict(result.varm),
                          obsp=obsp, uns=uns)
    else:
        written = AnnData(obs=obs, obsm=obsm, obsp=obsp, uns=uns)
    with warnings.catch_warnings():  # anndata's and zarr's notices of defaults that will change
        for notice in ("Writing zarr v2", "zarr v3 autosharding", "Consolidated metadata"):
            warnings.filterwarnings("ignore", message=notice)
        written.write_zarr(path)
