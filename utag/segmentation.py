"""UTAG, the method: ``utag()`` runs its steps in order.

Each step is an array function in the module named after it: :mod:`utag.graph` and
:mod:`utag.message_passing` (steps 1-2), :mod:`utag.embedding` (PCA and the kNN graph),
:mod:`utag.clustering` (Leiden, PARC, k-means, soft assignments). ``utag()`` checks its
parameters once (:mod:`utag._parameters`), reads the AnnData at the start, runs the
steps on arrays (the clustering runs: :mod:`utag._runs`) and writes one new AnnData at
the end (:mod:`utag._result`). The Dask route, :mod:`utag.distributed`, shares those
three modules.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from anndata import AnnData

from . import _validation as check
from . import distributed, multiscale
from ._arrays import column_range
from ._keys import DEFAULT_SAVE_KEY, label_key
from ._order import canonical_order
from ._parameters import Parameters, check_parameters, warn_if_slides_are_tiny, warn_if_spatial_graph_misfits
from ._progress import Stopwatch
from ._result import output_var, storable_kwargs, summary, to_input_order, write_result
from ._runs import (
    choose_sketch,
    knn_method_for,
    labels_of,
    log_domain_counts,
    membership_at,
    one_domain_runs,
    run_clustering,
)
from .clustering import feature_scale, feature_spread, soft_assignments
from .embedding import Embedding, fit_pca, neighbour_graphs
from .graph import MESSAGE_PASSING_BYTES_PER_PAIR, STORED_GRAPH_BYTES_PER_PAIR, mean_neighbours
from .message_passing import as_float32_less_shift, pass_messages, whole_means, wider_than_float32
from .transfer import build_model
from .utils import evaluate_performance  # noqa: F401  (the original's utag.segmentation.evaluate_performance)

__all__ = ["utag", "evaluate_performance", "label_key"]

logger = logging.getLogger(__name__)


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
        ``adata.obsm['spatial']`` (n_cells x 2, or x 3 for cells placed in 3-D). Dense or
        sparse, any numeric dtype. Never modified.
    channels_to_use
        Feature names to use (default: all of ``adata.var_names``); as in the original,
        their positions or a boolean mask over the features are taken too.
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
        What the kNN graph that Leiden and PARC cluster is built on: ``None`` (default)
        chooses as ``scanpy.pp.neighbors`` with its default ``use_rep``, as the original
        UTAG did: the message-passed features ``"X"`` when there are at most 50 of them,
        ``"X_pca"`` otherwise. PARC takes that graph as its neighbour graph with ``X_pca``
        as its data, and k-means always clusters ``X_pca``, as in the original.
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
        warn_if_slides_are_tiny(slide_key, len(slide_names), adata.n_obs)
        features, var, shift = _select_features(adata, channels_to_use, filter_by_variance, normalization_mode)
    p = check_parameters(
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
        p = membership_at(p, order)
    watch = Stopwatch(progress, logger)
    try:
        with watch("graph and message passing"):
            aggregated, n_edges, graph, background, scales = _message_passing(
                coords, features, codes, slide_names, p, keep_spatial_connectivity,
                processes if parallel else 1, progress, shift)
        if background is not None and p.pca_uncentred:
            # an uncentred PCA sees the features' offset: fit it on the means as published
            aggregated += background
            background = None
        aggregated_var = output_var(var, p.kernel_widths)  # one block per kernel width
        logger.info("%d cells, %d slides, %d spatial edges", adata.n_obs, len(slide_names), n_edges)
        warn_if_spatial_graph_misfits(p, n_edges, coords, codes)
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
            runs = one_domain_runs(p, adata.n_obs)
        elif p.methods:
            runs, swept = run_clustering(p, embedded, coords, codes, random_state, n_jobs, progress, watch)
        if embedded is not None:
            embedded = embedded.to_store(adata.n_obs)
        labels = labels_of(runs, save_key)
        probabilities, model = {}, None
        if labels:
            with watch("probabilities"):
                probabilities = _soft_assignments(aggregated, labels, n_jobs)
            log_domain_counts(labels)
            model = _transfer_model(aggregated, var, embedded, labels, p, background, scales,
                                    mean_neighbours(n_edges, adata.n_obs))
        if background is not None:
            aggregated += background  # the mean of the neighbourhood, as published
        outputs = {"aggregated": aggregated, "graph": graph, "embedded": embedded, "labels": labels,
                   "probabilities": probabilities, "swept": swept}
        del aggregated, graph, embedded, labels, probabilities, swept  # freed one by one as they are reordered
        to_input_order(outputs, order)
        result = write_result(adata, p, **outputs, var=aggregated_var)
        embedded = outputs["embedded"]
        if apply_umap:
            import scanpy as sc

            with watch("UMAP"):
                sc.tl.umap(result, **{"random_state": random_state, **(umap_kwargs or {})})
        result.uns["utag"] = summary(p, slide_key, embedded, runs, outputs["labels"], random_state,
                                     watch, scales, sample, order)
        result.uns["utag"].update(save_key=save_key, filter_by_variance=bool(filter_by_variance),
                                  keep_spatial_connectivity=bool(keep_spatial_connectivity),
                                  apply_umap=bool(apply_umap), umap_kwargs=storable_kwargs(umap_kwargs))
        if model is not None:
            result.uns["utag"]["model"] = model
    finally:
        watch.close()
    return result


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


def _message_passing(coords: np.ndarray, features, codes: np.ndarray, slide_names, p: Parameters,
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


def _embed(aggregated, codes: np.ndarray, p: Parameters, may_sketch: bool, random_state: int, watch: Stopwatch,
           n_jobs) -> Embedding:
    """Step 3's embedding: the PCA of every cell and the kNN graph (of a sketch of the
    cells when ``p.sketch_size`` asks for one and ``may_sketch``)."""
    sketching = bool(p.sketch_size) and may_sketch
    fitted = fit_pca(aggregated, p.n_comps, p.pca_kwargs, random_state, watch)
    sample = None
    if sketching:  # chosen in the PCA of every cell
        with watch("sketch"):
            sample = choose_sketch(fitted["embedding"], codes, p, random_state)
    knn_method = knn_method_for(p, p.sketch_size if sketching else None, len(codes))
    return neighbour_graphs(fitted, aggregated, p.n_neighbors, knn_method, random_state, p.use_rep, watch,
                            rows=sample, n_jobs=n_jobs, slides=codes)


def _transfer_model(aggregated, input_var: pd.DataFrame, embedded: Embedding, labels: dict, p: Parameters,
                    background, scales, mean_spatial_neighbors: float) -> dict:
    """What :func:`utag.transfer.transfer_labels` needs to label new cells (``uns['utag']['model']``)."""
    pca = embedded.pca
    return build_model(aggregated, input_var.index, pca["embedding"], pca["components"], labels, p.max_dist,
                       p.normalization_mode, background, p.spatial_graph, p.n_spatial_neighbors, p.kernel_widths,
                       scales, centred=bool(pca.get("params", {}).get("zero_center", True)),
                       mean_spatial_neighbors=mean_spatial_neighbors)


def _soft_assignments(aggregated, labels: dict, n_jobs) -> dict:
    """The soft assignments of every labelling (one feature scale for all)."""
    scale = feature_scale(aggregated, n_jobs)
    return {key: soft_assignments(aggregated, codes, n_jobs, scale) for key, codes in labels.items()}


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


