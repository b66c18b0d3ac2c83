"""Label transfer: domains learned on some slides, assigned to new slides without
re-clustering.

``utag()`` stores a small model in ``uns['utag']['model']``: the features used, the
message-passing settings, the PCA (mean and components) and the centroid of every
domain of every labelling in PCA space. :func:`transfer_labels` passes messages on the
new slides with the same settings, projects them into the stored PCA and assigns each
cell to the nearest domain centroid (``method="centroid"``, needs only the model) or by a
vote of its nearest training cells (``method="knn"``, needs the training result).
"""
from __future__ import annotations

import copy
import logging

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy.spatial import cKDTree
from scipy.special import softmax

from . import _validation as check
from ._arrays import column_mean, positions_in
from ._keys import probabilities_key
from ._parallel import n_threads
from ._validation import RECORDED_SLIDE_KEY
from .clustering import cluster_means
from .embedding import exact_search, project
from .graph import mean_neighbours
from .message_passing import as_float32_less_shift, pass_messages
from .multiscale import feature_names, graph_radius, scale_blocks, scaled_background
from .sketch import majority_vote, nearest_indexed, vote_index

logger = logging.getLogger(__name__)

#: :func:`transfer_labels` warns when the new cells' mean number of spatial neighbours
#: differs from the reference's by more than this factor (either way): coordinates in
#: other units (um against px: a factor of about 7 in neighbours) are the likely cause.
NEIGHBOURS_RATIO_WARNING = 4.0
#: :func:`transfer_labels` warns when the new cells' spread in the embedding is this many
#: times larger or smaller than the reference cells' (features on another scale).
SPREAD_RATIO_WARNING = 4.0

__all__ = ["build_model", "transfer_labels", "domain_numbers", "spread"]


def domain_numbers(labels, n_domains: int, key: str = "labels") -> np.ndarray:
    """Each cell's domain as a number ``0..n_domains-1``, read from its name (``"0"``,
    ``"1"``, ...) rather than from its position among the categories, which moves when
    a subset drops an unused category; ``-1`` where the label is missing.

    Parameters
    ----------
    labels
        One label per cell: a categorical or any sequence whose values read as text
        ``"0"`` to ``str(n_domains - 1)`` (e.g. ``result.obs["UTAG Label_leiden_0.1"]``);
        missing values (NaN/None) are allowed.
    n_domains
        Number of domains of the model (e.g. rows of its centroids).
    key
        Name of ``labels`` in the ValueError raised for a label that is not ``"0"`` to
        ``str(n_domains - 1)`` (default ``"labels"``).

    Returns
    -------
    numpy.ndarray
        int64 domain numbers, one per cell; ``-1`` where the label is missing.

    Examples
    --------
    >>> subset = pd.Series(pd.Categorical(["0", "2", None, "3"], categories=["0", "2", "3"]))
    >>> domain_numbers(subset, 4).tolist()
    [0, 2, -1, 3]
    """
    names = pd.Series(labels).astype("string")
    numbers = positions_in(names, [str(i) for i in range(n_domains)])
    unknown = names.notna().to_numpy() & (numbers < 0)
    if unknown.any():
        raise ValueError(f"`{key}` holds labels that are not domains of the model ('0' to '{n_domains - 1}'), "
                         f"e.g. {names[unknown].iloc[0]!r}: transfer the labellings utag() wrote.")
    return numbers


def build_model(features, feature_names, embedding: np.ndarray, components: np.ndarray,
                labels: dict[str, np.ndarray], max_dist: float, normalization_mode: str = "l1_norm",
                background: np.ndarray | None = None, spatial_graph: str = "radius",
                n_spatial_neighbors: int = 6, kernel_widths=None, block_scales=None, centred: bool = True,
                mean_spatial_neighbors: float | None = None) -> dict:
    """The transfer model ``utag()`` stores in ``uns['utag']['model']``.

    :func:`transfer_labels` reads it to pass messages on new cells with the same settings,
    project them into the same PCA and label them. Nothing is written anywhere: the
    caller stores the dict.

    Parameters
    ----------
    features
        The message-passed features the PCA was fitted on (cells x columns, dense or
        sparse), less ``background``; their column mean is the PCA's centre.
    feature_names
        The input features (``var_names``) new cells need, in order. With the multiscale
        flavour these are the features the blocks are built from, not the block columns.
    embedding
        The PCA of ``features`` (cells x components); the domain centroids are taken in it.
    components
        The PCA loadings, columns of ``features`` x components.
    labels
        ``{obs key: label codes}``: one integer array per labelling, a code ``0..k-1`` per
        cell, for the centroids.
    max_dist
        Radius of the spatial graph (units of ``obsm['spatial']``), reused on new slides.
    normalization_mode
        Message passing's normalisation, reused on new slides: ``"l1_norm"`` (default, the
        neighbourhood mean) or ``"sum"``.
    background
        A profile subtracted from every cell's features before the PCA (default ``None``:
        none); stored added to the mean, so that new cells are centred alike.
    spatial_graph
        Kind of spatial graph, reused on new slides: ``"radius"`` (default), ``"knn"`` or
        ``"delaunay"``.
    n_spatial_neighbors
        Neighbours per cell of the ``"knn"`` spatial graph (default ``6``).
    kernel_widths
        The multiscale flavour's kernel widths (default ``None``: the ``"utag"`` flavour).
    block_scales
        The factors applied to the multiscale blocks (default ``None``: none).
    centred
        Whether the PCA was centred (default ``True``). ``False`` (``pca_kwargs=
        {"zero_center": False}``): new cells are projected without subtracting the
        features' mean.
    mean_spatial_neighbors
        Spatial neighbours per cell in the reference's graph, on average (default ``None``:
        not known); :func:`transfer_labels` compares the new cells' with it (radius
        graphs only: the others give every cell about the same number).
        The embedding's spread (:func:`spread`) is recorded as well, for
        :func:`transfer_labels` to compare the new cells' with.

    Returns
    -------
    dict
        ``features`` (names, as text), ``mean`` (centre subtracted before projecting),
        ``components``, ``max_dist``, ``normalization_mode``, ``spatial_graph``,
        ``n_spatial_neighbors``, ``centroids`` (``{key: domains x components}``, the mean
        embedding of each domain's cells), ``flavor`` (``"utag"`` or ``"multiscale"``),
        ``kernel_widths`` and ``block_scales`` (empty arrays for the ``"utag"`` flavour),
        ``mean_spatial_neighbors`` (NaN when not known), ``embedding_spread``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> features = rng.random((6, 3))
    >>> centred = features - features.mean(axis=0)
    >>> components = np.linalg.svd(centred, full_matrices=False)[2][:2].T  # 3 features x 2 components
    >>> model = build_model(features, ["CD3", "CD20", "CD68"], centred @ components, components,
    ...                     {"domains": np.array([0, 0, 0, 1, 1, 1])}, max_dist=20)
    >>> model["centroids"]["domains"].shape, model["flavor"], model["features"].tolist()
    ((2, 2), 'utag', ['CD3', 'CD20', 'CD68'])
    """
    embedding = np.asarray(embedding, dtype=np.float64)
    mean = column_mean(features) if centred else np.zeros(features.shape[1])
    return {
        "features": np.asarray(feature_names, dtype=str),
        "mean": mean if background is None else mean + background,
        "components": np.asarray(components, dtype=np.float64),
        "max_dist": float(max_dist),
        "normalization_mode": str(normalization_mode),
        "spatial_graph": str(spatial_graph),
        "n_spatial_neighbors": int(n_spatial_neighbors),
        "centroids": {key: _centroids(embedding, codes) for key, codes in labels.items()},
        "flavor": "utag" if kernel_widths is None else "multiscale",
        "kernel_widths": np.asarray(kernel_widths if kernel_widths is not None else [], dtype=np.float64),
        "block_scales": np.asarray(block_scales if block_scales is not None else [], dtype=np.float64),
        "mean_spatial_neighbors": float("nan") if mean_spatial_neighbors is None else float(mean_spatial_neighbors),
        "embedding_spread": spread(embedding),
    }


def spread(embedding: np.ndarray) -> float:
    """The root mean square distance of the cells to their mean in the embedding.

    Examples
    --------
    >>> spread(np.array([[0.0, 0.0], [2.0, 0.0]]))
    1.0
    """
    return float(np.sqrt(np.var(np.asarray(embedding, dtype=np.float64), axis=0).sum()))


def _ratio_beyond(new: float, reference: float, factor: float) -> float | None:
    """``new / reference`` where it lies beyond ``factor`` either way, else ``None`` (also
    for a ``reference`` that is not known: NaN, or not positive)."""
    if not np.isfinite(reference) or reference <= 0:
        return None
    ratio = max(new / reference, 1e-12)  # none at all: read as a trillion times fewer, not a division by 0
    return None if 1 / factor <= ratio <= factor else ratio


def _warn_if_other_units(new: float, reference: float, radius: float) -> None:
    """Warn when the new cells have far more or fewer spatial neighbours per cell (``new``)
    within the spatial graph's ``radius`` than the reference cells had (``reference``; NaN
    for a model that does not say)."""
    ratio = _ratio_beyond(new, reference, NEIGHBOURS_RATIO_WARNING)
    if ratio is None:
        return
    logger.warning(
        "the new cells have %.1f spatial neighbours within %g on average, against %.1f in the reference: "
        "are their coordinates (obsm['spatial']) in the reference's units? Coordinates about %.2g times %s than "
        "the reference's would explain it; rescale them before transferring, or the domains are learned at "
        "another scale than the new cells are described at.", new, radius, reference, np.sqrt(ratio) if ratio > 1
        else 1 / np.sqrt(ratio), "smaller" if ratio > 1 else "larger")


def _warn_if_other_scale(new: float, reference: float) -> None:
    """Warn when the new cells' :func:`spread` in the embedding (``new``) is far from the
    reference cells' (``reference``; NaN for a model that does not say)."""
    ratio = _ratio_beyond(new, reference, SPREAD_RATIO_WARNING)
    if ratio is None:
        return
    logger.warning(
        "the new cells spread %.3g times %s in the embedding than the reference cells: are their features (X) on "
        "the reference's scale (the same normalisation and transformation)? Domains of cells on another scale are "
        "not comparable; transform them as the reference's were before transferring.",
        ratio if ratio > 1 else 1 / ratio, "wider" if ratio > 1 else "narrower")


def _centroids(embedding: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Each domain's mean in the embedding; NaN for a number no cell has (an empty domain,
    which :func:`transfer_labels` then never assigns), as :func:`utag.labels.consistent_labels` writes."""
    centroids = cluster_means(embedding, codes)
    centroids[np.bincount(codes, minlength=len(centroids)) == 0] = np.nan
    return centroids


def transfer_labels(
    result: AnnData,
    adata: AnnData,
    keys: list[str] | str | None = None,
    slide_key: str | None = RECORDED_SLIDE_KEY,
    method: str = "knn",
    n_neighbors: int = 15,
    n_jobs: int | None = None,
    progress: bool = False,
) -> AnnData:
    """Assign the domains of ``result`` to the cells of new slides in ``adata``.

    Parameters
    ----------
    result
        The output of ``utag()`` on the reference slides (its ``uns['utag']['model']``).
    adata
        New cells with the same features (``var_names``) and ``obsm['spatial']``.
    keys
        Labelling (a string) or labellings (``obs`` keys of ``result``) to transfer.
        Default ``None``: every labelling in the model.
    slide_key
        ``obs`` column of the new slides; ``None``: all cells of ``adata`` are one slide.
        Default ``"auto"``: the slide key ``utag()`` recorded in
        ``result.uns['utag']['slide_key']``, so that cells of different slides never share
        a neighbourhood; one slide if ``utag()`` ran on one, or if ``adata.obs`` has no
        column of that name (then with a warning in the log: pass ``slide_key`` to say
        which column names the new slides, or ``None`` if they are one slide).
    method
        ``"knn"`` (default): majority vote of the ``n_neighbors`` nearest reference cells
        in PCA space (``result.obsm['X_pca']``; reference cells without a label do not
        vote; a tie goes to the domain of the nearest tied cell), probabilities the vote
        shares; needs ``result`` as ``utag()`` returned it. The voters are found exactly
        where that is quick, as for ``utag()``'s own kNN graph, else (large references)
        in a seeded HNSW index. ``"centroid"``: nearest domain
        centroid in PCA space (needs only the model), probabilities the softmax of
        ``-distance^2 / 2``.
    n_neighbors
        Reference cells that vote on each new cell with ``method="knn"`` (default ``15``;
        all labelled reference cells if fewer). Ignored with ``method="centroid"``.
    n_jobs
        Worker processes for the slides' message passing (default: one per core; ``1``:
        none). Results do not depend on it.
    progress
        Show a progress bar over the slides (default ``False``).

    Returns
    -------
    AnnData
        A new AnnData of the cells of ``adata``, in their order (``adata`` is not
        changed): message-passed ``X`` (as ``utag()`` wrote it, so the multiscale blocks
        with that flavour), a copy of ``adata``'s ``obs``, ``obsm`` and ``uns``, the
        projection ``obsm['X_pca']`` (float32), and for every key ``obs[key]``
        (categorical, categories ``"0"`` to ``str(n_domains - 1)`` as in the model;
        replaces a column of that name) and ``obsm[f"{key}_probabilities"]`` (cells x
        domains, float32).

    Examples
    --------
    >>> from utag import utag
    >>> from utag.datasets import synthetic_tissue
    >>> tissue = synthetic_tissue(n_cells=4_000, n_slides=2, random_state=0)
    >>> reference = tissue[tissue.obs["roi"] == "roi_0"].copy()
    >>> new = tissue[tissue.obs["roi"] == "roi_1"].copy()
    >>> result = utag(reference, slide_key="roi", clustering_method="kmeans", resolutions=[0.4], progress=False)
    >>> transferred = transfer_labels(result, new, slide_key="roi")
    >>> transferred.obs["UTAG Label_kmeans_0.4"].cat.categories.tolist()
    ['0', '1', '2', '3']
    >>> transferred.obsm["UTAG Label_kmeans_0.4_probabilities"].shape
    (2000, 4)
    >>> by_centroid = transfer_labels(result, new, slide_key="roi", method="centroid")
    >>> bool(by_centroid.obs["UTAG Label_kmeans_0.4"].notna().all())  # every cell gets a domain
    True
    """
    model = result.uns.get("utag", {}).get("model")
    if model is None and result.uns.get("utag", {}).get("engine") == "dask":
        raise ValueError("`result` comes from utag()'s Dask route, which keeps no transfer model (it would hold "
                         "every cell's embedding in one process). Run `utag()` in memory on the reference slides "
                         "(e.g. `adata[adata.obs[slide_key].isin(slides)].to_memory()`) and transfer from that.")
    if model is None:
        raise ValueError("`result.uns['utag']['model']` is missing: pass the AnnData returned by `utag()` "
                         "with apply_clustering=True.")
    if method not in ("centroid", "knn"):
        raise ValueError(f"`method` must be 'centroid' or 'knn', got {method!r}.")
    keys = list(model["centroids"]) if keys is None else check.as_list(keys)
    n_jobs = check.n_jobs(n_jobs)
    unknown = [k for k in keys if k not in model["centroids"]]
    if unknown:
        raise ValueError(f"`keys` {unknown} are not labellings of the model ({list(model['centroids'])}).")
    if method == "knn":  # the vote needs the reference cells, not only the model
        lacking = (["obsm['X_pca']"] if "X_pca" not in result.obsm else []) \
            + [f"obs[{key!r}]" for key in keys if key not in result.obs]
        if lacking:
            raise ValueError(f"method='knn' votes among the reference cells, but `result` lacks {', '.join(lacking)}: "
                             "pass the AnnData utag() returned, or use method='centroid', which needs only the model.")
    n_neighbors = check.as_int("n_neighbors", n_neighbors, minimum=1)
    check.check_n_cells(adata)
    features = [str(f) for f in model["features"]]
    lacking = [f for f in features if f not in set(map(str, adata.var_names))]
    if lacking:
        raise ValueError(f"`adata` lacks {len(lacking)} of the {len(features)} features the domains were learned on "
                         f"({lacking[:10]}{' ...' if len(lacking) > 10 else ''}); the new cells need every one of "
                         "them, named as in the reference (adata.var_names).")
    columns = check.channel_indices(adata, features)
    coords = check.spatial_coordinates(adata)
    codes, _ = check.slide_codes(adata, check.recorded_slide_key(adata, slide_key, record=result))
    # each feature's whole-number mean taken off first, as utag() does, and back on after
    matrix, shift = as_float32_less_shift(check.feature_matrix(adata, columns), str(model["normalization_mode"]))
    widths = tuple(float(w) for w in model.get("kernel_widths", [])) or None
    graph_kind = str(model.get("spatial_graph", "radius"))
    aggregated, n_edges, _ = pass_messages(coords, matrix, codes, model["max_dist"], model["normalization_mode"],
                                           n_jobs != 1, n_jobs, progress, spatial_graph_kind=graph_kind,
                                           n_spatial_neighbors=int(model.get("n_spatial_neighbors", 6)),
                                           kernel_widths=widths)
    if graph_kind == "radius":
        _warn_if_other_units(mean_neighbours(n_edges, adata.n_obs), float(model.get("mean_spatial_neighbors", np.nan)),
                             graph_radius(float(model["max_dist"]), widths))
    if widths is not None:
        aggregated = scale_blocks(aggregated, model["block_scales"])
        features = feature_names(features, widths)
    shift = scaled_background(shift, model["block_scales"] if widths is not None else None)
    embedding = project(aggregated, model["components"], model["mean"] - (0 if shift is None else shift))
    if adata.n_obs > 1:
        _warn_if_other_scale(spread(embedding), float(model.get("embedding_spread", np.nan)))
    if shift is not None:
        aggregated += shift  # the neighbourhood means, as utag() stores them

    transferred = AnnData(X=aggregated, obs=adata.obs.copy(), var=pd.DataFrame(index=features),
                          obsm={name: value.copy() for name, value in adata.obsm.items()},
                          uns=copy.deepcopy(dict(adata.uns)))
    transferred.obsm["X_pca"] = embedding
    reference = np.asarray(result.obsm["X_pca"]) if method == "knn" else None
    nearest = {}  # per set of labelled reference cells: the new cells' nearest among them
    for key in keys:
        centroids = np.array(model["centroids"][key], dtype=np.float64)  # a copy: empty rows are zeroed below
        if method == "centroid":
            # softmax of -||e - c||^2 / 2 (the ||e||^2 term is the same for every domain);
            # an empty domain (consistent_labels can leave one) has no centroid
            empty = np.isnan(centroids).any(axis=1)
            centroids[empty] = 0
            logits = embedding @ centroids.T - 0.5 * (centroids**2).sum(axis=1)
            logits[:, empty] = -np.inf
            probabilities = softmax(logits, axis=1)
            labels = probabilities.argmax(axis=1)
        else:  # ties go to the nearest tied cell's domain, whatever the domains' numbers
            numbers = domain_numbers(result.obs[key], len(centroids), key)
            labelled = np.flatnonzero(numbers >= 0)
            if len(labelled) == 0:
                raise ValueError(f"`result.obs[{key!r}]` has no labelled cell to vote: transfer another key.")
            _warn_if_votes_drown_domains(numbers[labelled], n_neighbors, key)
            signature = labelled.tobytes()
            if signature not in nearest:  # cells with a missing label do not vote
                nearest[signature] = labelled[_nearest_reference_cells(reference[labelled], embedding, n_neighbors,
                                                                       n_jobs)]
            labels, counts = majority_vote(numbers[nearest[signature]], len(centroids))
            probabilities = counts / counts.sum(axis=1, keepdims=True)
        categories = [str(i) for i in range(len(centroids))]
        transferred.obs[key] = pd.Categorical.from_codes(labels, categories=categories)
        transferred.obsm[probabilities_key(key)] = probabilities.astype(np.float32)
    return transferred


def _nearest_reference_cells(reference: np.ndarray, points: np.ndarray, n_neighbors: int,
                             n_jobs: int | None) -> np.ndarray:
    """The rows of ``reference`` nearest to each row of ``points`` (cells x ``n_neighbors``,
    nearest first). Exact where that is quick, by the rule of ``utag()``'s own kNN graph
    (:func:`utag.embedding.exact_search`); else from the seeded HNSW index of the sketch's
    vote (:func:`utag.sketch.vote_index`): an exact search in ten or more dimensions grows
    much faster than the cells (0.5 s for 25,000 new and reference cells, 12 s for
    100,000 each). Each row's answer depends on that row alone, whatever ``n_jobs``."""
    k = min(n_neighbors, len(reference))
    if exact_search(reference, k):
        return cKDTree(reference).query(points, k=k, workers=-1)[1].reshape(len(points), -1)
    return nearest_indexed(vote_index(reference, k), points, k, n_threads(n_jobs))


def _warn_if_votes_drown_domains(numbers: np.ndarray, n_neighbors: int, key: str) -> None:
    """Warn when ``n_neighbors`` voters outnumber twice the cells of a reference domain
    (codes ``numbers``): such a domain holds a majority of no new cell's vote, and with
    ``n_neighbors`` near the number of reference cells every new cell gets the largest
    domain."""
    sizes = np.bincount(numbers)
    sizes = sizes[sizes > 0]
    if n_neighbors > 2 * sizes.min():
        logger.warning("transfer_labels of %r: n_neighbors=%d voters per new cell outnumber twice the %d cells of "
                       "its smallest domain, which then wins almost no vote (and with n_neighbors near the %d "
                       "reference cells every new cell gets the largest domain); pass fewer n_neighbors "
                       "(default 15).", key, n_neighbors, int(sizes.min()), int(sizes.sum()))
