"""Step 1 of UTAG: the spatial graph.

Cells of one slide are connected when their centroids lie within ``max_dist`` of each
other (inclusive), every cell is connected to itself, and slides are combined
block-diagonally so that no edge crosses slides. The result is the same graph as
``squidpy.gr.spatial_neighbors(radius=max_dist, coord_type="generic", set_diag=True,
library_key=slide_key)`` (``utag/tests/test_graph.py`` checks it), built with one
KD-tree radius query per slide.

Before any graph is built its number of edges is estimated from a sample of cells
(:func:`estimate_pairs`, a fraction of a second at a million cells), and
:func:`check_graph_fits` raises :class:`GraphTooLargeError`, with a ``max_dist`` that
would fit, when the graph would not fit in memory.
"""
from __future__ import annotations

import logging
import math
import os

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial import cKDTree

from . import _validation as check

logger = logging.getLogger(__name__)


def radius_pairs(coords: np.ndarray, max_dist: float) -> np.ndarray:
    """Pairs ``(i, j)``, ``i < j``, of points at distance ``<= max_dist``; shape (n_pairs, 2)."""
    if len(coords) < 2:
        return np.empty((0, 2), dtype=np.int64)
    return cKDTree(coords).query_pairs(max_dist, output_type="ndarray").astype(np.int64, copy=False)


def adjacency_from_pairs(pairs: np.ndarray, n_cells: int) -> sp.csr_matrix:
    """Symmetric 0/1 float32 CSR adjacency with self-loops from ``i < j`` pairs."""
    diagonal = np.arange(n_cells, dtype=np.int64)
    rows = np.concatenate([pairs[:, 0], pairs[:, 1], diagonal])
    cols = np.concatenate([pairs[:, 1], pairs[:, 0], diagonal])
    ones = np.ones(len(rows), dtype=np.float32)
    adjacency = sp.csr_matrix((ones, (rows, cols)), shape=(n_cells, n_cells))
    adjacency.sort_indices()
    return adjacency


def distances_from_pairs(pairs: np.ndarray, coords: np.ndarray) -> sp.csr_matrix:
    """Symmetric float64 CSR of Euclidean distances; no diagonal, zero distances dropped."""
    n_cells = len(coords)
    distances = np.linalg.norm(coords[pairs[:, 0]] - coords[pairs[:, 1]], axis=1)
    keep = distances > 0  # squidpy stores no explicit zeros (duplicated coordinates)
    pairs, distances = pairs[keep], distances[keep]
    rows = np.concatenate([pairs[:, 0], pairs[:, 1]])
    cols = np.concatenate([pairs[:, 1], pairs[:, 0]])
    matrix = sp.csr_matrix((np.concatenate([distances, distances]), (rows, cols)), shape=(n_cells, n_cells))
    matrix.sort_indices()
    return matrix


def slide_cells(codes: np.ndarray) -> list[np.ndarray]:
    """Indices of the cells of each slide, ascending within a slide, slides in code order."""
    order = np.argsort(codes, kind="stable")
    boundaries = np.flatnonzero(np.diff(codes[order])) + 1
    return np.split(order, boundaries)


# --- memory safety --------------------------------------------------------------------
# A radius graph has about n * density * pi * max_dist^2 / 2 pairs until max_dist reaches
# the slide's size, then n^2 / 2: a max_dist as large as a 200,000-cell slide asks for
# 2e10 pairs (~2 TB), and the operating system kills the process instead of Python
# raising MemoryError. Every function that builds a radius graph therefore estimates its
# pairs first (check_graph_fits) and raises GraphTooLargeError if they would not fit.
#
# Peak memory beyond what the process held before the call, per pair (i < j), measured
# as /proc/self/status VmHWM (reset through /proc/self/clear_refs) minus VmRSS in a fresh
# process per run, on one slide of 100,000 or 300,000 uniform cells (150 um^2 per cell)
# at max_dist 20, 60 and 120 (0.4 to 15 million pairs); least squares on pairs and cells,
# residuals within 3%:
# * pass_messages: 88 bytes per pair (KD-tree pair list, int64 pairs, COO and CSR
#   adjacency with self-loops, its product) and 16 + 7 * n_features bytes per cell
#   (the slide's float32 features and the result; 10 and 40 features measured). Two
#   slides in a 2-process pool peaked at 84 bytes per pair across processes;
# * spatial_neighbors: 145 bytes per pair (pairs, connectivities and float64 distances);
# * slide_pairs and then utag.analysis.domain_connectivity: 66 bytes per pair (the
#   colocalisation test 33, the bare edge list 32).
# The graph routes' ~45 bytes per cell (KD-tree) are left out: only pairs can explode.
MESSAGE_PASSING_BYTES_PER_PAIR = 90
MESSAGE_PASSING_BYTES_PER_CELL = 16
MESSAGE_PASSING_BYTES_PER_FEATURE = 8  # per cell and feature
SPATIAL_GRAPH_BYTES_PER_PAIR = 150
EDGE_LIST_BYTES_PER_PAIR = 70
# Share of the available memory a graph may take: the rest is left to the other stages
# and to other processes. Read at each check, so it can be changed at run time.
MEMORY_FRACTION = 0.8
# The estimate's KD-tree holds at most this many cells: a tree of 1,000,000 cells takes
# 0.3 s to build and up to 0.7 s to count in, one of 100,000 a tenth of that.
_ESTIMATE_TREE_CELLS = 100_000


class GraphTooLargeError(ValueError, MemoryError):
    """The spatial graph of ``max_dist`` would not fit in the available memory.

    Attributes: ``max_dist``, ``n_pairs`` (estimated spatial edges), ``required`` and
    ``available`` (bytes), and ``suggested_max_dist`` (the largest round value whose
    graph fits, or ``None`` if none does).
    """

    def __init__(self, message: str, max_dist: float, n_pairs: float, required: float, available: float,
                 suggested_max_dist: float | None):
        super().__init__(message)
        self.max_dist = max_dist
        self.n_pairs = n_pairs
        self.required = required
        self.available = available
        self.suggested_max_dist = suggested_max_dist


def estimate_pairs(coords: np.ndarray, codes: np.ndarray, max_dist: float, sample_size: int = 2_000,
                   random_state: int = 0) -> float:
    """Estimated number of radius pairs of all slides together, without building the graph.

    A seeded random ``sample_size`` cells are drawn from a seeded random 100,000 (or all)
    cells, and their neighbours within ``max_dist`` among those 100,000 counted with one
    dual-tree ``cKDTree.count_neighbors``, which counts pairs of whole KD-tree nodes at
    once and so stays fast even when ``max_dist`` spans the slides. Slides are first
    laid side by side, further apart than ``max_dist``, so one tree holds them all and
    no pair crosses slides. With ``m`` sampled cells, ``b`` in the tree, ``n`` in all and
    ``C`` pairs counted (each sampled cell with itself included), the estimate
    ``(C - m) n (n - 1) / (2 m (b - 1))`` is unbiased for the number of pairs
    :func:`slide_pairs` returns.

    Examples
    --------
    >>> from utag.datasets import synthetic_tissue
    >>> adata = synthetic_tissue(n_cells=20_000, n_slides=2, random_state=0)
    >>> coords, codes = adata.obsm["spatial"], adata.obs["roi"].cat.codes.to_numpy()
    >>> estimate = estimate_pairs(coords, codes, max_dist=20)
    >>> exact = len(slide_pairs(coords, codes, max_dist=20))
    >>> bool(abs(estimate / exact - 1) < 0.05)
    True
    """
    n_cells = len(codes)
    if n_cells < 2 or not max_dist >= 0:  # NaN: no pairs, as in radius_pairs
        return 0.0
    rng = np.random.default_rng(random_state)
    tree_cells = rng.choice(n_cells, size=min(n_cells, _ESTIMATE_TREE_CELLS), replace=False)
    n_sampled = min(sample_size, len(tree_cells))
    points, radius = _slides_side_by_side(coords[tree_cells], codes[tree_cells], max_dist)
    tree = cKDTree(points, balanced_tree=False, compact_nodes=False)
    sample = cKDTree(points[:n_sampled], balanced_tree=False, compact_nodes=False)
    counted = sample.count_neighbors(tree, radius) - n_sampled
    return counted * n_cells * (n_cells - 1) / (2 * n_sampled * (len(tree_cells) - 1))


def _slides_side_by_side(points: np.ndarray, codes: np.ndarray, max_dist: float) -> tuple[np.ndarray, float]:
    """Slides shifted along x into disjoint boxes more than ``max_dist`` apart.

    Also returns the radius to count with: ``max_dist``, or just over the largest
    slide's diagonal when that is smaller (the same pairs, counted faster).
    """
    _, slide = np.unique(codes, return_inverse=True)
    n_slides = slide.max() + 1
    low = np.full((n_slides, points.shape[1]), np.inf)
    high = np.full((n_slides, points.shape[1]), -np.inf)
    np.minimum.at(low, slide, points)
    np.maximum.at(high, slide, points)
    diagonal = float(np.linalg.norm(high - low, axis=1).max())
    width = high[:, 0] - low[:, 0] + 2 * diagonal + 1  # gap > any radius used
    start = np.concatenate([[0.0], np.cumsum(width)[:-1]])
    shifted = points - low[slide]
    shifted[:, 0] += start[slide]
    return shifted, min(max_dist, diagonal * (1 + 1e-6))


def available_memory() -> int | None:
    """Bytes of memory the process can still take, or ``None`` when unknown.

    ``MemAvailable`` of ``/proc/meminfo`` on Linux, else psutil's figure if psutil is
    installed, else the free (or, on macOS, total) physical pages that ``os.sysconf``
    reports; capped by the room left under a cgroup memory limit (containers, SLURM
    jobs), which kills the process as surely as running out of RAM.
    """
    available = _meminfo_available()
    if available is None:
        available = _psutil_available()
    if available is None:
        available = _sysconf_memory()
    headroom = cgroup_headroom()
    if headroom is not None:
        available = headroom if available is None else min(available, headroom)
    return available


def _meminfo_available(path: str = "/proc/meminfo") -> int | None:
    try:
        with open(path) as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _psutil_available() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def _sysconf_memory() -> int | None:
    """Free physical memory, or the total where only that is known (macOS)."""
    for pages in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES"):
        try:
            return os.sysconf(pages) * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
            continue
    return None


def cgroup_headroom(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int | None:
    """Bytes left under the tightest memory limit of this process's cgroups, or ``None``.

    Reads cgroup v2 (``memory.max``, ``memory.current``) and v1
    (``memory.limit_in_bytes``, ``memory.usage_in_bytes``) for the process's cgroup and
    its ancestors; reclaimable page cache (``inactive_file``) counts as room.
    """
    try:
        with open(proc_cgroup) as file:
            lines = file.read().splitlines()
    except OSError:
        return None
    headroom = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            hierarchy, names = root, ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            hierarchy = os.path.join(root, "memory")
            names = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        parts = [part for part in path.split("/") if part]
        for depth in range(len(parts), -1, -1):  # a limit set on an ancestor applies too
            folder = os.path.join(hierarchy, *parts[:depth])
            limit, usage = _read_number(os.path.join(folder, names[0])), _read_number(os.path.join(folder, names[1]))
            if limit is None or usage is None or limit >= 2**60:  # "max", or v1's "no limit"
                continue
            room = limit - usage + _memory_stat(os.path.join(folder, "memory.stat"), names[2])
            headroom = room if headroom is None else min(headroom, room)
    return headroom


def _read_number(path: str) -> int | None:
    try:
        with open(path) as file:
            return int(file.read().strip())
    except (OSError, ValueError):
        return None


def _memory_stat(path: str, key: str) -> int:
    try:
        with open(path) as file:
            for line in file:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def check_graph_fits(coords: np.ndarray, codes: np.ndarray, max_dist: float,
                     bytes_per_pair: float = MESSAGE_PASSING_BYTES_PER_PAIR, bytes_per_cell: float = 0.0,
                     fraction: float | None = None) -> float | None:
    """Raise :class:`GraphTooLargeError` if the radius graph of ``max_dist`` would not fit.

    The graph needs about ``bytes_per_pair * pairs + bytes_per_cell * n_cells`` bytes
    (the constants above say what each route measured), ``pairs`` from
    :func:`estimate_pairs`; it must fit in ``fraction`` (default
    ``utag.graph.MEMORY_FRACTION``, 0.8) of :func:`available_memory`.
    The error names the number of edges ``max_dist`` implies and the largest round
    ``max_dist`` whose graph fits (verified with its own estimate).

    Returns
    -------
    The estimated number of pairs, or ``None`` when the available memory is unknown
    (then nothing is checked).
    """
    fraction = MEMORY_FRACTION if fraction is None else fraction
    available = available_memory()
    if available is None:
        logger.info("available memory unknown: the spatial graph's size is not checked")
        return None
    n_pairs = float(estimate_pairs(coords, codes, max_dist))
    required = bytes_per_pair * n_pairs + bytes_per_cell * len(codes)
    logger.info("max_dist=%g: about %s spatial edges (~%s), %s of memory available", max_dist,
                _format_count(n_pairs), _format_bytes(required), _format_bytes(available))
    budget = fraction * available
    if required <= budget:
        return n_pairs
    max_pairs = (budget - bytes_per_cell * len(codes)) / bytes_per_pair
    suggested, suggested_pairs = _fitting_max_dist(coords, codes, max_dist, n_pairs, max_pairs)
    message = (
        f"`max_dist={max_dist:g}` implies about {_format_count(n_pairs)} spatial edges "
        f"(~{_format_bytes(required)} to build the graph), but only {_format_bytes(available)} of memory is "
        f"available ({fraction:.0%} of it may be used); building it would get the process killed. "
    )
    if suggested is None:
        message += "No max_dist fits: free memory, or run fewer cells or slides at a time. "
    else:
        message += (f"`max_dist={suggested:g}` would give about {_format_count(suggested_pairs)} edges "
                    f"(~{_format_bytes(bytes_per_pair * suggested_pairs + bytes_per_cell * len(codes))}). ")
    message += ("`max_dist` is a distance in the units of `obsm['spatial']`: for IMC (1 px = 1 um) 10-40 is "
                "typical; see `utag.tuning.max_dist_report` to compare values.")
    raise GraphTooLargeError(message, max_dist, n_pairs, required, available, suggested)


def _fitting_max_dist(coords: np.ndarray, codes: np.ndarray, max_dist: float, n_pairs: float,
                      max_pairs: float) -> tuple[float | None, float | None]:
    """Largest ``max_dist`` with 2 significant digits whose estimated pairs fit ``max_pairs``."""
    if max_pairs <= 0:
        return None, None
    # beyond the diagonal of all coordinates (slides may share a frame) every pair is connected
    candidate = min(max_dist, float(np.linalg.norm(np.ptp(coords, axis=0))))
    for _ in range(30):
        # pairs grow about as max_dist^2 while it is smaller than the slides
        candidate = _round_down(candidate * 0.95 * math.sqrt(max_pairs / n_pairs))
        if candidate <= 0:
            break
        n_pairs = float(estimate_pairs(coords, codes, candidate))
        if n_pairs <= max_pairs:
            return candidate, n_pairs
    return None, None


def _round_down(value: float, digits: int = 2) -> float:
    """``value`` rounded down to ``digits`` significant digits (0 if not positive)."""
    if not value > 0:
        return 0.0
    step = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
    return float(f"{math.floor(value / step * (1 + 1e-12)) * step:.{digits}g}")


def _format_count(count: float) -> str:
    """``1.2e10`` style for large counts, digits with thousands separators otherwise."""
    if count < 1e6:
        return f"{count:,.0f}"
    mantissa, exponent = f"{count:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _format_bytes(n_bytes: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= size:
            return f"{n_bytes / size:.1f} {unit}"
    return f"{n_bytes:.0f} bytes"


def slide_pairs(coords: np.ndarray, codes: np.ndarray, max_dist: float,
                bytes_per_pair: float = EDGE_LIST_BYTES_PER_PAIR) -> np.ndarray:
    """Radius pairs of every slide, as global cell indices (no cross-slide pairs).

    Raises :class:`GraphTooLargeError` first if the pairs, at ``bytes_per_pair`` bytes
    each for what the caller does with them, would not fit in memory.
    """
    check_graph_fits(coords, codes, max_dist, bytes_per_pair)
    blocks = [cells[radius_pairs(coords[cells], max_dist)] for cells in slide_cells(codes)]
    return np.concatenate(blocks)


def spatial_neighbors(
    adata: AnnData,
    max_dist: float = 20.0,
    slide_key: str | None = "Slide",
    key_added: str = "spatial",
    copy: bool = False,
) -> AnnData | None:
    """Build UTAG's spatial graph and store it the way squidpy does.

    Parameters
    ----------
    adata
        Cells with centroids in ``adata.obsm['spatial']``.
    max_dist
        Radius, in the units of ``obsm['spatial']``; cells at distance ``<= max_dist``
        are connected. Default 20 (um for IMC, where 1 px = 1 um).
    slide_key
        Column of ``adata.obs`` naming each cell's slide; ``None`` treats all cells as
        one slide. No edge connects cells of different slides.
    key_added
        Prefix of the keys written: ``obsp[f'{key_added}_connectivities']`` (0/1 with
        self-loops), ``obsp[f'{key_added}_distances']`` and ``uns[f'{key_added}_neighbors']``.
    copy
        Return a new AnnData instead of writing into ``adata``.

    Returns
    -------
    ``None``, or a new AnnData when ``copy=True``.

    Examples
    --------
    >>> from utag.datasets import synthetic_tissue
    >>> from utag.graph import spatial_neighbors
    >>> adata = synthetic_tissue(n_cells=2_000, n_slides=2, random_state=0)
    >>> spatial_neighbors(adata, max_dist=20, slide_key="roi")
    >>> float(adata.obsp["spatial_connectivities"].diagonal().min())
    1.0
    """
    check.check_n_cells(adata)
    max_dist = check.check_positive("max_dist", max_dist)
    coords = check.spatial_coordinates(adata)
    codes, _ = check.slide_codes(adata, slide_key)
    pairs = slide_pairs(coords, codes, max_dist, SPATIAL_GRAPH_BYTES_PER_PAIR)
    target = adata.copy() if copy else adata
    store_spatial_graph(target, pairs, coords, max_dist, key_added)
    return target if copy else None


def store_spatial_graph(adata: AnnData, pairs: np.ndarray, coords: np.ndarray, max_dist: float,
                        key_added: str = "spatial") -> None:
    """Write the graph given by global ``pairs`` into ``adata`` under squidpy's keys."""
    connectivities_key = f"{key_added}_connectivities"
    distances_key = f"{key_added}_distances"
    adata.obsp[connectivities_key] = adjacency_from_pairs(pairs, adata.n_obs)
    adata.obsp[distances_key] = distances_from_pairs(pairs, coords)
    adata.uns[f"{key_added}_neighbors"] = {
        "connectivities_key": connectivities_key,
        "distances_key": distances_key,
        "params": {"radius": float(max_dist), "coord_type": "generic", "transform": None, "set_diag": True},
    }
