"""Step 4 of UTAG: what the domains mean.

Which domains touch which (:func:`domain_connectivity`, :func:`slide_connectivity`), which
cell types make up each domain (:func:`domain_composition`), which cell types touch
within a domain (:func:`celltype_connectivity`) and more than chance says
(:func:`measure_per_domain_cell_type_colocalization`). How good a labelling is:
:mod:`utag.evaluation`.

Every function works on the spatial graph's edge list: the graph already in
``obsp['spatial_connectivities']`` (as ``utag(..., keep_spatial_connectivity=True)`` or
squidpy write it), or one built per slide with an explicit ``max_dist``. Edges never
cross slides. Counting is done with ``np.bincount`` over edges, so memory is linear in the
number of edges and 1,000,000 cells take seconds.

Counting convention for a pair of labels ``a != b``: ``counts[a, b]`` is the number of
edges between a cell labelled ``a`` and one labelled ``b`` (the matrix is symmetric);
``counts[a, a]`` is the number of edges with both ends labelled ``a``. Self-loops are
not edges.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from . import _validation as check
from ._keys import table_key
from ._order import canonical_order
from ._progress import tqdm
from .graph import slide_pairs

__all__ = [
    "Edges",
    "spatial_edges",
    "pair_counts",
    "domain_connectivity",
    "slide_connectivity",
    "celltype_connectivity",
    "measure_per_domain_cell_type_colocalization",
    "domain_composition",
]

logger = logging.getLogger(__name__)


@dataclass
class Edges:
    """Undirected spatial edges ``(source[k], target[k])``, ``source < target``, no self-loops.

    What :func:`spatial_edges` returns; edges never join cells of different slides.

    Attributes
    ----------
    source, target
        int64 arrays (one entry per edge): row positions in ``adata`` of the two cells an
        edge joins, ``source[k] < target[k]``.
    slide
        int64 array (one entry per cell, not per edge): the cell's slide as a position in
        ``slide_names``; all ``0`` when the cells are one slide.
    slide_names
        The slides' names, sorted (``pd.Index(["all"])`` for one slide).
    """

    source: np.ndarray
    target: np.ndarray
    slide: np.ndarray  # slide code of every cell
    slide_names: pd.Index


def spatial_edges(adata: AnnData, slide_key: str | None = check.RECORDED_SLIDE_KEY, max_dist: float | None = None,
                  graph_key: str = "spatial_connectivities") -> Edges:
    """The spatial graph's edges, within slides, as an :class:`Edges` edge list.

    Nothing is written to ``adata``.

    Parameters
    ----------
    adata
        Cells; with ``obsm['spatial']`` (x, y[, z] per cell) when ``max_dist`` is given,
        else with a graph in ``obsp[graph_key]``. ``X`` is not needed.
    slide_key
        ``obs`` column naming each cell's slide; edges between slides are never made (and
        those of a stored graph are dropped, with a warning in the log). Default
        ``"auto"``: the slide column ``utag()`` recorded in ``uns['utag']['slide_key']``
        (:func:`utag._validation.recorded_slide_key`); all cells are one slide if nothing
        was recorded, if ``utag()`` ran on one slide, or (with a warning) if ``adata.obs``
        lacks the recorded column. ``None``: all cells are one slide.
    max_dist
        Build the graph anew: cells of one slide closer than this (in the units of
        ``obsm['spatial']``, e.g. pixels) are joined. Default ``None``: read the graph in
        ``obsp[graph_key]`` instead (its weights and direction are ignored: any non-zero
        entry in either direction is an edge).
    graph_key
        ``obsp`` key of the stored graph, used when ``max_dist`` is ``None`` (default
        ``"spatial_connectivities"``, as ``utag(..., keep_spatial_connectivity=True)`` and
        squidpy write it).

    Returns
    -------
    Edges
        Each undirected edge once, ``source < target``, without self-loops.

    Examples
    --------
    >>> from utag.datasets import synthetic_tissue
    >>> adata = synthetic_tissue(n_cells=1_000, n_slides=2, random_state=0)
    >>> edges = spatial_edges(adata, slide_key="roi", max_dist=20)
    >>> list(edges.slide_names), bool((edges.source < edges.target).all())
    (['roi_0', 'roi_1'], True)
    >>> bool((edges.slide[edges.source] == edges.slide[edges.target]).all())  # within slides
    True
    """
    check.check_n_cells(adata, features=False)  # a result read back without X is fine
    codes, names = check.slide_codes(adata, check.recorded_slide_key(adata, slide_key))
    if max_dist is not None:
        max_dist = check.check_positive("max_dist", max_dist)
        pairs = slide_pairs(check.spatial_coordinates(adata), codes, max_dist)
        return Edges(pairs[:, 0], pairs[:, 1], codes, names)
    if graph_key not in adata.obsp:
        raise ValueError(
            f"`adata.obsp['{graph_key}']` is missing, so there is no spatial graph to use. Pass "
            "`max_dist=` to build one, or run `utag(..., keep_spatial_connectivity=True)`."
        )
    graph = sp.csr_matrix(adata.obsp[graph_key])
    upper = sp.triu((graph + graph.T) != 0, k=1).tocoo()
    source, target = upper.row.astype(np.int64), upper.col.astype(np.int64)
    crossing = codes[source] != codes[target]
    if crossing.any():
        logger.warning("ignoring %d edges of obsp['%s'] that join different slides", crossing.sum(), graph_key)
        source, target = source[~crossing], target[~crossing]
    return Edges(source, target, codes, names)


def _labels(adata: AnnData, key: str) -> tuple[np.ndarray, pd.Index]:
    """Integer codes (-1 for missing) and category names of ``obs[key]``."""
    if key not in adata.obs.columns:
        raise ValueError(f"`{key!r}` is not a column of `adata.obs` (columns: {list(adata.obs.columns)}).")
    values = adata.obs[key]
    categorical = values if isinstance(values.dtype, pd.CategoricalDtype) else values.astype("category")
    categorical = categorical.cat.remove_unused_categories()
    return categorical.cat.codes.to_numpy().astype(np.int64), pd.Index(categorical.cat.categories.astype(str))


def pair_counts(first: np.ndarray, second: np.ndarray, n_labels: int,
                group: np.ndarray | None = None, n_groups: int = 1) -> np.ndarray:
    """Symmetric label-pair edge counts, shape (n_groups, n_labels, n_labels).

    The counting convention of this module: ``counts[g, a, b]`` (``a != b``) is the number
    of edges of group ``g`` with one end labelled ``a`` and the other ``b``, whichever end
    is which (so the matrix is symmetric); ``counts[g, a, a]`` is the number of edges with
    both ends labelled ``a``.

    Parameters
    ----------
    first, second
        Integer labels (``0 .. n_labels - 1``) at the two ends of every edge: ``first[k]``
        and ``second[k]`` for edge ``k``. Drop edges with a missing label (``-1``) first.
    n_labels
        Number of labels; the size of the last two axes.
    group
        Integer group (``0 .. n_groups - 1``) each edge is counted in, e.g. its slide or
        domain. Default ``None``: every edge in group 0.
    n_groups
        Number of groups; the size of the first axis (default ``1``; give it with
        ``group``).

    Returns
    -------
    numpy.ndarray
        int64 counts of shape ``(n_groups, n_labels, n_labels)``.

    Examples
    --------
    >>> pair_counts(np.array([0, 0, 1]), np.array([1, 0, 1]), n_labels=2)
    array([[[1, 1],
            [1, 1]]])
    >>> pair_counts(np.array([0, 0, 1]), np.array([1, 0, 1]), n_labels=2,
    ...             group=np.array([0, 1, 1]), n_groups=2)
    array([[[0, 1],
            [1, 0]],
    <BLANKLINE>
           [[1, 0],
            [0, 1]]])
    """
    group = np.zeros(len(first), dtype=np.int64) if group is None else group
    flat = (group * n_labels + first) * n_labels + second
    one_way = np.bincount(flat, minlength=n_groups * n_labels * n_labels).reshape(n_groups, n_labels, n_labels)
    both_ways = one_way + one_way.transpose(0, 2, 1)
    diagonal = np.arange(n_labels)
    both_ways[:, diagonal, diagonal] = one_way[:, diagonal, diagonal]
    return both_ways


def _expected_under_permutation(label_counts: np.ndarray, n_edges: np.ndarray) -> np.ndarray:
    """Mean pair counts when labels are shuffled among the cells of each group.

    ``label_counts``: (groups, labels) cells per label; ``n_edges``: (groups,) edges. An
    edge joins labels ``a != b`` with probability ``2 n_a n_b / (n (n - 1))`` and two
    ``a`` cells with probability ``n_a (n_a - 1) / (n (n - 1))``.
    """
    n = label_counts.sum(axis=1).astype(float)
    pairs_of_cells = np.maximum(n * (n - 1), 1)[:, None, None]
    counts = label_counts.astype(float)
    expected = 2 * counts[:, :, None] * counts[:, None, :]
    diagonal = np.arange(counts.shape[1])
    expected[:, diagonal, diagonal] = counts * (counts - 1)
    return expected / pairs_of_cells * n_edges[:, None, None]


def _square(values: np.ndarray, names: pd.Index) -> pd.DataFrame:
    return pd.DataFrame(values, index=names.copy(), columns=names.copy())


def _tidy(values: dict[str, np.ndarray], levels: dict[str, pd.Index]) -> pd.DataFrame:
    """Long table of same-shaped arrays, one column per level (in axis order) and per value."""
    index = pd.MultiIndex.from_product(list(levels.values()), names=list(levels.keys()))
    return pd.DataFrame({name: array.reshape(-1) for name, array in values.items()}, index=index).reset_index()


def domain_connectivity(
    adata: AnnData,
    domain_key: str,
    slide_key: str | None = check.RECORDED_SLIDE_KEY,
    max_dist: float | None = None,
    graph_key: str = "spatial_connectivities",
    key_added: str | None = None,
) -> dict[str, pd.DataFrame]:
    """Domain x domain counts of spatial edges, raw and against chance.

    Parameters
    ----------
    adata
        Cells with domain labels in ``obs[domain_key]``.
    domain_key
        ``obs`` column of the domains, e.g. ``"UTAG Label_leiden_0.1"``. Cells without a
        label (NaN) are left out; categories no cell has are dropped.
    slide_key
        ``obs`` column of the slide; edges never join slides, the expectation is computed
        per slide and counts are also reported per slide. Default ``"auto"``: the slide
        column ``utag()`` recorded in ``uns['utag']['slide_key']`` (if any; see
        :func:`spatial_edges`); ``None``: all cells are one slide.
    max_dist
        Build the spatial graph with this radius (units of ``obsm['spatial']``). Default
        ``None``: use the graph in ``obsp[graph_key]``.
    graph_key
        ``obsp`` key of an existing spatial graph, used when ``max_dist`` is ``None``
        (default ``"spatial_connectivities"``).
    key_added
        ``uns`` key the result is stored under. Default ``None``:
        ``f"{domain_key}_connectivity"``, where :mod:`utag.plotting` looks for it.

    Returns
    -------
    dict of str to pandas.DataFrame
        Also stored in ``adata.uns[key_added]`` (the only change made to ``adata``):

        * ``counts``: domain x domain edge counts, summed over slides;
        * ``expected``: their mean if domain labels were shuffled among the cells of each
          slide (exact, no sampling);
        * ``ratio``: ``counts / expected`` (> 1: the domains touch more than chance; NaN
          where ``expected`` is 0);
        * ``log2_ratio``: ``log2((counts + 1) / (expected + 1))``;
        * ``per_slide``: tidy table (``slide``, ``domain_a``, ``domain_b``, ``count``,
          ``expected``);
        * ``cells``: the cells of each domain (column ``cells``), which tells the plots
          whether stored tables are of the cells they draw.

    Examples
    --------
    >>> from utag.datasets import synthetic_tissue
    >>> adata = synthetic_tissue(n_cells=2_000, n_slides=2, n_domains=3, random_state=0)
    >>> result = domain_connectivity(adata, "domain", slide_key="roi", max_dist=20)
    >>> result["counts"].shape
    (3, 3)
    >>> bool((np.diag(result["ratio"]) > 1).all())  # domains are spatially coherent
    True
    >>> sorted(result) == sorted(adata.uns["domain_connectivity"])
    True
    """
    if key_added is not None:
        check.save_key(key_added, "key_added", "the uns key the tables are stored under")
    result = _connectivity_tables(adata, domain_key, slide_key, max_dist, graph_key)
    adata.uns[key_added or table_key(domain_key, "connectivity")] = result
    return result


def _connectivity_tables(adata: AnnData, domain_key: str, slide_key: str | None, max_dist: float | None,
                         graph_key: str = "spatial_connectivities") -> dict[str, pd.DataFrame]:
    """What :func:`domain_connectivity` returns, without storing it in ``adata``."""
    edges = spatial_edges(adata, slide_key, max_dist, graph_key)
    labels, names = _labels(adata, domain_key)
    per_slide, expected = _grouped_label_counts(edges, labels, len(names))
    counts, expected_total = per_slide.sum(axis=0), expected.sum(axis=0)
    return {
        "counts": _square(counts, names),
        "expected": _square(expected_total, names),
        "ratio": _square(np.divide(counts, expected_total, out=np.full(counts.shape, np.nan),
                                   where=expected_total > 0), names),
        "log2_ratio": _square(np.log2((counts + 1) / (expected_total + 1)), names),
        "per_slide": _tidy({"count": per_slide, "expected": expected},
                           {"slide": edges.slide_names.astype(str), "domain_a": names, "domain_b": names}),
        "cells": pd.DataFrame({"cells": np.bincount(labels[labels >= 0], minlength=len(names))},
                              index=pd.Index(names, name="domain")),
    }


def _grouped_label_counts(edges: Edges, labels: np.ndarray, n_labels: int):
    """Per-slide pair counts of labelled edges and their expectation under shuffling."""
    n_slides = len(edges.slide_names)
    labelled = (labels[edges.source] >= 0) & (labels[edges.target] >= 0)
    source, target = edges.source[labelled], edges.target[labelled]
    edge_slide = edges.slide[source]
    observed = pair_counts(labels[source], labels[target], n_labels, edge_slide, n_slides)
    cells = labels >= 0
    label_counts = np.bincount(edges.slide[cells] * n_labels + labels[cells],
                               minlength=n_slides * n_labels).reshape(n_slides, n_labels)
    n_edges = np.bincount(edge_slide, minlength=n_slides)
    return observed, _expected_under_permutation(label_counts, n_edges)


def slide_connectivity(
    adata: AnnData,
    domain_key: str,
    slide_key: str,
    max_dist: float | None = None,
    graph_key: str = "spatial_connectivities",
) -> dict[str, pd.DataFrame]:
    """Domain x domain edge counts of each slide: ``{slide: DataFrame}``.

    The per-slide ``count`` column of :func:`domain_connectivity` as one square table per
    slide. Nothing is written to ``adata``.

    Parameters
    ----------
    adata
        Cells with domain labels in ``obs[domain_key]``.
    domain_key
        ``obs`` column of the domains. Cells without a label are left out.
    slide_key
        ``obs`` column of the slides (required). ``"auto"`` takes the slide column
        ``utag()`` recorded in ``uns['utag']['slide_key']``; ``None``: all cells are one
        slide, returned under the name ``"all"``.
    max_dist
        Build the spatial graph with this radius (units of ``obsm['spatial']``). Default
        ``None``: use the graph in ``obsp[graph_key]``.
    graph_key
        ``obsp`` key of an existing spatial graph, used when ``max_dist`` is ``None``
        (default ``"spatial_connectivities"``).

    Returns
    -------
    dict of str to pandas.DataFrame
        One domain x domain table of edge counts per slide, keyed by the slide's name
        (as text), in sorted order; every table has every domain.

    Examples
    --------
    >>> from utag.datasets import synthetic_tissue
    >>> adata = synthetic_tissue(n_cells=2_000, n_slides=2, n_domains=3, random_state=0)
    >>> sorted(slide_connectivity(adata, "domain", "roi", max_dist=20))
    ['roi_0', 'roi_1']
    """
    edges = spatial_edges(adata, slide_key, max_dist, graph_key)
    labels, names = _labels(adata, domain_key)
    per_slide, _ = _grouped_label_counts(edges, labels, len(names))
    return {str(slide): _square(counts, names) for slide, counts in zip(edges.slide_names, per_slide)}


@dataclass
class _WithinDomain:
    """Edges whose two ends share a domain and both have a cell type, with the labels."""

    edges: Edges
    source: np.ndarray
    target: np.ndarray
    domains: np.ndarray
    domain_names: pd.Index
    cell_types: np.ndarray
    type_names: pd.Index

    def count(self, cell_types: np.ndarray) -> np.ndarray:
        """(domains, types, types) pair counts of these edges for the given cell types."""
        return pair_counts(cell_types[self.source], cell_types[self.target], len(self.type_names),
                           self.domains[self.source], len(self.domain_names))


def _within_domain(adata: AnnData, domain_key: str, celltype_key: str, slide_key, max_dist, graph_key):
    edges = spatial_edges(adata, slide_key, max_dist, graph_key)
    domains, domain_names = _labels(adata, domain_key)
    cell_types, type_names = _labels(adata, celltype_key)
    keep = (domains[edges.source] == domains[edges.target]) & (domains[edges.source] >= 0)
    keep &= (cell_types[edges.source] >= 0) & (cell_types[edges.target] >= 0)
    return _WithinDomain(edges, edges.source[keep], edges.target[keep], domains, domain_names, cell_types, type_names)


def celltype_connectivity(
    adata: AnnData,
    domain_key: str,
    celltype_key: str,
    slide_key: str | None = check.RECORDED_SLIDE_KEY,
    max_dist: float | None = None,
    graph_key: str = "spatial_connectivities",
) -> dict[str, pd.DataFrame]:
    """Per domain, cell type x cell type counts of the edges inside that domain.

    Only edges with both ends in the same domain, and both ends with a cell type, count.
    Nothing is written to ``adata``; for the same counts against chance see
    :func:`measure_per_domain_cell_type_colocalization`.

    Parameters
    ----------
    adata
        Cells with domain labels and cell types in ``obs``.
    domain_key
        ``obs`` column of the domains. Cells without a label are left out.
    celltype_key
        ``obs`` column of the cell types (e.g. ``"cell_type"``). Cells without one are left
        out.
    slide_key
        ``obs`` column of the slides, so that no edge joins two slides. Default ``"auto"``:
        the slide column ``utag()`` recorded in ``uns['utag']['slide_key']`` (if any; see
        :func:`spatial_edges`); ``None``: all cells are one slide.
    max_dist
        Build the spatial graph with this radius (units of ``obsm['spatial']``). Default
        ``None``: use the graph in ``obsp[graph_key]``.
    graph_key
        ``obsp`` key of an existing spatial graph, used when ``max_dist`` is ``None``
        (default ``"spatial_connectivities"``).

    Returns
    -------
    dict of str to pandas.DataFrame
        ``{domain: table}``: a symmetric cell type x cell type table of edge counts inside
        that domain, summed over slides (counting convention of :func:`pair_counts`).

    Examples
    --------
    >>> from utag.datasets import synthetic_tissue
    >>> adata = synthetic_tissue(n_cells=2_000, n_slides=2, n_domains=3, n_cell_types=4, random_state=0)
    >>> tables = celltype_connectivity(adata, "domain", "cell_type", slide_key="roi", max_dist=20)
    >>> sorted(tables), tables["domain_0"].shape
    (['domain_0', 'domain_1', 'domain_2'], (4, 4))
    """
    within = _within_domain(adata, domain_key, celltype_key, slide_key, max_dist, graph_key)
    counts = within.count(within.cell_types)
    return {domain: _square(table, within.type_names) for domain, table in zip(within.domain_names, counts)}


def _canonical_rank(adata: AnnData, slide_codes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each cell's position in :func:`utag._order.canonical_order` (slide, ``obsm['spatial']``,
    then ``labels``), which does not depend on the order of the rows; without coordinates
    (a graph read from ``obsp``), the cells are ordered by slide, then name."""
    if "spatial" in adata.obsm:  # labels: one column per kind of label, which break canonical_order's ties
        labels = np.asarray(labels).reshape(len(labels), -1)
        order = canonical_order(slide_codes, check.spatial_coordinates(adata), labels)
    else:
        order = np.lexsort((np.asarray(adata.obs_names, dtype=str), slide_codes))
    rank = np.arange(len(slide_codes))
    if order is not None:
        rank[order] = np.arange(len(order))
    return rank


def measure_per_domain_cell_type_colocalization(
    adata: AnnData,
    domain_key: str,
    celltype_key: str,
    slide_key: str | None = check.RECORDED_SLIDE_KEY,
    max_dist: float | None = None,
    graph_key: str = "spatial_connectivities",
    n_permutations: int = 100,
    random_state: int = 0,
    progress: bool = False,
    key_added: str | None = None,
) -> pd.DataFrame:
    """Permutation test of cell-type adjacency within each domain.

    Observed: for every domain and pair of cell types, the number of spatial edges inside
    the domain joining those types. Null: cell-type labels shuffled among the cells of
    the same domain and slide (composition kept, positions randomised), recounted
    ``n_permutations`` times. Each permutation is one vectorised shuffle and one
    ``bincount`` over the edges. The shuffles are drawn over the cells in an order of
    their own (slide, position, domain, cell type; slide and name without
    ``obsm['spatial']``), so that, at a given ``random_state``, the result does not
    depend on the order of the rows.

    Parameters
    ----------
    adata
        Cells with domain labels and cell types in ``obs``.
    domain_key
        ``obs`` column of the domains. Cells without a label are left out.
    celltype_key
        ``obs`` column of the cell types. Cells without one are left out (and keep no
        label in the shuffles).
    slide_key
        ``obs`` column of the slides: no edge joins two slides, and labels are shuffled
        within a slide. Default ``"auto"``: the slide column ``utag()`` recorded in
        ``uns['utag']['slide_key']`` (if any; see :func:`spatial_edges`); ``None``: all
        cells are one slide.
    max_dist
        Build the spatial graph with this radius (units of ``obsm['spatial']``). Default
        ``None``: use the graph in ``obsp[graph_key]``.
    graph_key
        ``obsp`` key of an existing spatial graph, used when ``max_dist`` is ``None``
        (default ``"spatial_connectivities"``).
    n_permutations
        Number of shuffles for the null distribution (default ``100``); the smallest
        p-value possible is ``1 / (1 + n_permutations)``.
    random_state
        Seed of the shuffles (default ``0``); ``None`` draws a fresh one.
    progress
        Show a progress bar over the permutations (default ``False``).
    key_added
        ``uns`` key the table is stored under. Default ``None``:
        ``f"{domain_key}_colocalization"``.

    Returns
    -------
    pandas.DataFrame
        A tidy table, also stored in ``adata.uns[key_added]`` (the only change made to
        ``adata``), with one row per domain and unordered pair of cell types
        (``cell_type_a <= cell_type_b``) and columns ``domain``, ``cell_type_a``,
        ``cell_type_b``, ``observed``, ``expected`` (mean of the permutations), ``std``,
        ``log2_ratio`` = ``log2((observed + 1) / (expected + 1))``, ``z_score`` (``0``
        where ``std`` is 0), ``p_enrichment`` =
        ``(1 + #{perm >= observed}) / (1 + n_permutations)``, ``p_depletion`` likewise
        with ``<=``, and two-sided ``p_value`` = ``min(1, 2 * min(p_enrichment,
        p_depletion))``.

    Examples
    --------
    >>> from utag.datasets import synthetic_tissue
    >>> adata = synthetic_tissue(n_cells=2_000, n_slides=2, n_domains=2, n_cell_types=3, random_state=0)
    >>> table = measure_per_domain_cell_type_colocalization(
    ...     adata, "domain", "cell_type", slide_key="roi", max_dist=20, n_permutations=20)
    >>> len(table)  # 2 domains x 6 unordered pairs of 3 cell types
    12
    """
    if key_added is not None:
        check.save_key(key_added, "key_added", "the uns key the table is stored under")
    random_state = check.seed(random_state)
    n_permutations = check.as_int("n_permutations", n_permutations)
    within = _within_domain(adata, domain_key, celltype_key, slide_key, max_dist, graph_key)
    cell_types, domains = within.cell_types, within.domains
    observed = within.count(cell_types)
    # cell types are shuffled among the typed cells of each (slide, domain)
    group = np.where(cell_types >= 0, within.edges.slide * (len(within.domain_names) + 1) + domains + 1, -1)
    rng = np.random.default_rng(random_state)
    # random keys go to the cells by their rank in an order that does not depend on the
    # rows' (as in utag()), so that the same cells in another order get the same null
    rank = _canonical_rank(adata, within.edges.slide, np.column_stack([domains, cell_types]))
    order = np.lexsort((rank, group))
    total = np.zeros(observed.shape)
    total_sq = np.zeros(observed.shape)
    at_least = np.zeros(observed.shape, dtype=np.int64)
    at_most = np.zeros(observed.shape, dtype=np.int64)
    shuffled = cell_types.copy()
    for _ in tqdm(range(n_permutations), desc="permutations", disable=not progress):
        shuffled[order] = cell_types[np.lexsort((rng.random(len(group))[rank], group))]
        permuted = within.count(shuffled)
        total += permuted
        total_sq += permuted.astype(float) ** 2
        at_least += permuted >= observed
        at_most += permuted <= observed
    expected = total / n_permutations
    std = np.sqrt(np.clip(total_sq / n_permutations - expected**2, 0, None))
    p_enrichment = (1 + at_least) / (1 + n_permutations)
    p_depletion = (1 + at_most) / (1 + n_permutations)
    table = _tidy(
        {
            "observed": observed, "expected": expected, "std": std,
            "log2_ratio": np.log2((observed + 1) / (expected + 1)),
            "z_score": np.divide(observed - expected, std, out=np.zeros(observed.shape), where=std > 0),
            "p_enrichment": p_enrichment, "p_depletion": p_depletion,
            "p_value": np.minimum(1.0, 2 * np.minimum(p_enrichment, p_depletion)),
        },
        {"domain": within.domain_names, "cell_type_a": within.type_names, "cell_type_b": within.type_names},
    )
    a = pd.Categorical(table["cell_type_a"], categories=within.type_names).codes
    b = pd.Categorical(table["cell_type_b"], categories=within.type_names).codes
    table = table[a <= b].reset_index(drop=True)
    adata.uns[key_added or table_key(domain_key, "colocalization")] = table
    return table


def domain_composition(
    adata: AnnData,
    domain_key: str,
    celltype_key: str,
    slide_key: str | None = check.RECORDED_SLIDE_KEY,
) -> dict[str, pd.DataFrame]:
    """Cell-type make-up of each domain.

    Counts cells, not edges, so no spatial graph is needed. Cells without a domain or
    without a cell type are left out. Nothing is written to ``adata``.

    Parameters
    ----------
    adata
        Cells with domain labels and cell types in ``obs``.
    domain_key
        ``obs`` column of the domains (rows of the tables).
    celltype_key
        ``obs`` column of the cell types (columns of the tables).
    slide_key
        ``obs`` column of the slides, for the ``per_slide`` table. Default ``"auto"``: the
        slide column ``utag()`` recorded in ``uns['utag']['slide_key']`` (if any; see
        :func:`spatial_edges`); ``None`` (or nothing recorded): no per-slide table.

    Returns
    -------
    dict of str to pandas.DataFrame
        ``counts`` and ``proportions`` (domain x cell type; rows of ``proportions`` sum to
        1), ``enrichment`` (log2 of the proportion in the domain over the proportion in
        the whole tissue; ``-inf`` for a cell type absent from the domain), and, with
        slides, ``per_slide`` (tidy: ``slide``, ``domain``, ``cell_type``, ``count``,
        ``proportion``).

    Examples
    --------
    >>> from utag.datasets import synthetic_tissue
    >>> adata = synthetic_tissue(n_cells=2_000, n_domains=3, n_cell_types=4, random_state=0)
    >>> composition = domain_composition(adata, "domain", "cell_type")
    >>> sorted(composition), composition["counts"].shape
    (['counts', 'enrichment', 'proportions'], (3, 4))
    >>> composition["proportions"].sum(axis=1).round(6).tolist()
    [1.0, 1.0, 1.0]
    >>> sorted(domain_composition(adata, "domain", "cell_type", slide_key="roi"))
    ['counts', 'enrichment', 'per_slide', 'proportions']
    """
    domains, domain_names = _labels(adata, domain_key)
    cell_types, type_names = _labels(adata, celltype_key)
    slide_key = check.recorded_slide_key(adata, slide_key)
    codes, slide_names = check.slide_codes(adata, slide_key)
    keep = (domains >= 0) & (cell_types >= 0)
    n_domains, n_types = len(domain_names), len(type_names)
    flat = (codes[keep] * n_domains + domains[keep]) * n_types + cell_types[keep]
    per_slide = np.bincount(flat, minlength=len(slide_names) * n_domains * n_types)
    per_slide = per_slide.reshape(len(slide_names), n_domains, n_types)
    counts = per_slide.sum(axis=0)

    def proportions(table: np.ndarray) -> np.ndarray:
        totals = table.sum(axis=-1, keepdims=True)
        return np.divide(table, totals, out=np.zeros(table.shape), where=totals > 0)

    overall = counts.sum(axis=0) / max(counts.sum(), 1)
    share = proportions(counts)
    with np.errstate(divide="ignore"):
        enrichment = np.log2(np.divide(share, overall, out=np.zeros(share.shape), where=overall > 0))
    frame = {"index": domain_names, "columns": type_names}
    result = {
        "counts": pd.DataFrame(counts, **frame),
        "proportions": pd.DataFrame(share, **frame),
        "enrichment": pd.DataFrame(enrichment, **frame),
    }
    if slide_key is not None:
        result["per_slide"] = _tidy(
            {"count": per_slide, "proportion": proportions(per_slide)},
            {"slide": slide_names.astype(str), "domain": domain_names, "cell_type": type_names},
        )
    return result
