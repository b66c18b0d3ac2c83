"""The original ``utag.vizualize`` functions (sic), with their original signatures.

Kept so that notebooks written for the first utag release (ElementoLab/utag) run
unchanged: same argument order, keywords, defaults, ``adata`` keys and image
processing. Everything is drawn with matplotlib (networkx lays out the network);
neither holoviews nor scikit-image is needed.

For new code prefer :func:`utag.plotting.plot_domains`,
:func:`utag.plotting.plot_domain_network` and :func:`utag.plotting.plot_chord`, which
compute the adjacency they draw and give each domain the same colour in every figure,
and :func:`utag.image.rgb_image` with :func:`utag.image.add_spatial_image`, which
attach one image per slide where scanpy and squidpy look for it.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.figure import Figure

from ._keys import colors_key
from .plotting import plot_chord, plot_domains

__all__ = [
    "add_spatial_image",
    "rgbfy_multiplexed_image",
    "add_scale_box_to_fig",
    "draw_network",
    "adj2chord",
    "plot_domains",
]


SCALE_METHODS = ("contrast_stretch", "adjust_gamma", "equalize_hist")
CHORD_MIN_LINK = 5  # the original's chord showed only links of at least 5 contacts


# --- image kernels: each reproduces the scikit-image call the original made, on float32 -----

def _read_stack(image) -> np.ndarray:
    """A channels x height x width float32 stack from a TIFF path or an array."""
    if isinstance(image, (str, os.PathLike)):
        import tifffile

        image = tifffile.imread(image)
    stack = np.asarray(image, dtype=np.float32)
    if stack.ndim != 3:
        raise ValueError(f"`image_path` must hold a channels x height x width stack; got shape {stack.shape}.")
    return stack


def _channel_indices(rgb_channels, n_channels: int) -> list[int]:
    channels = [int(channel) for channel in rgb_channels]
    outside = [channel for channel in channels if not -n_channels <= channel < n_channels]
    if outside or not channels:
        raise ValueError(f"`rgb_channels` {list(rgb_channels)} must be channel indices of an image with "
                         f"{n_channels} channels.")
    return [channel % n_channels for channel in channels]


def _median_filtered(stack: np.ndarray, channels: list[int]) -> np.ndarray:
    """These channels of ``scipy.ndimage.median_filter(stack, size=3)``.

    The 3 x 3 x 3 window also spans the neighbouring channels, as in the original. A
    channel's result depends only on itself and its two neighbours ('reflect' mode
    mirrors the first and last channel onto themselves), so filtering those three
    gives the same values without filtering a 40-channel stack.
    """
    from scipy.ndimage import median_filter

    filtered = []
    for channel in channels:
        first = max(channel - 1, 0)
        filtered.append(median_filter(stack[first: channel + 2], size=3)[channel - first])
    return np.stack(filtered)


def _contrast_stretch(channel: np.ndarray, contrast_percentile) -> np.ndarray:
    """``skimage.exposure.rescale_intensity`` from these percentiles to (0, 1)."""
    low, high = (float(value) for value in np.percentile(channel, contrast_percentile))
    clipped = np.clip(channel, low, high)
    return clipped if high == low else (clipped - low) / (high - low)


def _adjust_gamma(channel: np.ndarray, gamma: float, gain: float) -> np.ndarray:
    """``skimage.exposure.adjust_gamma`` of a float image: ``gain * channel ** gamma``."""
    if (channel < 0).any():
        raise ValueError("scale_method='adjust_gamma' needs non-negative intensities; pass `log_transform=True` "
                         "for non-negative data, or `scale_method='contrast_stretch'`.")
    return channel**gamma * gain


def _equalize_hist(channel: np.ndarray, nbins: int = 256) -> np.ndarray:
    """``skimage.exposure.equalize_hist``: each value mapped through the cumulative histogram."""
    counts, edges = np.histogram(channel.ravel(), bins=nbins)
    centers = (edges[:-1] + edges[1:]) / 2.0
    cumulative = (np.cumsum(counts) / float(counts.sum())).astype(channel.dtype)
    return np.interp(channel.ravel(), centers, cumulative).reshape(channel.shape).astype(channel.dtype)


def _min_max(values: np.ndarray) -> np.ndarray:
    """Values scaled to [0, 1]; all 0 when they are all equal."""
    values = np.asarray(values, dtype=float)
    if not len(values) or values.max() == values.min():
        return np.zeros_like(values)
    return (values - values.min()) / (values.max() - values.min())


# --- the original functions ---------------------------------------------------------------

def rgbfy_multiplexed_image(
    image_path,
    rgb_channels=(19, 9, 14),
    log_transform: bool = True,
    median_filter: bool = True,
    scale_method: str = "adjust_gamma",
    contrast_percentile=(10, 90),
    gamma: float = 0.4,
    gain: float = 1,
) -> np.ndarray:
    """An RGB composite of three channels of a multiplexed image (original signature).

    Steps, as the original: read the stack (channels x height x width) as float32;
    optionally median-filter it (``scipy.ndimage.median_filter(size=3)``: the window
    spans neighbouring channels too); take ``rgb_channels``; optionally ``log(x + 1)``;
    scale each channel with ``scale_method``; clip to [0, 1].

    Parameters
    ----------
    image_path
        Path of a (OME-)TIFF, read with ``tifffile``, or the stack itself as an array.
    rgb_channels
        Channel indices for red, green and blue (default ``[19, 9, 14]``).
    log_transform
        Apply ``log(x + 1)`` to the channels (default True).
    median_filter
        Median-filter the stack first (default True).
    scale_method
        ``"adjust_gamma"`` (``gain * x ** gamma``, as ``skimage.exposure.adjust_gamma``
        on floats), ``"contrast_stretch"`` (rescale the ``contrast_percentile``
        percentiles to 0 and 1) or ``"equalize_hist"`` (256-bin histogram equalisation,
        as ``skimage.exposure.equalize_hist``).
    contrast_percentile
        Percentiles for ``"contrast_stretch"`` (default ``(10, 90)``).
    gamma, gain
        Parameters of ``"adjust_gamma"`` (defaults 0.4 and 1).

    Returns
    -------
    float32 array, height x width x 3, values in [0, 1].

    Examples
    --------
    >>> stack = np.random.default_rng(0).gamma(1.0, size=(20, 16, 24))
    >>> rgb = rgbfy_multiplexed_image(stack, rgb_channels=[19, 9, 14])
    >>> rgb.shape, rgb.dtype, bool(rgb.min() >= 0 and rgb.max() <= 1)
    ((16, 24, 3), dtype('float32'), True)
    """
    if scale_method not in SCALE_METHODS:
        raise ValueError(f"`scale_method` must be one of {list(SCALE_METHODS)}, got {scale_method!r}.")
    if scale_method == "adjust_gamma" and gamma < 0:
        raise ValueError(f"`gamma` must be >= 0, got {gamma!r}.")
    stack = _read_stack(image_path)
    channels = _channel_indices(rgb_channels, stack.shape[0])
    selected = _median_filtered(stack, channels) if median_filter else stack[channels]
    if log_transform:
        selected = np.log(selected + 1)
    if scale_method == "contrast_stretch":
        scaled = [_contrast_stretch(channel, contrast_percentile) for channel in selected]
    elif scale_method == "adjust_gamma":
        scaled = [_adjust_gamma(channel, gamma, gain) for channel in selected]
    else:
        scaled = [_equalize_hist(channel) for channel in selected]
    return np.clip(np.stack(scaled, axis=-1), 0, 1).astype(np.float32)


def add_spatial_image(
    adata: AnnData,
    image_path,
    rgb_channels=(19, 9, 14),
    log_transform: bool = False,
    median_filter: bool = False,
    scale_method: str = "adjust_gamma",
    contrast_percentile=(0, 90),
    gamma: float = 0.2,
    gain: float = 0.5,
) -> AnnData:
    """Attach an RGB composite of an image to ``adata`` for ``scanpy.pl.spatial`` (original signature).

    Writes ``adata.obsm['spatial']`` = ``obs[['Y_centroid', 'X_centroid']]`` (Y first, as
    the original did) and replaces ``adata.uns['spatial']`` with
    ``{'image': {'images': {'hires': image}, 'scalefactors': {'tissue_hires_scalef': 1,
    'spot_diameter_fullres': 1}}}``, where ``image`` is
    :func:`rgbfy_multiplexed_image` of the other arguments (``image_path``,
    ``rgb_channels``, ``log_transform``, ``median_filter``, ``scale_method``,
    ``contrast_percentile``, ``gamma``, ``gain``: see that function; note the different
    defaults here, the original's). Returns ``adata``.

    Examples
    --------
    >>> import anndata
    >>> obs = pd.DataFrame({"Y_centroid": [1.0, 2.0], "X_centroid": [3.0, 4.0]}, index=["a", "b"])
    >>> adata = add_spatial_image(anndata.AnnData(obs=obs), np.ones((20, 8, 8)))
    >>> adata.obsm["spatial"].tolist(), adata.uns["spatial"]["image"]["images"]["hires"].shape
    ([[1.0, 3.0], [2.0, 4.0]], (8, 8, 3))
    """
    missing = [column for column in ("Y_centroid", "X_centroid") if column not in adata.obs.columns]
    if missing:
        raise ValueError(f"`adata.obs` has no column(s) {missing}: add_spatial_image places the cells with "
                         "`obs['Y_centroid']` and `obs['X_centroid']`.")
    image = rgbfy_multiplexed_image(image_path, rgb_channels, log_transform, median_filter, scale_method,
                                    contrast_percentile, gamma, gain)
    adata.obsm["spatial"] = adata.obs[["Y_centroid", "X_centroid"]].to_numpy()
    adata.uns["spatial"] = {
        "image": {
            "images": {"hires": image},
            "scalefactors": {"tissue_hires_scalef": 1, "spot_diameter_fullres": 1},
        }
    }
    return adata


def add_scale_box_to_fig(
    img,
    ax,
    box_width: int = 100,
    box_height: float = 3,
    color: str = "white",
):
    """Draw a scale box in the bottom-right corner of an image shown in ``ax`` (original signature).

    The box is ``box_width`` pixels wide and ``box_height`` percent of the image's height
    tall. Returns ``ax``.

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> fig, ax = plt.subplots()
    >>> image = np.zeros((200, 300, 3))
    >>> _ = ax.imshow(image)
    >>> ax = add_scale_box_to_fig(image, ax, box_width=50)
    >>> ax.patches[0].get_xy(), ax.patches[0].get_width()
    ((250, 194.0), 50)
    """
    from matplotlib.patches import Rectangle

    height, width = img.shape[0], img.shape[1]
    ax.add_patch(Rectangle((width - box_width, height * (1 - box_height / 100)), box_width,
                           height * (box_height / 100), linewidth=0.1, edgecolor="black", facecolor=color))
    return ax


def _node_colors(adata: AnnData, node_key: str, names: list) -> list | None:
    """``uns[f"{node_key}_colors"]`` (one per category, as scanpy stores them) for these nodes."""
    stored = adata.uns.get(colors_key(node_key))
    if stored is None:
        return None
    values = adata.obs[node_key]
    if isinstance(values.dtype, pd.CategoricalDtype):
        categories = list(values.cat.categories)
    else:
        categories = sorted(values.dropna().unique().tolist())
    by_label = dict(zip(categories, stored))
    return [by_label.get(name, "lightgray") for name in names]


def draw_network(
    adata: AnnData,
    node_key: str = "UTAG Label",
    adjacency_matrix_key: str = "UTAG Label_domain_adjacency_matrix",
    figsize: tuple = (11, 11),
    dpi: int = 200,
    font_size: int = 12,
    node_size_min: int = 1000,
    node_size_max: int = 3000,
    edge_weight: float = 5,
    edge_weight_baseline: float = 1,
    log_transform: bool = True,
    ax=None,
) -> Figure:
    """Domain adjacency as a network (original signature).

    Draws the table that :func:`utag.utils.domain_connectivity` stored in
    ``adata.uns[adjacency_matrix_key]``: a node per domain, its area scaled from
    ``node_size_min`` to ``node_size_max`` by its number of cells in ``obs[node_key]``;
    an edge for every non-zero entry (within-domain entries are self-loops), its width
    and colour (``YlOrRd``) scaled from ``edge_weight_baseline`` to
    ``edge_weight_baseline + edge_weight`` by its count (``log(count + 1)`` with
    ``log_transform``). Spring layout with seed 42 and ``k=1``. Nodes are outlined in the
    domain colours of ``uns[f"{node_key}_colors"]`` if present, else light grey, and
    labelled in ``font_size`` points; ``figsize`` and ``dpi`` size a new figure (unless
    ``ax`` is given).

    Returns
    -------
    The matplotlib Figure drawn on (a new ``figsize``/``dpi`` figure unless ``ax`` is given).

    Examples
    --------
    >>> from utag.datasets import synthetic_tissue
    >>> from utag.utils import domain_connectivity
    >>> adata = synthetic_tissue(n_cells=1_000, n_domains=3, slide_key="Slide", random_state=0)
    >>> adata = domain_connectivity(adata, domain_key="domain")
    >>> fig = draw_network(adata, "domain", "domain_domain_adjacency_matrix", figsize=(4, 4), dpi=50)
    >>> len(fig.axes[0].collections[0].get_offsets())  # one node per domain
    3
    """
    import matplotlib.pyplot as plt
    import networkx as nx

    if adjacency_matrix_key not in adata.uns:
        raise ValueError(f"`adata.uns[{adjacency_matrix_key!r}]` is missing (`adjacency_matrix_key`): run "
                         "`utag.utils.domain_connectivity(adata, slide_key, domain_key)` first; it stores "
                         "`uns[f'{domain_key}_domain_adjacency_matrix']`.")
    if node_key not in adata.obs.columns:
        raise ValueError(f"`node_key={node_key!r}` is not a column of `adata.obs` (columns: "
                         f"{list(adata.obs.columns)}).")
    matrix = pd.DataFrame(adata.uns[adjacency_matrix_key])
    names = list(matrix.index)
    cells = adata.obs[node_key].value_counts().reindex(names, fill_value=0).to_numpy()
    node_size = _min_max(cells) * (node_size_max - node_size_min) + node_size_min
    graph = nx.relabel_nodes(nx.from_numpy_array(matrix.to_numpy(dtype=float)), dict(enumerate(names)))
    edges = list(graph.edges)
    weights = np.array([graph.edges[edge]["weight"] for edge in edges], dtype=float)
    widths = _min_max(np.log(weights + 1) if log_transform else weights) * edge_weight + edge_weight_baseline
    positions = nx.spring_layout(graph, weight="weight", seed=42, k=1)
    if ax is None:
        fig = plt.figure(figsize=figsize, dpi=dpi)
        ax = fig.add_axes((0, 0, 1, 1))
    ax.figure.set_facecolor("w")
    colors = _node_colors(adata, node_key, names)
    nx.draw_networkx_nodes(graph, positions, node_size=node_size, node_color=colors or "w",
                           edgecolors=colors or "lightgray", linewidths=3, ax=ax)
    if edges:
        nx.draw_networkx_edges(graph, positions, edgelist=edges, width=widths, edge_color=widths,
                               edge_cmap=plt.get_cmap("YlOrRd"), node_size=node_size, ax=ax)
    nx.draw_networkx_labels(graph, positions, font_size=font_size, ax=ax)
    ax.set_axis_off()
    ax.set_xlim([1.3 * limit for limit in ax.get_xlim()])
    return ax.figure


def adj2chord(
    adjacency_matrix,
    size: int = 300,
) -> Figure:
    """Chord diagram of a domain adjacency table (original signature), drawn with matplotlib.

    ``adjacency_matrix`` is a domain x domain DataFrame of contact counts, e.g.
    ``adata.uns["UTAG Label_domain_adjacency_matrix"]`` from
    :func:`utag.utils.domain_connectivity`. As in the original, counts are truncated to
    integers and links of fewer than 5 contacts are not drawn; contacts of a domain with
    itself are not drawn. ``size`` is the figure's width and height in pixels (at 100 dpi).
    Drawn by :func:`utag.plotting.plot_chord`.

    Returns
    -------
    The matplotlib Figure (the original returned a holoviews ``Chord``).

    Examples
    --------
    >>> table = pd.DataFrame([[50, 10, 0], [10, 40, 7], [0, 7, 30]], index=list("abc"), columns=list("abc"))
    >>> fig = adj2chord(table, size=300)
    >>> fig.get_size_inches().tolist(), len(fig.axes[0].patches)  # 3 arcs and 2 links
    ([3.0, 3.0], 5)
    """
    import matplotlib.pyplot as plt

    matrix = pd.DataFrame(adjacency_matrix)
    if set(matrix.columns) != set(matrix.index):
        raise ValueError("`adjacency_matrix` must have the same domains as rows and columns, got rows "
                         f"{list(matrix.index)} and columns {list(matrix.columns)}.")
    matrix = matrix.loc[:, list(matrix.index)]  # columns in the rows' order
    names = [str(label) for label in matrix.index]
    links = matrix.fillna(0).to_numpy(dtype=float).astype(int)
    links = pd.DataFrame(np.where(links >= CHORD_MIN_LINK, links, 0), index=names, columns=names)
    # plot_chord reads the domains and their colours from an AnnData: one stand-in cell per domain
    domains = AnnData(obs=pd.DataFrame({"domain": pd.Categorical(names, categories=names)}, index=names))
    fig, ax = plt.subplots(figsize=(size / 100, size / 100), dpi=100)
    plot_chord(domains, "domain", connectivity={"counts": links}, ax=ax)
    ax.set_title("")
    return fig
