"""Domain numbers that mean the same across labellings.

* :func:`align_labels`, :func:`consistent_labels`: renumber domains so the same domain
  keeps its number across resolutions and runs (Hungarian matching on overlaps);
* :func:`domain_hierarchy`: how the domains of finer labellings nest into coarser ones.

All three are also importable from :mod:`utag.tuning`, where they were first.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.optimize import linear_sum_assignment

from . import _validation as check
from ._keys import drop_tables_of, method_and_resolution, probabilities_key
from .transfer import domain_numbers

__all__ = ["align_labels", "consistent_labels", "domain_hierarchy"]


def align_labels(reference: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Renumber ``labels`` so that each matches the ``reference`` label it overlaps most.

    Integer labels ``0..k-1`` in both. Matching maximises the total overlap (Hungarian
    assignment on the contingency table); labels left without a partner (when
    ``labels`` has more domains) get new numbers after the reference's, largest first.

    Examples
    --------
    >>> align_labels(np.array([0, 0, 1, 1, 2]), np.array([5, 5, 3, 3, 4]) - 3)
    array([0, 0, 1, 1, 2])
    """
    reference, labels = np.asarray(reference), np.asarray(labels)
    numbers = all(values.ndim == 1 and np.issubdtype(values.dtype, np.integer) for values in (reference, labels))
    if not numbers or len(reference) != len(labels) or len(labels) == 0 \
            or min(reference.min(), labels.min()) < 0:
        raise ValueError("`reference` and `labels` must be labels of the same cells as whole numbers 0, 1, ..., "
                         f"got {reference.dtype} ({reference.shape}) and {labels.dtype} ({labels.shape}); for "
                         "labellings of `result.obs`, pass `result.obs[key].astype(int).to_numpy()` or renumber "
                         "them in place with consistent_labels(result, keys).")
    return _alignment(reference, labels, int(reference.max()) + 1, int(labels.max()) + 1)[labels]


def _alignment(reference: np.ndarray, labels: np.ndarray, n_ref: int, n_new: int) -> np.ndarray:
    """The new number of each label ``0..n_new-1`` (see :func:`align_labels`); labels
    absent from ``labels`` get the last new numbers."""
    overlap = sp.csr_matrix((np.ones(len(labels)), (labels, reference)), shape=(n_new, n_ref)).toarray()
    rows, cols = linear_sum_assignment(-overlap)
    mapping = np.full(n_new, -1)
    matched = overlap[rows, cols] > 0
    mapping[rows[matched]] = cols[matched]
    unmatched = np.flatnonzero(mapping < 0)
    sizes = np.bincount(labels, minlength=n_new)
    unmatched = unmatched[np.argsort(-sizes[unmatched], kind="stable")]
    mapping[unmatched] = n_ref + np.arange(len(unmatched))
    return mapping


def consistent_labels(result: AnnData, keys: list[str] | None = None) -> list[str]:
    """Renumber labellings in place so a domain keeps its number across them.

    ``keys`` (default: the labellings ``utag()`` wrote, ordered by method then
    resolution, each method's a chain of its own) are aligned one after the other, each
    to the previous one; the
    probability columns in ``obsm`` are permuted to match. Returns the keys in the
    order they were aligned. The centroids of the transfer model
    (``uns['utag']['model']``) are renumbered too, so :func:`utag.transfer.transfer_labels`
    gives the new numbers afterwards.

    Labels are read by name (``"0"``, ``"1"``, ...), so a subset of a result that dropped
    unused categories keeps its domains. A column whose labels are not all numbers (an
    expert annotation, say) is left as it is: the next key is aligned to its names in
    sorted order (domain ``i`` overlapping most the ``i``-th name). A domain of the previous labelling that has no
    partner leaves its number unused: the category stays, empty, with a probability
    column of zeros (and no centroid). Cells without a label keep none. Tables counted
    under the old numbers (``uns[f"{key}_connectivity"]``, ``..._colocalization`` and the
    original API's ``..._domain_adjacency_matrix`` and ``..._celltype_adjacency_matrix``,
    :data:`utag._keys.TABLES_OF_LABELS`) are removed; colours stay with the numbers.
    """

    chain_of = None  # with the default keys: each method's labellings are a chain of their own
    if keys is None:
        keys = list(result.uns.get("utag", {}).get("label_keys", []))
        keys.sort(key=method_and_resolution)
        chain_of = {key: method_and_resolution(key)[0] for key in keys}
    keys = check.as_list(keys)  # also an array, as label_keys come back from a file
    if not keys:
        raise ValueError("No labellings to align: pass `keys` or run `utag()` first.")
    # a copy, stored back at the end: the model of a view is its parent's, which keeps its own numbers
    centroids = dict(result.uns.get("utag", {}).get("model", {}).get("centroids", {}))
    previous, n_previous = None, 0
    for position, key in enumerate(keys):
        if key not in result.obs:
            raise ValueError(f"`keys`: {key!r} is not a column of `result.obs`.")
        if chain_of is not None and position > 0 and chain_of[key] != chain_of[keys[position - 1]]:
            previous, n_previous = None, 0
        probabilities = result.obsm.get(probabilities_key(key))
        names = result.obs[key].astype("string")
        present = names.dropna().unique()
        if all(name.isdigit() for name in present):  # utag()'s labels: numbers by name
            n_domains = max([int(name) + 1 for name in present] + ([len(centroids[key])] if key in centroids else [])
                            + ([np.shape(probabilities)[1]] if probabilities is not None else []))
            codes = domain_numbers(names, n_domains, key)
        else:  # other labels (an expert annotation, say): kept as they are, a reference in sorted order
            categorical = pd.Categorical(names)
            previous, n_previous = categorical.codes.astype(np.int64), len(categorical.categories)
            continue
        if previous is not None:
            both = (codes >= 0) & (previous >= 0)
            mapping = _alignment(previous[both], codes[both], n_previous, n_domains)
            source = np.full(int(mapping.max()) + 1, -1)  # new number j was old number source[j] (-1: none)
            source[mapping] = np.arange(n_domains)
            if probabilities is not None and np.shape(probabilities)[1] == n_domains:
                old = np.asarray(probabilities)
                result.obsm[probabilities_key(key)] = np.where(source >= 0, old[:, np.maximum(source, 0)], 0)
            if key in centroids:
                old = np.asarray(centroids[key], dtype=np.float64)
                centroids[key] = np.where((source >= 0)[:, None], old[np.maximum(source, 0)], np.nan)
            codes = np.where(codes >= 0, mapping[np.maximum(codes, 0)], -1)
            n_domains = len(source)
        result.obs[key] = pd.Categorical.from_codes(codes, categories=[str(i) for i in range(n_domains)])
        drop_tables_of(result, key)  # counted under the old numbers (colours follow the numbers)
        previous, n_previous = codes, n_domains
    if centroids:  # the view, if it was one, is a copy of its own by now
        result.uns["utag"]["model"]["centroids"] = centroids
    return keys


def domain_hierarchy(result: AnnData, keys: list[str]) -> pd.DataFrame:
    """How each domain of a finer labelling nests into the previous, coarser one.

    ``keys``: labellings from coarse to fine. One row per (coarse key, fine key, fine
    domain): its ``parent`` (the coarse domain holding most of its cells), ``n_cells``
    and ``purity`` (share of its cells inside the parent; 1 = perfectly nested), over the
    cells labelled in both.

    Examples
    --------
    >>> import anndata
    >>> obs = pd.DataFrame({"a": list("0000111"), "b": list("0011222")}, index=list("abcdefg"))
    >>> domain_hierarchy(anndata.AnnData(obs=obs), ["a", "b"])[["domain", "parent", "purity"]].values.tolist()
    [['0', '0', 1.0], ['1', '0', 1.0], ['2', '1', 1.0]]
    """
    keys = check.as_list(keys)
    if len(keys) < 2:
        raise ValueError(f"`keys` must name at least two labellings of `result.obs`, coarse to fine, got {keys}: "
                         "the hierarchy is of each finer labelling in the one before it.")
    missing = [key for key in keys if key not in result.obs]
    if missing:
        raise ValueError(f"`keys` {missing} are not columns of `result.obs`.")
    levels = []
    for coarse, fine in zip(keys[:-1], keys[1:]):  # cells without a label in either are left out
        table = pd.crosstab(result.obs[fine].astype("string"), result.obs[coarse].astype("string"))
        n_cells = table.sum(axis=1)
        levels.append(pd.DataFrame({"coarse_key": coarse, "fine_key": fine, "domain": table.index.to_numpy(),
                                    "parent": table.idxmax(axis=1).to_numpy(), "n_cells": n_cells.to_numpy(),
                                    "purity": (table.max(axis=1) / n_cells).to_numpy(dtype=float)}))
    return pd.concat(levels, ignore_index=True)
