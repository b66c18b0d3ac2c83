"""Where utag writes its labels: the naming conventions of ``obs`` and ``obsm`` keys, in
one place.

``utag()`` writes each labelling to ``obs[f"{save_key}_{method}_{resolution}"]`` (e.g.
``"UTAG Label_leiden_0.1"``, as the original package did) and its soft assignments to
``obsm[f"{label_key}_probabilities"]``.
"""
from __future__ import annotations

from anndata import AnnData

__all__ = ["DEFAULT_SAVE_KEY", "SWEEP_KEY", "TABLES_OF_LABELS", "colors_key", "drop_tables_of", "label_columns",
           "label_key", "method_and_resolution", "probabilities_key", "sweep_entry", "table_key", "written_labels"]

#: Prefix of the label columns (``utag(save_key=...)``).
DEFAULT_SAVE_KEY = "UTAG Label"
#: Tables counted per domain of the labelling in ``obs[key]``, stored as
#: ``uns[f"{key}_{table}"]`` (by :mod:`utag.analysis` and the original API in :mod:`utag.utils`).
TABLES_OF_LABELS = ("connectivity", "colocalization", "domain_adjacency_matrix", "celltype_adjacency_matrix")
#: ``uns`` key of the resolution sweep (``resolutions="auto"``, :func:`utag.tuning.resolution_sweep`).
SWEEP_KEY = "utag_resolution_sweep"


def label_key(save_key: str, method: str, resolution: float) -> str:
    """``obs`` column of one labelling, e.g. ``'UTAG Label_leiden_0.1'``."""
    return f"{save_key}_{method}_{resolution}"


def probabilities_key(key: str) -> str:
    """``obsm`` key of the soft assignments of the labelling in ``obs[key]``."""
    return f"{key}_probabilities"


def table_key(key: str, table: str) -> str:
    """``uns`` key of a table (one of :data:`TABLES_OF_LABELS`) counted per domain of the
    labelling in ``obs[key]``, e.g. ``'UTAG Label_leiden_0.1_connectivity'``."""
    return f"{key}_{table}"


def colors_key(key: str) -> str:
    """``uns`` key of the colours of the categories of ``obs[key]``, as scanpy names it."""
    return f"{key}_colors"


def sweep_entry(table, labels) -> dict:
    """What ``uns[SWEEP_KEY]`` holds: the sweep's ``table`` (one row per resolution), its
    typical ``labels`` (one row per resolution) and the resolutions."""
    return {"table": table, "labels": labels, "resolutions": table["resolution"].to_numpy()}


def method_and_resolution(key: str) -> tuple[str, float]:
    """``('leiden', 0.1)`` for ``'UTAG Label_leiden_0.1'``."""
    _, method, resolution = key.rsplit("_", 2)
    return method, float(resolution)


def label_columns(adata: AnnData, save_key: str = DEFAULT_SAVE_KEY) -> list[str]:
    """The ``obs`` columns that hold labellings written with ``save_key``."""
    return [c for c in adata.obs.columns if str(c).startswith(f"{save_key}_")]


def written_labels(adata: AnnData) -> list[str]:
    """The labellings ``utag()`` wrote (``uns['utag']['label_keys']``, whatever its
    ``save_key``), then the other ``obs`` columns named with the default ``save_key``
    (those of an earlier run)."""
    keys = [str(key) for key in adata.uns.get("utag", {}).get("label_keys", []) if key in adata.obs]
    return keys + [key for key in label_columns(adata) if key not in keys]  # and an earlier run's


def drop_tables_of(adata: AnnData, key: str, colors: bool = False) -> None:
    """Remove from ``adata.uns`` the tables counted under the labels of ``obs[key]``
    (:data:`TABLES_OF_LABELS`), when those labels change; ``colors``: scanpy's
    ``uns[f"{key}_colors"]`` too."""
    for table in TABLES_OF_LABELS:
        adata.uns.pop(table_key(key, table), None)
    if colors:
        adata.uns.pop(colors_key(key), None)
