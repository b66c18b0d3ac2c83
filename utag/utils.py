"""The original ``utag.utils`` functions, with their original signatures.

Kept so that notebooks written for the first utag release (ElementoLab/utag, Kim et al.,
Nature Methods 2022) run unchanged: same argument order, keywords, defaults, return
values and ``adata.uns`` keys. Each is a thin layer over the edge counting of
:mod:`utag.analysis`. The spatial graph is built per slide with the original's fixed
radius of 40 (what ``squidpy.gr.spatial_neighbors(radius=40, coord_type="generic")``
gave it: cells at distance <= 40 joined, no self-loops, no edges across slides) and
counted with ``np.bincount``, so no n x n matrix is made and a million cells take seconds.

Counting convention, as the original's: for domains ``a != b``, ``[a, b]`` is the number
of edges between a cell of ``a`` and a cell of ``b`` (the table is symmetric);
``[a, a]`` is the number of edges with both ends in ``a``. Cells whose label is missing
are left out.

For new code prefer :func:`utag.analysis.domain_connectivity` (any radius, reuses the
graph in ``obsp``, counts against chance), :func:`utag.analysis.celltype_connectivity`,
:func:`utag.analysis.measure_per_domain_cell_type_colocalization` (cell-type contacts
within domains, with p-values), :func:`utag.evaluation.evaluate_clustering` and
:func:`utag.evaluate_performance`, which return tidy tables.
"""
from __future__ import annotations

import logging
import typing as tp

import numpy as np
import pandas as pd
from anndata import AnnData

from . import _validation as check
from ._arrays import positions_in
from ._keys import table_key
from .analysis import _canonical_rank, pair_counts, spatial_edges
from .evaluation import SCORES
from .graph import slide_cells

__all__ = [
    "domain_connectivity",
    "celltype_connectivity",
    "slide_connectivity",
    "measure_per_domain_cell_type_colocalization",
    "evaluate_clustering",
    "evaluate_performance",
    "z_score",
    "to_uint",
    "to_float",
    "filter_kwargs",
]

logger = logging.getLogger(__name__)

ORIGINAL_RADIUS = 40.0  # the radius the original's connectivity functions hard-coded
METRICS = ("entropy", "cluster_number", "silhouette_score", "connectivity")
PERFORMANCE_METHODS = ("rand", "homogeneity")
SILHOUETTE_CELLS = 10_000


# --- kernels: arrays in, arrays out ------------------------------------------------------

def _labelled_edges(source: np.ndarray, target: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The edges whose two cells both have a label (code >= 0)."""
    labelled = (labels[source] >= 0) & (labels[target] >= 0)
    return source[labelled], target[labelled]


def _label_pair_counts(source: np.ndarray, target: np.ndarray, labels: np.ndarray, n_labels: int,
                       group: np.ndarray | None = None, n_groups: int = 1) -> np.ndarray:
    """(n_groups, n_labels, n_labels) counts of the edges whose two ends are labelled.

    ``labels`` and ``group`` hold one code per cell; an edge is counted in the group of
    its ``source`` cell.
    """
    source, target = _labelled_edges(source, target, labels)
    return pair_counts(labels[source], labels[target], n_labels, None if group is None else group[source], n_groups)


def _log_enrichment(observed: np.ndarray, shuffled: np.ndarray) -> np.ndarray:
    """Log share of each pair in ``observed + 1`` minus its log share in ``shuffled + 1``."""
    observed, shuffled = observed + 1.0, shuffled + 1.0
    return np.log(observed / observed.sum()) - np.log(shuffled / shuffled.sum())


def _mean_entropy(clusters: np.ndarray, n_clusters: int, cell_types: np.ndarray, n_types: int) -> float:
    """Mean over clusters of the entropy (nats) of their cell-type counts."""
    from scipy.stats import entropy

    both = (clusters >= 0) & (cell_types >= 0)
    counts = np.bincount(clusters[both] * n_types + cell_types[both], minlength=n_clusters * n_types)
    counts = counts.reshape(n_clusters, n_types)
    counts = counts[counts.sum(axis=1) > 0]
    return float(entropy(counts, axis=1).mean()) if len(counts) else np.nan


def _silhouette(features, clusters: np.ndarray, random_state: int) -> float:
    """Silhouette of the labelled cells; a seeded sample of 10,000 cells above that."""
    from sklearn.metrics import silhouette_score

    labelled = np.flatnonzero(clusters >= 0)
    n_distinct = np.unique(clusters[labelled]).size
    if not 2 <= n_distinct < len(labelled):
        logger.warning("silhouette_score needs 2 to n_cells - 1 clusters, got %d: reporting NaN", n_distinct)
        return np.nan
    sample_size = SILHOUETTE_CELLS if len(labelled) > SILHOUETTE_CELLS else None
    if sample_size:
        logger.info("silhouette_score on a random sample of %d of %d cells", sample_size, len(labelled))
    return float(silhouette_score(features[labelled], clusters[labelled], sample_size=sample_size,
                                  random_state=random_state))


def _log_within_over_between(counts: np.ndarray) -> float:
    """log(edges inside domains / edges between domains) of a domain x domain count table."""
    within = float(np.trace(counts))
    between = float(np.triu(counts, k=1).sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.log(np.float64(within) / between))


# --- pandas and AnnData helpers ------------------------------------------------------------

def _obs_column(adata: AnnData, key: str, argument: str) -> pd.Series:
    if key not in adata.obs.columns:
        raise ValueError(f"`{argument}={key!r}` is not a column of `adata.obs` (columns: {list(adata.obs.columns)}).")
    return adata.obs[key]


def _sorted_names(values: pd.Series) -> list:
    """Distinct non-missing values, sorted by value as the original's ``sorted(unique())``."""
    return sorted(values.dropna().unique().tolist())


def _names_in_order(values: pd.Series) -> list:
    """Distinct non-missing values in order of first appearance, as the original's ``unique()``."""
    return values.dropna().unique().tolist()


def _square(counts: np.ndarray, names: list) -> pd.DataFrame:
    return pd.DataFrame(counts.astype(float), index=pd.Index(names), columns=pd.Index(names))


def _domain_pair_counts(adata: AnnData, slide_key: str, domain_key: str):
    """Per-slide domain x domain edge counts of the radius-40 graph, the domains and the edges."""
    values = _obs_column(adata, domain_key, "domain_key")
    names = _sorted_names(values)
    edges = spatial_edges(adata, slide_key, max_dist=ORIGINAL_RADIUS)
    counts = _label_pair_counts(edges.source, edges.target, positions_in(values, names), len(names),
                                edges.slide, len(edges.slide_names))
    return counts, names, edges


# --- the original functions ---------------------------------------------------------------

def domain_connectivity(
    adata: AnnData,
    slide_key: str = "Slide",
    domain_key: str = "UTAG Label",
) -> AnnData:
    """Count the spatial edges between every pair of domains (original signature).

    Builds the radius-40 spatial graph of each slide of ``obs[slide_key]`` from
    ``obsm['spatial']`` and counts its edges by the domains of their two cells.

    Parameters
    ----------
    adata
        Cells with ``obsm['spatial']``, ``obs[slide_key]`` and ``obs[domain_key]``.
    slide_key
        ``obs`` column of the slide (default ``"Slide"``); no edge joins two slides.
    domain_key
        ``obs`` column of the domains (default ``"UTAG Label"``).

    Returns
    -------
    ``adata`` itself: this writes the domain x domain table of edge counts (floats, index
    and columns the sorted domain labels, summed over slides) into
    ``adata.uns[f"{domain_key}_domain_adjacency_matrix"]`` and returns ``adata``.

    Examples
    --------
    >>> from utag.datasets import synthetic_tissue
    >>> adata = synthetic_tissue(n_cells=1_000, n_domains=3, slide_key="Slide", random_state=0)
    >>> adata = domain_connectivity(adata, domain_key="domain")
    >>> table = adata.uns["domain_domain_adjacency_matrix"]
    >>> table.shape, bool((table == table.T).all().all())
    ((3, 3), True)
    """
    counts, names, _ = _domain_pair_counts(adata, slide_key, domain_key)
    adata.uns[table_key(domain_key, "domain_adjacency_matrix")] = _square(counts.sum(axis=0), names)
    return adata


def slide_connectivity(
    adata: AnnData,
    slide_key: str = "roi",
    domain_key: str = "UTAG Label",
) -> dict:
    """Domain x domain edge counts of each slide (original signature).

    Parameters
    ----------
    adata
        Cells with ``obsm['spatial']``, ``obs[slide_key]`` and ``obs[domain_key]``.
    slide_key
        ``obs`` column of the slide (default ``"roi"``).
    domain_key
        ``obs`` column of the domains (default ``"UTAG Label"``).

    Returns
    -------
    ``{slide: DataFrame}``, slides in order of first appearance: the counts of
    :func:`domain_connectivity` for the radius-40 graph of that slide alone, with the
    domains that have no edge on the slide (all-zero rows and columns) dropped. Nothing
    is written to ``adata``.

    Examples
    --------
    >>> from utag.datasets import synthetic_tissue
    >>> adata = synthetic_tissue(n_cells=1_000, n_slides=2, n_domains=3, random_state=0)
    >>> tables = slide_connectivity(adata, domain_key="domain")
    >>> list(tables), tables["roi_0"].shape
    (['roi_0', 'roi_1'], (3, 3))
    """
    slides = _obs_column(adata, slide_key, "slide_key")
    counts, names, edges = _domain_pair_counts(adata, slide_key, domain_key)
    tables = {}
    for slide in slides.dropna().unique():
        table = _square(counts[edges.slide_names.get_loc(slide)], names)
        tables[slide] = table.loc[(table != 0).any(axis=1), (table != 0).any(axis=0)]
    return tables


def celltype_connectivity(
    adata: AnnData,
    slide_key: str = "Slide",
    domain_key: str = "UTAG Label",
    celltype_key: str = "cluster_0.5_label",
) -> AnnData:
    """Per domain, cell type x cell type counts of the edges inside it (original signature).

    Parameters
    ----------
    adata
        Cells with ``obsm['spatial']`` and ``obs`` columns ``slide_key``, ``domain_key``
        and ``celltype_key``.
    slide_key
        ``obs`` column of the slide (default ``"Slide"``); no edge joins two slides.
    domain_key
        ``obs`` column of the domains (default ``"UTAG Label"``).
    celltype_key
        ``obs`` column of the cell types (default ``"cluster_0.5_label"``).

    Returns
    -------
    ``adata`` itself: this writes ``{domain: DataFrame}`` into
    ``adata.uns[f"{domain_key}_celltype_adjacency_matrix"]`` and returns ``adata``. Each
    DataFrame has every cell type as index and columns (in order of first appearance)
    and counts, as floats summed over slides, the radius-40 edges with both cells in that
    domain.

    Examples
    --------
    >>> from utag.datasets import synthetic_tissue
    >>> adata = synthetic_tissue(n_cells=1_000, n_domains=3, n_cell_types=4, slide_key="Slide", random_state=0)
    >>> adata = celltype_connectivity(adata, domain_key="domain", celltype_key="cell_type")
    >>> tables = adata.uns["domain_celltype_adjacency_matrix"]
    >>> len(tables), tables["domain_0"].shape
    (3, (4, 4))
    """
    domains = _obs_column(adata, domain_key, "domain_key")
    cell_types = _obs_column(adata, celltype_key, "celltype_key")
    domain_names, type_names = _names_in_order(domains), _names_in_order(cell_types)
    domain_codes = positions_in(domains, domain_names)
    edges = spatial_edges(adata, slide_key, max_dist=ORIGINAL_RADIUS)
    inside = (domain_codes[edges.source] == domain_codes[edges.target]) & (domain_codes[edges.source] >= 0)
    counts = _label_pair_counts(edges.source[inside], edges.target[inside], positions_in(cell_types, type_names),
                                len(type_names), domain_codes, len(domain_names))
    adata.uns[table_key(domain_key, "celltype_adjacency_matrix")] = {
        domain: _square(table, type_names) for domain, table in zip(domain_names, counts)
    }
    return adata


def measure_per_domain_cell_type_colocalization(
    adata: AnnData,
    utag_key: str = "UTAG Label",
    max_dist: int = 40,
    n_iterations: int = 100,
    *,
    random_state: int = 0,
) -> pd.DataFrame:
    """Domain x domain contact enrichment against shuffled labels (original signature).

    Despite its name, the original measured how often DOMAINS touch each other, not cell
    types; so does this. The spatial graph joins cells at distance ``<= max_dist`` over
    ALL cells, ignoring slides, as the original did (it had no ``slide_key``): with
    several slides in one coordinate frame, cells of different slides that overlap are
    joined. Observed ``M[a, b]``: edges between domains ``a`` and ``b`` (``M[a, a]``:
    edges inside ``a``), as ``networkx.attr_matrix`` counted them. Background: the sum of
    ``M`` over ``n_iterations`` random permutations of the labels among the cells.

    Parameters
    ----------
    adata
        Cells with ``obsm['spatial']`` and domains in ``obs[utag_key]``.
    utag_key
        ``obs`` column of the domains (default ``"UTAG Label"``).
    max_dist
        Radius of the spatial graph (default 40).
    n_iterations
        Label permutations for the background (default 100).
    random_state
        Seed of the permutations (keyword only; the original was unseeded).

    Returns
    -------
    DataFrame ``log(F / F.sum()) - log(S / S.sum())`` with ``F = M + 1`` and ``S`` = the
    summed shuffled ``M`` + 1; index and columns are the domains (sorted, or every category
    in category order for a categorical column, as the original: a category no cell has,
    as after subsetting a result to one slide, gets a row and a column of NaN). Positive:
    the two domains touch more than chance. Nothing is written to ``adata``.

    Examples
    --------
    >>> from utag.datasets import synthetic_tissue
    >>> adata = synthetic_tissue(n_cells=1_000, n_slides=1, n_domains=3, random_state=0)
    >>> table = measure_per_domain_cell_type_colocalization(adata, "domain", n_iterations=20)
    >>> table.shape, bool((np.diag(table) > 0).all())  # domains touch themselves more than chance
    ((3, 3), True)
    """
    random_state = check.seed(random_state)
    n_iterations = check.as_int("n_iterations", n_iterations)
    values = _obs_column(adata, utag_key, "utag_key")
    every_category = list(values.cat.categories) if isinstance(values.dtype, pd.CategoricalDtype) else None
    if every_category is not None:
        names = list(values.cat.remove_unused_categories().cat.categories)
    else:
        names = _sorted_names(values)
    labels = positions_in(values, names)
    edges = spatial_edges(adata, None, max_dist=max_dist)
    source, target = _labelled_edges(edges.source, edges.target, labels)
    observed = pair_counts(labels[source], labels[target], len(names))[0]
    rng = np.random.default_rng(random_state)
    cells = np.flatnonzero(labels >= 0)
    # shuffled in an order of the cells' own (utag.analysis._canonical_rank), so that the same
    # cells in another row order get the same background
    cells = cells[np.argsort(_canonical_rank(adata, np.zeros(adata.n_obs, dtype=np.int64), labels)[cells])]
    shuffled = labels.copy()
    shuffled_total = np.zeros_like(observed)
    for _ in range(n_iterations):
        shuffled[cells] = labels[cells][rng.permutation(len(cells))]
        shuffled_total += pair_counts(shuffled[source], shuffled[target], len(names))[0]
    table = pd.DataFrame(_log_enrichment(observed, shuffled_total), index=pd.Index(names), columns=pd.Index(names))
    return table if every_category is None else table.reindex(index=every_category, columns=every_category)


def evaluate_clustering(
    adata: AnnData,
    cluster_keys,
    celltype_label: str = "celltype",
    slide_key: str = "roi",
    metrics=METRICS,
    *,
    random_state: int = 0,
) -> pd.DataFrame:
    """Label-free quality measures of one or more clusterings (original signature).

    Parameters
    ----------
    adata
        Cells with the clusterings in ``obs``.
    cluster_keys
        ``obs`` column(s) of the clusterings.
    celltype_label
        ``obs`` column of the cell types (for ``"entropy"``).
    slide_key
        ``obs`` column of the slide (for ``"connectivity"``).
    metrics
        Any of ``"entropy"`` (mean over clusters of the entropy, in nats, of the cluster's
        cell-type counts), ``"cluster_number"``, ``"silhouette_score"`` (on ``adata.X``;
        a seeded sample of 10,000 cells when there are more) and ``"connectivity"``
        (log of edges inside domains over edges between domains, radius-40 graph per
        slide).
    random_state
        Seed of the silhouette sample (keyword only).

    Returns
    -------
    DataFrame of floats, one row per metric and one column per clustering. Nothing is
    written to ``adata``.

    Examples
    --------
    >>> from utag.datasets import synthetic_tissue
    >>> adata = synthetic_tissue(n_cells=1_000, n_domains=3, random_state=0)
    >>> table = evaluate_clustering(adata, "domain", celltype_label="cell_type")
    >>> table.index.tolist(), float(table.loc["cluster_number", "domain"])
    (['entropy', 'cluster_number', 'silhouette_score', 'connectivity'], 3.0)
    """
    cluster_keys = [cluster_keys] if isinstance(cluster_keys, str) else list(cluster_keys)
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [metric for metric in metrics if metric not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"`metrics` has unknown metric(s) {unknown or metrics}; choose from {list(METRICS)}.")
    if "entropy" in metrics:
        cell_type_values = _obs_column(adata, celltype_label, "celltype_label")
        type_names = _names_in_order(cell_type_values)
        cell_types = positions_in(cell_type_values, type_names)
    if "silhouette_score" in metrics and adata.X is None:
        raise ValueError("`adata.X` is empty, so there is no silhouette score: drop 'silhouette_score' from `metrics`.")
    edges = spatial_edges(adata, slide_key, max_dist=ORIGINAL_RADIUS) if "connectivity" in metrics else None
    table = pd.DataFrame(np.nan, index=pd.Index(metrics), columns=pd.Index(cluster_keys))
    for key in cluster_keys:
        values = _obs_column(adata, key, "cluster_keys")
        names = _sorted_names(values)
        clusters = positions_in(values, names)
        for metric in metrics:
            if metric == "entropy":
                score = _mean_entropy(clusters, len(names), cell_types, len(type_names))
            elif metric == "cluster_number":
                score = len(names)
            elif metric == "silhouette_score":
                score = _silhouette(adata.X, clusters, random_state)
            else:
                score = _log_within_over_between(
                    _label_pair_counts(edges.source, edges.target, clusters, len(names))[0])
            table.loc[metric, key] = score
    return table


def evaluate_performance(
    adata: AnnData,
    batch_key: str = "Slide",
    truth_key: str = "DOM_argmax",
    pred_key: str = "cluster",
    method: str = "rand",
) -> list:
    """Agreement of predicted with reference domains, one score per slide (original signature).

    Parameters
    ----------
    adata
        Cells with ``obs`` columns ``batch_key``, ``truth_key`` and ``pred_key``.
    batch_key
        ``obs`` column of the slide (default ``"Slide"``).
    truth_key
        ``obs`` column of the reference labels (default ``"DOM_argmax"``).
    pred_key
        ``obs`` column of the predicted labels (default ``"cluster"``).
    method
        ``"rand"`` (``sklearn.metrics.rand_score``) or ``"homogeneity"``
        (``sklearn.metrics.homogeneity_score``).

    Returns
    -------
    A list of floats, one per slide in order of first appearance in ``obs[batch_key]``,
    over the cells with both labels (cells without a reference or a predicted label, or
    without a slide, are left out, as :func:`utag.evaluate_performance` leaves them out; a
    slide with no such cell scores NaN). :func:`utag.evaluate_performance` gives more
    scores, pooled and per slide, as a table.

    Examples
    --------
    >>> import anndata
    >>> obs = pd.DataFrame({"Slide": list("aaabbb"), "DOM_argmax": list("xxyxyy"),
    ...                     "cluster": list("001011")}, index=[f"cell_{i}" for i in range(6)])
    >>> evaluate_performance(anndata.AnnData(obs=obs))
    [1.0, 1.0]
    """
    if method not in PERFORMANCE_METHODS:
        raise ValueError(f"`method` must be one of {list(PERFORMANCE_METHODS)}, got {method!r}.")
    score = SCORES[method]
    slides, _ = pd.factorize(_obs_column(adata, batch_key, "batch_key"))  # codes in order of appearance
    truth = _obs_column(adata, truth_key, "truth_key")
    predicted = _obs_column(adata, pred_key, "pred_key")
    both = (truth.notna() & predicted.notna()).to_numpy()
    truth, predicted = truth.astype(str).to_numpy(), predicted.astype(str).to_numpy()
    scores = []
    for cells in slide_cells(slides):
        if slides[cells[0]] < 0:  # cells without a slide
            continue
        cells = cells[both[cells]]
        scores.append(float(score(truth[cells], predicted[cells])) if len(cells) else np.nan)
    return scores


# --- small array helpers the original exported ----------------------------------------------

def z_score(x):
    """Min-max scaling to [0, 1], ``(x - min) / (max - min)``: despite its name, the original's
    ``z_score`` neither centres on the mean nor divides by the standard deviation.

    Examples
    --------
    >>> z_score(np.array([2.0, 4.0, 6.0]))
    array([0. , 0.5, 1. ])
    """
    return (x - x.min()) / (x.max() - x.min())


def to_uint(x, base: int = 8):
    """Floats in [0, 1] to unsigned integers of ``base`` bits (``x * (2**base - 1)``, truncated).

    Examples
    --------
    >>> to_uint(np.array([0.0, 0.5, 1.0]))
    array([  0, 127, 255], dtype=uint8)
    """
    return (x * (2**base - 1)).astype(f"uint{base}")


def to_float(x, base: int = 32):
    """``x / x.max()`` as floats of ``base`` bits.

    Examples
    --------
    >>> to_float(np.array([0, 2, 4]))
    array([0. , 0.5, 1. ], dtype=float32)
    """
    return (x / x.max()).astype(f"float{base}")


def filter_kwargs(kwargs: dict[str, tp.Any], callabl: tp.Callable, exclude=None) -> dict[str, tp.Any]:
    """The entries of ``kwargs`` that ``callabl`` accepts (all of them if it takes
    ``**kwargs``), less the names in ``exclude``.

    Examples
    --------
    >>> filter_kwargs({"a": 1, "b": 2, "c": 3}, lambda a, b: None, exclude=["b"])
    {'a': 1}
    """
    from inspect import signature

    parameters = signature(callabl).parameters
    takes_any = any(parameter.kind == parameter.VAR_KEYWORD for parameter in parameters.values())
    return {key: value for key, value in kwargs.items()
            if (takes_any or key in parameters) and key not in (exclude or [])}
