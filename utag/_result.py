"""The end of :func:`utag.utag`: one new AnnData in the input's cell order, with every
result where scanpy, squidpy and the original UTAG put it, and ``uns['utag']``, the record
of the call. Shared by the in-memory and the Dask routes.
"""
from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData

from . import multiscale
from ._keys import SWEEP_KEY, drop_tables_of, probabilities_key, sweep_entry
from ._order import graph_back, rows_back
from ._progress import Stopwatch
from .embedding import Embedding
from .graph import store_spatial_graph

if TYPE_CHECKING:
    from ._parameters import Parameters
    from ._runs import Run

logger = logging.getLogger(__name__)


def output_var(var: pd.DataFrame, widths) -> pd.DataFrame:
    """``var`` of the message-passed features: the input's, or with the multiscale flavour
    (kernel ``widths``) one row per feature and kernel width."""
    if widths is None:
        return var
    return pd.DataFrame({"feature": np.tile(var.index.to_numpy(dtype=str), len(widths)),
                         "kernel_width": np.repeat(np.asarray(widths, dtype=float), len(var))},
                        index=multiscale.feature_names(var.index, widths))


def summary(p: Parameters, slide_key, embedded: Embedding | None, runs: list[Run],
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
        "pca_kwargs": storable_kwargs(p.pca_kwargs),
        "clustering_method": list(p.methods),
        **{f"{method}_kwargs": storable_kwargs(kwargs) for method, kwargs in p.backend_kwargs.items()},
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


def storable_kwargs(kwargs) -> dict:
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


def to_input_order(outputs: dict, order: np.ndarray | None) -> None:
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


def write_result(adata: AnnData, p: Parameters, aggregated, graph, embedded: Embedding | None,
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
