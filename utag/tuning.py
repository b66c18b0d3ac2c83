"""Choosing UTAG's parameters for the user, and keeping domain names stable.

* :func:`suggest_max_dist`: the radius domains need (``utag(..., max_dist="auto")``).
* :func:`max_dist_report`: neighbours per cell, isolated cells and identical
  neighbourhoods for candidate ``max_dist`` values, per slide, with a suggestion.
* :func:`resolution_sweep`: several seeded Leiden runs per resolution on the kNN graph
  ``utag()`` built; stability within a resolution (mean pairwise ARI between runs) and
  agreement with the neighbouring resolutions; recommended resolutions at the peaks.
* :func:`resolution_for_n_domains`: the resolution that gives exactly ``K`` domains.
* :func:`align_labels`, :func:`consistent_labels`, :func:`domain_hierarchy`: stable
  domain numbers, in :mod:`utag.labels` (importable from here too).
"""
from __future__ import annotations

import logging
import math
from itertools import combinations
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from sklearn.metrics import adjusted_rand_score

from . import _validation as check
from . import multiscale
from ._keys import SWEEP_KEY, sweep_entry
from ._order import canonical_order, rows_back
from .clustering import (
    ClusteringTask,
    Neighbourhood,
    cluster,
    cluster_many,
    domain_links,
    merge_domain_links,
    min_domain_cells,
    relabel_by_size,
)
from .graph import MESSAGE_PASSING_BYTES_PER_PAIR, check_graph_fits, slide_cells
from .labels import align_labels, consistent_labels, domain_hierarchy
from .message_passing import as_float32, slide_messages

__all__ = [
    "resolution_sweep",
    "Sweep",
    "sweep",
    "score_exponents",
    "recommended_resolutions",
    "spatial_coherence",
    "spatial_neighbour_graph",
    "resolution_for_n_domains",
    "merge_to_n_domains",
    "align_labels",
    "consistent_labels",
    "domain_hierarchy",
    "suggest_max_dist",
    "domain_radius",
    "max_dist_report",
    "neighbourhood_of",
    "tissue_of",
]

logger = logging.getLogger(__name__)

#: Default grid of :func:`resolution_sweep`: 12 resolutions from 0.02 to 2, evenly on a log scale.
DEFAULT_RESOLUTIONS = tuple(float(r) for r in np.round(np.geomspace(0.02, 2.0, 12), 4))
#: The sweep's score per flavour of ``utag()``: ``stability**a * agreement**b * coherence``
#: with these ``(a, b)``. The multiscale features are smoothed over a wider area, so
#: coarse labellings are reproducible whether or not they are right: reproducibility
#: weighs less there (chosen on ``benchmarks/resolution.py``, both flavours, two seeds).
SCORE_EXPONENTS = {"utag": (0.5, 0.5), "multiscale": (0.25, 0.0)}


def neighbourhood_of(result: AnnData) -> Neighbourhood:
    """The embedding and kNN graph ``utag()`` stored in ``result``."""
    if "sketch" in result.uns.get("utag", {}) and "connectivities" not in result.obsp:
        raise ValueError("`result` comes from a sketch (utag(..., sketch_size=...)), which keeps no kNN graph of "
                         "all cells: run utag() with sketch_size=None for this, or use resolutions='auto' and "
                         "n_domains in that call, which work on the sketch.")
    if "connectivities" not in result.obsp or "X_pca" not in result.obsm:
        raise ValueError(
            "`result` has no kNN graph (obsp['connectivities']) or embedding (obsm['X_pca']). "
            "Pass the AnnData returned by `utag(...)` (with apply_clustering=True)."
        )
    return Neighbourhood(np.ascontiguousarray(result.obsm["X_pca"], dtype=np.float32),
                         sp.csr_matrix(result.obsp["connectivities"]))


def _in_canonical_order(result: AnnData, slide_key: str | None = check.RECORDED_SLIDE_KEY):
    """``(neighbourhood, coords, slide_codes, order)`` of ``result``'s cells in the order
    ``utag()`` clusters them (:func:`utag._order.canonical_order`, ties at one position
    broken by the embedding), so that Leiden runs here do not depend on the order of the
    rows; ``order`` maps back with :func:`utag._order.rows_back` (``None``: already in it)."""
    neighbourhood = neighbourhood_of(result)
    coords, codes = tissue_of(result, slide_key)
    order = canonical_order(codes, coords, neighbourhood.embedding)
    if order is None:
        return neighbourhood, coords, codes, None
    graph = neighbourhood.connectivities[order][:, order]
    graph.sort_indices()
    return Neighbourhood(neighbourhood.embedding[order], graph), coords[order], codes[order], order


def tissue_of(result: AnnData, slide_key: str | None = check.RECORDED_SLIDE_KEY) -> tuple[np.ndarray, np.ndarray]:
    """``(coords, slide_codes)`` of the cells of ``result``: ``obsm['spatial']`` and the
    slides of ``obs[slide_key]`` (default ``"auto"``: the slide key ``utag()`` recorded,
    :func:`utag._validation.recorded_slide_key`; ``None``: one slide).

    Examples
    --------
    >>> from utag import utag
    >>> from utag.datasets import synthetic_tissue
    >>> result = utag(synthetic_tissue(n_cells=2_000, n_slides=2, random_state=0), slide_key="roi",
    ...               clustering_method="kmeans", resolutions=[0.3], progress=False)
    >>> coords, slide_codes = tissue_of(result)
    >>> coords.shape, sorted(set(slide_codes.tolist()))
    ((2000, 2), [0, 1])
    """
    slide_key = check.recorded_slide_key(result, slide_key)
    return check.spatial_coordinates(result), check.slide_codes(result, slide_key)[0]


def _run_all(neighbourhood: Neighbourhood, tasks: list, n_jobs: int | None, progress: bool,
             min_cells: int = 0) -> list:
    """Leiden labels (int32) for every (resolution, seed, kwargs) task."""
    tasks = [ClusteringTask("leiden", resolution, seed, kwargs) for resolution, seed, kwargs in tasks]
    runs = cluster_many(neighbourhood, tasks, n_jobs=n_jobs, progress=progress, min_cells=min_cells)
    return [labels.astype(np.int32) for labels in runs]


def resolution_sweep(
    result: AnnData,
    resolutions=DEFAULT_RESOLUTIONS,
    n_runs: int = 5,
    random_state: int = 0,
    leiden_kwargs: dict | None = None,
    n_jobs: int | None = None,
    progress: bool = True,
    key_added: str = SWEEP_KEY,
    min_domain_size: float | None = None,
    slide_key: str | None = check.RECORDED_SLIDE_KEY,
    flavor: str | None = None,
) -> pd.DataFrame:
    """Stability of Leiden domains across seeds and resolutions.

    For every resolution, ``n_runs`` Leiden runs with seeds ``random_state, ...,
    random_state + n_runs - 1`` on the kNN graph of ``result``, domains smaller than
    ``min_domain_size`` merged as in ``utag()``. Reported per resolution:

    * ``n_domains``: median number of domains over the runs;
    * ``stability``: mean adjusted Rand index (ARI) between all pairs of runs;
    * ``agreement``: mean ARI between this resolution's most typical run (the run with
      the highest mean ARI to the others) and those of the neighbouring resolutions;
    * ``spatial_coherence``: how much more often two cells near each other on the tissue
      (each cell and its :data:`COHERENCE_NEIGHBORS` nearest cells of the same slide) share
      a domain than two random cells do: the modularity of the most typical labelling on
      that spatial graph. Low for domains that are scattered over the tissue, and for one
      domain that covers it all;
    * ``score``: ``sqrt(stability * agreement) * spatial_coherence``: high where the
      labelling neither depends on the seed nor changes when the resolution moves a
      little (the geometric mean of the two), and its domains are contiguous regions of
      tissue; the two aspects weigh the same. For ``flavor="multiscale"``,
      ``stability**0.25 * spatial_coherence`` (:data:`SCORE_EXPONENTS`);
    * ``recommended``: local maxima of ``score`` among labellings with at least 2
      domains, ``rank`` 1 the best.

    The most typical run of every resolution is kept in ``result.uns[key_added]`` with
    the table (``result`` is changed only there). ``leiden_kwargs``: keywords of the Leiden
    runs, as in :func:`utag.utag` (e.g. ``{"flavor": "igraph"}``; default: the compiled
    Leiden's defaults). ``n_jobs``: threads for the Leiden runs
    (default: one per core; results do not depend on it). ``slide_key``: the slides of
    ``result.obsm['spatial']`` (default ``"auto"``: the one ``utag()`` recorded; ``None``: one slide). ``flavor``: whose
    score to use (default: the flavour ``utag()`` recorded, else ``"utag"``). Why this score:
    ``benchmarks/resolution.py`` compares it with other criteria on every labelled
    dataset (``docs/choosing.md``).

    Examples
    --------
    >>> from utag import utag
    >>> from utag.datasets import synthetic_tissue
    >>> result = utag(synthetic_tissue(n_cells=3_000, n_slides=2, random_state=0), slide_key="roi",
    ...               clustering_method="leiden", resolutions=[0.1], progress=False)
    >>> table = resolution_sweep(result, resolutions=[0.05, 0.1, 0.3, 1.0], n_runs=3, progress=False)
    >>> list(table.columns[:4])
    ['resolution', 'n_domains', 'stability', 'agreement']
    """
    random_state = check.seed(random_state)
    leiden_kwargs, n_jobs = check.kwargs_dict("leiden_kwargs", leiden_kwargs), check.n_jobs(n_jobs)
    check.save_key(key_added, "key_added", "the uns key the sweep is written under")
    neighbourhood, coords, codes, order = _in_canonical_order(result, slide_key)
    min_cells = min_domain_cells(min_domain_size, result.n_obs)
    if flavor is None:
        flavor = result.uns.get("utag", {}).get("flavor", "utag")
    table, typical = sweep(neighbourhood, coords, codes, resolutions, n_runs, random_state,
                           leiden_kwargs, n_jobs, progress, min_cells, score_exponents(flavor))
    typical = rows_back(typical, order, axis=1)
    result.uns[key_added] = sweep_entry(table, typical)
    return table


def score_exponents(flavor: str) -> tuple[float, float]:
    """``(a, b)`` of the sweep's score ``stability**a * agreement**b * spatial_coherence``
    for ``utag(flavor=...)`` (:data:`SCORE_EXPONENTS`).

    Examples
    --------
    >>> score_exponents("utag"), score_exponents("multiscale")
    ((0.5, 0.5), (0.25, 0.0))
    """
    if flavor not in SCORE_EXPONENTS:
        raise ValueError(f"`flavor` must be one of {list(SCORE_EXPONENTS)}, got {flavor!r}.")
    return SCORE_EXPONENTS[flavor]


class Sweep(NamedTuple):
    """What :func:`sweep` returns."""

    table: pd.DataFrame  # one row per resolution: n_domains, stability, agreement, spatial_coherence, score
    labels: np.ndarray  # resolutions x cells: each resolution's typical labelling


def sweep(neighbourhood: Neighbourhood, coords: np.ndarray, slide_codes: np.ndarray,
          resolutions=DEFAULT_RESOLUTIONS, n_runs: int = 5, random_state: int = 0, leiden_kwargs: dict | None = None,
          n_jobs: int | None = None, progress: bool = False, min_cells: int = 0,
          exponents: tuple[float, float] = SCORE_EXPONENTS["utag"]) -> Sweep:
    """:func:`resolution_sweep` on arrays: the table and the most typical labelling of
    every resolution (resolutions x cells), as a :class:`Sweep`. ``exponents``: ``(a, b)`` of the score
    ``stability**a * agreement**b * spatial_coherence`` (see :func:`score_exponents`)."""
    random_state = check.seed(random_state)
    resolutions = sorted(check.resolution_list(resolutions))
    n_runs = check.as_int("n_runs", n_runs, minimum=2)
    kwargs = dict(leiden_kwargs or {})
    tasks = [(r, (random_state + run) % 2**32, kwargs) for r in resolutions for run in range(n_runs)]
    runs = np.array(_run_all(neighbourhood, tasks, n_jobs, progress, min_cells))
    runs = runs.reshape(len(resolutions), n_runs, -1)

    rows, typical = [], []
    for resolution, labellings in zip(resolutions, runs):
        pair_ari = np.ones((n_runs, n_runs))
        for i, j in combinations(range(n_runs), 2):
            pair_ari[i, j] = pair_ari[j, i] = adjusted_rand_score(labellings[i], labellings[j])
        medoid = int(pair_ari.sum(axis=1).argmax())
        typical.append(labellings[medoid])
        stability = pair_ari[np.triu_indices(n_runs, 1)].mean()
        rows.append({"resolution": resolution,
                     "n_domains": int(np.median([labels.max() + 1 for labels in labellings])),
                     "stability": float(stability)})
    between = [adjusted_rand_score(a, b) for a, b in zip(typical[:-1], typical[1:])]
    coherence = spatial_coherence(np.stack(typical), coords, slide_codes, random_state=random_state)
    for i, row in enumerate(rows):
        neighbours = ([between[i - 1]] if i > 0 else []) + ([between[i]] if i < len(between) else [])
        row["agreement"] = float(np.mean(neighbours)) if neighbours else np.nan
        row["spatial_coherence"] = float(coherence[i])
        agreement = row["agreement"] if neighbours else 1.0
        reproducible = max(row["stability"], 0.0) ** exponents[0] * max(agreement, 0.0) ** exponents[1]
        row["score"] = reproducible * max(coherence[i], 0.0)
    table = pd.DataFrame(rows)
    table["recommended"] = False
    table["rank"] = pd.array([pd.NA] * len(table), dtype="Int64")
    peaks = _peaks(table)
    table.loc[peaks, "recommended"] = True
    table.loc[peaks, "rank"] = np.argsort(np.argsort(-table.loc[peaks, "score"].to_numpy())) + 1
    return Sweep(table, np.stack(typical))


#: Spatial neighbours per cell in :func:`spatial_coherence`: a scale of tissue larger than
#: the message-passing neighbourhood, as domains are (chosen on the labelled datasets of
#: ``benchmarks/resolution.py``: 50, 100 and 200 give the same choices but for one or two).
COHERENCE_NEIGHBORS = 200
#: Cells whose spatial neighbourhoods are sampled in :func:`spatial_coherence`.
COHERENCE_SAMPLE = 20_000
#: Spatial neighbours per cell in the graph on which :func:`resolution_for_n_domains`
#: merges domains when no resolution gives exactly the number asked for.
MERGE_NEIGHBORS = 10
#: Resolutions :func:`resolution_for_n_domains` tries over its whole range when the
#: bisection found no labelling with more domains than asked for.
_FALLBACK_GRID = 16


def spatial_coherence(labellings: np.ndarray, coords: np.ndarray, slide_codes: np.ndarray,
                      n_neighbors: int = COHERENCE_NEIGHBORS, n_cells: int = COHERENCE_SAMPLE,
                      random_state: int = 0) -> np.ndarray:
    """Modularity of each labelling (rows of ``labellings``) on the spatial kNN graph.

    The share of (cell, spatial neighbour) pairs in the same domain, minus the share
    expected if the labels were shuffled (the sum of squared domain shares). Pairs come
    from ``n_cells`` cells drawn at random (all cells if fewer), each with its
    ``n_neighbors`` nearest cells of the same slide.

    Examples
    --------
    >>> coords = np.column_stack([np.arange(100.0), np.zeros(100)])
    >>> halves, stripes = np.repeat([0, 1], 50), np.arange(100) % 2
    >>> spatial_coherence(np.stack([halves, stripes]), coords, np.zeros(100, int), n_neighbors=4).round(2).tolist()
    [0.48, -0.01]
    """
    random_state = check.seed(random_state)
    rng = np.random.default_rng(random_state)
    n_total = len(coords)
    sampled = np.zeros(n_total, dtype=bool)
    sampled[rng.choice(n_total, size=min(n_cells, n_total), replace=False)] = True
    first, second = _same_slide_neighbours(coords, slide_codes, n_neighbors, sampled)
    if len(first) == 0:
        return np.zeros(len(labellings))
    coherence = []
    for labels in labellings:
        shares = np.bincount(labels) / len(labels)
        coherence.append(np.mean(labels[first] == labels[second]) - (shares**2).sum())
    return np.array(coherence)


def _same_slide_neighbours(coords: np.ndarray, slide_codes: np.ndarray, n_neighbors: int,
                           among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(cell, one of its n_neighbors nearest cells of the same slide)`` for every
    cell (or the cells flagged in the boolean mask ``among``), as two index arrays."""
    from scipy.spatial import cKDTree

    coords = np.asarray(coords, dtype=np.float64)
    firsts, seconds = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for cells in slide_cells(np.asarray(slide_codes)):
        mine = cells if among is None else cells[among[cells]]
        k = min(n_neighbors + 1, len(cells))
        if k < 2 or len(mine) == 0:
            continue
        _, nearest = cKDTree(coords[cells]).query(coords[mine], k=k)
        nearest = nearest.reshape(len(mine), k)
        # the cell itself is left out wherever it comes (a cell at the same position may
        # come first); where it is not among the k, the farthest is
        keep = nearest != np.searchsorted(cells, mine)[:, None]
        keep[keep.all(axis=1), -1] = False
        firsts.append(np.repeat(mine, k - 1))
        seconds.append(cells[nearest[keep]])
    return np.concatenate(firsts), np.concatenate(seconds)


def spatial_neighbour_graph(coords: np.ndarray, slide_codes: np.ndarray,
                            n_neighbors: int = MERGE_NEIGHBORS) -> sp.csr_matrix:
    """Symmetric 0/1 graph linking every cell to its ``n_neighbors`` nearest cells of the
    same slide (and them to it).

    Examples
    --------
    >>> coords = np.array([[0.0, 0], [1, 0], [5, 0], [0, 0]])
    >>> spatial_neighbour_graph(coords, np.array([0, 0, 0, 1]), n_neighbors=1).toarray().astype(int).tolist()
    [[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    """
    first, second = _same_slide_neighbours(coords, slide_codes, n_neighbors)
    n_cells = len(coords)
    links = sp.csr_matrix((np.ones(len(first)), (first, second)), shape=(n_cells, n_cells))
    return sp.csr_matrix((links + links.T) > 0, dtype=np.float64)


def _peaks(table: pd.DataFrame, scores=None) -> list[int]:
    """Row positions of local maxima of ``scores`` (default: the ``score`` column) among
    rows with at least 2 domains."""
    candidates = [i for i in range(len(table)) if table.loc[i, "n_domains"] >= 2]
    scores = table["score"].to_numpy() if scores is None else np.asarray(scores, dtype=float)
    peaks = [i for i in candidates
             if (i == 0 or scores[i] >= scores[i - 1] or table.loc[i - 1, "n_domains"] < 2)
             and (i == len(table) - 1 or scores[i] >= scores[i + 1])]
    if not peaks and candidates:
        peaks = [max(candidates, key=lambda i: scores[i])]
    return peaks


def recommended_resolutions(table: pd.DataFrame | AnnData, n: int = 1) -> list[float]:
    """The ``n`` best recommended resolutions of a :func:`resolution_sweep` table, best
    first (fewer when fewer are recommended; the best ranked ones when none is, e.g. when
    every resolution gives one domain). ``table`` may also be the AnnData the sweep (or
    ``utag(..., resolutions="auto")``) wrote its table into.

    Examples
    --------
    >>> table = pd.DataFrame({"resolution": [0.05, 0.1, 0.3], "recommended": [True, False, True],
    ...                       "rank": [2, pd.NA, 1]})
    >>> recommended_resolutions(table, n=2)
    [0.3, 0.05]
    """
    if isinstance(table, AnnData):
        if SWEEP_KEY not in table.uns:
            raise ValueError(f"`table` is an AnnData without a sweep (uns[{SWEEP_KEY!r}]): pass the table "
                             "resolution_sweep(result) returns, or run it (or utag(..., resolutions='auto')) first.")
        table = table.uns[SWEEP_KEY]["table"]
    columns = getattr(table, "columns", [])
    lacking = [column for column in ("resolution", "recommended", "rank") if column not in columns]
    if lacking:
        raise ValueError(f"`table` must be the table resolution_sweep() returns; it lacks the columns {lacking}.")
    n = check.as_int("n", n, minimum=1)
    chosen = (table[table["recommended"]] if table["recommended"].any() else table).sort_values("rank")
    return [float(r) for r in chosen["resolution"].head(n)]


def resolution_for_n_domains(
    result: AnnData | Neighbourhood,
    n_domains: int,
    random_state: int = 0,
    leiden_kwargs: dict | None = None,
    low: float = 1e-4,
    high: float = 20.0,
    max_steps: int = 40,
    min_domain_size: float | None = None,
    *,
    coords: np.ndarray | None = None,
    slide_codes: np.ndarray | None = None,
) -> tuple[float, np.ndarray]:
    """Leiden domains, exactly ``n_domains`` of them, and the resolution they come from.

    1. Bisects ``log(resolution)`` between ``low`` and ``high`` with a fixed seed (so the
       answer is deterministic), counting domains after small ones are merged (below
       ``min_domain_size``, as in ``utag()``, and below a tenth of an equal share,
       ``n_cells / (10 * n_domains)``, so that every domain holds a real share of the
       tissue; see :func:`utag.clustering.merge_small_domains`), until a resolution gives
       exactly ``n_domains``. After that merging the count can fall again at high
       resolutions (on small data every domain is small there): when no resolution of
       the bisection, nor ``high``, gave more than ``n_domains``, resolutions spread over
       the whole range are tried as well.
    2. When the count jumps past ``n_domains`` (at low resolutions Leiden often keeps
       one giant domain, then splits it in several at once), the labelling with the
       fewest domains above ``n_domains`` is coarsened: the two domains whose merge
       raises modularity most (or lowers it least) are merged, again and again, until
       ``n_domains`` are left (:func:`merge_to_n_domains`). The modularity is that of the
       tissue: of the graph linking each cell to its :data:`MERGE_NEIGHBORS` nearest cells
       of the same slide (:func:`spatial_neighbour_graph`), so the domains that touch most
       on the tissue merge first. This needs the cells' ``coords`` and ``slide_codes``
       (taken from ``result`` when it is ``utag()``'s AnnData); without them, the kNN graph
       of the embedding is used. ``benchmarks/n_domains_routes.py`` compares the two on
       every labelled dataset (``docs/choosing.md``): merging on the tissue scores higher
       on most of them.

    ``leiden_kwargs``: keywords of the Leiden runs, as in :func:`utag.utag`;
    ``max_steps``: bisection steps at most (default 40; 0 skips the bisection and merges
    the domains of ``high``).

    Returns
    -------
    ``(resolution, labels)``: labels ``0..n_domains-1`` by decreasing size (fewer only
    if the graph cannot be split that far), and the resolution of the Leiden run they
    come from.

    Examples
    --------
    >>> from utag import utag
    >>> from utag.datasets import synthetic_tissue
    >>> result = utag(synthetic_tissue(n_cells=3_000, n_slides=2, random_state=0), slide_key="roi",
    ...               clustering_method="kmeans", resolutions=[0.1], progress=False)
    >>> resolution, labels = resolution_for_n_domains(result, 4)
    >>> int(labels.max()) + 1
    4
    """
    random_state = check.seed(random_state)
    n_domains = check.as_int("n_domains", n_domains, minimum=1)
    max_steps = check.as_int("max_steps", max_steps, minimum=0)
    hint = "`low` and `high` bound the resolutions searched."
    low, high = check.check_positive("low", low, hint), check.check_positive("high", high, hint)
    if low >= high:
        raise ValueError(f"`low` ({low:g}) must be below `high` ({high:g}).")
    if isinstance(result, AnnData) and coords is None and "spatial" in result.obsm:
        # in the order utag() clusters the cells: the same answer as utag(..., n_domains=K)
        neighbourhood, coords, slide_codes, order = _in_canonical_order(result)
        resolution, labels = resolution_for_n_domains(
            neighbourhood, n_domains, random_state, leiden_kwargs, low, high, max_steps, min_domain_size,
            coords=coords, slide_codes=slide_codes)
        return resolution, rows_back(labels, order)
    neighbourhood = result if isinstance(result, Neighbourhood) else neighbourhood_of(result)
    n_cells = neighbourhood.connectivities.shape[0]
    if n_domains > n_cells:
        raise ValueError(f"`n_domains` ({n_domains}) is larger than the number of cells ({n_cells}).")
    # each of K domains should hold a real share of the tissue: at least a tenth of 1/K
    share_cells = math.ceil(n_cells / (10 * n_domains))
    min_cells = max(min_domain_cells(min_domain_size, n_cells), share_cells)
    kwargs = check.kwargs_dict("leiden_kwargs", leiden_kwargs)

    def count(resolution):
        labels = cluster("leiden", neighbourhood, resolution, random_state, min_cells, **kwargs)
        return labels.max() + 1, labels

    finer = coarser = None  # the labellings with the fewest domains above n_domains, the most below

    def look(resolution):
        nonlocal finer, coarser
        found, labels = count(resolution)
        if found > n_domains and (finer is None or found < finer[2]):
            finer = (resolution, labels, found)
        if found < n_domains and (coarser is None or found > coarser[2]):
            coarser = (resolution, labels, found)
        return found, labels

    searched = (low, high)
    for _ in range(max_steps):
        middle = math.sqrt(low * high)
        found, labels = look(middle)
        if found == n_domains:
            return middle, labels
        low, high = (middle, high) if found < n_domains else (low, middle)
    if finer is None:
        found, labels = look(high)
        if found == n_domains:
            return high, labels
    if finer is None:
        # after small domains are merged, the count can fall again at high resolutions
        # (every domain small), which the bisection took for "too few": look over the range
        for resolution in np.geomspace(*searched, _FALLBACK_GRID)[:-1]:  # `high` was looked at
            found, labels = look(float(resolution))
            if found == n_domains:
                return float(resolution), labels
    if finer is None:
        logger.warning("no resolution gives more than %d domain(s) of at least %d cells (asked for %d): domains "
                       "smaller than that are merged (min_domain_size, and a tenth of an equal share, %d cells / "
                       "(10 x %d)). Ask for fewer domains%s.", coarser[2], min_cells, n_domains, n_cells, n_domains,
                       ", or pass min_domain_size=0 if smaller domains are real" if min_cells > share_cells else "")
        return coarser[0], coarser[1]
    if coords is None:
        graph, on = neighbourhood.connectivities, "the kNN graph"
    else:
        codes = np.zeros(len(coords), dtype=np.int64) if slide_codes is None else np.asarray(slide_codes)
        graph, on = spatial_neighbour_graph(coords, codes), "the tissue"
    logger.info("no resolution gives exactly %d domains; merging the %d domains of resolution %.4g by modularity "
                "on %s", n_domains, finer[2], finer[0], on)
    return finer[0], merge_to_n_domains(finer[1], graph, n_domains)


#: What :func:`merge_to_n_domains` can merge by.
MERGE_CRITERIA = ("modularity", "normalised_cut")


def merge_to_n_domains(labels: np.ndarray, connectivities: sp.spmatrix, n_domains: int,
                       criterion: str = "modularity") -> np.ndarray:
    """Coarsen ``labels`` to ``n_domains`` by merging, again and again, the two domains
    whose merge gives the largest gain on the graph ``connectivities`` (the kNN graph of
    the embedding, or the cells' neighbours on the tissue):

    * ``criterion="modularity"`` (default): the modularity gain, ``links(a, b) -
      degree(a) degree(b) / 2m`` (greedy agglomeration as in Clauset, Newman & Moore
      2004, started from ``labels``);
    * ``"normalised_cut"``: the normalised cut removed, ``links(a, b) (1 / degree(a) +
      1 / degree(b))``, which, unlike modularity, does not hold large domains apart.
      ``benchmarks/n_domains_routes.py`` compares both (``docs/choosing.md``).

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> ring = sp.csr_matrix(np.array([[0, 5, 1, 0], [5, 0, 0, 0], [1, 0, 0, 5], [0, 0, 5, 0]], dtype=float))
    >>> merge_to_n_domains(np.array([0, 1, 2, 3]), ring, 2).tolist()
    [0, 0, 1, 1]
    >>> merge_to_n_domains(np.array([0, 1, 2, 3]), ring, 2, criterion="normalised_cut").tolist()
    [0, 0, 1, 1]
    """
    n_domains = check.as_int("n_domains", n_domains, minimum=1)
    criterion = check.choice("criterion", criterion, MERGE_CRITERIA)
    connectivities = sp.csr_matrix(connectivities)
    labels = np.asarray(labels).ravel()
    if connectivities.shape != (len(labels), len(labels)):
        raise ValueError(f"`labels` has {len(labels)} cells but `connectivities` is a graph of "
                         f"{connectivities.shape[0]} x {connectivities.shape[1]} cells: pass the graph of these cells.")
    labels = relabel_by_size(labels)
    n_labels = int(labels.max()) + 1
    links = domain_links(connectivities, labels, n_labels)
    degree = links.sum(axis=1)
    two_m = max(degree.sum(), np.finfo(float).tiny)
    alive = np.ones(n_labels, dtype=bool)
    mapping = np.arange(n_labels)

    def gain(rows, columns):  # of merging domain a (rows) and b (columns)
        if criterion == "modularity":  # (x 2m): 2 * (links_ab - degree_a * degree_b / 2m)
            return links[rows, columns] - np.multiply.outer(degree[rows], degree[columns]) / two_m
        inverse = 1 / np.maximum(degree, np.finfo(float).tiny)
        return links[rows, columns] * np.add.outer(inverse[rows], inverse[columns])

    gains = gain(slice(None), slice(None))
    np.fill_diagonal(gains, -np.inf)
    for _ in range(n_labels - n_domains):
        a, b = np.unravel_index(np.argmax(gains), gains.shape)
        a, b = min(a, b), max(a, b)
        merge_domain_links(links, mapping, a, b)
        degree[a] += degree[b]
        alive[b] = False
        # only the merged domain's gains change (one row and one column, not all K x K)
        gains[a] = np.where(alive, gain(a, slice(None)), -np.inf)
        gains[:, a] = np.where(alive, gain(slice(None), a), -np.inf)
        gains[a, a] = -np.inf
        gains[b] = gains[:, b] = -np.inf
    return relabel_by_size(mapping[labels])


#: The radius :func:`suggest_max_dist` suggests, in median nearest-cell distances: on most
#: labelled datasets of ``benchmarks/radius.py`` (CODEX spleen, MERFISH, synthetic IMC-like
#: tissues) 6 was the best multiple or close to it, and no dataset did best at 2-4
#: (``docs/choosing.md`` names those where a larger radius did clearly better).
DOMAIN_RADIUS_FACTOR = 6.0


def _median_nearest_distance(coords: np.ndarray, slides: list[np.ndarray]) -> float:
    """Median distance from a cell to the nearest other position with a cell of the same
    slide (cells that share a position, as cells mapped onto spots do, are not each
    other's nearest); 0 if no slide has cells at two positions."""
    from scipy.spatial import cKDTree

    nearest = []
    for cells in slides:
        positions, at = np.unique(coords[cells], axis=0, return_inverse=True)
        if len(positions) > 1:
            nearest.append(cKDTree(positions).query(positions, k=2)[0][:, 1][at.ravel()])
    return float(np.median(np.concatenate(nearest))) if nearest else 0.0


def _domain_radius(median_nearest: float) -> float:
    """:data:`DOMAIN_RADIUS_FACTOR` median nearest-cell distances, to 2 significant digits."""
    return float(f"{DOMAIN_RADIUS_FACTOR * median_nearest:.2g}")


def suggest_max_dist(adata: AnnData, slide_key: str | None = check.RECORDED_SLIDE_KEY) -> float:
    """A ``max_dist`` for domains: :data:`DOMAIN_RADIUS_FACTOR` times the median distance
    from a cell to its nearest cell (same slide; at another position, so that cells
    mapped onto spots or binned to a grid count), rounded to 2 significant digits.

    ``slide_key``: the column of ``adata.obs`` naming each cell's slide (default
    ``"auto"``: the one ``utag()`` recorded in a result, else none; ``None``: the cells
    are one slide). Pass it for an input with several slides, whose coordinates may overlap.

    What ``utag(..., max_dist="auto")`` uses, and what :func:`max_dist_report` suggests.
    ``benchmarks/radius.py`` shows how its domains compare with the best radius in
    hindsight on every labelled dataset (``docs/choosing.md``).

    Examples
    --------
    >>> from utag.datasets import synthetic_tissue
    >>> suggest_max_dist(synthetic_tissue(n_cells=3_000, n_slides=2, random_state=0), slide_key="roi")
    35.0
    """
    coords = check.spatial_coordinates(adata)
    codes, _ = check.slide_codes(adata, check.recorded_slide_key(adata, slide_key))
    radius = domain_radius(coords, codes)
    if radius is None:
        raise ValueError("`max_dist='auto'` needs slides of at least 2 cells at distinct positions; "
                         "pass `max_dist` as a number.")
    return radius


def domain_radius(coords: np.ndarray, slide_codes: np.ndarray) -> float | None:
    """:func:`suggest_max_dist` on arrays (``None`` when no slide has two cells at distinct
    positions)."""
    nearest = _median_nearest_distance(coords, slide_cells(slide_codes))
    return _domain_radius(nearest) if nearest > 0 else None


def max_dist_report(
    adata: AnnData,
    max_dists=None,
    slide_key: str | None = check.RECORDED_SLIDE_KEY,
    n_neighbors: int = 15,
    channels_to_use=None,
    *,
    flavor: str = "utag",
    kernel_widths=None,
) -> pd.DataFrame:
    """How candidate ``max_dist`` values connect the cells of each slide.

    For every slide and candidate: neighbours per cell (median, 10th and 90th
    percentiles; the cell itself not counted), the share of isolated cells, the share of
    the slide a median neighbourhood covers, and the share of cells whose message-passed
    profile is shared by at least ``n_neighbors`` cells, itself included (its nearest
    cells in the kNN graph are then all copies of it; ``utag()`` then builds the graph
    over distinct profiles). The pooled row counts copies across slides, as the joint
    kNN graph sees them. ``flags`` names what is
    wrong: ``isolated`` (> 10% of cells alone), ``few neighbours`` (median < 3),
    ``most of slide`` (median neighbourhood > 25% of the slide), ``identical profiles``
    (> 5% of cells). With several slides, the row ``slide == "all"`` pools them (its share of
    the slide covered is the median over cells of the share of their own slide; no slide may
    then be named ``"all"``, :data:`utag.evaluation.POOLED`: that raises a ValueError), and
    ``suggested`` marks the pooled candidate (the only slide's, with one) without a flag
    nearest (on a log scale) to :func:`suggest_max_dist`, the radius domains need.

    ``max_dists`` default: 1, 1.5, 2, 3, 4, 6, 8 and 12 times the median distance from a
    cell to its nearest neighbour. ``slide_key``: the column of ``adata.obs`` naming each
    cell's slide (default ``"auto"``: the one ``utag()`` recorded in a result, else none;
    ``None``: the cells are one slide). ``channels_to_use``: the features whose identical
    profiles are counted, as in :func:`utag.utag` (default: every feature).

    ``flavor="multiscale"`` (and ``kernel_widths``, as in :func:`utag.utag`) reports the
    graph that flavour builds for each ``max_dist``: its radius is ``graph_radius``
    (1.25 ``max_dist`` with the default widths), and identical profiles are counted on
    the multiscale features.

    Examples
    --------
    >>> from utag.datasets import synthetic_tissue
    >>> adata = synthetic_tissue(n_cells=3_000, n_slides=2, random_state=0)
    >>> report = max_dist_report(adata, max_dists=[5, 20, 35, 60], slide_key="roi")
    >>> report.loc[report["slide"] == "all", ["max_dist", "suggested"]].values.tolist()
    [[5.0, False], [20.0, False], [35.0, True], [60.0, False]]
    """
    coords = check.spatial_coordinates(adata)
    slide_key = check.recorded_slide_key(adata, slide_key)
    codes, names = check.slide_codes(adata, slide_key)
    if len(names) > 1:  # the pooled rows are named POOLED
        check.check_no_slide_named_pooled(names, slide_key)
    columns = check.channel_indices(adata, channels_to_use)
    features = as_float32(check.feature_matrix(adata, columns))
    slides = slide_cells(codes)
    nearest = _median_nearest_distance(coords, slides)
    if max_dists is None:
        if nearest <= 0:
            raise ValueError("The default candidates are multiples of the median distance from a cell to its "
                             "nearest cell, which is 0 here (most cells share a position, or no slide has two "
                             "cells): pass `max_dists` as a list of radii.")
        # 3 significant digits, whatever the unit (cells 0.01 mm apart as well as 10 um)
        max_dists = np.array([float(f"{nearest * f:.3g}") for f in (1, 1.5, 2, 3, 4, 6, 8, 12)])
        if kernel_widths is not None:  # candidates too small for the widths asked for are left out
            widest_width = max(float(w) for w in np.atleast_1d(kernel_widths))
            max_dists = max_dists[max_dists * multiscale.MAX_WIDTH >= widest_width]
            if not len(max_dists):
                max_dists = [widest_width / multiscale.MAX_WIDTH]
    max_dists = [check.check_positive("max_dists", d) for d in np.atleast_1d(np.asarray(max_dists, dtype=object))]
    if not max_dists:
        raise ValueError("`max_dists` is empty: pass the radii to compare, or None for the default candidates.")
    n_neighbors = check.as_int("n_neighbors", n_neighbors, minimum=1)
    widths = {d: multiscale.flavor_widths(flavor, d, kernel_widths) for d in max_dists}
    radii = {d: multiscale.graph_radius(d, widths[d]) for d in max_dists}
    widest = max(radii, key=radii.get)
    check_graph_fits(coords, codes, widest, MESSAGE_PASSING_BYTES_PER_PAIR, radius_per_max_dist=radii[widest] / widest)
    rows = []
    slide_sizes = np.bincount(codes)[codes]  # the size of each cell's slide
    for max_dist in max_dists:
        degrees, profiles = np.zeros(len(coords)), np.zeros(len(coords), dtype=np.uint64)
        for slide, cells in zip(names, slides):
            aggregated, _, (connectivities, _) = slide_messages((coords[cells], features[cells]), max_dist,
                                                                keep_graph=True, kernel_widths=widths[max_dist])
            degrees[cells] = np.diff(connectivities.indptr) - 1  # self-loops are not neighbours
            profiles[cells] = row_hashes(aggregated)  # sparse stays sparse: one number per cell is kept
            rows.append(_report_row(str(slide), max_dist, degrees[cells], _tied(profiles[cells], n_neighbors)))
        if len(slides) > 1:
            rows.append(_report_row(check.POOLED, max_dist, degrees, _tied(profiles, n_neighbors),
                                    slide_sizes=slide_sizes))
    report = pd.DataFrame(rows)
    report.insert(2, "graph_radius", report["max_dist"].map(radii))
    pooled = report[report["slide"] == (check.POOLED if len(slides) > 1 else str(names[0]))]
    report["suggested"] = False
    clean = pooled[pooled["flags"] == ""]
    if len(clean) and nearest > 0:
        report.loc[(np.log(clean["max_dist"] / _domain_radius(nearest))).abs().idxmin(), "suggested"] = True
    return report


def row_hashes(profiles) -> np.ndarray:
    """A 64-bit hash of each row of ``profiles`` (dense, or sparse without densifying):
    rows with the same values have the same hash, and different rows the same hash only
    by a chance of about one in 2**64 per pair.

    >>> hashes = row_hashes(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32))
    >>> bool(hashes[0] == hashes[1]), bool(hashes[0] == hashes[2])
    (True, False)
    >>> sparse = row_hashes(sp.csr_matrix(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])))
    >>> bool(sparse[0] == sparse[1]), bool(sparse[0] == sparse[2])
    (True, False)
    """
    if not sp.issparse(profiles):
        return pd.util.hash_pandas_object(pd.DataFrame(np.asarray(profiles)), index=False).to_numpy()
    rows = sp.csr_matrix(profiles, copy=True)
    rows.sum_duplicates()
    rows.eliminate_zeros()  # an explicit zero is no different from an absent one
    # each entry hashed with its column; a row's hash is the sum of its entries' (in any order)
    entries = pd.util.hash_array(rows.indices.astype(np.int64)) * np.uint64(0x9E3779B97F4A7C15) \
        ^ pd.util.hash_array(rows.data.astype(np.float64))
    sums = np.add.reduceat(np.append(entries, np.uint64(0)), np.minimum(rows.indptr[:-1], len(entries)))
    sums[np.diff(rows.indptr) == 0] = 0
    return sums


def _tied(hashes: np.ndarray, n_neighbors: int) -> np.ndarray:
    """Whether each cell's profile (:func:`row_hashes`) is shared by at least
    ``n_neighbors`` cells (itself included)."""
    _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    return counts[inverse.ravel()] >= n_neighbors


def _report_row(slide: str, max_dist: float, degrees: np.ndarray, tied: np.ndarray,
                slide_sizes: np.ndarray | None = None) -> dict:
    """One row of :func:`max_dist_report`; ``slide_sizes``: the size of each cell's slide,
    when the cells come from several (the share covered is then the median of each cell's)."""
    median = float(np.median(degrees))
    covered = median / max(len(degrees), 1) if slide_sizes is None else float(np.median(degrees / slide_sizes))
    row = {"slide": slide, "max_dist": max_dist, "median_neighbours": median,
           "p10_neighbours": float(np.percentile(degrees, 10)), "p90_neighbours": float(np.percentile(degrees, 90)),
           "isolated": float(np.mean(degrees == 0)), "slide_covered": covered,
           "identical_profiles": float(tied.mean())}
    flags = [name for name, bad in [("isolated", row["isolated"] > 0.10), ("few neighbours", median < 3),
                                    ("most of slide", row["slide_covered"] > 0.25),
                                    ("identical profiles", row["identical_profiles"] > 0.05)] if bad]
    row["flags"] = ", ".join(flags)
    return row
