"""The UTAG pipeline: spatial graph, message passing, joint embedding, clustering."""
from __future__ import annotations

import contextlib
import copy
import logging
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from . import _progress
from . import _validation as check
from ._progress import tqdm
from .clustering import Neighbourhood, cluster_many, min_domain_cells, relabel_by_size, soft_assignments
from .embedding import (
    distinct_profile_neighbors,
    exact_search,
    fuzzy_connectivities,
    knn_distances,
    nearest_neighbors,
    pca,
)
from .evaluation import evaluate_performance  # noqa: F401  (original import path)
from .graph import MESSAGE_PASSING_BYTES_PER_PAIR, SPATIAL_GRAPH_BYTES_PER_PAIR, store_spatial_graph
from .message_passing import as_float32, pass_messages
from .transfer import build_model
from .tuning import (
    DOMAIN_RADIUS_FACTOR,
    recommended_resolutions,
    resolution_for_n_domains,
    resolution_sweep,
    suggest_max_dist,
)

logger = logging.getLogger(__name__)

#: Above this many features PCA is left to ``scanpy.pp.pca`` (randomised/ARPACK solvers)
#: instead of the exact covariance route.
MAX_COVARIANCE_FEATURES = 3000
#: ``sc.pp.neighbors`` with its default ``use_rep`` uses ``X`` itself up to this many
#: features (scanpy's ``settings.N_PCS``), the PCA above.
MAX_FEATURES_FOR_X = 50


def label_key(save_key: str, method: str, resolution: float) -> str:
    """``obs`` column of one labelling, e.g. ``'UTAG Label_leiden_0.1'``."""
    return f"{save_key}_{method}_{resolution}"


def utag(
    adata: AnnData,
    channels_to_use=None,
    slide_key: str | None = "Slide",
    save_key: str = "UTAG Label",
    filter_by_variance: bool = False,
    max_dist: float = 20.0,
    normalization_mode: str = "l1_norm",
    keep_spatial_connectivity: bool = False,
    pca_kwargs: dict = {"n_comps": 10},  # noqa: B006  (never mutated: copied below)
    apply_umap: bool = False,
    umap_kwargs: dict = {},  # noqa: B006
    apply_clustering: bool = True,
    clustering_method=["leiden", "parc", "kmeans"],  # noqa: B006
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
        6 times the median distance from a cell to its nearest cell
        (:func:`utag.tuning.suggest_max_dist`), the scale that gave the best domains on
        the labelled datasets of ``benchmarks/radius.py``.
    normalization_mode
        ``"l1_norm"`` (default): neighbourhood mean. Anything else: neighbourhood sum.
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
        One or several of ``"leiden"``, ``"parc"``, ``"kmeans"`` (case-insensitive).
    resolutions
        One or several positive resolutions (k-means uses ``k = ceil(10 * resolution)``),
        or ``"auto"``: a stability sweep (:func:`utag.tuning.resolution_sweep`, 12
        resolutions x 5 seeded Leiden runs) picks the resolution, and its table is kept
        in ``uns['utag_resolution_sweep']``.
    leiden_kwargs
        Passed to the Leiden backend. Default: utag's compiled Leiden, resolutions run in
        parallel threads; ``{"flavor": "igraph"}`` for igraph's, ``{"flavor": "leidenalg"}``
        for the original (much slower) implementation, ``{"n_iterations": -1}`` to iterate
        to convergence; see :func:`utag.clustering.leiden`.
    parc_kwargs
        Passed to the PARC backend (e.g. ``{"small_pop": 50}``); ``{"flavor": "parc"}``
        runs the ``parc`` package instead of utag's array implementation of its steps; see
        :func:`utag.clustering.parc`.
    parallel, processes
        Process slides in ``processes`` worker processes (default: one per core, at most
        one per slide), and run clustering resolutions in as many threads. Results are
        identical to ``parallel=False``.
    n_neighbors
        Neighbours per cell in the kNN graph of the embedding (default 15, as scanpy).
    knn_method
        ``"exact"`` (KD-tree), ``"approximate"`` (HNSW, ~98% of the exact neighbours) or
        ``"auto"`` (default: exact up to 200,000 cells, approximate above, where the exact
        search grows to minutes); see :func:`utag.embedding.nearest_neighbors`.
    kmeans_kwargs
        Passed to ``sklearn.cluster.KMeans``.
    n_domains
        Also (or, with ``resolutions=None``, only) find exactly this many domains: Leiden
        at the resolution found by bisection (:func:`utag.tuning.resolution_for_n_domains`),
        k-means with ``k = n_domains``; written under the usual key with that resolution.
        Every domain then holds at least a tenth of an equal share of the cells.
    use_rep
        What the kNN graph that Leiden clusters is built on: ``None`` (default) chooses as
        ``scanpy.pp.neighbors`` with its default ``use_rep``, as the original UTAG did: the
        message-passed features ``"X"`` when there are at most 50 of them, ``"X_pca"``
        otherwise. PARC and k-means always cluster ``X_pca`` (and its kNN graph), as in
        the original.
    min_domain_size
        Domains smaller than this are merged into the domain their cells link to most in
        the kNN graph, for every method (:func:`utag.clustering.merge_small_domains`);
        below 1 a fraction of the cells, from 1 a number of cells, ``0`` keeps every
        domain. Default (``None``): 0.2% of the cells, at least 10 (PARC's ``small_pop``).
    random_state
        Seed for every random step (Leiden, PARC, k-means, UMAP). Default 0.
    progress
        Show progress bars (slides, clustering runs).

    Returns
    -------
    A new AnnData with the input's cells in the input's order, its ``obs``, ``var``
    (of the features used), ``obsm`` and ``uns``, and:

    * ``X``: message-passed features (float32; sparse if the input was sparse);
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
    methods = check.clustering_methods(clustering_method) if apply_clustering else ()
    auto = apply_clustering and isinstance(resolutions, str) and resolutions == "auto"
    if n_domains is not None:
        n_domains = check.as_int("n_domains", n_domains, minimum=1)
        if "parc" in methods:
            raise ValueError("`n_domains` works with clustering_method 'leiden' and 'kmeans'; PARC sets its own "
                             "number of clusters. Drop 'parc' or pass `resolutions` instead.")
    if not apply_clustering or auto or (n_domains is not None and resolutions is None):
        resolutions = []
    else:
        resolutions = check.resolution_list(resolutions)
    if isinstance(max_dist, str) and max_dist == "auto":
        max_dist = suggest_max_dist(adata, slide_key)
        logger.info("max_dist='auto': %g (%g times the median distance to the nearest cell)", max_dist,
                    DOMAIN_RADIUS_FACTOR)
    max_dist = check.check_positive("max_dist", max_dist)
    n_neighbors = check.as_int("n_neighbors", n_neighbors, minimum=2)
    exact_search(adata.n_obs, n_neighbors, knn_method)  # rejects an unknown knn_method before any work
    processes = None if processes is None else check.as_int("processes", processes)
    pca_kwargs = dict(pca_kwargs or {})
    n_comps = check.as_int("pca_kwargs['n_comps']", pca_kwargs.pop("n_comps", 10))
    coords = check.spatial_coordinates(adata)
    codes, slide_names = check.slide_codes(adata, slide_key)
    features, var = _select_features(adata, channels_to_use, filter_by_variance)
    rep = representation(use_rep, len(var))
    min_cells = min_domain_cells(min_domain_size, adata.n_obs)

    # storing the spatial graph costs more per pair than message passing alone
    bytes_per_pair = SPATIAL_GRAPH_BYTES_PER_PAIR if keep_spatial_connectivity else MESSAGE_PASSING_BYTES_PER_PAIR
    watch = Stopwatch(progress)
    try:
        with watch("graph and message passing"):
            aggregated, pairs = pass_messages(
                coords, features, codes, max_dist, normalization_mode, parallel, processes, progress, bytes_per_pair
            )
        logger.info("%d cells, %d slides, %d spatial edges", adata.n_obs, len(slide_names), len(pairs))
        result = _new_result(adata, aggregated, var)
        if keep_spatial_connectivity:
            store_spatial_graph(result, pairs, coords, max_dist)
        del pairs

        if apply_clustering or apply_umap:
            neighbourhoods = _embed(result, n_comps, pca_kwargs, n_neighbors, knn_method, random_state, rep,
                                    methods, watch)
        if apply_umap:
            import scanpy as sc

            with watch("UMAP"):
                sc.tl.umap(result, **{"random_state": random_state, **(umap_kwargs or {})})
        backend_kwargs = {
            "leiden": dict(leiden_kwargs or {}),
            "parc": dict(parc_kwargs or {}),
            "kmeans": dict(kmeans_kwargs or {}),
        }
        runs = _plan_runs(result, neighbourhoods, methods, resolutions, auto, n_domains, backend_kwargs,
                          random_state, min_cells, slide_key, processes, progress, watch) if methods else []
        if runs:
            runs = _cluster_runs(runs, neighbourhoods, random_state, min_cells, processes if parallel else 1,
                                 progress, watch)
        for method, resolution, _, labels in runs:
            key = label_key(save_key, method, resolution)
            result.obs[key] = pd.Categorical.from_codes(labels, categories=[str(i) for i in range(labels.max() + 1)])
            with watch("probabilities"):
                result.obsm[f"{key}_probabilities"] = soft_assignments(result.X, labels)
            logger.info("%s: %d domains", key, labels.max() + 1)

        result.uns["utag"] = {
            "slide_key": slide_key if slide_key is not None else "None",
            "max_dist": max_dist,
            "normalization_mode": normalization_mode,
            "n_comps": int(result.obsm["X_pca"].shape[1]) if "X_pca" in result.obsm else 0,
            "n_neighbors": n_neighbors,
            "use_rep": result.uns.get("neighbors", {}).get("params", {}).get("use_rep", "None"),
            "min_domain_cells": min_cells,
            "clustering_method": list(methods),
            "resolutions": sorted({r for _, r, _, _ in runs}),
            "n_domains": n_domains if n_domains is not None else 0,
            "random_state": random_state,
            "label_keys": [label_key(save_key, m, r) for m, r, _, _ in runs],
            "timings": watch.seconds,
        }
        if runs:
            result.uns["utag"]["model"] = build_model(result, result.uns["utag"]["label_keys"])
    finally:
        watch.close()
    return result


def _plan_runs(result: AnnData, neighbourhoods: dict, methods, resolutions: list, auto: bool,
               n_domains: int | None, backend_kwargs: dict, random_state: int, min_cells: int, slide_key,
               processes, progress: bool, watch: Stopwatch) -> list[tuple]:
    """The clustering runs to do: ``(method, resolution, backend kwargs, labels or None)``.

    ``auto``: the resolution comes from a stability sweep (k-means then takes as many
    domains as Leiden finds there); ``n_domains``: runs that give exactly that many.
    """
    if auto:
        with watch("resolution sweep"):
            sweep = resolution_sweep(result, n_runs=5, random_state=random_state,
                                     leiden_kwargs=backend_kwargs["leiden"], processes=processes, progress=progress,
                                     min_domain_size=min_cells, slide_key=slide_key)
        resolutions = recommended_resolutions(sweep)
        logger.info("resolutions='auto' chose %s (see uns['utag_resolution_sweep'])", resolutions)
        chosen = int(sweep.loc[sweep["resolution"] == resolutions[0], "n_domains"].iloc[0])
        backend_kwargs = {**backend_kwargs, "kmeans": {**backend_kwargs["kmeans"], "n_clusters": chosen}}
    runs = [(method, chosen / 10 if auto and method == "kmeans" else resolution, backend_kwargs[method], None)
            for resolution in resolutions for method in methods]
    if n_domains is not None:
        with watch(f"resolution for {n_domains} domains"):
            runs += _runs_for_n_domains(neighbourhoods["leiden"], n_domains, methods, backend_kwargs, random_state,
                                        min_cells)
    return runs


def _cluster_runs(runs: list[tuple], neighbourhoods: dict, random_state: int, min_cells: int, processes,
                  progress: bool, watch: Stopwatch) -> list[tuple]:
    """``runs`` with their labels: every run of one method at once (Leiden resolutions in parallel)."""
    done = list(runs)
    for method in dict.fromkeys(method for method, _, _, labels in runs if labels is None):
        todo = [i for i, (name, _, _, labels) in enumerate(runs) if name == method and labels is None]
        resolutions = ", ".join(str(runs[i][1]) for i in todo)
        with watch(f"{method} {resolutions}"):
            labels = cluster_many(neighbourhoods[method],
                                  [(method, runs[i][1], random_state, runs[i][2]) for i in todo],
                                  n_jobs=processes, progress=progress, min_cells=min_cells)
        for i, run_labels in zip(todo, labels):
            done[i] = (*runs[i][:3], run_labels)
    return done


def _runs_for_n_domains(neighbourhood: Neighbourhood, n_domains: int, methods, backend_kwargs: dict,
                        random_state: int, min_cells: int) -> list[tuple]:
    """Clustering runs that give ``n_domains`` domains: Leiden by bisection (and merging,
    see :func:`utag.tuning.resolution_for_n_domains`), k-means directly."""
    runs = []
    if "leiden" in methods:
        resolution, labels = resolution_for_n_domains(neighbourhood, n_domains, random_state,
                                                      backend_kwargs["leiden"], min_domain_size=min_cells)
        runs.append(("leiden", float(f"{resolution:.4g}"), backend_kwargs["leiden"], relabel_by_size(labels)))
    if "kmeans" in methods:
        runs.append(("kmeans", n_domains / 10, {**backend_kwargs["kmeans"], "n_clusters": n_domains}, None))
    return runs


def _select_features(adata: AnnData, channels_to_use, filter_by_variance: bool):
    """The feature matrix to aggregate (float32) and the matching ``var`` table."""
    columns = check.channel_indices(adata, channels_to_use)
    features = adata.X if columns is None else adata.X[:, columns]
    var = adata.var if columns is None else adata.var.iloc[columns]
    check.check_features(features)
    features = as_float32(features)
    if filter_by_variance:
        mean = np.asarray(features.mean(axis=0)).ravel()
        squares = features.multiply(features) if sp.issparse(features) else features * features
        std = np.sqrt(np.clip(np.asarray(squares.mean(axis=0)).ravel() - mean**2, 0, None))
        keep = np.flatnonzero(std > np.median(std))
        if keep.size == 0:
            logger.warning("filter_by_variance: all features have the same variance; keeping all of them")
        else:
            logger.info("filter_by_variance keeps %d of %d features", keep.size, len(std))
            features, var = features[:, keep], var.iloc[keep]
    return features, var.copy()


def _new_result(adata: AnnData, aggregated, var: pd.DataFrame) -> AnnData:
    """A new AnnData holding the aggregated matrix and copies of the input's annotations."""
    return AnnData(
        X=aggregated,
        obs=adata.obs.copy(),
        var=var,
        obsm={key: value.copy() for key, value in adata.obsm.items()},
        uns=copy.deepcopy(dict(adata.uns)),
    )


def representation(use_rep: str | None, n_features: int) -> str:
    """The representation the kNN graph of the Leiden runs is built on.

    ``None`` chooses as ``scanpy.pp.neighbors`` does with its default ``use_rep`` (and as
    the original UTAG therefore did): the message-passed features ``"X"`` when there are
    at most :data:`MAX_FEATURES_FOR_X` of them, the PCA embedding ``"X_pca"`` otherwise.
    """
    if use_rep is None:
        return "X" if n_features <= MAX_FEATURES_FOR_X else "X_pca"
    if use_rep not in ("X", "X_pca"):
        raise ValueError(f"`use_rep` must be None (scanpy's choice), 'X' or 'X_pca', got {use_rep!r}.")
    return use_rep


def _knn_graph(points: np.ndarray, n_neighbors: int, knn_method: str, random_state: int):
    """``(connectivities, distances, tied)``: the UMAP-weighted kNN graph of ``points``,
    built over distinct profiles when many cells share one (``tied``)."""
    k = min(n_neighbors, len(points))
    indices, distances = nearest_neighbors(points, k, knn_method, random_state)
    tied = int((distances[:, -1] == 0).sum()) if k > 1 else 0
    if tied:
        logger.warning("%d cells share their profile with %d or more other cells (identical neighbourhoods); "
                       "building the kNN graph over distinct profiles so that they do not form "
                       "disconnected cliques", tied, k - 1)
        indices, distances = distinct_profile_neighbors(points, k, knn_method, random_state)
    return fuzzy_connectivities(indices, distances), knn_distances(indices, distances), tied


def _embed(result: AnnData, n_comps: int, pca_kwargs: dict, n_neighbors: int, knn_method: str, random_state: int,
           rep: str, methods, watch: Stopwatch) -> dict[str, Neighbourhood]:
    """PCA and kNN graph of ``result.X``, written where scanpy writes them.

    Returns what each clustering method clusters: Leiden the kNN graph on ``rep`` (``"X"``
    or ``"X_pca"``, see :func:`representation`), PARC and k-means the PCA embedding and its
    kNN graph, as in the original UTAG (one graph when both representations are the PCA).
    """
    n_cells, n_features = result.shape
    capped = max(1, min(n_comps, n_features - 1, n_cells - 1))
    if capped < n_comps:
        logger.warning("pca_kwargs['n_comps']=%d capped to %d (%d features, %d cells)",
                       n_comps, capped, n_features, n_cells)
    with watch("PCA"):
        if pca_kwargs or n_features > MAX_COVARIANCE_FEATURES:
            import scanpy as sc

            sc.pp.pca(result, **{"n_comps": capped, "random_state": random_state, **pca_kwargs})
        else:
            fitted = pca(result.X, capped)
            result.obsm["X_pca"] = fitted["embedding"]
            result.varm["PCs"] = fitted["components"]
            result.uns["pca"] = {"variance": fitted["variance"], "variance_ratio": fitted["variance_ratio"],
                                 "params": {"zero_center": True, "method": "covariance"}}
        embedding = np.ascontiguousarray(result.obsm["X_pca"], dtype=np.float32)

    points = embedding
    if rep == "X":
        points = result.X.toarray() if sp.issparse(result.X) else result.X
        points = np.ascontiguousarray(points, dtype=np.float32)
    k = min(n_neighbors, n_cells)
    with watch("kNN graph"):
        connectivities, distances, tied = _knn_graph(points, k, knn_method, random_state)
        result.obsp["connectivities"] = connectivities
        result.obsp["distances"] = distances
    result.uns["neighbors"] = {
        "connectivities_key": "connectivities",
        "distances_key": "distances",
        "params": {"n_neighbors": k, "method": "umap", "metric": "euclidean", "use_rep": rep,
                   "random_state": random_state, "distinct_profiles": bool(tied),
                   "knn": "exact" if exact_search(n_cells, k, knn_method) else "approximate"},
    }
    on_rep = Neighbourhood(embedding, connectivities)
    on_pca = on_rep
    if rep != "X_pca" and "parc" in methods:
        with watch("kNN graph of the PCA (PARC)"):
            on_pca = Neighbourhood(embedding, _knn_graph(embedding, k, knn_method, random_state)[0])
    return {"leiden": on_rep, "parc": on_pca, "kmeans": on_pca}


class Stopwatch:
    """Seconds spent per stage (summed over repeated stages), logged as they end; with
    ``progress``, a bar names the running stage (drawn once the run passes a few seconds)."""

    def __init__(self, progress: bool = False):
        self.seconds: dict[str, float] = {}
        self._bar = tqdm(desc="utag", bar_format="{desc} [{elapsed}]", disable=not progress, leave=False)
        self._created = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, stage: str):
        # redrawing shows the bar at once, so only do it once the run has lasted a while
        late = time.perf_counter() - self._created >= _progress.DELAY
        self._bar.set_description_str(f"utag: {stage}", refresh=late)
        started = time.perf_counter()
        yield
        elapsed = time.perf_counter() - started
        self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed
        logger.info("%s: %.2f s", stage, elapsed)

    def close(self):
        self._bar.close()
