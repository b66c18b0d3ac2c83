"""PARC's ``small_pop``: the original utag()'s 1000 against the ``parc`` package's 10.

Usage (from the repository root, with utag installed)::

    python benchmarks/parc_small_pop.py --out docs/generated/parc_small_pop.md

The original ``utag()`` calls ``PARC(X_pca, neighbor_graph=..., resolution_parameter=r,
random_seed=1, small_pop=1000)``; utag passes ``small_pop=1000`` by default too. For every
labelled dataset, ``utag(..., clustering_method="parc")`` at the original's resolutions
0.05, 0.1, 0.3 and 1 runs with ``parc_kwargs={"small_pop": 10}`` and with the default; the
table gives the ARI against the truth and the number of domains of each, and the mean ARI
per resolution over the datasets.
"""
from __future__ import annotations

import logging

import labelled
import numpy as np
from labelled import labelled_datasets, markdown, publish
from measure import scored_cells
from sklearn.metrics import adjusted_rand_score

from utag import utag

RESOLUTIONS = [0.05, 0.1, 0.3, 1.0]
SMALL_POPS = {"small_pop=10 (the parc package's default)": 10, "small_pop=1000 (the original's, utag's default)": None}


def main() -> None:
    args = labelled.parser(__doc__).parse_args()
    logging.getLogger("utag").setLevel(logging.ERROR)
    rows = []
    for dataset in labelled_datasets(args.kinds):
        truth = dataset.truth()
        scored = scored_cells(truth)
        for setting, small_pop in SMALL_POPS.items():
            result = utag(dataset.adata, slide_key=dataset.slide_key, max_dist=dataset.max_dist,
                          clustering_method="parc", resolutions=RESOLUTIONS, progress=False,
                          parc_kwargs=None if small_pop is None else {"small_pop": small_pop})
            row = {"dataset": dataset.name, "PARC": setting}
            for resolution, key in zip(RESOLUTIONS, result.uns["utag"]["label_keys"]):
                labels = result.obs[key].to_numpy()
                ari = adjusted_rand_score(truth[scored], labels[scored])
                row[f"ARI (domains) at {resolution:g}"] = f"{ari:.3f} ({len(np.unique(labels))})"
                row[resolution] = ari
            rows.append(row)
        print(markdown([{k: v for k, v in r.items() if isinstance(k, str)} for r in rows[-2:]]), flush=True)
    means = [{"dataset": "**mean ARI**", "PARC": setting,
              **{f"ARI (domains) at {r:g}": f"{np.mean([row[r] for row in rows if row['PARC'] == setting]):.3f}"
                 for r in RESOLUTIONS}} for setting in SMALL_POPS]
    table = [{k: v for k, v in r.items() if isinstance(k, str)} for r in rows] + means
    publish(args.out, "parc_small_pop.py", markdown(table))


if __name__ == "__main__":
    main()
