"""Scoring domains against reference labels (e.g. expert-annotated compartments)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn import metrics

from ._validation import label_columns

SCORES = {
    "rand": metrics.rand_score,
    "adjusted_rand": metrics.adjusted_rand_score,
    "homogeneity": metrics.homogeneity_score,
    "completeness": metrics.completeness_score,
    "nmi": metrics.normalized_mutual_info_score,
    "ami": metrics.adjusted_mutual_info_score,
}


def evaluate_performance(
    adata: AnnData,
    truth_key: str,
    pred_keys: str | list[str] | None = None,
    batch_key: str | None = None,
    ignore_labels=("NoAnnotation",),
) -> pd.DataFrame:
    """Agreement of predicted domains with reference labels, per slide and pooled.

    Parameters
    ----------
    adata
        AnnData with the reference and predicted labels in ``obs``.
    truth_key
        ``obs`` column of the reference labels.
    pred_keys
        ``obs`` column(s) of predicted labels; default every column starting with
        ``"UTAG Label_"``.
    batch_key
        ``obs`` column of the slide; adds one row per slide besides the pooled row.
    ignore_labels
        Reference labels whose cells are left out of the scores (unannotated cells).

    Returns
    -------
    A tidy DataFrame with one row per (prediction, slide) and columns ``pred_key``,
    ``slide`` (``"all"`` for the pooled score), ``n_cells``, ``n_domains`` and one column
    per score: ``rand``, ``adjusted_rand``, ``homogeneity``, ``completeness``, ``nmi``,
    ``ami``.

    Examples
    --------
    >>> import pandas as pd, anndata, numpy as np
    >>> adata = anndata.AnnData(np.zeros((4, 1)), obs=pd.DataFrame(
    ...     {"truth": list("aabb"), "UTAG Label_leiden_0.1": list("0011")}, index=list("wxyz")))
    >>> evaluate_performance(adata, "truth")["adjusted_rand"].item()
    1.0
    """
    if pred_keys is None:
        pred_keys = label_columns(adata)
    elif isinstance(pred_keys, str):
        pred_keys = [pred_keys]
    missing = [k for k in [truth_key, *pred_keys, *([batch_key] if batch_key else [])] if k not in adata.obs]
    if missing:
        raise ValueError(f"`adata.obs` has no column(s) {missing}; columns: {list(adata.obs.columns)}.")
    if not pred_keys:
        raise ValueError("No predicted labels: pass `pred_keys` or run `utag()` first.")
    truth = adata.obs[truth_key].astype(str).to_numpy()
    scored = ~np.isin(truth, list(ignore_labels))
    slides = adata.obs[batch_key].astype(str).to_numpy() if batch_key else np.full(adata.n_obs, "all")
    groups = [("all", scored)]
    if batch_key:
        groups += [(slide, scored & (slides == slide)) for slide in np.unique(slides)]
    rows = []
    for key in pred_keys:
        predicted = adata.obs[key].astype(str).to_numpy()
        for slide, cells in groups:
            row = {"pred_key": key, "slide": slide, "n_cells": int(cells.sum()),
                   "n_domains": int(pd.unique(predicted[cells]).size)}
            row.update({name: float(score(truth[cells], predicted[cells])) for name, score in SCORES.items()})
            rows.append(row)
    return pd.DataFrame(rows)
