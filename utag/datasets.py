"""Example data: a synthetic tissue with known domains, and a real CODEX subset."""
from __future__ import annotations

import numbers
from importlib.resources import as_file, files
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
from anndata import AnnData
from scipy.spatial import cKDTree

from . import _validation as check
from ._validation import as_int, check_positive

__all__ = ["synthetic_tissue", "codex_mouse_spleen"]

_SPLEEN_SUBSET = "codex_mouse_spleen_subset.h5ad"


def synthetic_tissue(
    n_cells: int = 20_000,
    n_slides: int = 2,
    n_markers: int = 40,
    n_domains: int = 5,
    n_cell_types: int = 10,
    cell_area: float = 150.0,
    domain_size: float = 250.0,
    concentration: float = 0.5,
    noise: float = 0.35,
    slide_key: str = "roi",
    random_state: int = 0,
    *,
    layout: str = "voronoi",
) -> AnnData:
    """An IMC-like tissue whose domains are known.

    Each slide is a square holding ``n_cells / n_slides`` cells at uniformly random
    positions (``cell_area`` um^2 per cell, 1 unit = 1 um). The square is split into
    Voronoi regions about ``domain_size`` um across, each belonging to one of
    ``n_domains`` domains (every domain appears on every slide). A domain is a mixture
    of cell types drawn from a Dirichlet distribution with the given ``concentration``
    (smaller: purer domains); a cell type expresses a few of the ``n_markers`` markers
    highly; each cell's intensities are its type's profile times log-normal ``noise``.
    Cell types overlap between domains, so a cell's own markers say little about its
    domain and its neighbourhood says much: the situation UTAG is made for.

    Parameters
    ----------
    n_cells
        Number of cells over all slides (default ``20_000``), split as evenly as possible.
    n_slides
        Number of slides (default ``2``; at most ``n_cells``). Each has its own square,
        its coordinates starting at 0, so slides overlap in space: pass ``slide_key`` to
        ``utag()``.
    n_markers
        Number of markers, the columns of ``X`` (default ``40``).
    n_domains
        Number of domains (default ``5``).
    n_cell_types
        Number of cell types (default ``10``; at least 2). Each expresses
        ``n_markers // n_cell_types`` markers highly (at least 2, at most all).
    cell_area
        Area per cell in um^2 (default ``150.0``); sets the side of each slide's square.
    domain_size
        Typical width of a domain region in um (default ``250.0``).
    concentration
        Dirichlet concentration of the domains' cell-type mixtures (default ``0.5``;
        smaller: purer domains).
    noise
        Standard deviation of the log-normal noise multiplying every intensity (default
        ``0.35``).
    slide_key
        Name of the ``obs`` column of the slides, whose values are
        ``f"{slide_key}_{i}"`` (default ``"roi"``: ``"roi_0"``, ``"roi_1"``, ...).
    random_state
        Seed of every random draw (default ``0``; ``None``: a fresh one).
    layout
        How the domains are drawn (keyword only): ``"voronoi"`` (the default, above),
        ``"layers"`` (one wavy band per domain across each slide, like cortical layers) or
        ``"islands"`` (round islands about ``domain_size`` um across, of every domain but
        the first, in a sea of the first, like follicles in a spleen).

    Returns
    -------
    AnnData
        ``X`` (cells x markers, float32; ``var_names`` ``"marker_0"``, ...),
        ``obs[slide_key]``, ``obs['cell_type']`` (``"type_0"``, ...), ``obs['domain']``
        (the truth: ``"domain_0"``, ...), all categorical, and ``obsm['spatial']`` (x, y
        in um). Cells are named ``"cell_0"``, ``"cell_1"``, ...

    Examples
    --------
    >>> adata = synthetic_tissue(n_cells=1_000, n_slides=2, random_state=0)
    >>> adata.shape, sorted(adata.obs["roi"].unique())
    ((1000, 40), ['roi_0', 'roi_1'])
    >>> layers = synthetic_tissue(n_cells=1_000, n_slides=1, n_domains=3, slide_key="slide", layout="layers")
    >>> list(layers.obs.columns), sorted(layers.obs["domain"].unique())
    (['slide', 'cell_type', 'domain'], ['domain_0', 'domain_1', 'domain_2'])
    """
    random_state = check.seed(random_state)
    check.save_key(slide_key, "slide_key", "the obs column naming each cell's slide")
    n_cells = as_int("n_cells", n_cells)
    n_slides = as_int("n_slides", n_slides)
    n_markers = as_int("n_markers", n_markers)
    n_domains = as_int("n_domains", n_domains)
    n_cell_types = as_int("n_cell_types", n_cell_types, minimum=2)
    cell_area = check_positive("cell_area", cell_area, hint="It is an area in squared coordinate units.")
    domain_size = check_positive("domain_size", domain_size, hint="It is a length in coordinate units.")
    concentration = check_positive("concentration", concentration, hint="It is the Dirichlet concentration of "
                                   "each domain's cell-type mix (small: few types dominate).")
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not 0 <= noise < float("inf"):
        raise ValueError(f"`noise` must be a finite number >= 0 (the log-normal sigma of the intensities), "
                         f"got {noise!r}.")
    if n_slides > n_cells:
        raise ValueError(f"`n_slides` ({n_slides}) cannot exceed `n_cells` ({n_cells}).")
    if layout not in _LAYOUTS:
        raise ValueError(f"`layout` must be one of {list(_LAYOUTS)}, got {layout!r}.")
    rng = np.random.default_rng(random_state)

    slide_sizes = np.full(n_slides, n_cells // n_slides)
    slide_sizes[: n_cells % n_slides] += 1
    slide = np.repeat(np.arange(n_slides), slide_sizes)
    side = np.sqrt(slide_sizes * cell_area)
    coords = rng.uniform(size=(n_cells, 2)) * side[slide, None]
    domain = np.empty(n_cells, dtype=np.int64)
    start = 0
    for size, length in zip(slide_sizes, side):
        cells = slice(start, start + size)
        domain[cells] = _LAYOUTS[layout](coords[cells], length, n_domains, domain_size, rng)
        start += size

    mixtures = rng.dirichlet(np.full(n_cell_types, concentration), size=n_domains)
    cumulative = np.cumsum(mixtures, axis=1)
    cell_type = (rng.uniform(size=(n_cells, 1)) > cumulative[domain]).sum(axis=1)
    cell_type = np.minimum(cell_type, n_cell_types - 1)

    profiles = np.full((n_cell_types, n_markers), 0.2)
    markers_per_type = min(max(2, n_markers // n_cell_types), n_markers)
    for row in profiles:
        row[rng.choice(n_markers, size=markers_per_type, replace=False)] = rng.uniform(2, 5, markers_per_type)
    expression = profiles[cell_type] * rng.lognormal(0.0, noise, size=(n_cells, n_markers))

    obs = pd.DataFrame(
        {
            slide_key: pd.Categorical([f"{slide_key}_{i}" for i in slide]),
            "cell_type": pd.Categorical([f"type_{i}" for i in cell_type]),
            "domain": pd.Categorical([f"domain_{i}" for i in domain]),
        },
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"marker_{i}" for i in range(n_markers)])
    return AnnData(X=expression.astype(np.float32), obs=obs, var=var, obsm={"spatial": coords})


def codex_mouse_spleen(path: str | Path | None = None) -> AnnData:
    """CODEX mouse spleen cells with expert compartments (Goltsev et al., Cell 2018).

    Parameters
    ----------
    path
        An ``.h5ad`` file of the full dataset (163k cells, e.g. the project's
        ``shared/data/codex_mouse_spleen/codex_mouse_spleen.h5ad``). Default: the 35,145-cell
        subset shipped with utag (two 4,000 x 4,000 px windows; MIT licence, see
        ``utag/data/README.md``).

    Returns
    -------
    AnnData
        One-hot cell types in ``X``, ``obs['slide']``, ``obs['cell_type']``,
        ``obs['domain']`` (expert compartment) and ``obsm['spatial']`` (pixels, ~0.377 um).

    Examples
    --------
    >>> adata = codex_mouse_spleen()
    >>> adata.n_obs, sorted(adata.obs["slide"].unique())
    (35145, ['BALBc-1', 'BALBc-2'])
    """
    if path is None:
        with as_file(files("utag").joinpath("data", _SPLEEN_SUBSET)) as bundled:
            return anndata.read_h5ad(bundled)
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"`path` {str(path)!r} is not a file; pass an .h5ad file or None for the bundled subset.")
    return anndata.read_h5ad(path)


def _voronoi(coords: np.ndarray, length: float, n_domains: int, domain_size: float, rng) -> np.ndarray:
    """Voronoi regions about ``domain_size`` across, every domain at least once."""
    n_regions = max(n_domains, int(round((length / domain_size) ** 2)))
    seeds = rng.uniform(size=(n_regions, 2)) * length
    extra = rng.integers(n_domains, size=n_regions - n_domains)
    region_domain = np.concatenate([rng.permutation(n_domains), extra])  # every domain on every slide
    return region_domain[cKDTree(seeds).query(coords)[1]]


def _layers(coords: np.ndarray, length: float, n_domains: int, domain_size: float, rng) -> np.ndarray:
    """``n_domains`` bands across the slide whose boundaries wave by a quarter band."""
    thickness = length / n_domains
    phase, angle = rng.uniform(0, 2 * np.pi, size=2)
    wave = 0.25 * thickness * np.sin(2 * np.pi * coords[:, 0] / (length / 2) + phase)
    tilt = np.tan(0.2 * np.sin(angle)) * (coords[:, 0] - length / 2)  # boundaries not quite level
    band = np.floor((coords[:, 1] + wave + tilt) / thickness).astype(np.int64)
    return np.clip(band, 0, n_domains - 1)


def _islands(coords: np.ndarray, length: float, n_domains: int, domain_size: float, rng) -> np.ndarray:
    """Discs ``domain_size`` across covering about 40% of the slide, of domains 1.., in domain 0."""
    if n_domains == 1:
        return np.zeros(len(coords), dtype=np.int64)
    radius = domain_size / 2
    n_islands = max(n_domains - 1, int(round(0.4 * length**2 / (np.pi * radius**2))))
    centres = rng.uniform(size=(n_islands, 2)) * length
    extra = rng.integers(1, n_domains, size=n_islands - (n_domains - 1))
    island_domain = np.concatenate([1 + rng.permutation(n_domains - 1), extra])
    distance, nearest = cKDTree(centres).query(coords)
    return np.where(distance <= radius, island_domain[nearest], 0)


_LAYOUTS = {"voronoi": _voronoi, "layers": _layers, "islands": _islands}
