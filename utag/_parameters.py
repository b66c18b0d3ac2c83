"""The parameters of :func:`utag.utag`, checked once before any work, with errors that
name the parameter and the fix; and the warnings for parameters that misfit the data (a
radius in other units than the coordinates, a spatial graph over most of a slide, a slide
key that splits the cells into slides of a few cells each).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from anndata import AnnData

from . import _validation as check
from . import multiscale
from .clustering import check_backend_kwargs, min_domain_cells
from .embedding import check_knn_method, representation
from .graph import SPATIAL_GRAPHS, estimate_pairs, mean_neighbours
from .sketch import sketch_size_for
from .tuning import DOMAIN_RADIUS_FACTOR, domain_radius, suggest_max_dist

logger = logging.getLogger(__name__)


#: A sketch of fewer cells than this is warned about: small domains may get too few of them.
SMALL_SKETCH = 5_000


@dataclass(frozen=True)
class Parameters:
    """``utag()``'s parameters, checked once, in the form the steps take them."""

    methods: tuple[str, ...]
    resolutions: list[float]
    auto: bool  # resolutions="auto"
    n_domains: int | None
    normalization_mode: str  # "l1_norm" (the mean) or "sum"
    max_dist: float
    max_dist_chosen: bool  # max_dist="auto": suggest_max_dist chose it
    n_neighbors: int
    knn_method: str
    n_comps: int
    pca_kwargs: dict  # without n_comps
    use_rep: str
    min_cells: int
    backend_kwargs: dict  # per method
    spatial_graph: str
    n_spatial_neighbors: int
    flavor: str
    kernel_widths: tuple[float, ...] | None  # flavor="multiscale" only
    sketch_size: int | None  # cells to cluster; None: every cell

    @property
    def graph_radius(self) -> float:
        """The radius of the spatial graph message passing builds (wider than ``max_dist``
        for the multiscale flavour's kernels)."""
        return multiscale.graph_radius(self.max_dist, self.kernel_widths)

    @property
    def pca_uncentred(self) -> bool:
        """Whether scanpy's PCA will skip centring, as ``scanpy.pp.pca`` decides: a falsy
        ``zero_center`` in ``pca_kwargs``, unless ``chunked`` (which always centres)."""
        return not self.pca_kwargs.get("zero_center", True) and not self.pca_kwargs.get("chunked", False)


def check_parameters(adata: AnnData, slide_key, n_features: int, *, max_dist, pca_kwargs, apply_clustering,
                     clustering_method, resolutions, leiden_kwargs, parc_kwargs, kmeans_kwargs,
                     n_neighbors, knn_method, n_domains, use_rep, min_domain_size, spatial_graph,
                     n_spatial_neighbors, flavor, kernel_widths, normalization_mode, sketch_size,
                     apply_umap, umap_kwargs=None) -> Parameters:
    """Every parameter checked before any work, with errors that name it."""
    methods = check.clustering_methods(clustering_method) if apply_clustering else ()
    auto = bool(apply_clustering) and check.is_auto(resolutions)
    flavor = check.choice("flavor", flavor, multiscale.FLAVORS)
    spatial_graph = check.choice("spatial_graph", spatial_graph, SPATIAL_GRAPHS)
    n_domains = _checked_n_domains(n_domains, adata.n_obs, methods)
    if not apply_clustering or auto or (n_domains is not None and resolutions is None):
        resolutions = []
    else:
        resolutions = check.resolution_list(resolutions)
    max_dist_chosen = check.is_auto(max_dist)
    max_dist = _checked_max_dist(max_dist, adata, slide_key)
    n_neighbors = check.as_int("n_neighbors", n_neighbors, minimum=2)
    if n_neighbors > max(15, adata.n_obs - 1):  # the default, 15, is capped quietly for tiny inputs
        raise ValueError(f"`n_neighbors={n_neighbors}` is more than the {adata.n_obs - 1} other cells: every cell "
                         "would be every other's neighbour. Typical values are 10-30 (default 15).")
    knn_method = check_knn_method(knn_method)
    n_spatial_neighbors = check.as_int("n_spatial_neighbors", n_spatial_neighbors)
    kernel_widths = multiscale.flavor_widths(flavor, max_dist, kernel_widths)
    if kernel_widths is not None:
        if normalization_mode != "l1_norm":
            raise ValueError("flavor='multiscale' takes weighted means; `normalization_mode` must be 'l1_norm' "
                             f"(the default), got {normalization_mode!r}.")
        n_features *= len(kernel_widths)
    sketched = _checked_sketch_size(sketch_size, adata.n_obs, apply_clustering, apply_umap, n_domains)
    leiden_kwargs, parc_kwargs, kmeans_kwargs = check_backend_kwargs(adata.n_obs, leiden_kwargs, parc_kwargs,
                                                                     kmeans_kwargs)
    pca_kwargs = _checked_pca_kwargs(pca_kwargs)
    check.kwargs_dict("umap_kwargs", umap_kwargs)  # recorded in uns['utag'] whether or not UMAP runs
    if apply_umap:
        _check_umap_kwargs(umap_kwargs)
    n_comps = check.as_int("pca_kwargs['n_comps']", pca_kwargs.pop("n_comps", 10))
    min_cells = _checked_min_cells(min_domain_size, adata.n_obs, bool(methods))
    return Parameters(
        methods=methods, resolutions=resolutions, auto=auto, n_domains=n_domains,
        normalization_mode=normalization_mode, max_dist=max_dist, max_dist_chosen=max_dist_chosen,
        n_neighbors=n_neighbors, knn_method=knn_method, n_comps=n_comps,
        pca_kwargs=pca_kwargs, use_rep=representation(use_rep, n_features), min_cells=min_cells,
        backend_kwargs={"leiden": leiden_kwargs, "parc": parc_kwargs, "kmeans": kmeans_kwargs},  # checked copies
        spatial_graph=spatial_graph, n_spatial_neighbors=n_spatial_neighbors, flavor=flavor,
        kernel_widths=kernel_widths, sketch_size=sketched,
    )


def _checked_n_domains(n_domains, n_cells: int, methods: tuple) -> int | None:
    """``n_domains`` as an int (or None), refused above the number of cells and with PARC."""
    if n_domains is None:
        return None
    n_domains = check.as_int("n_domains", n_domains, minimum=1)
    if n_domains > n_cells:
        raise ValueError(f"`n_domains={n_domains}` is more than the {n_cells} cells; ask for at most "
                         f"{n_cells} domains.")
    if "parc" in methods:
        raise ValueError("`n_domains` works with clustering_method 'leiden' and 'kmeans'; PARC sets its own "
                         "number of clusters. Drop 'parc' or pass `resolutions` instead.")
    return n_domains


def _checked_max_dist(max_dist, adata: AnnData, slide_key) -> float:
    """``max_dist`` as a positive number; ``"auto"`` is :func:`suggest_max_dist`'s radius."""
    if check.is_auto(max_dist):
        max_dist = suggest_max_dist(adata, slide_key)
        logger.info("max_dist='auto': %g (%g times the median distance to the nearest cell)", max_dist,
                    DOMAIN_RADIUS_FACTOR)
    elif isinstance(max_dist, str):
        raise ValueError(f"`max_dist` must be a positive number (in the units of obsm['spatial']) or 'auto', "
                         f"got {max_dist!r}.")
    return check.check_positive("max_dist", max_dist)


def _checked_sketch_size(sketch_size, n_cells: int, apply_clustering: bool, apply_umap: bool,
                         n_domains: int | None) -> int | None:
    """The cells to cluster (None: every cell). ``sketch_size`` is checked whether or not it
    is used; UMAP needs every cell's kNN graph, so ``"auto"`` does not sketch with it."""
    sketched = sketch_size_for(sketch_size, n_cells)
    if not apply_clustering or (apply_umap and check.is_auto(sketch_size)):
        return None
    if sketched and apply_umap:
        raise ValueError(f"apply_umap=True needs the kNN graph of every cell, but {n_cells} cells are sketched "
                         f"(sketch_size={sketch_size!r}); pass sketch_size=None for UMAP.")
    if sketched and n_domains is not None and n_domains > sketched:
        raise ValueError(f"`n_domains={n_domains}` is more than the {sketched} cells of the sketch; ask for fewer "
                         "domains or pass a larger `sketch_size` (None: every cell).")
    if sketched and sketched < min(SMALL_SKETCH, n_cells):
        logger.warning("sketch_size=%r clusters %d cells: a domain of a few percent of the tissue is seen in only a "
                       "few dozen of them and may be lost (docs/performance.md measures sketches of 20,000 cells and "
                       "more); sketch_size=None clusters every cell.", sketch_size, sketched)
    if sketched and check.is_auto(sketch_size):
        logger.info("%d cells: clustering a sketch of %d of them and assigning the others by their nearest "
                    "sketched cells (sketch_size='auto'); pass sketch_size=None to cluster every cell",
                    n_cells, sketched)
    return sketched


def _checked_min_cells(min_domain_size, n_cells: int, clustering: bool) -> int:
    """``min_domain_size`` in cells, refused above the number of cells (every labelling
    would be one domain), with a warning above a third of them (at most two domains can
    be that large)."""
    min_cells = min_domain_cells(min_domain_size, n_cells)
    if min_domain_size is None or not clustering:
        return min_cells
    if min_cells > n_cells:
        raise ValueError(f"`min_domain_size={min_domain_size!r}` is more than the {n_cells} cells: every domain "
                         "would be merged into one. Pass a number of cells below that, or a fraction of the cells "
                         "(e.g. 0.01), or 0 to keep every domain.")
    if 3 * min_cells > n_cells:
        logger.warning("min_domain_size=%r is %d cells, more than a third of the %d cells: at most two domains can "
                       "be that large, and smaller ones are merged into them.", min_domain_size, min_cells, n_cells)
    return min_cells


def _checked_pca_kwargs(pca_kwargs) -> dict:
    """A copy of ``pca_kwargs``, its keys checked against ``scanpy.pp.pca``'s (which runs
    the PCA when any but ``n_comps`` is given), before any work."""
    pca_kwargs = check.kwargs_dict("pca_kwargs", pca_kwargs)
    if set(pca_kwargs) - {"n_comps"}:
        import inspect

        import scanpy as sc

        known = [name for name in inspect.signature(sc.pp.pca).parameters
                 if name not in ("data", "copy", *PCA_KWARGS_UTAG_SETS)]
        check.known_keywords("pca_kwargs", pca_kwargs, known, "utag's PCA (scanpy.pp.pca)",
                             " (utag passes the message-passed features itself and reads obsm['X_pca']; choose "
                             "the features with `channels_to_use` or `filter_by_variance`)")
    return pca_kwargs


def _check_umap_kwargs(umap_kwargs) -> None:
    """``umap_kwargs`` checked against ``scanpy.tl.umap``'s keywords before any work."""
    if check.kwargs_dict("umap_kwargs", umap_kwargs):
        import inspect

        import scanpy as sc

        known = [name for name in inspect.signature(sc.tl.umap).parameters if name not in ("adata", "copy")]
        check.known_keywords("umap_kwargs", umap_kwargs, known, "scanpy.tl.umap")


#: ``scanpy.pp.pca`` keywords that choose the data or where the result goes, which utag does
#: itself: the features are the message-passed ones, the result goes to ``obsm['X_pca']``.
PCA_KWARGS_UTAG_SETS = ("layer", "key_added", "mask_var", "use_highly_variable", "return_info")


#: Cells per slide, on average, below which ``utag()`` asks whether ``slide_key`` names slides.
FEW_CELLS_PER_SLIDE = 10


def warn_if_slides_are_tiny(slide_key, n_slides: int, n_cells: int) -> None:
    """A warning when ``slide_key`` splits the cells into slides of a few cells each (a
    column of cell ids, say): no graph crosses slides, so such cells have no neighbours."""
    if n_slides > 1 and n_cells / n_slides < FEW_CELLS_PER_SLIDE:
        logger.warning("slide_key=%r splits %d cells into %d slides (%.1f cells each): no neighbourhood crosses a "
                       "slide, so cells keep almost only themselves. Is %r the column naming each cell's image?",
                       slide_key, n_cells, n_slides, n_cells / n_slides, slide_key)


def warn_if_spatial_graph_misfits(p: Parameters, n_edges: int, coords: np.ndarray, codes: np.ndarray) -> None:
    """Warnings for a spatial graph that links too few or too many cells: for the radius
    graph :func:`_warn_if_max_dist_misfits` (``n_edges``: its pairs; the multiscale
    flavour's graph is wider, so its pairs within ``max_dist`` are estimated), for the kNN
    graph when ``n_spatial_neighbors`` covers most of a slide."""
    if p.spatial_graph == "radius":
        pairs = n_edges if p.kernel_widths is None else estimate_pairs(coords, codes, p.max_dist)
        _warn_if_max_dist_misfits(pairs, coords, codes, p.max_dist, p.max_dist_chosen)
    elif p.spatial_graph == "knn":
        mean_slide = _mean_slide_size(codes)
        if _most_of_slide(p.n_spatial_neighbors, mean_slide):
            logger.warning("n_spatial_neighbors=%d links each cell to most of its slide (%.0f cells on average): "
                           "the neighbourhood means hardly differ, and the domains follow the slides. Domains need "
                           "a neighbourhood much smaller than a slide (the default is 6).",
                           p.n_spatial_neighbors, mean_slide)


#: Mean neighbours per cell (within ``max_dist``) below which ``utag()`` warns: at about the
#: distance to the nearest cell a cell has one neighbour or none, and the neighbourhood
#: means are little more than the cells themselves (``benchmarks/radius.py``: domains need
#: about six nearest-cell distances). And the share of its slide above which it warns.
FEW_NEIGHBOURS, MOST_OF_SLIDE = 2.0, 0.25


def _mean_slide_size(codes: np.ndarray) -> float:
    """The size of the slide a cell is on, on average over the cells."""
    return float(np.mean(np.bincount(codes)[codes]))


def _most_of_slide(neighbours: float, mean_slide: float) -> bool:
    """Whether ``neighbours`` per cell are :data:`MOST_OF_SLIDE` of slides of ``mean_slide``
    cells or more (on slides large enough for that to tell)."""
    return mean_slide > 1 / MOST_OF_SLIDE and neighbours >= MOST_OF_SLIDE * mean_slide


def _warn_if_max_dist_misfits(n_edges: float, coords: np.ndarray, codes: np.ndarray, max_dist: float,
                              chosen: bool = False) -> None:
    """A warning, with the radius domains need (:func:`utag.tuning.domain_radius`), when
    the radius graph gives a cell almost no neighbours or most of its slide: ``max_dist``
    and ``obsm['spatial']`` are then likely in different units. ``chosen``: ``max_dist``
    is the one ``max_dist="auto"`` chose (the tissue, not the units, is then the cause)."""
    n_cells = len(codes)
    mean_degree = mean_neighbours(n_edges, n_cells)
    mean_slide = _mean_slide_size(codes)
    few = mean_degree < min(FEW_NEIGHBOURS, mean_slide - 1)  # not where every cell already links every other
    most = _most_of_slide(mean_degree, mean_slide)
    if not (few or most):
        return
    what = ("almost none: the neighbourhood means are little more than the cells themselves" if few
            else "most of its slide: the neighbourhood means hardly differ")
    tissue = ("the cells lie in clumps far apart for their spacing within a clump" if few
              else "the slides hold few cells, or few distinct positions, for domains that wide")
    if chosen:
        logger.warning("max_dist=%g (%g median nearest-cell distances, max_dist='auto') gives a cell %.1f neighbours "
                       "on average (%s): %s. utag.tuning.max_dist_report compares radii.", max_dist,
                       DOMAIN_RADIUS_FACTOR, mean_degree, what, tissue)
        return
    radius = domain_radius(coords, codes)
    # the radius domains need is a hint only where it points away from the misfit: a larger
    # one for too few neighbours, a smaller one for most of the slide
    if radius is not None and (radius > max_dist if few else radius < max_dist):
        hint = f" About {radius:g} suits domains here (max_dist='auto');"
    else:
        hint = f" If they are, {tissue};"
    logger.warning("max_dist=%g gives a cell %.1f neighbours on average (%s). Are max_dist and obsm['spatial'] in "
                   "the same units?%s utag.tuning.max_dist_report compares radii.", max_dist, mean_degree, what, hint)
