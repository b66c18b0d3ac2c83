"""Reading cell tables exported by imaging software into the AnnData layout utag uses."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from ._keys import label_columns

__all__ = ["read_cell_table", "labels_table"]

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
) -> AnnData:
    """An AnnData from a table with one row per cell.

    Parameters
    ----------
    path
        A ``.csv``, ``.tsv``/``.txt`` or ``.parquet`` file (parquet needs pyarrow), or a
        DataFrame, with one row per cell (e.g. the single-cell table of steinbock,
        MCMICRO, QuPath or HALO).
    x_column, y_column
        Columns of the cell centroids; they go to ``obsm['spatial']``.
    slide_column
        Column naming each cell's image/slide (kept in ``obs``; pass it to ``utag`` as
        ``slide_key``).
    marker_columns
        Columns of marker intensities, in that order, for ``X``. Default: every numeric
        column other than the ones named here and ``exclude_columns``.
    exclude_columns
        Numeric columns that are not markers (cell area, eccentricity, ...); kept in ``obs``.
    id_column
        Column of cell identifiers for ``obs_names`` (default: the row number).

    Returns
    -------
    AnnData with ``X`` (float32 markers), ``obs`` (every non-marker column, the slide
    column among them) and ``obsm['spatial']``.

    Examples
    --------
    >>> table = pd.DataFrame({"cell": ["a", "b"], "x": [0.0, 5.0], "y": [1.0, 2.0], "image": ["r1", "r1"],
    ...                       "area": [90, 120], "CD3": [1.5, 0.0], "CD20": [0.1, 2.2]})
    >>> adata = read_cell_table(table, slide_column="image", exclude_columns=["area"], id_column="cell")
    >>> list(adata.var_names), list(adata.obs.columns), adata.obsm["spatial"].tolist()
    (['CD3', 'CD20'], ['cell', 'x', 'y', 'image', 'area'], [[0.0, 1.0], [5.0, 2.0]])
    """
    table, name = (path, "the table") if isinstance(path, pd.DataFrame) else (_read(Path(path)), Path(path).name)
    exclude_columns = list(exclude_columns or [])
    columns = list(table.columns)
    needed = [c for c in [x_column, y_column, slide_column, id_column] if c is not None]
    missing = [c for c in needed + list(marker_columns or []) + exclude_columns if c not in columns]
    if missing:
        raise ValueError(f"{name} has no column(s) {missing}; its columns are {columns}. Name the right ones "
                         "(x_column/y_column/slide_column/marker_columns; --x-column etc. on the command line).")
    if marker_columns is None:
        used = set(needed) | set(exclude_columns)
        marker_columns = [c for c in columns if c not in used and pd.api.types.is_numeric_dtype(table[c])]
    if not marker_columns:
        raise ValueError(f"{name} has no numeric marker columns besides {needed}; name them with marker_columns.")
    non_numeric = [c for c in marker_columns if not pd.api.types.is_numeric_dtype(table[c])]
    if non_numeric:
        raise ValueError(f"marker columns must be numeric; these are not: {non_numeric}.")
    obs = table.drop(columns=list(marker_columns))
    obs.index = (table[id_column] if id_column else pd.RangeIndex(len(table))).astype(str)
    return AnnData(
        X=table[list(marker_columns)].to_numpy(dtype=np.float32),
        obs=obs,
        var=pd.DataFrame(index=[str(c) for c in marker_columns]),
        obsm={"spatial": table[[x_column, y_column]].to_numpy(dtype=np.float64)},
    )


def _read(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ValueError(f"{path.name}: unknown table type {suffix!r}; use .csv, .tsv, .txt or .parquet.")
    if suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except ImportError as error:
            raise ImportError(f"reading {path.name} needs pyarrow: pip install pyarrow ({error})") from None
    return pd.read_csv(path, sep=TABLE_SUFFIXES[suffix])


def labels_table(adata: AnnData, keys: list[str] | None = None, include: list[str] | None = None) -> pd.DataFrame:
    """Domain labels of every cell as a plain table of strings, indexed by cell.

    ``keys``: label columns (default: those ``utag()`` wrote, from ``uns['utag']``, else
    every ``obs`` column starting with ``"UTAG Label_"``); ``include``: other ``obs``
    columns to add first (e.g. the slide). Columns are plain strings, not pandas
    categoricals, which keeps the table easy to write to CSV and to hand to R: reticulate
    1.28 (Debian 12) cannot convert categorical columns under NumPy 2.

    Examples
    --------
    >>> adata = AnnData(np.zeros((2, 1)), obs=pd.DataFrame(
    ...     {"roi": ["r1", "r2"], "UTAG Label_leiden_0.1": pd.Categorical(["0", "1"])}, index=["a", "b"]))
    >>> labels_table(adata, include=["roi"]).to_dict("list")
    {'roi': ['r1', 'r2'], 'UTAG Label_leiden_0.1': ['0', '1']}
    """
    if keys is None:
        keys = list(adata.uns.get("utag", {}).get("label_keys", [])) or label_columns(adata)
    columns = list(include or []) + list(keys)
    missing = [c for c in columns if c not in adata.obs.columns]
    if missing:
        raise ValueError(f"`adata.obs` has no column(s) {missing}; columns: {list(adata.obs.columns)}.")
    return pd.DataFrame({c: adata.obs[c].astype(str).to_numpy(dtype=object) for c in columns},
                        index=adata.obs_names.copy())
