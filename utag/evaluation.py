"""How good a labelling is: against reference labels (e.g. expert-annotated
compartments, :func:`evaluate_performance`) and without them (:func:`evaluate_clustering`)."""
from __future__ import annotations

import numbers

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn import metrics

from . import _validation as check
from ._keys import written_labels
from ._order import canonical_order
from ._validation import POOLED
from .analysis import _labels, domain_composition, spatial_edges

__all__ = ["SCORES", "POOLED", "evaluate_clustering", "evaluate_performance"]

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

    Nothing is written to ``adata``. Labels are compared as text, so ``1`` and ``"1"``
    are the same label.

    Parameters
    ----------
    adata
        AnnData with the reference and predicted labels in ``obs``.
    truth_key
        ``obs`` column of the reference labels.
    pred_keys
        ``obs`` column (a string) or columns of predicted labels. Default ``None``: the
        labellings ``utag()`` wrote (``uns['utag']['label_keys']``, whatever its
        ``save_key``), then every other column starting with ``"UTAG Label_"``.
    batch_key
        ``obs`` column of the slide; adds one row per slide besides the pooled row.
        Default ``None``: the pooled row only. No slide may be named ``"all"``
        (:data:`POOLED`), the name of the pooled row: that raises a ValueError. Cells
        without a slide (NaN/None) are scored in the pooled row only.
    ignore_labels
        Reference label (a string) or labels whose cells are left out of the scores
        (unannotated cells); default ``("NoAnnotation",)``; ``None``: none. Cells without
        a reference label (NaN/None) always are, and so are cells without a predicted
        label. A slide with no cell left gets NaN scores.

    Returns
    -------
    pandas.DataFrame
        A tidy table with one row per (prediction, slide), the pooled row (``slide``
        ``"all"``) first for each prediction, and columns ``pred_key``, ``slide``,
        ``n_cells`` (cells scored), ``n_domains`` (predicted domains among them) and one
        column per score of :data:`SCORES`: ``rand``, ``adjusted_rand``,
        ``homogeneity``, ``completeness``, ``nmi``, ``ami``.

    Examples
    --------
    >>> import pandas as pd, anndata, numpy as np
    >>> adata = anndata.AnnData(np.zeros((4, 1)), obs=pd.DataFrame(
    ...     {"truth": list("aabb"), "UTAG Label_leiden_0.1": list("0011")}, index=list("wxyz")))
    >>> evaluate_performance(adata, "truth")["adjusted_rand"].item()
    1.0
    >>> adata.obs["roi"] = list("rrss")
    >>> evaluate_performance(adata, "truth", batch_key="roi")[["slide", "n_cells", "n_domains"]]
      slide  n_cells  n_domains
    0   all        4          2
    1     r        2          1
    2     s        2          1
    """
    if pred_keys is None:
        pred_keys = written_labels(adata)
    else:  # one key, or any list-like (uns['utag']['label_keys'] comes back from a file as an array)
        pred_keys = check.as_list(pred_keys)
    missing = [k for k in [truth_key, *pred_keys, *([batch_key] if batch_key else [])] if k not in adata.obs]
    if missing:
        raise ValueError(f"`adata.obs` has no column(s) {missing}; columns: {list(adata.obs.columns)}.")
    if not pred_keys:
        raise ValueError("No predicted labels: pass `pred_keys` or run `utag()` first.")
    if ignore_labels is None or isinstance(ignore_labels, (str, numbers.Number)):
        ignore_labels = [] if ignore_labels is None else [ignore_labels]
    truth = adata.obs[truth_key].astype(str).to_numpy()
    ignored = np.isin(truth, [str(label) for label in ignore_labels]) | adata.obs[truth_key].isin(ignore_labels)
    scored = adata.obs[truth_key].notna().to_numpy() & ~np.asarray(ignored)
    if not scored.any():
        raise ValueError(f"No cell has a reference label in `adata.obs[{truth_key!r}]` outside `ignore_labels` "
                         f"{list(ignore_labels)}.")
    groups = [(POOLED, scored)]
    if batch_key:
        on_a_slide = adata.obs[batch_key].notna().to_numpy()  # the others count in the pooled row only
        slides = adata.obs[batch_key].astype(str).to_numpy()
        names = np.unique(slides[on_a_slide])
        check.check_no_slide_named_pooled(names, batch_key, "batch_key")
        groups += [(slide, scored & on_a_slide & (slides == slide)) for slide in names]
    truth = pd.factorize(truth)[0]  # the scores count pairs: integer codes, counted far faster than text
    rows = []
    for key in pred_keys:
        predicted = pd.factorize(adata.obs[key].astype(str).to_numpy())[0]
        labelled = adata.obs[key].notna().to_numpy()  # cells without a domain are left out
        for slide, cells in groups:
            cells = cells & labelled
            row = {"pred_key": key, "slide": slide, "n_cells": int(cells.sum()),
                   "n_domains": int(np.unique(predicted[cells]).size)}
            # no cell to score: no score (sklearn would call two empty labellings identical)
            row.update({name: float(score(truth[cells], predicted[cells])) if cells.any() else np.nan
                        for name, score in SCORES.items()})
            rows.append(row)
    return pd.DataFrame(rows)


def evaluate_clustering(
    adata: AnnData,
    domain_keys: str | list[str] | None = None,
    celltype_key: str | None = None,
    slide_key: str | None = check.RECORDED_SLIDE_KEY,
    max_dist: float | None = None,
    graph_key: str = "spatial_connectivities",
    use_rep: str = "X_pca",
    n_silhouette: int = 10_000,
    random_state: int = 0,
) -> pd.DataFrame:
    """Label-free quality measures of one or more domain labellings.

    Nothing is written to ``adata``. Cells without a label are left out of every measure.

    Parameters
    ----------
    adata
        Cells with the labellings in ``obs`` (typically the result of ``utag()``).
    domain_keys
        ``obs`` column (a string) or columns of the labellings. Default ``None``: the
        labellings ``utag()`` wrote (``uns['utag']['label_keys']``), then every other
        column starting with ``"UTAG Label_"``.
    celltype_key
        ``obs`` column of the cell types, for ``celltype_entropy``. Default ``None``: no
        such column.
    slide_key
        ``obs`` column of the slides, so that no spatial edge joins two slides. Default
        ``"auto"``: the slide column ``utag()`` recorded in ``uns['utag']['slide_key']``,
        if any (see :func:`utag.analysis.spatial_edges`); ``None``: all cells are one
        slide.
    max_dist
        Build the spatial graph for ``spatial_coherence`` with this radius (units of
        ``obsm['spatial']``). Default ``None``: use the graph in ``obsp[graph_key]``, or,
        without one, leave ``spatial_coherence`` out.
    graph_key
        ``obsp`` key of a stored spatial graph, used when ``max_dist`` is ``None``
        (default ``"spatial_connectivities"``, as
        ``utag(..., keep_spatial_connectivity=True)`` writes it).
    use_rep
        ``obsm`` key of the embedding the silhouette is computed in (default ``"X_pca"``,
        which ``utag()`` writes; if that default is absent the silhouette is left out,
        any other absent key raises a ValueError).
    n_silhouette
        Number of cells drawn for the silhouette (default ``10_000``; at least 2); its
        time grows with the square of this number.
    random_state
        Seed of that draw (default ``0``; ``None``: a fresh one).

    Returns
    -------
    pandas.DataFrame
        A tidy table with one row per labelling and the columns

        * ``domain_key``, ``n_domains``;
        * ``celltype_entropy``: mean over cells of the entropy (bits) of the cell-type
          mix of their domain (only with ``celltype_key``; low: domains are made of few
          cell types);
        * ``silhouette``: silhouette score in ``obsm[use_rep]`` on a seeded subsample of
          ``n_silhouette`` cells (NaN with fewer than 2 domains among them; left out when
          the default ``"X_pca"`` is absent);
        * ``spatial_coherence``: share of spatial edges between labelled cells whose two
          cells share a domain (only with a spatial graph: ``max_dist``, or the one in
          ``obsp[graph_key]``, see :func:`utag.analysis.spatial_edges`).

    Examples
    --------
    >>> from utag import utag
    >>> from utag.datasets import synthetic_tissue
    >>> adata = synthetic_tissue(n_cells=2_000, n_slides=2, random_state=0)
    >>> result = utag(adata, slide_key="roi", clustering_method="kmeans", resolutions=[0.3, 0.5],
    ...               keep_spatial_connectivity=True, progress=False)
    >>> evaluate_clustering(result, celltype_key="cell_type", slide_key="roi")["n_domains"].tolist()
    [3, 5]
    """
    from sklearn.metrics import silhouette_score

    random_state = check.seed(random_state)
    if domain_keys is None:
        domain_keys = written_labels(adata)
    else:  # one key, or any list-like (uns['utag']['label_keys'] comes back from a file as an array)
        domain_keys = check.as_list(domain_keys)
    if not domain_keys:
        raise ValueError("No labellings to evaluate: pass `domain_keys` or run `utag()` first.")
    n_silhouette = check.as_int("n_silhouette", n_silhouette, minimum=2)
    if use_rep not in adata.obsm and use_rep != "X_pca":  # without the default one, no silhouette
        raise ValueError(f"`use_rep` {use_rep!r} is not in `adata.obsm` ({list(adata.obsm)}).")
    has_graph = max_dist is not None or graph_key in adata.obsp
    edges = spatial_edges(adata, slide_key, max_dist, graph_key) if has_graph else None
    embedding = adata.obsm[use_rep] if use_rep in adata.obsm else None
    sample = None
    if embedding is not None:  # drawn from the cells in an order of their own, not the rows'
        embedding = np.asarray(embedding)
        where = np.asarray(adata.obsm["spatial"], dtype=float) if "spatial" in adata.obsm else embedding
        order = canonical_order(np.zeros(adata.n_obs, dtype=np.int64), where, embedding)
        sample = np.random.default_rng(random_state).permutation(adata.n_obs)[:n_silhouette]
        sample = sample if order is None else order[sample]
    rows = []
    for key in domain_keys:
        labels, names = _labels(adata, key)
        row = {"domain_key": key, "n_domains": len(names)}
        if celltype_key is not None:
            composition = domain_composition(adata, key, celltype_key, slide_key=None)["proportions"].to_numpy()
            with np.errstate(divide="ignore", invalid="ignore"):
                entropy = -np.nansum(np.where(composition > 0, composition * np.log2(composition), 0), axis=1)
            sizes = np.bincount(labels[labels >= 0], minlength=len(names))
            row["celltype_entropy"] = float((entropy * sizes).sum() / max(sizes.sum(), 1))
        if embedding is not None:  # cells without a label left out
            sampled = sample[labels[sample] >= 0]
            valid = np.unique(labels[sampled]).size
            row["silhouette"] = (float(silhouette_score(np.asarray(embedding)[sampled], labels[sampled]))
                                 if 1 < valid < len(sampled) else np.nan)
        if edges is not None:  # edges between labelled cells
            labelled = (labels[edges.source] >= 0) & (labels[edges.target] >= 0)
            same = labels[edges.source[labelled]] == labels[edges.target[labelled]]
            row["spatial_coherence"] = float(same.mean()) if len(same) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)
