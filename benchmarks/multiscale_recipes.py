"""Which neighbourhood representation should ``flavor="multiscale"`` use?

Usage (from the repository root, with utag installed)::

    python benchmarks/multiscale_recipes.py --out docs/generated/multiscale_recipes.md
    python benchmarks/multiscale_recipes.py --kinds subset spleen merfish synthetic

Each recipe turns a slide's features into a neighbourhood representation at radius ``r``;
the representation then goes through utag's own PCA, kNN graph and Leiden (``utag()`` on
the precomputed features with a radius that connects no two cells). Recipes:

* ``utag``: the published mean within ``r`` (``flavor="utag"``);
* ``multiscale``: ``flavor="multiscale"`` as shipped (Gaussian means at r/4, r/2 and r,
  the widest as 4 passes of width r/2, each block scaled to unit total variance);
* ``exact gaussians``: the same widths, each an exact Gaussian on its own graph of radius
  2.5 times the width (a graph of radius 2.5 r for the widest);
* ``unscaled``: the multiscale blocks without the per-block scaling;
* ``means r/2, r, 2r``: plain means at three radii, each block scaled;
* ``self + mean``: the cell's own features (weight sqrt(0.2)) beside the mean within r
  (weight sqrt(0.8)), BANKSY's weighting, each block scaled first;
* ``narrow + 1 and 2 hops``: a Gaussian of width r/4, the mean within r and the mean of
  those means, each block scaled;
* ``exact gaussians + gradient``: the exact Gaussians and, as a fourth block, the size of
  each feature's gradient across the neighbourhood: the magnitude of the first azimuthal
  harmonic of the neighbours' deviations from their Gaussian mean (width r/2), the idea of
  BANKSY's azimuthal Gabor filter; each block scaled;
* ``multiscale + gradient``: the shipped kernels (as in ``unscaled``) and the same gradient
  block, each block scaled.

Per dataset and recipe: the best ARI over Leiden resolutions 0.02-0.5 at 0.5, 1 and 2
times the dataset's usual radius, the best of the three and their range. Last, the mean
over datasets. Default datasets: the bundled spleen subset, the MERFISH slides from
``shared/`` and synthetic tissues of the three layouts (the full spleen sections take
about 20 minutes more: ``--kinds subset spleen merfish synthetic``).
"""
from __future__ import annotations

import anndata
import labelled
import numpy as np
import scipy.sparse as sp
from labelled import labelled_datasets, markdown, publish
from measure import scored_cells
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import radius_neighbors_graph

from utag import utag

RESOLUTIONS = [0.02, 0.05, 0.1, 0.2, 0.3, 0.5]
MULTIPLES = (0.5, 1.0, 2.0)


def _kernel(coords, radius: float, width: float | None = None) -> sp.csr_matrix:
    """Row-normalised weights on the cells within ``radius`` (the cell itself included):
    Gaussian of ``width``, or uniform (the plain mean) without one."""
    graph = radius_neighbors_graph(coords, radius, mode="distance", include_self=False).tocsr()
    graph.data = np.ones_like(graph.data) if width is None else np.exp(-graph.data**2 / (2 * width**2))
    graph = graph + sp.identity(len(coords), format="csr")
    return sp.csr_matrix(sp.diags(1 / np.asarray(graph.sum(axis=1)).ravel()) @ graph)


def _gradient(coords, x, radius: float, width: float) -> np.ndarray:
    """Per cell and feature, ``|sum_j w_ij (x_j - m_i) exp(i theta_ij)| / sum_j w_ij`` over the
    neighbours ``j`` within ``radius`` (Gaussian weights ``w`` of ``width``, ``theta`` the
    direction from the cell to the neighbour, ``m`` the weighted mean): how much the
    features change from one side of the neighbourhood to the other."""
    edges = radius_neighbors_graph(coords, radius, mode="distance", include_self=False).tocoo()
    weight = np.exp(-edges.data**2 / (2 * width**2))
    offset = coords[edges.col] - coords[edges.row]
    angle = np.arctan2(offset[:, 1], offset[:, 0])
    shape = (len(coords), len(coords))
    total = np.bincount(edges.row, weights=weight, minlength=len(coords)) + np.finfo(float).tiny
    mean = sp.csr_matrix((weight, (edges.row, edges.col)), shape=shape) @ x / total[:, None]
    parts = []
    for harmonic in (np.cos(angle), np.sin(angle)):
        matrix = sp.csr_matrix((weight * harmonic, (edges.row, edges.col)), shape=shape)
        parts.append(matrix @ x - np.asarray(matrix.sum(axis=1)) * mean)
    return np.hypot(*parts) / total[:, None]


def _scaled(blocks: list[np.ndarray]) -> np.ndarray:
    return np.hstack([block / np.sqrt(block.var(axis=0).sum() or 1.0) for block in blocks])


def _blocks(recipe: str, coords: np.ndarray, x: np.ndarray, r: float) -> list[np.ndarray]:
    if recipe in ("exact gaussians + gradient", "multiscale + gradient"):
        kernels = "exact gaussians" if recipe.startswith("exact") else "unscaled"
        return _blocks(kernels, coords, x, r) + [_gradient(coords, x, 1.25 * r, r / 2)]
    if recipe in ("exact gaussians", "unscaled"):
        if recipe == "unscaled":  # the shipped passes, without scaling
            middle = _kernel(coords, 1.25 * r, r / 2)
            wide = middle @ (middle @ (middle @ (middle @ x)))
            return [_kernel(coords, 0.625 * r, r / 4) @ x, middle @ x, wide]
        return [_kernel(coords, 2.5 * w, w) @ x for w in (r / 4, r / 2, r)]
    if recipe == "means r/2, r, 2r":
        return [_kernel(coords, radius) @ x for radius in (r / 2, r, 2 * r)]
    if recipe == "self + mean":
        return [x, _kernel(coords, r) @ x]
    if recipe == "narrow + 1 and 2 hops":
        mean = _kernel(coords, r)
        return [_kernel(coords, 0.625 * r, r / 4) @ x, mean @ x, mean @ (mean @ x)]
    raise KeyError(recipe)


def representation(recipe: str, dataset, r: float) -> np.ndarray:
    adata = dataset.adata
    x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X, dtype=np.float64)
    codes = adata.obs[dataset.slide_key].astype("category").cat.codes.to_numpy()
    blocks = None
    for slide in np.unique(codes):
        cells = np.flatnonzero(codes == slide)
        parts = _blocks(recipe, adata.obsm["spatial"][cells], x[cells], r)
        if blocks is None:
            blocks = [np.zeros((adata.n_obs, part.shape[1])) for part in parts]
        for block, part in zip(blocks, parts):
            block[cells] = part
    if recipe == "unscaled":
        return np.hstack(blocks)
    if recipe == "self + mean":
        first, second = _scaled(blocks[:1]), _scaled(blocks[1:])
        return np.hstack([np.sqrt(0.2) * first, np.sqrt(0.8) * second])
    return _scaled(blocks)


def best_ari(recipe: str, dataset, r: float) -> float:
    adata = dataset.adata
    common = dict(slide_key=dataset.slide_key, clustering_method="leiden", resolutions=RESOLUTIONS, progress=False)
    if recipe in ("utag", "multiscale"):
        result = utag(adata, max_dist=r, flavor=recipe, **common)
    else:
        features = anndata.AnnData(representation(recipe, dataset, r).astype(np.float32),
                                   obs=adata.obs[[dataset.slide_key]].copy())
        features.obsm["spatial"] = adata.obsm["spatial"]
        result = utag(features, max_dist=1e-9, **common)  # no two cells connected: X as given
    truth = dataset.truth()
    scored = scored_cells(truth)
    return max(adjusted_rand_score(truth[scored], result.obs[key].to_numpy()[scored])
               for key in result.obs if key.startswith("UTAG Label_leiden_"))


RECIPES = ("utag", "multiscale", "exact gaussians", "unscaled", "means r/2, r, 2r", "self + mean",
           "narrow + 1 and 2 hops", "exact gaussians + gradient", "multiscale + gradient")


def main() -> None:
    parser = labelled.parser(__doc__)
    parser.set_defaults(kinds=["subset", "merfish", "synthetic"])
    args = parser.parse_args()
    rows = []
    for dataset in labelled_datasets(args.kinds, synthetic_seeds=(0,),
                                     synthetic_layouts=("voronoi", "layers", "islands")):
        for recipe in RECIPES:
            scores = [best_ari(recipe, dataset, m * dataset.max_dist) for m in MULTIPLES]
            rows.append({"dataset": dataset.name, "recipe": recipe,
                         **{f"ARI at {m:g} r": score for m, score in zip(MULTIPLES, scores)},
                         "best": max(scores), "range": max(scores) - min(scores)})
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    means = [{"dataset": "mean", "recipe": recipe,
              **{key: float(np.mean([row[key] for row in rows if row["recipe"] == recipe]))
                 for key in rows[0] if key not in ("dataset", "recipe")}} for recipe in RECIPES]
    text = (markdown(rows + means) + "\n\n`r`: the dataset's usual radius (spleen 200 px for the subset, 150 px "
            "for the sections; MERFISH 75 um; synthetic 20 um). Best ARI over Leiden resolutions "
            f"{', '.join(map(str, RESOLUTIONS))}.")
    publish(args.out, "multiscale_recipes.py", text)


if __name__ == "__main__":
    main()
