"""Does the suggested ``max_dist`` lead to good domains?

Usage (from the repository root, with utag installed)::

    python benchmarks/radius.py --out docs/generated/radius.md
    python benchmarks/radius.py --kinds subset synthetic        # without shared/

For every labelled dataset (the bundled spleen subset, each full spleen section and each
MERFISH slide from ``shared/``, synthetic tissues with 3, 5 and 8 domains), ``utag()`` with
Leiden at radii of 2, 3, 4, 6, 8 and 12 median nearest-cell distances, each followed by
``resolutions="auto"``'s sweep. Per dataset: the best (radius, resolution) pair in
hindsight; the ARI at the suggested radius (:func:`utag.tuning.suggest_max_dist`, 6 such
distances) with ``resolutions="auto"`` and at its best resolution; the same at the radius
``max_dist_report`` suggested before issue 14 (the smallest candidate without a flag).
"""
from __future__ import annotations

import labelled
import numpy as np
from labelled import labelled_datasets, markdown, publish
from sklearn.metrics import adjusted_rand_score

from utag import utag
from utag.tuning import DOMAIN_RADIUS_FACTOR, max_dist_report, resolution_sweep, suggest_max_dist

MULTIPLES = (2, 3, 4, 6, 8, 12)


def sweep_at(dataset, max_dist: float) -> tuple[float, float]:
    """(ARI of the resolution ``"auto"`` picks, best ARI over the sweep's resolutions)."""
    result = utag(dataset.adata, slide_key=dataset.slide_key, max_dist=max_dist, clustering_method="leiden",
                  resolutions=[0.1], progress=False)
    table = resolution_sweep(result, n_runs=5, progress=False)
    truth = dataset.truth()
    scored = truth != "NoAnnotation"
    labellings = result.uns["utag_resolution_sweep"]["labels"]
    ari = [adjusted_rand_score(truth[scored], labels[scored]) for labels in labellings]
    chosen = int(np.flatnonzero(table["rank"].fillna(0).to_numpy() == 1)[0])
    return float(ari[chosen]), float(max(ari))


def score(dataset) -> dict:
    suggested = suggest_max_dist(dataset.adata, dataset.slide_key)
    nearest = suggested / DOMAIN_RADIUS_FACTOR
    radii = {m: float(f"{m * nearest:.2g}") for m in MULTIPLES}
    radii[DOMAIN_RADIUS_FACTOR] = suggested
    runs = {m: sweep_at(dataset, r) for m, r in radii.items()}
    report = max_dist_report(dataset.adata, max_dists=[m * nearest for m in (1, 1.5, 2, 3, 5, 8, 12)],
                             slide_key=dataset.slide_key)
    pooled = report[report["slide"] == report["slide"].iloc[-1]]
    clean = pooled[pooled["flags"] == ""]
    previous = float(clean["max_dist"].iloc[0]) if len(clean) else float(pooled["max_dist"].iloc[-1])
    previous_auto, _ = sweep_at(dataset, previous)
    best_multiple = max(runs, key=lambda m: runs[m][1])
    best = runs[best_multiple][1]
    row = {"dataset": dataset.name, "nearest cell": f"{nearest:.3g}",
           "best pair: ARI (radius)": f"{best:.3f} ({radii[best_multiple]:g})"}
    row.update({f"{m:g}x: auto / best": f"{runs[m][0]:.3f} / {runs[m][1]:.3f}" for m in MULTIPLES})
    row["suggested radius + auto"] = f"{runs[DOMAIN_RADIUS_FACTOR][0]:.3f} ({suggested:g})"
    row["gap"] = best - runs[DOMAIN_RADIUS_FACTOR][0]
    row["previous suggestion + auto"] = f"{previous_auto:.3f} ({previous:g})"
    return row


def main() -> None:
    parser = labelled.parser(__doc__)
    args = parser.parse_args()
    rows = []
    for dataset in labelled_datasets(args.kinds, synthetic_seeds=(0,), synthetic_domains=(3, 5, 8)):
        rows.append(score(dataset))
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    gaps = np.array([row["gap"] for row in rows])
    text = (markdown(rows) + f"\n\nSuggested radius + `resolutions=\"auto\"` within 0.1 ARI of the best pair: "
            f"{(gaps <= 0.1).sum()} of {len(gaps)} datasets; mean gap {gaps.mean():.3f}.")
    publish(args.out, "radius.py", text)


if __name__ == "__main__":
    main()
