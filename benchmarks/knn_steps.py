"""The steps of the kNN graph stage and of the soft assignments, with 1 and 2 threads.

Usage (from the repository root, with utag installed; nothing else running)::

    python benchmarks/knn_steps.py --out docs/generated/knn_steps.md    # 1M cells, 150 slides
    python benchmarks/knn_steps.py --cells 2e5 --slides 30                # quick

On a synthetic tissue (40 markers, ``max_dist=20``, as ``benchmarks/workers.py``) the
message-passed features go through the steps ``utag()`` takes after the PCA: the kNN
search (``utag.embedding.nearest_neighbors``: exact where the KD-tree is quick, two HNSW
indices otherwise, :func:`utag.embedding.exact_search`), the UMAP weights of each cell's
neighbours (``membership_strengths``), their fuzzy union into a symmetric graph
(``_fuzzy_union``: a transpose of the edges, then the rows), and the soft assignments of
three labellings (``feature_scale`` once, then ``soft_assignments`` for 4, 6 and 12
random domains: the time does not depend on where the domains are). Every step runs with
``n_jobs`` 1 and 2 after a warm-up on a small tissue that compiles the numba code; the
script checks that both give the same arrays.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from labelled import markdown, publish
from measure import provenance

from utag.clustering import feature_scale, soft_assignments
from utag.datasets import synthetic_tissue
from utag.embedding import _fuzzy_union, membership_strengths, nearest_neighbors
from utag.message_passing import pass_messages

N_NEIGHBORS = 15
DOMAINS = (4, 6, 12)


def steps(features: np.ndarray, n_jobs: int) -> tuple[dict[str, float], list[np.ndarray]]:
    """Seconds per step and the arrays each step returned."""
    seconds, outputs = {}, []

    def timed(name, function, *args):
        started = time.perf_counter()
        result = function(*args)
        seconds[name] = time.perf_counter() - started
        outputs.extend(result if isinstance(result, tuple) else [result])
        return result

    indices, distances = timed("kNN search", nearest_neighbors, features, N_NEIGHBORS, "auto", 0, n_jobs)
    weights = timed("UMAP weights", membership_strengths, distances, n_jobs)
    timed("fuzzy union", _fuzzy_union, np.ascontiguousarray(indices[:, 1:]), weights, n_jobs)
    rng = np.random.default_rng(0)
    labellings = [rng.integers(0, k, len(features)) for k in DOMAINS]
    scale = timed("feature mean and spread", feature_scale, features, n_jobs)
    timed(f"soft assignments, {len(DOMAINS)} labellings",
          lambda: tuple(soft_assignments(features, labels, n_jobs, scale) for labels in labellings))
    return seconds, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=float, default=1e6)
    parser.add_argument("--slides", type=int, default=150)
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args()

    def features_of(tissue):
        aggregated, _, _ = pass_messages(np.asarray(tissue.obsm["spatial"]), np.asarray(tissue.X),
                                         tissue.obs["roi"].cat.codes.to_numpy(), 20.0)
        return aggregated

    warm = features_of(synthetic_tissue(n_cells=6_000, n_slides=2, random_state=1))
    for n_jobs in (1, 2):
        steps(warm, n_jobs)
    features = features_of(synthetic_tissue(n_cells=int(args.cells), n_slides=args.slides, random_state=0))
    (one, first), (two, second) = steps(features, 1), steps(features, 2)
    same = all(np.array_equal(a, b) for a, b in zip(first, second))
    rows = [{"step": name, "1 thread (s)": one[name], "2 threads (s)": two[name],
             "speed-up": one[name] / max(two[name], 1e-9)} for name in one]
    text = (f"{int(args.cells):,} cells, {args.slides} slides, 40 markers, `max_dist=20`; k = {N_NEIGHBORS}. "
            f"Same arrays with 1 and 2 threads: {'yes' if same else 'NO'}.\n\n"
            + markdown(rows, digits=2) + "\n\n" + provenance())
    publish(args.out, "knn_steps.py", text, None if same else "the steps gave different arrays with 1 and 2 threads")


if __name__ == "__main__":
    main()
