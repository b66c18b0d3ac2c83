"""Labels of seeded ``utag()`` runs, stored so that changes to the method can be checked
against them (``test_reference_labels.py``): the published flavour must keep giving them.

Written by ``python -m utag.tests.reference_labels`` (from the repository root) into
``utag/tests/data/reference_labels.npz``; rerun it only when a change of the default
results is intended, and say so in the commit.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

PATH = Path(__file__).resolve().parent / "data" / "reference_labels.npz"

#: The seeded runs: a name and ``utag()``'s keyword arguments (besides the tissue).
RUNS = {
    "radius": {"max_dist": 20},
    "radius, sum": {"max_dist": 15, "normalization_mode": "sum"},
}
METHODS = ["leiden", "parc", "kmeans"]
RESOLUTIONS = [0.1, 0.3]


def tissue():
    """The tissue of every stored run: 3,000 synthetic cells on 3 slides."""
    from utag.datasets import synthetic_tissue

    return synthetic_tissue(n_cells=3_000, n_slides=3, n_markers=12, n_domains=3, n_cell_types=5, random_state=7)


def labels(options: dict) -> dict[str, np.ndarray]:
    """Label codes per key of the run with ``options``."""
    from utag import utag

    result = utag(tissue(), slide_key="roi", clustering_method=METHODS, resolutions=RESOLUTIONS, random_state=0,
                  progress=False, **options)
    return {key: result.obs[key].cat.codes.to_numpy() for key in result.uns["utag"]["label_keys"]}


def main() -> None:
    # the commit, and "+changes" when the working tree differs from it (labels of uncommitted code)
    commit = subprocess.run(["git", "describe", "--always", "--dirty=+changes", "--exclude=*"], capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parent).stdout.strip()
    stored = {f"{run}|{key}": codes.astype(np.int16) for run, options in RUNS.items()
              for key, codes in labels(options).items()}
    np.savez_compressed(PATH, commit=np.array(commit), **stored)
    print(f"wrote {len(stored)} labellings to {PATH} (code at {commit})")


if __name__ == "__main__":
    main()
