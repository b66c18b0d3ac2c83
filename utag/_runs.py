"""Step 3 of :func:`utag.utag`, the clustering runs: which labellings a call asks for
(fixed resolutions, ``resolutions="auto"``, ``n_domains``), clustered on every cell or on
a sketch of them, and the labels of the cells outside a sketch, by vote. Shared by the
in-memory route (:mod:`utag.segmentation`) and the Dask route (:mod:`utag.distributed`).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import scipy.sparse as sp

from ._keys import label_key
from ._progress import Stopwatch
from .clustering import (
    ClusteringTask,
    Neighbourhood,
    cluster,
    cluster_many,
    kmeans_resolution,
    merge_small_domains,
    relabel_by_size,
)
from .embedding import Embedding
from .sketch import assign_by_vote, sketch_cells
from .tuning import DEFAULT_RESOLUTIONS, recommended_resolutions, resolution_for_n_domains, score_exponents, sweep

if TYPE_CHECKING:
    from ._parameters import Parameters

logger = logging.getLogger(__name__)


#: A sketch of more cells than this builds its kNN graph with HNSW (``knn_method="auto"``).
SKETCH_EXACT_KNN = 50_000


class Run(NamedTuple):
    """One clustering run of ``utag()``: a labelling under ``label_key(save_key, method, resolution)``."""

    method: str
    resolution: float
    kwargs: dict  # the backend's keywords
    labels: np.ndarray | None  # None until clustered
    floor: int = 1  # domains that merging small ones must leave: n_domains for the runs that give that many


def labels_of(runs: list[Run], save_key: str) -> dict[str, np.ndarray]:
    """Each run's labels under the key ``utag()`` writes them to."""
    return {label_key(save_key, run.method, run.resolution): run.labels for run in runs}


def knn_method_for(p: Parameters, sketch_size: int | None, n_cells: int) -> str:
    """``p.knn_method``, except that ``"auto"`` searches a sketch of more than
    :data:`SKETCH_EXACT_KNN` cells approximately: the exact search costs minutes in tens of
    dimensions. A "sketch" of every cell keeps the unsketched route's choice, so that it
    gives the same labels."""
    if p.knn_method == "auto" and sketch_size is not None and SKETCH_EXACT_KNN < sketch_size < n_cells:
        return "approximate"
    return p.knn_method


def log_domain_counts(labels: dict) -> None:
    for key, codes in labels.items():
        logger.info("%s: %d domains", key, codes.max() + 1)


def one_domain_runs(p: Parameters, n_cells: int) -> list[Run]:
    """One domain under every key the call asks for (``"auto"``: at the sweep's first resolution)."""
    resolutions = p.resolutions or ([] if p.n_domains else [DEFAULT_RESOLUTIONS[0]])
    runs = [Run(method, resolution, {}, np.zeros(n_cells, dtype=np.int64))
            for resolution in resolutions for method in p.methods]
    if p.n_domains is not None:
        runs += [Run(method, kmeans_resolution(p.n_domains), {}, np.zeros(n_cells, dtype=np.int64))
                 for method in p.methods if method != "parc"]
    return runs


def _neighbourhood(embedded: Embedding, sample: np.ndarray | None = None) -> Neighbourhood:
    """What every method clusters, as in the original UTAG (of the ``sample`` cells, if
    any): the PCA and the kNN graph on ``use_rep`` (Leiden and PARC the graph, k-means the
    PCA; see :data:`utag.clustering.BACKENDS`)."""
    points = embedded.pca["embedding"] if sample is None else embedded.pca["embedding"][sample]
    return Neighbourhood(points, embedded.connectivities)


def run_clustering(p: Parameters, embedded: Embedding, coords: np.ndarray, codes: np.ndarray, random_state: int, n_jobs,
                   progress: bool, watch: Stopwatch, assign_by=assign_by_vote) -> tuple[list[Run], tuple | None]:
    """Every clustering run, clustered, and the resolution sweep, with labels for every cell: those of a sketch
    (``embedded.rows``) are assigned to the other cells by vote (``assign_by``, as
    :func:`utag.sketch.assign_by_vote`)."""
    sample = embedded.rows
    neighbourhood = _neighbourhood(embedded, sample)
    clustered_params, clustered_coords, clustered_codes = p, coords, codes
    if sample is not None:  # the sketch's cells, with a minimum domain size in proportion
        clustered_params = replace(membership_at(p, sample),
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


def _plan_runs(p: Parameters, neighbourhood: Neighbourhood, coords: np.ndarray, codes: np.ndarray, random_state: int,
               n_jobs, progress: bool, watch: Stopwatch) -> tuple[list[Run], tuple | None]:
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
    runs = [Run(method, kmeans_resolution(chosen) if p.auto and method == "kmeans" else resolution,
                backend_kwargs[method], None)  # after "auto", k-means takes Leiden's count of domains
            for resolution in resolutions for method in p.methods]
    if p.n_domains is not None:
        with watch(f"resolution for {p.n_domains} domains"):
            fixed = _runs_for_n_domains(neighbourhood, p.n_domains, p.methods, backend_kwargs,
                                        random_state, p.min_cells, coords, codes)
        runs = without_runs_under_the_keys_of(runs, fixed, p.n_domains, p.auto) + fixed
    return runs, swept


def without_runs_under_the_keys_of(runs: list[Run], fixed: list[Run], n_domains: int,
                                   auto: bool = False) -> list[Run]:
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


def membership_at(p: Parameters, rows: np.ndarray) -> Parameters:
    """``p`` with ``leiden_kwargs['initial_membership']`` (one label per cell) taken at
    ``rows``: the cells reordered, or the sketch."""
    leiden = p.backend_kwargs["leiden"]
    if "initial_membership" not in leiden:
        return p
    membership = np.asarray(leiden["initial_membership"])[rows]
    return replace(p, backend_kwargs={**p.backend_kwargs, "leiden": {**leiden, "initial_membership": membership}})


def choose_sketch(embedding: np.ndarray, codes: np.ndarray, p: Parameters, random_state: int) -> np.ndarray:
    """The cells to cluster: :func:`utag.sketch.sketch_cells` on the PCA of every cell."""
    sample = sketch_cells(embedding, codes, p.sketch_size, random_state)
    logger.info("sketch: clustering %d of %d cells", len(sample), len(codes))
    return sample


def _assign_others(runs: list[Run], swept, embedded: Embedding, sample: np.ndarray, p: Parameters,
                   random_state: int, n_jobs, assign_by=assign_by_vote) -> tuple[list[Run], tuple | None]:
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


def _cluster_runs(runs: list[Run], neighbourhood: Neighbourhood, random_state: int, min_cells: int, n_jobs,
                  progress: bool, watch: Stopwatch) -> list[Run]:
    """``runs`` with their labels: every run of one method at once (Leiden resolutions in parallel)."""
    done = list(runs)
    for method in dict.fromkeys(run.method for run in runs if run.labels is None):
        todo = [i for i, run in enumerate(runs) if run.method == method and run.labels is None]
        resolutions = ", ".join(str(runs[i].resolution) for i in todo)
        with watch(f"{method} {resolutions}"):
            tasks = [ClusteringTask(method, runs[i].resolution, random_state, runs[i].kwargs) for i in todo]
            labels = cluster_many(neighbourhood, tasks, n_jobs=n_jobs, progress=progress, min_cells=min_cells)
        for i, run_labels in zip(todo, labels):
            done[i] = runs[i]._replace(labels=run_labels)
    return done


def _runs_for_n_domains(neighbourhood: Neighbourhood, n_domains: int, methods, backend_kwargs: dict,
                        random_state: int, min_cells: int, coords: np.ndarray, codes: np.ndarray) -> list[Run]:
    """Clustering runs that give ``n_domains`` domains: Leiden by bisection (and merging on
    the tissue, see :func:`utag.tuning.resolution_for_n_domains`), k-means directly (its
    domains below ``min_cells`` merged only while more than ``n_domains`` are left: the
    number asked for wins over the minimum size)."""
    runs = []
    if "leiden" in methods:
        resolution, labels = resolution_for_n_domains(neighbourhood, n_domains, random_state,
                                                      backend_kwargs["leiden"], min_domain_size=min_cells,
                                                      coords=coords, slide_codes=codes)
        runs.append(Run("leiden", float(f"{resolution:.4g}"), backend_kwargs["leiden"], relabel_by_size(labels),
                        floor=n_domains))
    if "kmeans" in methods:
        kwargs = {**backend_kwargs["kmeans"], "n_clusters": n_domains}
        labels = cluster("kmeans", neighbourhood, kmeans_resolution(n_domains), random_state, min_cells,
                         keep=n_domains, **kwargs)
        if np.bincount(labels).min() < min_cells:
            logger.info("n_domains=%d: k-means keeps domains below min_domain_size (%d cells) to give %d",
                        n_domains, min_cells, n_domains)
        runs.append(Run("kmeans", kmeans_resolution(n_domains), kwargs, labels, floor=n_domains))
    return runs
