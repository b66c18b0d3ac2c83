"""``utag()`` on cells held in Dask arrays: the engine for cohorts that outgrow one process.

When ``adata.X`` (or ``adata.obsm['spatial']``) is a Dask array, for instance read lazily
with :func:`utag.io.read_lazy`, ``utag()`` runs here, on whatever Dask scheduler is active
(a ``distributed.Client`` if one exists, else Dask's local threads):

1. every slide's spatial graph and message passing is one task, which reads only that
   slide's rows; the message-passed features stay on the workers, one block per slide;
2. the PCA is fitted from a covariance summed over the slide blocks, and every block is
   projected on the workers; the client gathers the embedding (``n_comps`` float32 per
   cell, 40 bytes for the default 10);
3. a sketch of the cells (:func:`utag.sketch.sketch_cells`) is clustered in the client,
   as ``utag(..., sketch_size=...)`` does in one process; every other cell is assigned
   by a vote of its nearest sampled cells on the workers, block by block, each searching
   the index of the sampled cells that the client built once (:func:`assign_on_workers`);
4. the soft assignments are computed block by block on the workers from cluster
   centroids summed over the blocks.

No step holds every cell's features in one process: the client holds the coordinates,
the embedding and the labels. The result is the in-process sketch route's, up to
float rounding in sums taken in another order (the tests compare them): the same
parameters, sample and seed give the same domains. Its ``X`` (the message-passed
features, in the input's cell order) is a lazy Dask array that computes them again from
the input when read, so it outlives the cluster; :func:`utag.io.write_domains` writes the
labels, and optionally those features, to ``.zarr``.

Not available on Dask input (each raises a ``ValueError`` saying so):
``keep_spatial_connectivity``, ``apply_umap``, ``filter_by_variance``, ``pca_kwargs``
other than ``n_comps``, and sparse chunks. ``uns['utag']`` has no transfer model.
"""
from __future__ import annotations

import functools
import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from . import _validation as check
from . import multiscale
from ._order import canonical_order, inverse_order
from ._parameters import warn_if_slides_are_tiny, warn_if_spatial_graph_misfits
from ._progress import Stopwatch
from ._result import output_var, summary, to_input_order, write_result
from ._runs import choose_sketch, knn_method_for, labels_of, log_domain_counts, membership_at, run_clustering
from .clustering import cluster_sums, soft_block, squared_deviations
from .embedding import capped_n_comps, centred_scatter, neighbour_graphs, principal_axes, project
from .graph import slide_cells
from .message_passing import less_background, slide_messages, whole_means
from .sketch import DEFAULT_SKETCH_SIZE, sampled_labels, sketch_size_for, vote, vote_index

__all__ = ["is_lazy", "lazy_sketch_size"]

logger = logging.getLogger(__name__)


def is_lazy(adata: AnnData) -> bool:
    """Whether ``adata.X`` or ``adata.obsm['spatial']`` is a Dask array (``utag()`` then
    runs on Dask).

    Examples
    --------
    >>> import dask.array as da
    >>> from utag.datasets import synthetic_tissue
    >>> adata = synthetic_tissue(n_cells=1_000, random_state=0)
    >>> before = is_lazy(adata)
    >>> adata.X = da.from_array(adata.X, chunks=(500, -1))
    >>> before, is_lazy(adata)
    (False, True)
    """
    return _is_dask(adata.X) or ("spatial" in adata.obsm and _is_dask(adata.obsm["spatial"]))


def _is_dask(value) -> bool:
    return type(value).__module__.split(".")[0] == "dask"


def lazy_sketch_size(sketch_size, n_cells: int) -> int:
    """Cells to cluster in the client for Dask input: ``"auto"`` is
    :data:`utag.sketch.DEFAULT_SKETCH_SIZE` (every cell below it), ``None`` every cell,
    else as :func:`utag.sketch.sketch_size_for`.

    Examples
    --------
    >>> lazy_sketch_size("auto", 50_000), lazy_sketch_size("auto", 10**7), lazy_sketch_size(None, 10**7)
    (50000, 200000, 10000000)
    """
    if check.is_auto(sketch_size):
        return min(DEFAULT_SKETCH_SIZE, n_cells)
    size = sketch_size_for(sketch_size, n_cells)
    return n_cells if size is None else size


def check_unsupported(*, keep_spatial_connectivity, apply_umap, filter_by_variance, pca_kwargs) -> None:
    """The options the Dask route cannot honour, rejected before any work."""
    unsupported = {
        "keep_spatial_connectivity=True": keep_spatial_connectivity,
        "apply_umap=True": apply_umap,
        "filter_by_variance=True": filter_by_variance,
        f"pca_kwargs={pca_kwargs!r}": set(dict(pca_kwargs or {})) - {"n_comps"},
    }
    chosen = [name for name, value in unsupported.items() if value]
    if chosen:
        raise ValueError(f"{', '.join(chosen)} cannot run on Dask input (adata.X or obsm['spatial'] is a Dask "
                         "array): these need every cell in one process. Drop the option, or load the data "
                         "into memory (adata = adata.to_memory()).")


def features_of(adata: AnnData, channels_to_use):
    """The Dask array of features to aggregate (the chosen channels, in their own dtype,
    True/False as 1/0 in float32; each slide's task checks them, then takes them as
    float32, as the in-memory route does) and ``var``."""
    import dask.array as da

    columns = check.channel_indices(adata, channels_to_use)
    if sp.issparse(adata.X):  # in memory beside Dask coordinates: the Dask route takes dense chunks
        raise ValueError("adata.X is sparse while obsm['spatial'] is a Dask array; the Dask route takes dense "
                         "features: pass adata.X as a dense (or Dask) array, or the coordinates in memory.")
    features = adata.X if _is_dask(adata.X) else da.from_array(np.asarray(adata.X), chunks=(65_536, -1))
    if type(features._meta).__module__.split(".")[0] == "scipy":
        raise ValueError("adata.X is a Dask array of sparse chunks; the Dask route takes dense chunks "
                         "(adata.X = adata.X.map_blocks(lambda block: block.toarray())).")
    if features.dtype != bool:  # as in memory: True/False count as 1/0, other non-numbers are refused
        check.check_features(np.empty(0, dtype=features.dtype))
    if columns is not None:
        features = features[:, columns]
    var = adata.var if columns is None else adata.var.iloc[columns]
    return (features.astype(np.float32) if features.dtype == bool else features), var.copy()


def _slide_task(coords, features, order, background, max_dist, normalization_mode, kind, n_neighbors, widths):
    """Graph and message passing of one slide, its rows in ``order``: the block and its edge count."""
    features = np.asarray(features)[order]
    check.check_features(features)  # before float32 would turn values beyond its range into inf
    features = less_background(features, background)
    aggregated, n_edges, _ = slide_messages((coords, features), max_dist, normalization_mode, False, kind,
                                            n_neighbors, widths)
    return aggregated, n_edges


def message_passing(coords: np.ndarray, codes: np.ndarray, features, order: np.ndarray, background, p):
    """The message-passed features as a Dask array of one block per slide, in the
    canonical ``order``: persisted on the workers, and as the recipe that computes them
    again from the input (what the result keeps: it outlives the workers); and the
    number of spatial edges."""
    import dask
    import dask.array as da

    blocks, edges = [], []
    n_out = features.shape[1] * (1 if p.kernel_widths is None else len(p.kernel_widths))
    slides = [order[cells] for cells in slide_cells(codes[order])]  # each slide's rows, in the canonical order
    stored = [np.sort(rows) for rows in slides]  # and as they are stored
    for rows, reading, piece in zip(slides, stored, _slide_pieces(features, stored)):
        # the slide's coordinates ride in the task graph: the recipe kept in the result
        # must not refer to data scattered to workers that end with the cluster
        task = dask.delayed(_slide_task, nout=2, pure=True)(
            coords[rows], piece, np.searchsorted(reading, rows), background, p.max_dist,
            p.normalization_mode, p.spatial_graph, p.n_spatial_neighbors, p.kernel_widths)
        blocks.append(da.from_delayed(task[0], shape=(len(rows), n_out), dtype=np.float32))
        edges.append(task[1])
    lazy = da.concatenate(blocks, axis=0)
    aggregated, edges = dask.persist(lazy, edges)
    return aggregated, lazy, int(sum(dask.compute(*edges)))


def _to_workers(values: list, broadcast: bool = False) -> list:
    """``values`` as the tasks will take them: scattered to the workers (every worker with
    ``broadcast``) when a ``distributed.Client`` is active, so that no large object rides
    in the task graph through the scheduler; unchanged on Dask's local threads, which
    share this process's memory. Only for what no kept result refers to: scattered data
    ends with the cluster."""
    import dask

    try:
        from distributed import get_client

        client = get_client()
    except (ImportError, ValueError):  # no distributed, or no client
        return values
    if dask.base.get_scheduler() != client.get:  # a client exists, but another scheduler is chosen
        return values
    return client.scatter(values, broadcast=broadcast, hash=False)


def _slide_pieces(array, rows: list[np.ndarray]) -> list:
    """Each slide's ``rows`` (increasing) of the Dask ``array``, as one chunk each: the
    array re-chunked at the slide boundaries, so that every stored chunk is read once
    and a slide's task takes its rows without a gathering task of its own. Rows are
    reordered first only when some slide's cells are not stored together."""
    stored = np.argsort([cells[0] for cells in rows], kind="stable")  # slides in the order they are stored
    reading = np.concatenate([rows[slide] for slide in stored])
    if not np.array_equal(reading, np.arange(array.shape[0])):
        array = array[reading]
    pieces = array.rechunk((tuple(len(rows[slide]) for slide in stored), array.shape[1])).to_delayed().ravel()
    in_slide_order = [None] * len(rows)
    for piece, slide in zip(pieces, stored):
        in_slide_order[slide] = piece
    return in_slide_order


def _tree_sum(parts: list):
    """The sum of delayed ``parts``, added pairwise (a tree, not a chain)."""
    import dask

    while len(parts) > 1:
        parts = [dask.delayed(np.add)(*parts[i:i + 2]) if i + 1 < len(parts) else parts[i]
                 for i in range(0, len(parts), 2)]
    return parts[0]


def _moments(aggregated) -> tuple[np.ndarray, np.ndarray]:
    """Every column's mean and mean square over all cells (float64)."""
    import dask

    def sums(block):
        block = np.asarray(block, dtype=np.float64)
        return np.stack([block.sum(axis=0), np.einsum("ij,ij->j", block, block)])

    total = _tree_sum([dask.delayed(sums)(block) for block in aggregated.to_delayed().ravel()]).compute()
    return total[0] / aggregated.shape[0], total[1] / aggregated.shape[0]


def fit_pca(aggregated, n_comps: int, mean: np.ndarray) -> tuple[dict, object]:
    """:func:`utag.embedding.pca` of the Dask array ``aggregated`` (column ``mean`` given):
    the covariance is summed over its blocks, each block projected where it lies. Returns
    the fit, its embedding gathered (float32, cells x n_comps), and the embedding as it
    lies on the workers (a persisted Dask array, blocks as ``aggregated``'s)."""
    import dask

    n_cells, n_features = aggregated.shape
    n_comps = capped_n_comps(n_comps, n_cells, n_features)
    scatter = _tree_sum([dask.delayed(centred_scatter)(block, mean) for block in aggregated.to_delayed().ravel()])
    components, variance, variance_ratio = principal_axes(scatter.compute() / max(n_cells - 1, 1), n_comps)
    projected = aggregated.map_blocks(project, components, mean, dtype=np.float32,
                                      chunks=(aggregated.chunks[0], (n_comps,))).persist()
    embedding = projected.compute()
    return {"embedding": np.ascontiguousarray(embedding, dtype=np.float32), "components": components.astype(np.float32),
            "variance": variance, "variance_ratio": variance_ratio,
            "params": {"zero_center": True, "method": "covariance (Dask)"}}, projected


def _vote_block(block, others: np.ndarray, index, labellings: list[np.ndarray], n_neighbors: int) -> list:
    """The vote of a block's unsampled cells (``others``: their mask in the block)."""
    return vote(index, np.asarray(block)[others], labellings, n_neighbors, n_threads=1)


def assign_on_workers(projected, index, embedding: np.ndarray, sample: np.ndarray, labellings: list[np.ndarray],
                      n_neighbors: int = 15, random_state: int = 0, n_jobs: int | None = None) -> list[np.ndarray]:
    """:func:`utag.sketch.assign_by_vote`, its searches and votes on the workers: Dask
    ships ``index`` (:func:`utag.sketch.vote_index` of the ``sample``'s rows of
    ``embedding``, built once in the client; ``None`` when every cell is sampled) to the
    workers, and each block of
    ``projected`` (the embedding where it lies) votes for its unsampled cells. Each
    cell's vote depends on that cell alone, so the labels are the in-process route's
    (``random_state`` and ``n_jobs`` went into the index and are not used here)."""
    import dask

    if index is None:  # every cell sampled (run() builds no index then): nothing to vote on
        return sampled_labels(len(embedding), sample, labellings)
    index, sample_labels = _to_workers([index, labellings], broadcast=True)
    index, sample_labels = dask.delayed(index, pure=False), dask.delayed(sample_labels, pure=False)
    sampled = np.zeros(len(embedding), dtype=bool)
    sampled[sample] = True
    bounds = np.cumsum([0, *projected.chunks[0]])
    tasks = [dask.delayed(_vote_block)(block, ~sampled[start:stop], index, sample_labels, n_neighbors)
             for block, start, stop in zip(projected.to_delayed().ravel(), bounds[:-1], bounds[1:])]
    assigned = sampled_labels(len(embedding), sample, labellings)
    for voted, start, stop in zip(dask.compute(*tasks), bounds[:-1], bounds[1:]):
        others = start + np.flatnonzero(~sampled[start:stop])
        for full, winners in zip(assigned, voted):
            full[others] = winners
    return assigned


def probabilities(aggregated, labellings: dict[str, np.ndarray], mean: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`utag.clustering.soft_assignments` of each labelling (canonical order, as
    ``aggregated``'s rows, whose column ``mean`` is given), block by block on the workers,
    in two passes over the blocks for all labellings together: the spread and every
    labelling's cluster sums, then the soft assignments."""
    import dask

    n_cells, n_features = aggregated.shape
    blocks = aggregated.to_delayed().ravel()
    bounds = np.cumsum([0, *aggregated.chunks[0]])
    labels = list(labellings.values())
    n_labels = [int(codes.max()) + 1 for codes in labels]

    def block_sums(block, mean, block_labels):
        """One flat vector: the block's squared deviations per column, then each
        labelling's per-cluster column sums (clusters x columns)."""
        parts = [squared_deviations(block, mean)]
        parts += [cluster_sums(block, codes, k).ravel() for codes, k in zip(block_labels, n_labels)]
        return np.concatenate(parts)

    sums = _tree_sum([dask.delayed(block_sums)(block, mean, [codes[start:stop] for codes in labels])
                      for block, start, stop in zip(blocks, bounds[:-1], bounds[1:])]).compute()
    sd = np.sqrt(sums[:n_features] / n_cells)
    sd[sd == 0] = 1.0
    centroids, offset = [], n_features
    for codes, k in zip(labels, n_labels):
        per_cluster = sums[offset:offset + k * n_features].reshape(k, n_features)
        offset += k * n_features
        sizes = np.maximum(np.bincount(codes, minlength=k), 1)
        centroids.append((per_cluster / sizes[:, None] - mean) / sd)

    def soft_blocks(block):
        return [soft_block(block, mean, sd, each) for each in centroids]

    per_block = dask.compute(*[dask.delayed(soft_blocks)(block) for block in blocks])
    return {key: np.concatenate([soft[index] for soft in per_block]) for index, key in enumerate(labellings)}


def run(adata: AnnData, p, *, channels_to_use, slide_key, save_key, random_state: int,
        progress: bool, sketch_size, n_jobs: int | None = None) -> AnnData:
    """``utag()`` on Dask input (see the module's text); ``p``: the checked parameters."""
    from dataclasses import replace

    import dask

    watch = Stopwatch(progress, logger)
    try:
        with watch("reading coordinates"):
            coords = check.spatial_coordinates(adata)
            codes, slide_names = check.slide_codes(adata, slide_key)
            warn_if_slides_are_tiny(slide_key, len(slide_names), adata.n_obs)
            features, var = features_of(adata, channels_to_use)
            order = canonical_order(codes, coords, features)
            order = np.arange(adata.n_obs) if order is None else order
            p = membership_at(p, order)
        with watch("graph and message passing"):
            background = None
            if p.normalization_mode == "l1_norm":  # the background needs the features checked first (one pass)
                means, largest = dask.compute(features.mean(axis=0, dtype=np.float64), abs(features).max())
                check.check_features(np.array([largest]))
                background = whole_means(means)
            aggregated, recipe, n_edges = message_passing(coords, codes, features, order, background, p)
            scales = None
            if p.kernel_widths is not None:
                scales = multiscale.scales_of_moments(*_moments(aggregated), len(p.kernel_widths))
                per_column = multiscale.column_factors(scales, aggregated.shape[1])
                aggregated, recipe = (aggregated * per_column).persist(), recipe * per_column
                background = multiscale.scaled_background(background, scales)
            var = output_var(var, p.kernel_widths)
        logger.info("%d cells, %d slides, %d spatial edges (Dask)", adata.n_obs, len(slide_names), n_edges)
        warn_if_spatial_graph_misfits(p, n_edges, coords, codes)
        coords, codes = coords[order], codes[order]

        with watch("PCA"):
            mean = _moments(aggregated)[0]  # one pass over the cells serves the PCA and the probabilities
            fitted, projected = fit_pca(aggregated, p.n_comps, mean)
        size = lazy_sketch_size(sketch_size, adata.n_obs)
        with watch("sketch"):
            sample = choose_sketch(fitted["embedding"], codes, replace(p, sketch_size=size), random_state)
        embedded = neighbour_graphs(fitted, aggregated, p.n_neighbors, knn_method_for(p, size, adata.n_obs),
                                    random_state, p.use_rep, watch, rows=sample, n_jobs=n_jobs, slides=codes)
        runs, swept, index = [], None, None
        if p.methods and embedded.of_a_sample(adata.n_obs):
            with watch("vote index"):  # in the client, on the sketch only
                index = vote_index(fitted["embedding"][embedded.rows], p.n_neighbors, random_state)
        if p.methods:
            runs, swept = run_clustering(p, embedded, coords, codes, random_state, n_jobs, progress, watch,
                                         assign_by=functools.partial(assign_on_workers, projected, index))
        del projected, index
        embedded = embedded.to_store(adata.n_obs)
        labels = labels_of(runs, save_key)
        with watch("probabilities"):
            soft = probabilities(aggregated, labels, mean)
        log_domain_counts(labels)

        del aggregated  # frees the workers' copy
        if background is not None:
            recipe = recipe + background
        outputs = {"aggregated": None, "graph": None, "embedded": embedded, "labels": labels,
                   "probabilities": soft, "swept": swept}
        to_input_order(outputs, order)
        outputs["aggregated"] = recipe if np.array_equal(order, np.arange(len(order))) else recipe[inverse_order(order)]
        result = write_result(adata, p, **outputs, var=var)
        result.uns["utag"] = summary(p, slide_key, outputs["embedded"], runs, labels,
                                     random_state, watch, scales, sample, order)
        result.uns["utag"].update(engine="dask", save_key=save_key)
        if not isinstance(result.obsm["spatial"], (np.ndarray, pd.DataFrame)):
            # read lazily, they are in memory now (computed apart from the input's array):
            # scanpy's and squidpy's plots of the result index them as numpy arrays
            result.obsm["spatial"] = np.asarray(result.obsm["spatial"])  # the input's dtype
    finally:
        watch.close()
    return result
