"""UTAG, the method: ``utag()`` runs its steps in order.

Each step is an array function in the module named after it: :mod:`utag.graph` and
:mod:`utag.message_passing` (steps 1-2), :mod:`utag.embedding` (PCA and the kNN graph),
:mod:`utag.clustering` (Leiden, PARC, k-means, soft assignments). ``utag()`` checks its
parameters once, reads the AnnData at the start, runs the steps on arrays and writes
one new AnnData at the end.
"""
from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from . import _validation as check
from . import distributed, multiscale
from ._arrays import column_range
from ._keys import DEFAULT_SAVE_KEY, SWEEP_KEY, drop_tables_of, label_key, probabilities_key, sweep_entry
from ._order import canonical_order, graph_back, rows_back
from ._progress import Stopwatch
from .clustering import (
    Neighbourhood,
    check_backend_kwargs,
    cluster,
    cluster_many,
    feature_scale,
    feature_spread,
    kmeans_resolution,
    merge_small_domains,
    min_domain_cells,
    relabel_by_size,
    soft_assignments,
)
from .embedding import Embedding, check_knn_method, embed, representation
from .graph import (
    MESSAGE_PASSING_BYTES_PER_PAIR,
    SPATIAL_GRAPHS,
    STORED_GRAPH_BYTES_PER_PAIR,
    estimate_pairs,
    mean_neighbours,
    store_spatial_graph,
)
from .message_passing import as_float32_less_shift, pass_messages, whole_means, wider_than_float32
from .sketch import assign_by_vote, sketch_cells, sketch_size_for
from .transfer import build_model
from .tuning import (
    DEFAULT_RESOLUTIONS,
    DOMAIN_RADIUS_FACTOR,
    domain_radius,
    recommended_resolutions,
    resolution_for_n_domains,
    score_exponents,
    suggest_max_dist,
    sweep,
)
from .utils import evaluate_performance  # noqa: F401  (the original's utag.segmentation.evaluate_performance)

__all__ = ["utag", "evaluate_performance", "label_key"]

logger = logging.getLogger(__name__)

#: A sketch of fewer cells than this is warned about: small domains may get too few of them.
SMALL_SKETCH = 5_000
#: A sketch of more cells than this builds its kNN graph with HNSW (``knn_method="auto"``).
SKETCH_EXACT_KNN = 50_000


def utag(
    adata: AnnData,
    channels_to_use=None,
    slide_key: str | None = "Slide",
    save_key: str = DEFAULT_SAVE_KEY,
    filter_by_variance: bool = False,
    max_dist: float = 20.0,
    normalization_mode: str = "l1_norm",
    keep_spatial_connectivity: bool = False,
    pca_kwargs: dict = {"n_comps": 10},  # noqa: B006  (never mutated: copied below)
    apply_umap: bool = False,
    umap_kwargs: dict = {},  # noqa: B006
    apply_clustering: bool = True,
    clustering_method=["leiden", "parc"],  # noqa: B006  (the original's default)
    resolutions=[0.05, 0.1, 0.3, 1.0],  # noqa: B006
    leiden_kwargs: dict | None = None,
    parc_kwargs: dict | None = None,
    parallel: bool = True,
    processes: int | None = None,
    *,
    n_neighbors: int = 15,
    knn_method: str = "auto",
    kmeans_kwargs: dict | None = None,
    n_domains: int | None = None,
    use_rep: str | None = None,
    min_domain_size: float | None = None,
    random_state: int = 0,
    progress: bool = True,
    spatial_graph: str = "radius",
    n_spatial_neighbors: int = 6,
    flavor: str = "utag",
    kernel_widths=None,
    sketch_size="auto",
    n_jobs: int | None = None,
) -> AnnData:
    """Find microanatomical domains with UTAG (Kim et al., Nature Methods 2022).

    Per slide, cells whose centroids lie within ``max_dist`` are connected (self-loops
    included); each cell's features are replaced by the mean over its neighbourhood;
    all slides are embedded together with PCA, a kNN graph is built in that space and
    clustered at every resolution with every requested method.

    Parameters
    ----------
    adata
        Cells x features (marker intensities, or gene expression), with centroids in
        ``adata.obsm['spatial']`` (n_cells x 2). Dense or sparse, any numeric dtype.
        Never modified.
    channels_to_use
        Feature names to use (default: all of ``adata.var_names``).
    slide_key
        Column of ``adata.obs`` naming each cell's slide/image; graphs never connect
        different slides. ``None``: all cells are one slide. Default ``"Slide"``.
    save_key
        Prefix of the label columns. Default ``"UTAG Label"``.
    filter_by_variance
        Keep only features whose standard deviation is above the median.
    max_dist
        Neighbourhood radius in the units of ``obsm['spatial']`` (inclusive). Default 20,
        i.e. 20 um for IMC (1 px = 1 um); see the README for other modalities. ``"auto"``:
        6 times the median distance from a cell to its nearest cell (at another
        position; :func:`utag.tuning.suggest_max_dist`), the scale that gave the best domains on
        the labelled datasets of ``benchmarks/radius.py``.
    normalization_mode
        ``"l1_norm"`` (default, also ``"mean"``): neighbourhood mean, as published.
        ``"sum"`` (also ``"none"``, ``None``): neighbourhood sum, what the original code
        did for any other value. Other values raise a ``ValueError``.
    keep_spatial_connectivity
        Store the spatial graph as ``obsp['spatial_connectivities']`` (0/1 with
        self-loops) and ``obsp['spatial_distances']`` (squidpy's layout).
    pca_kwargs
        ``n_comps`` (default 10, capped below the number of features). Any other key
        sends the PCA through ``scanpy.pp.pca`` with these arguments.
    apply_umap, umap_kwargs
        Also compute ``obsm['X_umap']`` with ``scanpy.tl.umap(**umap_kwargs)``.
    apply_clustering
        Cluster the embedding (default True). If False only message passing is done
        (plus the embedding when ``apply_umap``).
    clustering_method
        One or several of ``"leiden"``, ``"parc"``, ``"kmeans"`` (case-insensitive);
        default ``["leiden", "parc"]``, the original's.
    resolutions
        One or several positive resolutions (k-means uses ``k = ceil(10 * resolution)``),
        or ``"auto"``: a stability sweep (:func:`utag.tuning.resolution_sweep`, 12
        resolutions x 5 seeded Leiden runs) picks the resolution, and its table is kept
        in ``uns['utag_resolution_sweep']``; its score weighs reproducibility less with
        ``flavor="multiscale"`` (:data:`utag.tuning.SCORE_EXPONENTS`). The sweep runs
        Leiden; PARC then runs at the resolution it picked, and k-means with as many
        domains as Leiden found there.
    leiden_kwargs
        Passed to the Leiden backend. Default: utag's compiled Leiden, resolutions run in
        parallel threads; ``{"flavor": "igraph"}`` for igraph's, ``{"flavor": "leidenalg"}``
        for the original (much slower) implementation, ``{"n_iterations": -1}`` to iterate
        to convergence; see :func:`utag.clustering.leiden`.
    parc_kwargs
        Passed to the PARC backend (e.g. ``{"small_pop": 50}``; default ``small_pop`` 1000,
        as the original ``utag()`` passes it to PARC); ``{"flavor": "parc"}``
        runs the ``parc`` package instead of utag's array implementation of its steps; see
        :func:`utag.clustering.parc`.
    parallel, processes
        Process slides in ``processes`` worker processes (default, or ``-1`` as in the
        original: one per core, at most one per slide, from 250,000 cells on, below which
        starting them on a first call costs more than they save:
        :data:`utag.graph.POOL_MIN_CELLS`), and run clustering resolutions in
        as many threads. Results are identical to ``parallel=False``.
    n_neighbors
        Neighbours per cell in the kNN graph of the embedding (default 15, as scanpy). More
        than the other cells is a ``ValueError`` (the default is capped for tiny inputs).
    knn_method
        ``"exact"`` (KD-tree), ``"approximate"`` (HNSW, ~98% of the exact neighbours) or
        ``"auto"`` (default: exact where the KD-tree is quick, that is up to 100,000 cells
        and ``n_cells * min(2**d, n_cells)`` within 5e7 for ``d`` effective dimensions, approximate
        otherwise, where the exact search grows to minutes); see
        :func:`utag.embedding.exact_search`; with ``"auto"``, a sketch of more than 50,000
        cells is searched approximately. Without a sketch, ``uns['neighbors']['params']['knn']``
        records which search ran.
    kmeans_kwargs
        Passed to ``sklearn.cluster.KMeans``, except ``n_clusters`` and ``random_state``,
        which ``utag()`` sets (``k = ceil(10 * resolution)``, or ``n_domains``; ``random_state``):
        passing either raises a ``ValueError``. k-means makes one k-means++ start
        (``n_init="auto"``), which depends on the order of the cells: utag orders them by
        slide and position, so renaming the slides or turning the tissue can move a few
        domains at large ``k``; ``{"n_init": 10}`` keeps the best of 10 starts.
    n_domains
        Also (or, with ``resolutions=None``, only) find exactly this many domains: Leiden
        at the resolution found by bisection (:func:`utag.tuning.resolution_for_n_domains`),
        k-means with ``k = n_domains``; written under the usual key with that resolution.
        Leiden's domains then each hold at least a tenth of an equal share of the cells;
        k-means keeps its ``n_domains`` domains even where some are below ``min_domain_size``.
    use_rep
        What the kNN graph that Leiden clusters is built on: ``None`` (default) chooses as
        ``scanpy.pp.neighbors`` with its default ``use_rep``, as the original UTAG did: the
        message-passed features ``"X"`` when there are at most 50 of them, ``"X_pca"``
        otherwise. PARC and k-means always cluster ``X_pca`` (and its kNN graph), as in
        the original.
    min_domain_size
        Domains smaller than this are merged into the domain their cells link to most in
        the kNN graph, for every method (:func:`utag.clustering.merge_small_domains`; when
        small domains hold most of the cells, each joins the neighbour it links to most per
        cell, so that they pair up rather than all join one); below 1 a fraction of the
        cells, from 1 a number of cells, ``0`` keeps every domain. Default (``None``):
        0.2% of the cells, at least 10 (the ``parc`` package's default ``small_pop``).
    random_state
        Seed for every random step (Leiden, PARC, k-means, UMAP): a whole number (R's
        ``1``, sent as ``1.0``, works). Default 0. ``None`` draws a fresh seed, recorded in
        ``uns['utag']['random_state']`` so the run can be repeated.
    progress
        Show progress bars (slides, clustering runs).
    spatial_graph
        Which cells a cell's neighbourhood holds: ``"radius"`` (default, the published
        method): every cell within ``max_dist``; ``"knn"``: its ``n_spatial_neighbors``
        nearest cells; ``"delaunay"``: its neighbours in the Delaunay triangulation,
        edges longer than ``max_dist`` removed (squidpy's ``spatial_neighbors(delaunay=True)``
        plus a length cut). The cell itself is always included.
    n_spatial_neighbors
        Neighbours per cell of the ``"knn"`` spatial graph (default 6, squidpy's).
    flavor
        ``"utag"`` (default): the published method, each cell's features replaced by their
        mean over its neighbourhood. ``"multiscale"``: Gaussian-weighted means at several
        kernel widths side by side, each block scaled to unit total variance
        (:mod:`utag.multiscale`); ``X`` then holds ``n_features * len(kernel_widths)``
        columns named ``"<feature>@<width>"``. Better domains on the labelled datasets of
        ``benchmarks/accuracy.py`` and less dependence on ``max_dist``; see the method page.
        Its spatial graph (kept with ``keep_spatial_connectivity``; the length cut of
        ``"delaunay"``) has the radius the kernels need, 1.25 ``max_dist`` by default.
    kernel_widths
        With ``flavor="multiscale"``: the Gaussian kernel widths (standard deviations, in
        the units of ``obsm['spatial']``). Default: ``max_dist / 4``, ``max_dist / 2``
        and ``max_dist``.
    sketch_size
        Cluster a sample of the cells and assign every other cell by a vote of its
        ``n_neighbors`` nearest sampled cells in the PCA (:mod:`utag.sketch`; the sample
        keeps each slide's share and is balanced over a coarse partition of the PCA).
        ``"auto"`` (default): 200,000 cells when there are more than 2,000,000, else
        every cell; ``None`` or ``0``: every cell; a number below 1: that fraction of
        the cells; from 1: that many cells. The sample is recorded in
        ``uns['utag']['sketch']``; the kNN graph (``obsp``) of a sample is not stored. With
        ``knn_method="auto"`` a sample of more than 50,000 cells gets the approximate
        (HNSW) kNN graph.
    n_jobs
        Threads for the steps after message passing (kNN search and weights, Leiden
        runs, the sketch's vote, soft assignments), scanpy's name: ``None`` (default):
        ``processes`` if ``parallel`` (every core when that is ``None``), else 1; ``-1``
        every core. The results do not depend on it. ``processes`` sets the slides' worker
        processes.

    Notes
    -----
    When ``adata.X`` or ``adata.obsm['spatial']`` is a Dask array (for instance from
    :func:`utag.io.read_lazy`), the run goes through :mod:`utag.distributed` on the active
    Dask scheduler: slides as Dask tasks, the PCA summed over blocks, a sketch clustered
    in one process (``sketch_size="auto"`` is then 200,000 cells, or every cell below
    that); the result equals the in-memory sketch route's and its ``X`` stays lazy.

    Cells are processed in an order of their own (by slide, position and features), so
    the labels do not depend on the order of the rows of ``adata``.

    Returns
    -------
    A new AnnData with the input's cells in the input's order, its ``obs``, ``var``
    (of the features used), ``obsm`` and ``uns``, and:

    * ``X``: message-passed features (float32; sparse if the input was sparse), with
      ``flavor="multiscale"`` the scaled blocks of every kernel width;
    * ``obs['{save_key}_{method}_{resolution}']``: domain labels, categorical strings,
      ``"0"`` the largest domain;
    * ``obsm['{save_key}_{method}_{resolution}_probabilities']``: cells x domains soft
      assignments (columns in label order, rows sum to 1);
    * ``obsm['X_pca']``, ``varm['PCs']``, ``uns['pca']``; ``obsp['connectivities']``,
      ``obsp['distances']``, ``uns['neighbors']`` (as ``scanpy.pp.neighbors``);
    * ``obsm['X_umap']`` if ``apply_umap``; the spatial graph if
      ``keep_spatial_connectivity``; ``uns['utag']``: the parameters used.

    Examples
    --------
    >>> from utag import utag
    >>> from utag.datasets import synthetic_tissue
    >>> adata = synthetic_tissue(n_cells=3_000, n_slides=2, random_state=0)
    >>> result = utag(adata, slide_key="roi", max_dist=20, clustering_method="kmeans",
    ...               resolutions=[0.3], progress=False)
    >>> result.obs["UTAG Label_kmeans_0.3"].nunique()
    3
    """
    check.check_n_cells(adata)
    check.save_key(save_key)
    check.warn_if_names_are_not_text(adata)
    n_jobs, processes = _workers(n_jobs, processes, parallel)
    normalization_mode = check.normalization_mode(normalization_mode)
    lazy = distributed.is_lazy(adata)  # Dask arrays: utag.distributed reads the cells slide by slide
    if lazy:
        distributed.check_unsupported(keep_spatial_connectivity=keep_spatial_connectivity, apply_umap=apply_umap,
                                      filter_by_variance=filter_by_variance, pca_kwargs=pca_kwargs)
        var = distributed.features_of(adata, channels_to_use)[1]
    else:
        coords = check.spatial_coordinates(adata)
        codes, slide_names = check.slide_codes(adata, slide_key)
        _warn_if_slides_are_tiny(slide_key, len(slide_names), adata.n_obs)
        features, var, shift = _select_features(adata, channels_to_use, filter_by_variance, normalization_mode)
    p = _check_parameters(
        adata, slide_key, len(var), max_dist=max_dist, pca_kwargs=pca_kwargs, apply_clustering=apply_clustering,
        clustering_method=clustering_method, resolutions=resolutions, leiden_kwargs=leiden_kwargs,
        parc_kwargs=parc_kwargs, kmeans_kwargs=kmeans_kwargs, n_neighbors=n_neighbors,
        knn_method=knn_method, n_domains=n_domains, use_rep=use_rep, min_domain_size=min_domain_size,
        spatial_graph=spatial_graph, n_spatial_neighbors=n_spatial_neighbors, flavor=flavor,
        kernel_widths=kernel_widths, normalization_mode=normalization_mode, sketch_size=sketch_size,
        apply_umap=apply_umap, umap_kwargs=umap_kwargs,
    )
    random_state = check.seed(random_state)
    if lazy:
        return distributed.run(adata, p, channels_to_use=channels_to_use, slide_key=slide_key, save_key=save_key,
                               random_state=random_state, progress=progress, sketch_size=sketch_size,
                               n_jobs=n_jobs)
    order = canonical_order(codes, coords, features)  # results must not depend on the order of the rows
    if order is not None:
        coords, codes, features = coords[order], codes[order], features[order]
        p = _membership_at(p, order)
    watch = Stopwatch(progress, logger)
    try:
        with watch("graph and message passing"):
            aggregated, n_edges, graph, background, scales = _message_passing(
                coords, features, codes, slide_names, p, keep_spatial_connectivity,
                processes if parallel else 1, progress, shift)
        output_var = _output_var(var, p.kernel_widths)  # one block per kernel width
        logger.info("%d cells, %d slides, %d spatial edges", adata.n_obs, len(slide_names), n_edges)
        _warn_if_spatial_graph_misfits(p, n_edges, coords, codes)
        why_one_profile = None  # or why every cell has the same neighbourhood profile
        if p.methods:
            why_one_profile = _why_one_profile(features, aggregated, codes, n_edges, p.max_dist, scales)
        del features  # from here on only the message-passed features count

        embedded, sample = None, None
        if apply_clustering or apply_umap:
            # one profile: one domain, nothing to sample
            embedded = _embed(aggregated, codes, p, not why_one_profile, random_state, watch, n_jobs)
            sample = embedded.rows
        runs, swept = [], None
        if why_one_profile:
            logger.warning("every cell has the same neighbourhood profile (%s): one domain", why_one_profile)
            runs = _one_domain_runs(p, adata.n_obs)
        elif p.methods:
            runs, swept = _cluster(p, embedded, coords, codes, random_state, n_jobs, progress, watch)
        if embedded is not None:
            embedded = embedded.to_store(adata.n_obs)
        labels = _labels_of(runs, save_key)
        probabilities, model = {}, None
        if labels:
            with watch("probabilities"):
                probabilities = _soft_assignments(aggregated, labels, n_jobs)
            _log_domain_counts(labels)
            model = _transfer_model(aggregated, var, embedded, labels, p, background, scales,
                                    mean_neighbours(n_edges, adata.n_obs))
        if background is not None:
            aggregated += background  # the mean of the neighbourhood, as published
        outputs = {"aggregated": aggregated, "graph": graph, "embedded": embedded, "labels": labels,
                   "probabilities": probabilities, "swept": swept}
        del aggregated, graph, embedded, labels, probabilities, swept  # freed one by one as they are reordered
        _to_input_order(outputs, order)
        result = _write_result(adata, p, **outputs, var=output_var)
        embedded = outputs["embedded"]
        if apply_umap:
            import scanpy as sc

            with watch("UMAP"):
                sc.tl.umap(result, **{"random_state": random_state, **(umap_kwargs or {})})
        result.uns["utag"] = _summary(p, slide_key, embedded, runs, outputs["labels"], random_state,
                                      watch, scales, sample, order)
        result.uns["utag"].update(save_key=save_key, filter_by_variance=bool(filter_by_variance),
                                  keep_spatial_connectivity=bool(keep_spatial_connectivity),
                                  apply_umap=bool(apply_umap), umap_kwargs=_storable_kwargs(umap_kwargs))
        if model is not None:
            result.uns["utag"]["model"] = model
    finally:
        watch.close()
    return result


def _labels_of(runs: list[_Run], save_key: str) -> dict[str, np.ndarray]:
    """Each run's labels under the key ``utag()`` writes them to."""
    return {label_key(save_key, run.method, run.resolution): run.labels for run in runs}


def _summary(p: _Parameters, slide_key, embedded: Embedding | None, runs: list[_Run],
             labels: dict, random_state: int, watch: Stopwatch, scales, sample, order) -> dict:
    """``uns['utag']``: the parameters the run used and what it chose."""
    summary = {
        "slide_key": slide_key if slide_key is not None else "None",
        "max_dist": p.max_dist,
        "spatial_graph": p.spatial_graph,
        "n_spatial_neighbors": p.n_spatial_neighbors,
        "flavor": p.flavor,
        "normalization_mode": p.normalization_mode,
        "n_comps": int(embedded.pca["embedding"].shape[1]) if embedded is not None else 0,
        "n_neighbors": p.n_neighbors,
        "use_rep": embedded.params["use_rep"] if embedded is not None else "None",
        "min_domain_cells": p.min_cells,
        "pca_kwargs": _storable_kwargs(p.pca_kwargs),
        "clustering_method": list(p.methods),
        **{f"{method}_kwargs": _storable_kwargs(kwargs) for method, kwargs in p.backend_kwargs.items()},
        "resolutions": sorted({run.resolution for run in runs}),
        "n_domains": p.n_domains if p.n_domains is not None else 0,
        "random_state": random_state,
        "label_keys": list(labels),
        "timings": watch.seconds,
    }
    if p.kernel_widths is not None:
        summary["multiscale"] = {
            "kernel_widths": np.asarray(p.kernel_widths),
            "kernel_passes": np.asarray([multiscale.kernel_passes(w, p.max_dist) for w in p.kernel_widths]),
            "kernel_cutoff": multiscale.CUTOFF,
            "graph_radius": p.graph_radius,
            "block_scales": scales,
        }
    if sample is not None:
        in_input_order = sample if order is None else np.sort(order[sample])
        summary["sketch"] = {"size": len(sample), "cells": in_input_order, "n_neighbors_vote": p.n_neighbors}
    return summary


def _storable_kwargs(kwargs) -> dict:
    """``kwargs`` as ``uns`` stores them in .h5ad and .zarr files: numbers, text and
    flags as they are, ``None`` as ``"None"``, one value per cell (an initial membership)
    summarised, anything else (a class) by its name."""
    stored = {}
    for key, value in (kwargs or {}).items():
        if value is None:
            value = "None"
        elif np.ndim(value) > 0:
            value = f"{np.size(value)} values"
        elif not isinstance(value, (bool, int, float, str, np.integer, np.floating, np.bool_)):
            value = getattr(value, "__name__", type(value).__name__)
        stored[str(key)] = value
    return stored


class _Run(NamedTuple):
    """One clustering run of ``utag()``: a labelling under ``label_key(save_key, method, resolution)``."""

    method: str
    resolution: float
    kwargs: dict  # the backend's keywords
    labels: np.ndarray | None  # None until clustered
    floor: int = 1  # domains that merging small ones must leave: n_domains for the runs that give that many


@dataclass(frozen=True)
class _Parameters:
    """``utag()``'s parameters, checked once, in the form the steps take them."""

    methods: tuple[str, ...]
    resolutions: list[float]
    auto: bool  # resolutions="auto"
    n_domains: int | None
    normalization_mode: str  # "l1_norm" (the mean) or "sum"
    max_dist: float
    max_dist_chosen: bool  # max_dist="auto": suggest_max_dist chose it
    n_neighbors: int
    knn_method: str
    n_comps: int
    pca_kwargs: dict  # without n_comps
    use_rep: str
    min_cells: int
    backend_kwargs: dict  # per method
    spatial_graph: str
    n_spatial_neighbors: int
    flavor: str
    kernel_widths: tuple[float, ...] | None  # flavor="multiscale" only
    sketch_size: int | None  # cells to cluster; None: every cell

    @property
    def graph_radius(self) -> float:
        """The radius of the spatial graph message passing builds (wider than ``max_dist``
        for the multiscale flavour's kernels)."""
        return multiscale.graph_radius(self.max_dist, self.kernel_widths)


def _check_parameters(adata: AnnData, slide_key, n_features: int, *, max_dist, pca_kwargs, apply_clustering,
                      clustering_method, resolutions, leiden_kwargs, parc_kwargs, kmeans_kwargs,
                      n_neighbors, knn_method, n_domains, use_rep, min_domain_size, spatial_graph,
                      n_spatial_neighbors, flavor, kernel_widths, normalization_mode, sketch_size,
                      apply_umap, umap_kwargs=None) -> _Parameters:
    """Every parameter checked before any work, with errors that name it."""
    methods = check.clustering_methods(clustering_method) if apply_clustering else ()
    auto = bool(apply_clustering) and check.is_auto(resolutions)
    flavor = check.choice("flavor", flavor, multiscale.FLAVORS)
    spatial_graph = check.choice("spatial_graph", spatial_graph, SPATIAL_GRAPHS)
    n_domains = _checked_n_domains(n_domains, adata.n_obs, methods)
    if not apply_clustering or auto or (n_domains is not None and resolutions is None):
        resolutions = []
    else:
        resolutions = check.resolution_list(resolutions)
    max_dist_chosen = check.is_auto(max_dist)
    max_dist = _checked_max_dist(max_dist, adata, slide_key)
    n_neighbors = check.as_int("n_neighbors", n_neighbors, minimum=2)
    if n_neighbors > max(15, adata.n_obs - 1):  # the default, 15, is capped quietly for tiny inputs
        raise ValueError(f"`n_neighbors={n_neighbors}` is more than the {adata.n_obs - 1} other cells: every cell "
                         "would be every other's neighbour. Typical values are 10-30 (default 15).")
    knn_method = check_knn_method(knn_method)
    n_spatial_neighbors = check.as_int("n_spatial_neighbors", n_spatial_neighbors)
    kernel_widths = multiscale.flavor_widths(flavor, max_dist, kernel_widths)
    if kernel_widths is not None:
        if normalization_mode != "l1_norm":
            raise ValueError("flavor='multiscale' takes weighted means; `normalization_mode` must be 'l1_norm' "
                             f"(the default), got {normalization_mode!r}.")
        n_features *= len(kernel_widths)
    sketched = _checked_sketch_size(sketch_size, adata.n_obs, apply_clustering, apply_umap, n_domains)
    leiden_kwargs, parc_kwargs, kmeans_kwargs = check_backend_kwargs(adata.n_obs, leiden_kwargs, parc_kwargs,
                                                                      kmeans_kwargs)
    pca_kwargs = _checked_pca_kwargs(pca_kwargs)
    if apply_umap:
        _check_umap_kwargs(umap_kwargs)
    n_comps = check.as_int("pca_kwargs['n_comps']", pca_kwargs.pop("n_comps", 10))
    min_cells = _checked_min_cells(min_domain_size, adata.n_obs, bool(methods))
    return _Parameters(
        methods=methods, resolutions=resolutions, auto=auto, n_domains=n_domains,
        normalization_mode=normalization_mode, max_dist=max_dist, max_dist_chosen=max_dist_chosen,
        n_neighbors=n_neighbors, knn_method=knn_method, n_comps=n_comps,
        pca_kwargs=pca_kwargs, use_rep=representation(use_rep, n_features), min_cells=min_cells,
        backend_kwargs={"leiden": leiden_kwargs, "parc": parc_kwargs, "kmeans": kmeans_kwargs},  # checked copies
        spatial_graph=spatial_graph, n_spatial_neighbors=n_spatial_neighbors, flavor=flavor,
        kernel_widths=kernel_widths, sketch_size=sketched,
    )


def _checked_n_domains(n_domains, n_cells: int, methods: tuple) -> int | None:
    """``n_domains`` as an int (or None), refused above the number of cells and with PARC."""
    if n_domains is None:
        return None
    n_domains = check.as_int("n_domains", n_domains, minimum=1)
    if n_domains > n_cells:
        raise ValueError(f"`n_domains={n_domains}` is more than the {n_cells} cells; ask for at most "
                         f"{n_cells} domains.")
    if "parc" in methods:
        raise ValueError("`n_domains` works with clustering_method 'leiden' and 'kmeans'; PARC sets its own "
                         "number of clusters. Drop 'parc' or pass `resolutions` instead.")
    return n_domains


def _checked_max_dist(max_dist, adata: AnnData, slide_key) -> float:
    """``max_dist`` as a positive number; ``"auto"`` is :func:`suggest_max_dist`'s radius."""
    if check.is_auto(max_dist):
        max_dist = suggest_max_dist(adata, slide_key)
        logger.info("max_dist='auto': %g (%g times the median distance to the nearest cell)", max_dist,
                    DOMAIN_RADIUS_FACTOR)
    elif isinstance(max_dist, str):
        raise ValueError(f"`max_dist` must be a positive number (in the units of obsm['spatial']) or 'auto', "
                         f"got {max_dist!r}.")
    return check.check_positive("max_dist", max_dist)


def _checked_sketch_size(sketch_size, n_cells: int, apply_clustering: bool, apply_umap: bool,
                         n_domains: int | None) -> int | None:
    """The cells to cluster (None: every cell). ``sketch_size`` is checked whether or not it
    is used; UMAP needs every cell's kNN graph, so ``"auto"`` does not sketch with it."""
    sketched = sketch_size_for(sketch_size, n_cells)
    if not apply_clustering or (apply_umap and check.is_auto(sketch_size)):
        return None
    if sketched and apply_umap:
        raise ValueError(f"apply_umap=True needs the kNN graph of every cell, but {n_cells} cells are sketched "
                         f"(sketch_size={sketch_size!r}); pass sketch_size=None for UMAP.")
    if sketched and n_domains is not None and n_domains > sketched:
        raise ValueError(f"`n_domains={n_domains}` is more than the {sketched} cells of the sketch; ask for fewer "
                         "domains or pass a larger `sketch_size` (None: every cell).")
    if sketched and sketched < min(SMALL_SKETCH, n_cells):
        logger.warning("sketch_size=%r clusters %d cells: a domain of a few percent of the tissue is seen in only a "
                       "few dozen of them and may be lost (docs/performance.md measures sketches of 20,000 cells and "
                       "more); sketch_size=None clusters every cell.", sketch_size, sketched)
    if sketched and check.is_auto(sketch_size):
        logger.info("%d cells: clustering a sketch of %d of them and assigning the others by their nearest "
                    "sketched cells (sketch_size='auto'); pass sketch_size=None to cluster every cell",
                    n_cells, sketched)
    return sketched


def _checked_min_cells(min_domain_size, n_cells: int, clustering: bool) -> int:
    """``min_domain_size`` in cells, refused above the number of cells (every labelling
    would be one domain), with a warning above a third of them (at most two domains can
    be that large)."""
    min_cells = min_domain_cells(min_domain_size, n_cells)
    if min_domain_size is None or not clustering:
        return min_cells
    if min_cells > n_cells:
        raise ValueError(f"`min_domain_size={min_domain_size!r}` is more than the {n_cells} cells: every domain "
                         "would be merged into one. Pass a number of cells below that, or a fraction of the cells "
                         "(e.g. 0.01), or 0 to keep every domain.")
    if 3 * min_cells > n_cells:
        logger.warning("min_domain_size=%r is %d cells, more than a third of the %d cells: at most two domains can "
                       "be that large, and smaller ones are merged into them.", min_domain_size, min_cells, n_cells)
    return min_cells


def _checked_pca_kwargs(pca_kwargs) -> dict:
    """A copy of ``pca_kwargs``, its keys checked against ``scanpy.pp.pca``'s (which runs
    the PCA when any but ``n_comps`` is given), before any work."""
    pca_kwargs = check.kwargs_dict("pca_kwargs", pca_kwargs)
    if set(pca_kwargs) - {"n_comps"}:
        import inspect

        import scanpy as sc

        known = [name for name in inspect.signature(sc.pp.pca).parameters
                 if name not in ("data", "copy", *PCA_KWARGS_UTAG_SETS)]
        check.known_keywords("pca_kwargs", pca_kwargs, known, "utag's PCA (scanpy.pp.pca)",
                             " (utag passes the message-passed features itself and reads obsm['X_pca']; choose "
                             "the features with `channels_to_use` or `filter_by_variance`)")
    return pca_kwargs


def _check_umap_kwargs(umap_kwargs) -> None:
    """``umap_kwargs`` checked against ``scanpy.tl.umap``'s keywords before any work."""
    if check.kwargs_dict("umap_kwargs", umap_kwargs):
        import inspect

        import scanpy as sc

        known = [name for name in inspect.signature(sc.tl.umap).parameters if name not in ("adata", "copy")]
        check.known_keywords("umap_kwargs", umap_kwargs, known, "scanpy.tl.umap")


#: ``scanpy.pp.pca`` keywords that choose the data or where the result goes, which utag does
#: itself: the features are the message-passed ones, the result goes to ``obsm['X_pca']``.
PCA_KWARGS_UTAG_SETS = ("layer", "key_added", "mask_var", "use_highly_variable", "return_info")


def _workers(n_jobs, processes, parallel: bool) -> tuple[int | None, int | None]:
    """``(n_jobs, processes)`` checked: threads for the array stages (``None`` or -1: every
    core; by default ``processes``, or 1 without ``parallel``) and worker processes for the
    slides (-1, the original's "all available", is ``None``). R's integers arrive as
    floats (``2.0``)."""
    if n_jobs is not None and n_jobs != -1:
        n_jobs = check.as_int("n_jobs", n_jobs)
    if processes == -1:
        processes = None
    if processes is not None:
        processes = check.as_int("processes", processes)
    return (n_jobs if n_jobs is not None else (processes if parallel else 1)), processes


def _message_passing(coords: np.ndarray, features, codes: np.ndarray, slide_names, p: _Parameters,
                     keep_graph: bool, processes: int | None, progress: bool,
                     shift: np.ndarray | None = None) -> tuple:
    """Step 2 on every slide: ``(aggregated, n_edges, graph, background, scales)``.

    ``aggregated``: the neighbourhood means of ``features``, which are the input's less
    ``shift`` (see :func:`utag.message_passing.as_float32_less_shift`; ``None``: nothing
    taken off), or their sums; with the multiscale flavour, the blocks of every kernel
    width scaled by ``scales``. ``background``: the shift scaled as the blocks are, to be
    added back. ``graph``: the spatial graph with ``keep_graph``, else ``None``."""
    # storing the spatial graph costs more per pair than message passing alone
    bytes_per_pair = MESSAGE_PASSING_BYTES_PER_PAIR + (STORED_GRAPH_BYTES_PER_PAIR if keep_graph else 0)
    aggregated, n_edges, graph = pass_messages(
        coords, features, codes, p.max_dist, p.normalization_mode,
        processes=processes, progress=progress, bytes_per_pair=bytes_per_pair, keep_graph=keep_graph,
        slide_names=slide_names, spatial_graph_kind=p.spatial_graph, n_spatial_neighbors=p.n_spatial_neighbors,
        kernel_widths=p.kernel_widths,
    )
    scales = None
    if p.kernel_widths is not None:
        scales = multiscale.block_scales(aggregated, len(p.kernel_widths))
        aggregated = multiscale.scale_blocks(aggregated, scales)
    return aggregated, n_edges, graph, multiscale.scaled_background(shift, scales), scales


def _embed(aggregated, codes: np.ndarray, p: _Parameters, may_sketch: bool, random_state: int, watch: Stopwatch,
           n_jobs) -> Embedding:
    """Step 3's embedding: the PCA of every cell and the kNN graph (of a sketch of the
    cells when ``p.sketch_size`` asks for one and ``may_sketch``)."""
    sketching = bool(p.sketch_size) and may_sketch
    choose = (lambda embedding: _sketch(embedding, codes, p, random_state)) if sketching else None
    knn_method = _knn_method(p, p.sketch_size if sketching else None, len(codes))
    return embed(aggregated, p.n_comps, p.pca_kwargs, p.n_neighbors, knn_method, random_state, p.use_rep,
                 watch=watch, rows=choose, n_jobs=n_jobs, slides=codes)


def _transfer_model(aggregated, input_var: pd.DataFrame, embedded: Embedding, labels: dict, p: _Parameters,
                    background, scales, mean_spatial_neighbors: float) -> dict:
    """What :func:`utag.transfer.transfer_labels` needs to label new cells (``uns['utag']['model']``)."""
    pca = embedded.pca
    return build_model(aggregated, input_var.index, pca["embedding"], pca["components"], labels, p.max_dist,
                       p.normalization_mode, background, p.spatial_graph, p.n_spatial_neighbors, p.kernel_widths,
                       scales, centred=bool(pca.get("params", {}).get("zero_center", True)),
                       mean_spatial_neighbors=mean_spatial_neighbors)


#: Cells per slide, on average, below which ``utag()`` asks whether ``slide_key`` names slides.
FEW_CELLS_PER_SLIDE = 10


def _warn_if_slides_are_tiny(slide_key, n_slides: int, n_cells: int) -> None:
    """A warning when ``slide_key`` splits the cells into slides of a few cells each (a
    column of cell ids, say): no graph crosses slides, so such cells have no neighbours."""
    if n_slides > 1 and n_cells / n_slides < FEW_CELLS_PER_SLIDE:
        logger.warning("slide_key=%r splits %d cells into %d slides (%.1f cells each): no neighbourhood crosses a "
                       "slide, so cells keep almost only themselves. Is %r the column naming each cell's image?",
                       slide_key, n_cells, n_slides, n_cells / n_slides, slide_key)


def _warn_if_spatial_graph_misfits(p: _Parameters, n_edges: int, coords: np.ndarray, codes: np.ndarray) -> None:
    """Warnings for a spatial graph that links too few or too many cells: for the radius
    graph :func:`_warn_if_max_dist_misfits` (``n_edges``: its pairs; the multiscale
    flavour's graph is wider, so its pairs within ``max_dist`` are estimated), for the kNN
    graph when ``n_spatial_neighbors`` covers most of a slide."""
    if p.spatial_graph == "radius":
        pairs = n_edges if p.kernel_widths is None else estimate_pairs(coords, codes, p.max_dist)
        _warn_if_max_dist_misfits(pairs, coords, codes, p.max_dist, p.max_dist_chosen)
    elif p.spatial_graph == "knn":
        mean_slide = _mean_slide_size(codes)
        if _most_of_slide(p.n_spatial_neighbors, mean_slide):
            logger.warning("n_spatial_neighbors=%d links each cell to most of its slide (%.0f cells on average): "
                           "the neighbourhood means hardly differ, and the domains follow the slides. Domains need "
                           "a neighbourhood much smaller than a slide (the default is 6).",
                           p.n_spatial_neighbors, mean_slide)


#: Mean neighbours per cell (within ``max_dist``) below which ``utag()`` warns: at about the
#: distance to the nearest cell a cell has one neighbour or none, and the neighbourhood
#: means are little more than the cells themselves (``benchmarks/radius.py``: domains need
#: about six nearest-cell distances). And the share of its slide above which it warns.
FEW_NEIGHBOURS, MOST_OF_SLIDE = 2.0, 0.25


def _mean_slide_size(codes: np.ndarray) -> float:
    """The size of the slide a cell is on, on average over the cells."""
    return float(np.mean(np.bincount(codes)[codes]))


def _most_of_slide(neighbours: float, mean_slide: float) -> bool:
    """Whether ``neighbours`` per cell are :data:`MOST_OF_SLIDE` of slides of ``mean_slide``
    cells or more (on slides large enough for that to tell)."""
    return mean_slide > 1 / MOST_OF_SLIDE and neighbours >= MOST_OF_SLIDE * mean_slide


def _warn_if_max_dist_misfits(n_edges: float, coords: np.ndarray, codes: np.ndarray, max_dist: float,
                              chosen: bool = False) -> None:
    """A warning, with the radius domains need (:func:`utag.tuning.domain_radius`), when
    the radius graph gives a cell almost no neighbours or most of its slide: ``max_dist``
    and ``obsm['spatial']`` are then likely in different units. ``chosen``: ``max_dist``
    is the one ``max_dist="auto"`` chose (the tissue, not the units, is then the cause)."""
    n_cells = len(codes)
    mean_degree = mean_neighbours(n_edges, n_cells)
    mean_slide = _mean_slide_size(codes)
    few = mean_degree < min(FEW_NEIGHBOURS, mean_slide - 1)  # not where every cell already links every other
    most = _most_of_slide(mean_degree, mean_slide)
    if not (few or most):
        return
    what = ("almost none: the neighbourhood means are little more than the cells themselves" if few
            else "most of its slide: the neighbourhood means hardly differ")
    tissue = ("the cells lie in clumps far apart for their spacing within a clump" if few
              else "the slides hold few cells, or few distinct positions, for domains that wide")
    if chosen:
        logger.warning("max_dist=%g (%g median nearest-cell distances, max_dist='auto') gives a cell %.1f neighbours "
                       "on average (%s): %s. utag.tuning.max_dist_report compares radii.", max_dist,
                       DOMAIN_RADIUS_FACTOR, mean_degree, what, tissue)
        return
    radius = domain_radius(coords, codes)
    # the radius domains need is a hint only where it points away from the misfit: a larger
    # one for too few neighbours, a smaller one for most of the slide
    if radius is not None and (radius > max_dist if few else radius < max_dist):
        hint = f" About {radius:g} suits domains here (max_dist='auto');"
    else:
        hint = f" If they are, {tissue};"
    logger.warning("max_dist=%g gives a cell %.1f neighbours on average (%s). Are max_dist and obsm['spatial'] in "
                   "the same units?%s utag.tuning.max_dist_report compares radii.", max_dist, mean_degree, what, hint)


def _knn_method(p: _Parameters, sketch_size: int | None, n_cells: int) -> str:
    """``p.knn_method``, except that ``"auto"`` searches a sketch of more than
    :data:`SKETCH_EXACT_KNN` cells approximately: the exact search costs minutes in tens of
    dimensions. A "sketch" of every cell keeps the unsketched route's choice, so that it
    gives the same labels."""
    if p.knn_method == "auto" and sketch_size is not None and SKETCH_EXACT_KNN < sketch_size < n_cells:
        return "approximate"
    return p.knn_method


def _soft_assignments(aggregated, labels: dict, n_jobs) -> dict:
    """The soft assignments of every labelling (one feature scale for all)."""
    scale = feature_scale(aggregated, n_jobs)
    return {key: soft_assignments(aggregated, codes, n_jobs, scale) for key, codes in labels.items()}


def _log_domain_counts(labels: dict) -> None:
    for key, codes in labels.items():
        logger.info("%s: %d domains", key, codes.max() + 1)


def _output_var(var: pd.DataFrame, widths) -> pd.DataFrame:
    """``var`` of the message-passed features: the input's, or with the multiscale flavour
    (kernel ``widths``) one row per feature and kernel width."""
    if widths is None:
        return var
    return pd.DataFrame({"feature": np.tile(var.index.to_numpy(dtype=str), len(widths)),
                         "kernel_width": np.repeat(np.asarray(widths, dtype=float), len(var))},
                        index=multiscale.feature_names(var.index, widths))


def _why_one_profile(features, aggregated, codes: np.ndarray, n_edges: int, max_dist: float,
                     scales: np.ndarray | None = None) -> str | None:
    """Why every cell has the same message-passed profile (up to float32 rounding), or
    ``None`` when they differ: there is then nothing to cluster. ``scales``: the factors
    of the multiscale blocks in ``aggregated``."""
    spread = column_range(features)
    if np.any(column_range(aggregated) > 1e-6 * np.outer(1 if scales is None else scales, spread).ravel()):
        return None
    if len(codes) == 1:
        return "there is one cell"
    if not spread.any():
        return "all cells have the same features" + (", all zero" if abs(features).max() == 0 else "")
    sizes = np.bincount(codes)
    if n_edges == int((sizes * (sizes - 1) // 2).sum()):
        return (f"max_dist={max_dist:g} connects every cell of a slide with every other; are max_dist and "
                "obsm['spatial'] in the same units?")
    return "the neighbourhood means do not differ"


def _one_domain_runs(p: _Parameters, n_cells: int) -> list[_Run]:
    """One domain under every key the call asks for (``"auto"``: at the sweep's first resolution)."""
    resolutions = p.resolutions or ([] if p.n_domains else [DEFAULT_RESOLUTIONS[0]])
    runs = [_Run(method, resolution, {}, np.zeros(n_cells, dtype=np.int64))
            for resolution in resolutions for method in p.methods]
    if p.n_domains is not None:
        runs += [_Run(method, kmeans_resolution(p.n_domains), {}, np.zeros(n_cells, dtype=np.int64))
                 for method in p.methods if method != "parc"]
    return runs


def _neighbourhood(embedded: Embedding, sample: np.ndarray | None = None) -> Neighbourhood:
    """What every method clusters, as in the original UTAG (of the ``sample`` cells, if
    any): the PCA and the kNN graph on ``use_rep`` (Leiden and PARC the graph, k-means the
    PCA; see :data:`utag.clustering.BACKENDS`)."""
    points = embedded.pca["embedding"] if sample is None else embedded.pca["embedding"][sample]
    return Neighbourhood(points, embedded.connectivities)


def _plan_runs(p: _Parameters, neighbourhood: Neighbourhood, coords: np.ndarray, codes: np.ndarray, random_state: int,
               n_jobs, progress: bool, watch: Stopwatch) -> tuple[list[_Run], tuple | None]:
    """The clustering runs to do (labels ``None`` where still to be clustered) and the
    resolution sweep's ``(table, labels)`` when ``resolutions="auto"``.

    ``auto``: the resolution comes from a stability sweep (k-means then takes as many
    domains as Leiden finds there); ``n_domains``: runs that give exactly that many.
    """
    backend_kwargs, resolutions, swept = p.backend_kwargs, p.resolutions, None
    if p.auto:
        with watch("resolution sweep"):
            swept = sweep(neighbourhood, coords, codes, n_runs=5, random_state=random_state,
                          leiden_kwargs=backend_kwargs["leiden"], n_jobs=n_jobs, progress=progress,
                          min_cells=p.min_cells, exponents=score_exponents(p.flavor))
        resolutions = recommended_resolutions(swept.table)
        logger.info("resolutions='auto' chose %s (see uns['utag_resolution_sweep'])", resolutions)
        chosen = int(swept.table.loc[swept.table["resolution"] == resolutions[0], "n_domains"].iloc[0])
        backend_kwargs = {**backend_kwargs, "kmeans": {**backend_kwargs["kmeans"], "n_clusters": chosen}}
    def key_resolution(method: str, resolution: float) -> float:  # k-means after "auto": Leiden's count
        return kmeans_resolution(chosen) if p.auto and method == "kmeans" else resolution

    runs = [_Run(method, key_resolution(method, resolution), backend_kwargs[method], None)
            for resolution in resolutions for method in p.methods]
    if p.n_domains is not None:
        with watch(f"resolution for {p.n_domains} domains"):
            fixed = _runs_for_n_domains(neighbourhood, p.n_domains, p.methods, backend_kwargs,
                                        random_state, p.min_cells, coords, codes)
        runs = _without_runs_under_the_keys_of(runs, fixed, p.n_domains, p.auto) + fixed
    return runs, swept


def _without_runs_under_the_keys_of(runs: list[_Run], fixed: list[_Run], n_domains: int,
                                    auto: bool = False) -> list[_Run]:
    """``runs`` less those that would be written under the key of one of the ``fixed``
    runs for ``n_domains`` (k-means' is at resolution ``n_domains / 10``, where the default
    resolutions have 0.3 and 1.0; Leiden's bisection can land on a planned resolution too):
    the ``n_domains`` run takes the key, with a warning, rather than one overwriting the
    other unseen."""
    taken = {(run.method, str(run.resolution)) for run in fixed}
    kept = []
    for run in runs:
        if (run.method, str(run.resolution)) in taken:
            fix = ("resolutions='auto' chose it too" if auto
                   else f"drop {run.resolution} from `resolutions` to silence this")
            logger.warning("n_domains=%d: its %s run is at resolution %s, which was asked for too; the labels "
                           "under that resolution's key are the n_domains run's (%s)", n_domains, run.method,
                           run.resolution, fix)
        else:
            kept.append(run)
    return kept


def _cluster(p: _Parameters, embedded: Embedding, coords: np.ndarray, codes: np.ndarray, random_state: int, n_jobs,
             progress: bool, watch: Stopwatch, assign_by=assign_by_vote) -> tuple[list[_Run], tuple | None]:
    """Every clustering run, clustered, and the resolution sweep, with labels for every cell: those of a sketch
    (``embedded.rows``) are assigned to the other cells by vote (``assign_by``, as
    :func:`utag.sketch.assign_by_vote`)."""
    sample = embedded.rows
    neighbourhood = _neighbourhood(embedded, sample)
    clustered_params, clustered_coords, clustered_codes = p, coords, codes
    if sample is not None:  # the sketch's cells, with a minimum domain size in proportion
        clustered_params = replace(_membership_at(p, sample),
                                   min_cells=max(1, round(p.min_cells * len(sample) / len(codes))))
        clustered_coords, clustered_codes = coords[sample], codes[sample]
    runs, swept = _plan_runs(clustered_params, neighbourhood, clustered_coords, clustered_codes, random_state,
                             n_jobs, progress, watch)
    runs = _cluster_runs(runs, neighbourhood, random_state, clustered_params.min_cells, n_jobs, progress, watch)
    del neighbourhood  # the clustering backends' copies of the graph
    if sample is not None:
        with watch("assigning the other cells"):
            runs, swept = _assign_others(runs, swept, embedded, sample, p, random_state, n_jobs, assign_by)
    return runs, swept


def _membership_at(p: _Parameters, rows: np.ndarray) -> _Parameters:
    """``p`` with ``leiden_kwargs['initial_membership']`` (one label per cell) taken at
    ``rows``: the cells reordered, or the sketch."""
    leiden = p.backend_kwargs["leiden"]
    if "initial_membership" not in leiden:
        return p
    membership = np.asarray(leiden["initial_membership"])[rows]
    return replace(p, backend_kwargs={**p.backend_kwargs, "leiden": {**leiden, "initial_membership": membership}})


def _sketch(embedding: np.ndarray, codes: np.ndarray, p: _Parameters, random_state: int) -> np.ndarray:
    """The cells to cluster: :func:`utag.sketch.sketch_cells` on the PCA of every cell."""
    sample = sketch_cells(embedding, codes, p.sketch_size, random_state)
    logger.info("sketch: clustering %d of %d cells", len(sample), len(codes))
    return sample


def _assign_others(runs: list[_Run], swept, embedded: Embedding, sample: np.ndarray, p: _Parameters,
                   random_state: int, n_jobs, assign_by=assign_by_vote) -> tuple[list[_Run], tuple | None]:
    """The labels of the sketch's runs (and sweep) extended to every cell by vote."""
    labellings = [run.labels for run in runs]
    if swept is not None:
        labellings += list(swept.labels)
    embedding = embedded.pca["embedding"]
    assigned = assign_by(embedding, sample, labellings, p.n_neighbors, random_state, n_jobs=n_jobs)
    # the vote can leave a domain below min_cells of all cells: it joins the nearest (no kNN graph of
    # all cells), down to the run's floor
    no_links = sp.csr_matrix((len(embedding), len(embedding)), dtype=np.float32)
    runs = [run._replace(labels=merge_small_domains(labels, no_links, embedding, p.min_cells, run.floor))
            for run, labels in zip(runs, assigned[:len(runs)])]
    if swept is not None:
        swept = swept._replace(labels=np.asarray(assigned[len(runs):]))
    return runs, swept


def _cluster_runs(runs: list[_Run], neighbourhood: Neighbourhood, random_state: int, min_cells: int, n_jobs,
                  progress: bool, watch: Stopwatch) -> list[_Run]:
    """``runs`` with their labels: every run of one method at once (Leiden resolutions in parallel)."""
    done = list(runs)
    for method in dict.fromkeys(run.method for run in runs if run.labels is None):
        todo = [i for i, run in enumerate(runs) if run.method == method and run.labels is None]
        resolutions = ", ".join(str(runs[i].resolution) for i in todo)
        with watch(f"{method} {resolutions}"):
            labels = cluster_many(neighbourhood,
                                  [(method, runs[i].resolution, random_state, runs[i].kwargs) for i in todo],
                                  n_jobs=n_jobs, progress=progress, min_cells=min_cells)
        for i, run_labels in zip(todo, labels):
            done[i] = runs[i]._replace(labels=run_labels)
    return done


def _runs_for_n_domains(neighbourhood: Neighbourhood, n_domains: int, methods, backend_kwargs: dict,
                        random_state: int, min_cells: int, coords: np.ndarray, codes: np.ndarray) -> list[_Run]:
    """Clustering runs that give ``n_domains`` domains: Leiden by bisection (and merging on
    the tissue, see :func:`utag.tuning.resolution_for_n_domains`), k-means directly (its
    domains below ``min_cells`` merged only while more than ``n_domains`` are left: the
    number asked for wins over the minimum size)."""
    runs = []
    if "leiden" in methods:
        resolution, labels = resolution_for_n_domains(neighbourhood, n_domains, random_state,
                                                      backend_kwargs["leiden"], min_domain_size=min_cells,
                                                      coords=coords, slide_codes=codes)
        runs.append(_Run("leiden", float(f"{resolution:.4g}"), backend_kwargs["leiden"], relabel_by_size(labels),
                         floor=n_domains))
    if "kmeans" in methods:
        kwargs = {**backend_kwargs["kmeans"], "n_clusters": n_domains}
        labels = cluster("kmeans", neighbourhood, kmeans_resolution(n_domains), random_state, min_cells,
                         keep=n_domains, **kwargs)
        if np.bincount(labels).min() < min_cells:
            logger.info("n_domains=%d: k-means keeps domains below min_domain_size (%d cells) to give %d",
                        n_domains, min_cells, n_domains)
        runs.append(_Run("kmeans", kmeans_resolution(n_domains), kwargs, labels, floor=n_domains))
    return runs


#: Relative difference below which ``filter_by_variance`` takes two standard deviations as
#: equal (float32 data, such as scaled features, rounds equal spreads about 1e-7 apart).
SPREAD_TIE = 1e-6


def _select_features(adata: AnnData, channels_to_use, filter_by_variance: bool,
                     normalization_mode: str = "l1_norm"):
    """``(features, var, shift)``: the feature matrix to aggregate (float32), the matching
    ``var`` table, and the whole-number means taken off the features
    (:func:`utag.message_passing.as_float32_less_shift`; ``None``: nothing)."""
    columns = check.channel_indices(adata, channels_to_use)
    given = check.feature_matrix(adata, columns)
    features, shift = as_float32_less_shift(given, normalization_mode)
    var = adata.var if columns is None else adata.var.iloc[columns]
    _warn_if_float32_erases(given, features, var, shift)
    if filter_by_variance:
        std = feature_spread(features)[1]
        # spreads within rounding of the median tie with it (not above it), whatever the
        # order of the rows or the matrix format that rounded them
        keep = np.flatnonzero(std > np.median(std) * (1 + SPREAD_TIE))
        if keep.size == 0:
            logger.warning("filter_by_variance: all features have the same variance; keeping all of them")
        else:
            logger.info("filter_by_variance keeps %d of %d features", keep.size, len(std))
            features, var = features[:, keep], var.iloc[keep]
            shift = None if shift is None else whole_means(shift[keep])
    return features, var.copy(), shift


#: Rounding to float32, as a share of a feature's spread, above which ``utag()`` warns (on
#: values far from zero for their spread; a user's bug hunt found domains moving as much as
#: between seeds at about 4e-4). Measured on at most :data:`_ROUNDING_SAMPLE` rows.
FLOAT32_ROUNDING_WARNING, _ROUNDING_SAMPLE = 1e-4, 20_000


def _warn_if_float32_erases(given, features, var: pd.DataFrame, shift: np.ndarray | None = None) -> None:
    """Warn about the features of ``given`` (float64 or wider) that its float32 copy
    ``features`` (less ``shift``, if any) no longer tells apart (values far from zero
    differing by less than float32's precision, about 1e-7 of their size, look the same
    to every later step) or rounds by more than :data:`FLOAT32_ROUNDING_WARNING` of their
    spread."""
    if not wider_than_float32(given):
        return
    erased = (column_range(given) > 0) & (column_range(features) == 0)
    fix = ("their values are far from zero for their spread. Subtract each feature's mean first, e.g. "
           "`adata.X = adata.X - adata.X.mean(axis=0)`.")
    if erased.any():
        logger.warning("%d features (e.g. %s) vary in adata.X but not once utag holds them as float32: %s",
                       int(erased.sum()), list(var.index[erased][:5]), fix)
        return
    rows = np.unique(np.linspace(0, len(features) - 1, min(len(features), _ROUNDING_SAMPLE)).astype(np.int64))
    sample = np.asarray(given[rows], dtype=np.float64) - (0.0 if shift is None else shift.astype(np.float64))
    spread = sample.std(axis=0)
    share = np.abs(sample - features[rows]).max(axis=0) / np.where(spread > 0, spread, np.inf)  # of the spread
    lossy = share > FLOAT32_ROUNDING_WARNING
    if lossy.any():
        logger.warning("%d features (e.g. %s) lose precision as float32, which utag holds them in (rounding of up "
                       "to %.1g of their spread; the domains can move as much as between seeds): %s",
                       int(lossy.sum()), list(var.index[lossy][:5]), float(share.max()), fix)


def _new_result(adata: AnnData, aggregated, var: pd.DataFrame) -> AnnData:
    """A new AnnData holding the aggregated matrix and copies of the input's annotations
    (``obs`` in memory, also when it was read lazily)."""
    obs = adata.obs
    with warnings.catch_warnings():  # names that are not text: utag() said so, in words
        warnings.filterwarnings("ignore", message="Transforming to str index")
        return AnnData(
            X=aggregated,
            obs=obs.copy() if isinstance(obs, pd.DataFrame) else obs.to_memory(),
            var=var,
            obsm={key: value.copy() for key, value in adata.obsm.items()},
            uns=copy.deepcopy(dict(adata.uns)),
        )


def _to_input_order(outputs: dict, order: np.ndarray | None) -> None:
    """Put the results computed on the cells in ``order`` back in the input's order, in
    place, one at a time (so that at most one old copy is alive at once)."""
    if order is None:
        return
    if outputs["graph"] is not None:
        outputs["graph"] = tuple(graph_back(matrix, order) for matrix in outputs["graph"])
    embedded = outputs.pop("embedded")  # rebinding it below frees the old graphs before the next copy
    if embedded is not None:
        graphs = {name: None if getattr(embedded, name) is None else graph_back(getattr(embedded, name), order)
                  for name in ("connectivities", "distances")}
        embedded = replace(embedded, pca={**embedded.pca, "embedding": rows_back(embedded.pca["embedding"], order)},
                           **graphs)
    outputs["embedded"] = embedded
    if outputs["swept"] is not None:
        outputs["swept"] = outputs["swept"]._replace(labels=rows_back(outputs["swept"].labels, order, axis=1))
    outputs["aggregated"] = rows_back(outputs["aggregated"], order)
    for name in ("labels", "probabilities"):
        outputs[name] = {key: rows_back(values, order) for key, values in outputs[name].items()}


def _write_result(adata: AnnData, p: _Parameters, aggregated, graph, embedded: Embedding | None,
                  labels: dict[str, np.ndarray], probabilities: dict[str, np.ndarray], swept, *,
                  var: pd.DataFrame) -> AnnData:
    """The new AnnData: the input's annotations, the message-passed features, and every
    result under the keys scanpy, squidpy and the original UTAG use."""
    result = _new_result(adata, aggregated, var)
    if graph is not None:
        store_spatial_graph(result, graph, p.graph_radius, "spatial", p.spatial_graph, p.n_spatial_neighbors)
    if embedded is not None:
        _store_embedding(result, embedded)
    else:  # the input's PCA is of other features
        result.obsm.pop("X_pca", None)
        result.uns.pop("pca", None)
    if "X_umap" in result.obsm or "umap" in result.uns:  # of another graph; apply_umap=True draws a new one
        logger.info("the input's UMAP (obsm['X_umap']) is of other features and is not carried over")
        result.obsm.pop("X_umap", None)
        result.uns.pop("umap", None)
    for name in [name for name, entry in result.uns.items()  # the input's graphs are not carried over
                 if isinstance(entry, dict) and "connectivities_key" in entry
                 and entry["connectivities_key"] not in result.obsp]:
        del result.uns[name]
    for key, codes in labels.items():
        result.obs[key] = pd.Categorical.from_codes(codes, categories=[str(i) for i in range(codes.max() + 1)])
        result.obsm[probabilities_key(key)] = probabilities[key]
        drop_tables_of(result, key, colors=True)  # of the labels of an earlier run
    result.uns.pop(SWEEP_KEY, None)  # an earlier run's
    if swept is not None:
        result.uns[SWEEP_KEY] = sweep_entry(*swept)
    return result


def _store_embedding(result: AnnData, embedded: Embedding) -> None:
    """Write the PCA and kNN graph where ``scanpy.pp.pca`` and ``scanpy.pp.neighbors`` do."""
    result.obsm["X_pca"] = embedded.pca["embedding"]
    result.varm["PCs"] = embedded.pca["components"]
    result.uns["pca"] = {key: value for key, value in embedded.pca.items() if key not in ("embedding", "components")}
    if embedded.connectivities is None:  # a sketch: the kNN graph is of the sampled cells only
        return
    result.obsp["connectivities"] = embedded.connectivities
    result.obsp["distances"] = embedded.distances
    result.uns["neighbors"] = {"connectivities_key": "connectivities", "distances_key": "distances",
                               "params": embedded.params}
