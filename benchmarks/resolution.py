"""How close does ``resolutions="auto"`` come to the best resolution in hindsight?

Usage (from the repository root, with utag installed)::

    python benchmarks/resolution.py --out docs/generated/resolution.md   # every labelled dataset
    python benchmarks/resolution.py --kinds subset synthetic              # without shared/
    python benchmarks/resolution.py --timing-cells 1e6                    # cost of a sweep at 1M cells

For every labelled dataset (the bundled spleen subset; each full spleen section and both
pooled; each MERFISH slide; synthetic tissues with 3, 5 and 8 domains, seeds 0-2, in each
layout of :func:`utag.datasets.synthetic_tissue`: Voronoi, layers, islands) and both
flavours of ``utag()``: ``utag()`` with Leiden, then :func:`utag.tuning.resolution_sweep`
(12 resolutions from 0.02 to 2, 5 seeded runs each, small domains merged) twice, with
the runs of seeds 0-4 and of seeds 5-9 (no run in common), so that a criterion's lead
can be told from the luck of one set of runs. Each candidate criterion picks a
resolution from the same sweep; the tables give the ARI against the truth of the most
typical labelling at that resolution, and the gap to the best resolution in hindsight.

Criteria: ``stability x agreement`` (utag before issue 14), ``spatial coherence``
alone, ``stability x agreement x coherence`` (the default from issue 14 to issue
13's session), ``sqrt(stability) x coherence`` (agreement across resolutions left
out), ``sqrt(stability x agreement) x coherence`` (the default of ``flavor="utag"``),
``stability^(1/4) x coherence`` (the default of ``flavor="multiscale"``), and the default
with the coherence scaled by the share of cell pairs in different domains (1 - the sum of
squared domain shares): divided by it (``x assortativity``, which favours fewer domains)
or multiplied by its square root (which favours more), each taking the best local maximum
among labellings with at least 2 domains. With the true number of
domains K given (``flavor="utag"``, first seeds): ``n_domains=K`` (Leiden by bisection,
then merging) against k-means with ``k = K`` on the same PCA, and the smallest domain's
share of the cells.
"""
from __future__ import annotations

import time

import labelled
import numpy as np
from labelled import labelled_datasets, markdown, publish
from measure import scored_cells
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from utag import utag
from utag.tuning import _peaks, resolution_for_n_domains, resolution_sweep

FLAVORS = ("utag", "multiscale")
#: First seed of each sweep's 5 runs: seeds 0-4, then 5-9.
SWEEP_SEEDS = (0, 5)


def _positive(column):
    return column.clip(lower=0)


CRITERIA = {
    "stability x agreement": lambda t: t["stability"] * t["agreement"].fillna(1.0),
    "spatial coherence": lambda t: t["spatial_coherence"],
    "stability x agreement x coherence": lambda t: t["stability"] * t["agreement"].fillna(1.0)
                                                   * _positive(t["spatial_coherence"]),
    "sqrt(stability) x coherence": lambda t: np.sqrt(_positive(t["stability"])) * _positive(t["spatial_coherence"]),
    "sqrt(stability x agreement) x coherence": lambda t: np.sqrt(_positive(t["stability"])
                                                                 * _positive(t["agreement"].fillna(1.0)))
                                                         * _positive(t["spatial_coherence"]),
    "stability^(1/4) x coherence": lambda t: _positive(t["stability"]) ** 0.25 * _positive(t["spatial_coherence"]),
    # the coherence (a modularity) scaled by the share of cell pairs in different domains,
    # 1 - sum of squared domain shares: divided by it (the assortativity coefficient, 1 for
    # a perfect partition into any number of domains) it favours fewer domains, multiplied
    # by its square root more
    "sqrt(stability x agreement) x assortativity": lambda t: np.sqrt(_positive(t["stability"])
                                                                     * _positive(t["agreement"].fillna(1.0)))
                                                             * _positive(t["spatial_coherence"])
                                                             / (1 - t["squared_shares"]).clip(lower=1e-9),
    "sqrt(stability x agreement) x coherence x sqrt(1 - squared shares)":
        lambda t: np.sqrt(_positive(t["stability"]) * _positive(t["agreement"].fillna(1.0)))
        * _positive(t["spatial_coherence"]) * np.sqrt(1 - t["squared_shares"]),
}
#: The criterion each flavour's ``resolutions="auto"`` uses (``utag.tuning.SCORE_EXPONENTS``).
DEFAULT = {"utag": "sqrt(stability x agreement) x coherence", "multiscale": "stability^(1/4) x coherence"}


def _pick(table, values) -> int:
    """The best local maximum of ``values`` among rows with at least 2 domains, found as
    ``resolutions="auto"`` finds it."""
    values = np.asarray(values, dtype=float)
    return max(_peaks(table, values), key=lambda i: values[i])


def datasets(kinds):
    return labelled_datasets(kinds, synthetic_seeds=(0, 1, 2), synthetic_domains=(3, 5, 8),
                             synthetic_layouts=("voronoi", "layers", "islands"), pooled_spleen=True)


def score(dataset, flavor: str) -> list[dict]:
    """One row per sweep seed: the ARI each criterion picks and its gap to the best."""
    result = utag(dataset.adata, slide_key=dataset.slide_key, max_dist=dataset.max_dist, clustering_method="leiden",
                  resolutions=[0.1], flavor=flavor, progress=False)
    truth = dataset.truth()
    scored = scored_cells(truth)
    rows = []
    for seed in SWEEP_SEEDS:
        started = time.perf_counter()
        table = resolution_sweep(result, n_runs=5, random_state=seed, progress=False)
        seconds = time.perf_counter() - started
        labels = result.uns["utag_resolution_sweep"]["labels"]
        ari = np.array([adjusted_rand_score(truth[scored], labelling[scored]) for labelling in labels])
        table = table.assign(squared_shares=[((np.bincount(labelling) / len(labelling)) ** 2).sum()
                                             for labelling in labels])
        best = int(ari.argmax())
        row = {"dataset": dataset.name, "flavor": flavor, "sweep seeds": f"{seed}-{seed + 4}",
               "cells": f"{dataset.adata.n_obs:,}", "true domains": len(set(truth[scored])),
               "best ARI (resolution, domains)": f"{ari[best]:.3f} ({table['resolution'][best]:g}, "
                                                  f"{table['n_domains'][best]})"}
        for name, criterion in CRITERIA.items():
            chosen = _pick(table, criterion(table))
            if name == DEFAULT[flavor]:  # what resolutions="auto" picks: the table's own score
                assert chosen == _pick(table, table["score"]), "the sweep's score is not the flavour's criterion"
            row[name] = f"{ari[chosen]:.3f} ({table['resolution'][chosen]:g}, {table['n_domains'][chosen]})"
            row[f"gap: {name}"] = float(ari[best] - ari[chosen])
        if flavor == "utag" and seed == SWEEP_SEEDS[0]:
            # the number of domains given: Leiden through n_domains against k-means with that k
            n_true = len(set(truth[scored]))
            _, given = resolution_for_n_domains(result, n_true)
            kmeans = KMeans(n_true, random_state=0, n_init="auto").fit_predict(result.obsm["X_pca"])
            shares = np.bincount(given) / len(given)
            row["n_domains=K: ARI (smallest share)"] = (f"{adjusted_rand_score(truth[scored], given[scored]):.3f} "
                                                        f"({shares.min():.1%})")
            row["k-means, k=K"] = f"{adjusted_rand_score(truth[scored], kmeans[scored]):.3f}"
        row["sweep s"] = f"{seconds:.1f}"
        rows.append(row)
    return rows


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
        for flavor in FLAVORS:
            rows += score(dataset, flavor)
            print(markdown(rows[-2:]).split("\n", 2)[2], flush=True)
    groups = {"every dataset": lambda name: True,
              "real tissue": lambda name: not name.startswith("synthetic"),
              "synthetic Voronoi": lambda name: name.startswith("synthetic K="),
              "synthetic layers and islands": lambda name: name.startswith(("synthetic layers", "synthetic islands"))}
    first = f"{SWEEP_SEEDS[0]}-{SWEEP_SEEDS[0] + 4}"
    sections = []
    for flavor in FLAVORS:
        mine = [row for row in rows if row["flavor"] == flavor]
        shown = [{k: v for k, v in row.items() if not k.startswith("gap") and k not in ("flavor", "sweep seeds")}
                 for row in mine if row["sweep seeds"] == first]
        summary = []
        for group, member in groups.items():
            for name in CRITERIA:
                by_seed = [np.array([row[f"gap: {name}"] for row in mine
                                     if member(row["dataset"]) and row["sweep seeds"] == seeds])
                           for seeds in dict.fromkeys(row["sweep seeds"] for row in mine)]
                gaps = np.concatenate(by_seed)
                if len(gaps):
                    within = " + ".join(str(int((g <= 0.05).sum())) for g in by_seed)
                    summary.append({"datasets": group,
                                    "criterion": name + (" (default)" if name == DEFAULT[flavor] else ""),
                                    "within 0.05 of the best (first + second runs)":
                                        f"{within} of {' + '.join(str(len(g)) for g in by_seed)}",
                                    "mean gap": float(gaps.mean()), "largest gap": float(gaps.max())})
        sections.append(f"### `flavor=\"{flavor}\"`\n\nARI of the resolution each criterion picks (resolution, "
                        f"domains), sweep runs with seeds {first}:\n\n" + markdown(shown)
                        + "\n\nGaps to the best resolution in hindsight, over both sets of sweep runs (seeds "
                        + " and ".join(f"{s}-{s + 4}" for s in SWEEP_SEEDS) + "):\n\n" + markdown(summary))
    publish(args.out, "resolution.py", "\n\n".join(sections))


if __name__ == "__main__":
    main()
