"""How close does ``resolutions="auto"`` come to the best resolution in hindsight?

Usage (from the repository root, with utag installed)::

    python benchmarks/resolution.py --out docs/generated/resolution.md   # every labelled dataset
    python benchmarks/resolution.py --kinds subset synthetic              # without shared/
    python benchmarks/resolution.py --timing-cells 1e6                    # cost of a sweep at 1M cells

For every labelled dataset (the bundled spleen subset; each full spleen section and both
pooled; each MERFISH slide; synthetic tissues with 3, 5 and 8 domains, seeds 0-2, in each
layout of :func:`utag.datasets.synthetic_tissue`: Voronoi, layers, islands):
``utag()`` with Leiden, then :func:`utag.tuning.resolution_sweep` (12 resolutions from
0.02 to 2, 5 seeded runs each, small domains merged). Each candidate criterion picks a
resolution from the same sweep; the table gives the ARI against the truth of the most
typical labelling at that resolution, and the gap to the best resolution in hindsight.

Criteria: ``stability x agreement`` (utag before issue 14), ``spatial coherence``
alone, ``stability x agreement x spatial coherence`` (the default from issue 14 to issue
13's session), ``sqrt(stability) x spatial coherence`` (agreement across resolutions left
out), ``sqrt(stability x agreement) x spatial coherence`` (the default), each taking
the best local maximum among labellings with at least 2 domains. With the true number of
domains K given: ``n_domains=K`` (Leiden by bisection, then merging) against k-means
with ``k = K`` on the same PCA, and the smallest domain's share of the cells.
"""
from __future__ import annotations

import time

import labelled
import numpy as np
from labelled import Dataset, labelled_datasets, markdown, publish
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from utag import utag
from utag.datasets import codex_mouse_spleen
from utag.tuning import _peaks, resolution_for_n_domains, resolution_sweep

CRITERIA = {
    "stability x agreement": lambda t: t["stability"] * t["agreement"].fillna(1.0),
    "spatial coherence": lambda t: t["spatial_coherence"],
    "stability x agreement x coherence": lambda t: t["stability"] * t["agreement"].fillna(1.0)
                                                   * t["spatial_coherence"].clip(lower=0),
    "sqrt(stability) x coherence": lambda t: np.sqrt(t["stability"].clip(lower=0))
                                             * t["spatial_coherence"].clip(lower=0),
    "chosen: sqrt(stability x agreement) x coherence": lambda t: t["score"],
}


def _pick(table, values) -> int:
    """The best local maximum of ``values`` among rows with at least 2 domains, found as
    ``resolutions="auto"`` finds it."""
    values = np.asarray(values, dtype=float)
    return max(_peaks(table, values), key=lambda i: values[i])


def datasets(kinds):
    for dataset in labelled_datasets(kinds, synthetic_seeds=(0, 1, 2), synthetic_domains=(3, 5, 8),
                                     synthetic_layouts=("voronoi", "layers", "islands")):
        yield dataset
        if dataset.name == "spleen BALBc-2":  # both sections pooled, after each alone
            yield Dataset("spleen, both sections", codex_mouse_spleen(labelled.SPLEEN), "slide", dataset.max_dist)


def score(dataset) -> dict:
    result = utag(dataset.adata, slide_key=dataset.slide_key, max_dist=dataset.max_dist, clustering_method="leiden",
                  resolutions=[0.1], progress=False)
    started = time.perf_counter()
    table = resolution_sweep(result, n_runs=5, progress=False)
    seconds = time.perf_counter() - started
    truth = dataset.truth()
    scored = truth != "NoAnnotation"
    labels = result.uns["utag_resolution_sweep"]["labels"]
    ari = np.array([adjusted_rand_score(truth[scored], labelling[scored]) for labelling in labels])
    best = int(ari.argmax())
    row = {"dataset": dataset.name, "cells": f"{dataset.adata.n_obs:,}", "true domains": len(set(truth[scored])),
           "best ARI (resolution, domains)": f"{ari[best]:.3f} ({table['resolution'][best]:g}, "
                                              f"{table['n_domains'][best]})"}
    for name, criterion in CRITERIA.items():
        chosen = _pick(table, criterion(table))
        row[name] = f"{ari[chosen]:.3f} ({table['resolution'][chosen]:g}, {table['n_domains'][chosen]})"
        row[f"gap: {name}"] = float(ari[best] - ari[chosen])
    # the number of domains given: Leiden through n_domains against k-means with that k
    n_true = len(set(truth[scored]))
    _, given = resolution_for_n_domains(result, n_true)
    kmeans = KMeans(n_true, random_state=0, n_init="auto").fit_predict(result.obsm["X_pca"])
    shares = np.bincount(given) / len(given)
    row["n_domains=K: ARI (smallest share)"] = (f"{adjusted_rand_score(truth[scored], given[scored]):.3f} "
                                                f"({shares.min():.1%})")
    row["k-means, k=K"] = f"{adjusted_rand_score(truth[scored], kmeans[scored]):.3f}"
    row["sweep s"] = f"{seconds:.1f}"
    return row


def main() -> None:
    parser = labelled.parser(__doc__)
    parser.add_argument("--timing-cells", type=float, help="only time a 12 resolutions x 5 runs sweep at this size")
    args = parser.parse_args()

    if args.timing_cells:
        from utag.datasets import synthetic_tissue

        n_cells = int(args.timing_cells)
        adata = synthetic_tissue(n_cells=n_cells, n_slides=max(1, n_cells // 6_700), random_state=0)
        started = time.perf_counter()
        result = utag(adata, slide_key="roi", clustering_method="leiden", resolutions=[0.1], progress=False)
        print(f"utag() on {n_cells:,} cells: {time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        table = resolution_sweep(result, n_runs=5, progress=False)
        print(f"resolution_sweep, 12 resolutions x 5 runs, {n_cells:,} cells: {time.perf_counter() - started:.0f} s")
        print(table.round(3).to_string())
        return

    rows = []
    for dataset in datasets(args.kinds):
        rows.append(score(dataset))
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    groups = {"every dataset": lambda name: True,
              "real tissue": lambda name: not name.startswith("synthetic"),
              "synthetic Voronoi": lambda name: name.startswith("synthetic K="),
              "synthetic layers and islands": lambda name: name.startswith(("synthetic layers", "synthetic islands"))}
    summary = []
    for group, member in groups.items():
        for name in CRITERIA:
            gaps = np.array([row[f"gap: {name}"] for row in rows if member(row["dataset"])])
            if len(gaps):
                summary.append({"datasets": group, "criterion": name,
                                "within 0.05 of the best": f"{(gaps <= 0.05).sum()} of {len(gaps)}",
                                "mean gap": float(gaps.mean()), "largest gap": float(gaps.max())})
    shown = [{k: v for k, v in row.items() if not k.startswith("gap")} for row in rows]
    text = (markdown(shown) + "\n\nARI of the resolution each criterion picks (resolution, domains); gaps to the "
            "best resolution in hindsight:\n\n" + markdown(summary))
    publish(args.out, "resolution.py", text)


if __name__ == "__main__":
    main()
