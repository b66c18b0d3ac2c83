"""Figures: domains on tissue, domain adjacency (network and chord), composition and
colocalisation heatmaps. Matplotlib only (networkx for the network layout).

Every function returns the matplotlib Figure it drew on. Domain colours are kept in
``adata.uns[f"{key}_colors"]`` as scanpy does, so a domain has the same colour in every
figure here and in ``scanpy.pl``.
"""
from __future__ import annotations

import math
import numbers

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.colors import to_hex, to_rgba_array
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import PathPatch, Wedge
from matplotlib.path import Path

from . import _validation as check
from ._keys import colors_key, table_key
from .analysis import _connectivity_tables, _labels, domain_composition

__all__ = [
    "domain_colors",
    "plot_domains",
    "plot_domain_network",
    "plot_chord",
    "plot_composition",
    "plot_colocalization",
    "plot_resolution_sweep",
    "plot_domain_hierarchy",
]


def domain_colors(adata: AnnData, key: str, palette=None) -> dict[str, str]:
    """Colour of each category of ``obs[key]``, stored in ``uns[f"{key}_colors"]``.

    Every plot here colours domains (and cell types) through this function, so a
    category has the same colour in every figure, and in ``scanpy.pl``, which reads the
    same ``uns`` key.

    Parameters
    ----------
    adata
        Cells with labels in ``obs[key]``.
    key
        ``obs`` column whose categories are coloured (domains, cell types, ...). A
        column that is not categorical is taken as one, its categories sorted.
    palette
        Colours to use instead of the stored ones: a list of matplotlib colours (one per
        category, in category order; a list too short is completed with ``"hsv"``
        colours) or a matplotlib colormap name (e.g. ``"tab10"``, ``"viridis"``), sampled
        evenly. Default ``None``: keep the colours in ``uns[f"{key}_colors"]`` if there is
        one per category (used or not, as scanpy stores them), else the colours scanpy
        gives a column it has not coloured yet: matplotlib's colour cycle (``tab10``)
        when it has enough colours, else scanpy's ``default_20``, ``default_28`` or
        ``default_102`` palette (beyond 102 categories completed with ``"hsv"`` colours).

    Returns
    -------
    dict of str to str
        ``{category: hex colour}`` for every category of ``obs[key]``, in category order.
        New colours are written to ``adata.uns[f"{key}_colors"]`` (the only change made to
        ``adata``); stored colours that are kept are not rewritten.

    Examples
    --------
    >>> from utag.datasets import synthetic_tissue
    >>> adata = synthetic_tissue(n_cells=500, n_domains=3, random_state=0)
    >>> domain_colors(adata, "domain")
    {'domain_0': '#1f77b4', 'domain_1': '#ff7f0e', 'domain_2': '#2ca02c'}
    >>> adata.uns["domain_colors"]
    ['#1f77b4', '#ff7f0e', '#2ca02c']
    >>> domain_colors(adata, "domain", palette=["red", "green", "blue"])["domain_2"]
    '#0000ff'
    >>> domain_colors(adata, "domain")["domain_2"]  # kept from now on
    '#0000ff'
    """
    _labels(adata, key)  # checks the key
    values = adata.obs[key]
    categorical = values if isinstance(values.dtype, pd.CategoricalDtype) else values.astype("category")
    names = pd.Index(categorical.cat.categories.astype(str))
    stored = adata.uns.get(colors_key(key))
    if palette is None and stored is not None and len(stored) == len(names):
        return dict(zip(names, stored))
    if palette is None:  # what scanpy.pl would choose for this column, so both draw the same colours
        from scanpy.plotting.palettes import default_20, default_28, default_102

        cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", [])
        palette = next(colors for colors in (cycle, default_20, default_28, default_102)
                       if len(colors) >= len(names) or colors is default_102)
    if isinstance(palette, str):
        colormap = plt.get_cmap(palette)
        palette = [colormap(i / max(len(names) - 1, 1)) for i in range(len(names))]
    if not pd.api.types.is_list_like(palette):
        raise ValueError(f"`palette` must be a list of matplotlib colours or a colormap name, got {palette!r}.")
    palette = list(palette)
    if len(palette) < len(names):
        colormap = plt.get_cmap("hsv")
        # hues spread over the colours still needed, starting past red (hsv's first)
        palette = palette + [colormap((i + 1) / (len(names) - len(palette) + 1))
                             for i in range(len(names) - len(palette))]
    colors = [to_hex(c) for c in palette[: len(names)]]
    adata.uns[colors_key(key)] = colors
    return dict(zip(names, colors))


def _legend(fig: Figure, colors: dict[str, str], title: str) -> None:
    """The domains' colours beside the panels, the figure widened to hold them."""
    handles = [Line2D([], [], marker="o", linestyle="", markersize=7, color=c, label=n) for n, c in colors.items()]
    legend = fig.legend(handles=handles, title=title, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
                        ncols=max(1, math.ceil(len(handles) / 25)))
    _widen_for(fig, legend)
    legend.set_bbox_to_anchor((fig.subplotpars.right, 0.5), transform=fig.transFigure)  # beside the panels


def _legend_inches(fig: Figure, legend) -> tuple[float, float]:
    """Width and height of ``legend`` in inches, with its padding on either side."""
    pad = 2 * legend.borderaxespad * legend.prop.get_size_in_points() / 72
    extent = legend.get_window_extent(fig.canvas.get_renderer())
    return extent.width / fig.dpi + pad, extent.height / fig.dpi + pad


def _widen_for(fig: Figure, legend) -> float:
    """Widen ``fig`` by the width of ``legend`` (drawn right of the plots), keeping the
    plots their size, so that a plain ``savefig`` keeps the legend; returns the share of
    the new width that the old figure takes."""
    width, height = fig.get_size_inches()
    extra = _legend_inches(fig, legend)[0]
    kept = width / (width + extra)
    fig.set_size_inches(width + extra, height)
    fig.subplots_adjust(left=fig.subplotpars.left * kept, right=fig.subplotpars.right * kept)
    return kept


def _heighten_for(fig: Figure, legend) -> None:
    """Make ``fig`` at least as tall as ``legend`` (a long list of entries beside a few
    rows of plots), so that a plain ``savefig`` keeps every entry."""
    width, height = fig.get_size_inches()
    needed = _legend_inches(fig, legend)[1]
    if needed > height:
        fig.set_size_inches(width, needed)


def plot_domains(
    adata: AnnData,
    key: str,
    slide_key: str | None = check.RECORDED_SLIDE_KEY,
    slides=None,
    ncols: int = 4,
    panel_size: float = 4.0,
    point_size: float | None = None,
    scale_bar: float | None = None,
    scale_bar_label: str | None = None,
    invert_yaxis: bool = False,
    legend: bool = True,
) -> Figure:
    """Domains on the tissue, one panel per slide.

    Parameters
    ----------
    adata
        Cells with ``obsm['spatial']`` and labels in ``obs[key]``. Its colours are those
        of :func:`domain_colors` (written to ``uns[f"{key}_colors"]`` if missing); cells
        without a label are drawn light grey.
    key
        ``obs`` column to colour by (e.g. ``"UTAG Label_leiden_0.1"``).
    slide_key
        ``obs`` column of the slides: one panel per slide, titled with its name. Default
        ``"auto"``: the slide column ``utag()`` recorded in ``uns['utag']['slide_key']``,
        if any (see :func:`utag.analysis.spatial_edges`); ``None``: all cells in one
        untitled panel.
    slides
        Slide name or names to draw, in this order (default ``None``: every slide, sorted).
        Needs ``slide_key``.
    ncols
        Panels per row (default ``4``; fewer when there are fewer panels).
    panel_size
        Width and height of each panel in inches (default ``4.0``).
    point_size
        Marker area in points^2; default ``None``: from the number of cells per panel, so
        that 1,000 to 1,000,000 cells fill the tissue without hiding each other. Points
        are rasterised, so figures stay small when saved as PDF/SVG.
    scale_bar
        Draw a scale bar this long (in units of ``obsm['spatial']``) at the lower right of
        every panel; default ``None``: no scale bar.
    scale_bar_label
        The scale bar's label (e.g. ``scale_bar=100, scale_bar_label="100 um"``); default
        ``None``: the length as a number.
    invert_yaxis
        Put the origin at the top left, as in images (default ``False``).
    legend
        Draw the legend (titled ``key``) outside the panels, on the right (default
        ``True``).

    Returns
    -------
    matplotlib.figure.Figure
        The figure, one axes per panel drawn.

    Examples
    --------
    >>> from utag.datasets import synthetic_tissue
    >>> adata = synthetic_tissue(n_cells=2_000, n_slides=2, random_state=0)
    >>> fig = plot_domains(adata, "domain", slide_key="roi", scale_bar=100, scale_bar_label="100 um")
    >>> len(fig.axes)
    2
    """
    coords = check.spatial_coordinates(adata)
    panel_size = check.check_positive("panel_size", panel_size, "It is each panel's width in inches.")
    if point_size is not None:
        point_size = check.check_positive("point_size", point_size, "It is the dots' area in points^2.")
    if scale_bar is not None:
        scale_bar = check.check_positive("scale_bar", scale_bar)
    labels, names = _labels(adata, key)
    colors = domain_colors(adata, key)
    rgba = to_rgba_array([colors[n] for n in names] + ["lightgrey"])  # last: missing label
    slide_key = check.recorded_slide_key(adata, slide_key)
    codes, slide_names = check.slide_codes(adata, slide_key)
    ncols = check.as_int("ncols", ncols, minimum=1)
    if slides is not None:
        if slide_key is None:
            raise ValueError("`slides` picks slides by name: pass `slide_key`, the obs column naming them.")
        wanted = [str(s) for s in check.as_list(slides)]
        _check_selection("slides", wanted, slide_names.astype(str), where=f"`obs[{slide_key!r}]`")
        panels = [int(np.flatnonzero(slide_names.astype(str) == s)[0]) for s in wanted]
    else:
        panels = list(range(len(slide_names)))
    ncols = min(ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size * ncols, panel_size * nrows), squeeze=False)
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(len(slide_names) + 1))
    for ax, panel in zip(axes.flat, panels):
        cells = order[starts[panel]: starts[panel + 1]]
        size = point_size or float(np.clip(0.6 * (panel_size * 72) ** 2 / max(len(cells), 1), 0.05, 30))
        ax.scatter(coords[cells, 0], coords[cells, 1], c=rgba[labels[cells]], s=size, linewidths=0,
                   rasterized=True)
        ax.set_aspect("equal")
        ax.set_xticks([]), ax.set_yticks([])
        if slide_key is not None:
            ax.set_title(str(slide_names[panel]))
        if invert_yaxis:
            ax.invert_yaxis()
        if scale_bar:
            from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

            ax.add_artist(AnchoredSizeBar(ax.transData, scale_bar, scale_bar_label or f"{scale_bar:g}",
                                          "lower right", frameon=False, size_vertical=0))
    for ax in axes.flat[len(panels):]:
        ax.remove()
    fig.tight_layout()  # room for the slides' names, however small the panels
    if legend:  # the domains drawn (a category no cell has is left out, as in the panels)
        shown = np.flatnonzero(np.bincount(labels[labels >= 0], minlength=len(names)) > 0)
        _legend(fig, {names[i]: colors[names[i]] for i in shown}, key)
    return fig


def _check_selection(name: str, chosen, known, where: str = "the table") -> None:
    """Refuse an empty selection or one naming values not in ``known`` (those of ``where``)."""
    if not len(chosen):
        raise ValueError(f"`{name}` is empty: name at least one, or pass None for all.")
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise ValueError(f"`{name}` {unknown} are not in {where} ({list(known)}).")


def _choice(name: str, value, table) -> None:
    """Refuse a ``value`` that is not a key (column) of ``table``, naming those that are."""
    if value not in table:
        raise ValueError(f"`{name}` must be one of {list(table)}, got {value!r}.")


def _connectivity(adata, domain_key, connectivity, slide_key, max_dist) -> dict[str, pd.DataFrame]:
    """The connectivity tables to draw: ``connectivity`` if given; else counted anew (not
    stored) with ``max_dist``; else the tables :func:`utag.analysis.domain_connectivity`
    stored; else counted from the spatial graph in ``obsp``. Given or stored tables must
    be of the current domains (they may have been counted before the labels changed):
    they are put in the current order of the domains."""
    if connectivity is not None and not (isinstance(connectivity, dict) and _square_tables(connectivity)):
        raise ValueError("`connectivity` must be the dict of tables utag.analysis.domain_connectivity returns "
                         f"(domain x domain DataFrames by name), got {type(connectivity).__name__}; or leave it "
                         "out to use the stored tables or to count them (with max_dist).")
    if connectivity is None and max_dist is not None:
        return _connectivity_tables(adata, domain_key, slide_key, max_dist)
    tables = connectivity if connectivity is not None else adata.uns.get(table_key(domain_key, "connectivity"))
    if tables is None:
        return _connectivity_tables(adata, domain_key, slide_key, max_dist)
    codes, names = _labels(adata, domain_key)
    square = _square_tables(tables)
    counted = {str(name) for name in tables[square[0]].index} if square else set()
    if counted != set(names):
        source = "`connectivity`" if connectivity is not None else f"`uns[{table_key(domain_key, 'connectivity')!r}]`"
        raise ValueError(f"{source} was counted for other domains than `obs[{domain_key!r}]` holds now (domains "
                         f"{sorted(counted)}, now {list(names)}): pass `max_dist` to count the contacts of these "
                         "cells, or run `utag.analysis.domain_connectivity` again.")
    if connectivity is None and "cells" in tables:  # stored for other cells (a subset, say)?
        stored = tables["cells"]["cells"].rename(index=str).reindex(list(names)).fillna(-1).to_numpy()
        if not np.array_equal(stored, np.bincount(codes[codes >= 0], minlength=len(names))):
            raise ValueError(f"`uns[{table_key(domain_key, 'connectivity')!r}]` was counted for other cells than "
                             "`adata` holds now (a subset?): pass `max_dist` to count the contacts of these cells, "
                             "or run `utag.analysis.domain_connectivity` again.")
    in_order = {}
    for key, table in tables.items():
        if key in square:
            table = table.rename(index=str, columns=str)
            table = table.reindex(index=list(names), columns=list(names))
        in_order[key] = table
    return in_order


def _square_tables(tables: dict) -> list[str]:
    """The names of the domain x domain tables among ``tables`` (all but ``per_slide`` and ``cells``)."""
    return [key for key, table in tables.items()
            if key not in ("per_slide", "cells") and isinstance(table, pd.DataFrame)]


def plot_domain_network(
    adata: AnnData,
    domain_key: str,
    connectivity: dict | None = None,
    slide_key: str | None = check.RECORDED_SLIDE_KEY,
    max_dist: float | None = None,
    weight: str = "counts",
    min_weight: float = 0.0,
    layout: str = "spring",
    random_state: int = 0,
    ax=None,
) -> Figure:
    """Domain adjacency as a network: node area = cells, edge width = connectivity.

    Parameters
    ----------
    adata
        Cells with domain labels in ``obs[domain_key]``. Node colours are those of
        :func:`domain_colors` (written to ``uns[f"{domain_key}_colors"]`` if missing).
    domain_key
        ``obs`` column of the domains; one node per domain, its area growing with its
        number of cells.
    connectivity
        The output of :func:`utag.analysis.domain_connectivity` to draw; it must be of the
        current domains (a ValueError says otherwise). Default ``None``: the contacts are
        counted anew with ``max_dist`` if given (not stored); else the tables
        ``domain_connectivity`` stored in ``uns[f"{domain_key}_connectivity"]`` are drawn
        (they must be of the current domains and cells); else they are counted from the
        spatial graph in ``obsp['spatial_connectivities']``.
    slide_key
        ``obs`` column of the slides, when the contacts are counted here: edges never join
        slides. Default ``"auto"``: the slide column ``utag()`` recorded in
        ``uns['utag']['slide_key']``, if any; ``None``: all cells are one slide.
    max_dist
        Count the contacts within this radius (units of ``obsm['spatial']``); default
        ``None`` (see ``connectivity``).
    weight
        The domain x domain table that sets edge widths (default ``"counts"``: number of
        contacts; ``"log2_ratio"``: contact above chance, with ``min_weight=0`` only pairs
        that touch more than chance; also ``"expected"`` or ``"ratio"``).
    min_weight
        Edges whose weight is ``<= min_weight`` are not drawn (default ``0.0``).
    layout
        ``"spring"`` (default; force-directed, weighted by ``weight``) or ``"circular"``.
    random_state
        Seed of the spring layout (default ``0``; ``None``: a fresh one).
    ax
        Matplotlib axes to draw on; default ``None``: a new 6 x 6 inch figure.

    Returns
    -------
    matplotlib.figure.Figure
        The figure drawn on (that of ``ax`` if given).

    Examples
    --------
    >>> from utag.datasets import synthetic_tissue
    >>> adata = synthetic_tissue(n_cells=2_000, n_slides=2, n_domains=4, random_state=0)
    >>> fig = plot_domain_network(adata, "domain", slide_key="roi", max_dist=20)
    >>> len(fig.axes)
    1
    """
    import networkx as nx

    random_state = check.seed(random_state)
    if isinstance(min_weight, bool) or not isinstance(min_weight, numbers.Real) or np.isnan(min_weight):
        raise ValueError(f"`min_weight` must be a number (edges of that weight or less are not drawn), got "
                         f"{min_weight!r}.")
    if layout not in ("spring", "circular"):
        raise ValueError(f"`layout` must be 'spring' or 'circular', got {layout!r}.")
    tables = _connectivity(adata, domain_key, connectivity, slide_key, max_dist)
    _choice("weight", weight, _square_tables(tables))
    weights = tables[weight]
    labels, names = _labels(adata, domain_key)
    sizes = np.bincount(labels[labels >= 0], minlength=len(names))
    colors = domain_colors(adata, domain_key)
    graph = nx.Graph()
    graph.add_nodes_from(names)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            value = float(weights.loc[a, b])
            if value > min_weight:
                graph.add_edge(a, b, weight=value)
    if layout == "circular":
        positions = nx.circular_layout(graph)
    else:
        positions = nx.spring_layout(graph, weight="weight", seed=random_state)
    fig, ax = (plt.subplots(figsize=(6, 6)) if ax is None else (ax.figure, ax))
    edge_values = np.array([graph.edges[e]["weight"] for e in graph.edges])
    if len(edge_values):
        if edge_values.min() >= 0:  # counts, ratios: width in proportion
            widths = 0.5 + 6 * edge_values / max(edge_values.max(), np.finfo(float).tiny)
        else:  # log2 ratios below 0 as well: the least depleted pair widest
            spread = np.ptp(edge_values)
            widths = 0.5 + 6 * ((edge_values - edge_values.min()) / spread if spread > 0 else 1.0)
        nx.draw_networkx_edges(graph, positions, width=widths, edge_color="grey", alpha=0.7, ax=ax)
    node_area = 300 + 2700 * sizes / max(sizes.max(), 1)
    nx.draw_networkx_nodes(graph, positions, node_size=node_area, node_color=[colors[n] for n in names],
                           edgecolors="black", linewidths=0.5, ax=ax)
    nx.draw_networkx_labels(graph, positions, font_size=9, ax=ax)
    ax.margins(0.2)
    ax.set_axis_off()
    ax.set_title(f"{domain_key}: adjacency ({weight})")
    return fig


def _arc(start: float, end: float, radius: float, n: int = 24) -> np.ndarray:
    angles = np.linspace(start, end, n)
    return np.column_stack([np.cos(angles), np.sin(angles)]) * radius


def plot_chord(
    adata: AnnData,
    domain_key: str,
    connectivity: dict | None = None,
    slide_key: str | None = check.RECORDED_SLIDE_KEY,
    max_dist: float | None = None,
    weight: str = "counts",
    gap: float = 0.03,
    ax=None,
) -> Figure:
    """Chord diagram of domain adjacency, drawn with matplotlib alone.

    Each domain is an arc of the circle, as long as its share of the contacts between
    different domains; a ribbon joins two arcs, as wide at each end as their number of
    contacts. Contacts within a domain are not drawn; with no contact between domains
    the axes only say so in their title.

    Parameters
    ----------
    adata
        Cells with domain labels in ``obs[domain_key]``. Arc colours are those of
        :func:`domain_colors` (written to ``uns[f"{domain_key}_colors"]`` if missing).
    domain_key
        ``obs`` column of the domains.
    connectivity
        The output of :func:`utag.analysis.domain_connectivity` to draw; it must be of the
        current domains. Default ``None``: the contacts are counted anew with
        ``max_dist`` if given (not stored); else the tables stored in
        ``uns[f"{domain_key}_connectivity"]`` are drawn (they must be of the current
        domains and cells); else they are counted from the spatial graph in
        ``obsp['spatial_connectivities']``.
    slide_key
        ``obs`` column of the slides, when the contacts are counted here: edges never join
        slides. Default ``"auto"``: the slide column ``utag()`` recorded in
        ``uns['utag']['slide_key']``, if any; ``None``: all cells are one slide.
    max_dist
        Count the contacts within this radius (units of ``obsm['spatial']``); default
        ``None`` (see ``connectivity``).
    weight
        The domain x domain table that sets arc and ribbon widths (default ``"counts"``;
        or another table of ``connectivity`` such as ``"ratio"``: negative values and
        NaN count as 0).
    gap
        Space between neighbouring arcs, as a fraction of the circle (default ``0.03``; with
        many domains less, so that the gaps take half the circle at the most).
    ax
        Matplotlib axes to draw on; default ``None``: a new 6 x 6 inch figure.

    Returns
    -------
    matplotlib.figure.Figure
        The figure drawn on (that of ``ax`` if given).

    Examples
    --------
    >>> from utag.datasets import synthetic_tissue
    >>> adata = synthetic_tissue(n_cells=2_000, n_slides=2, n_domains=4, random_state=0)
    >>> fig = plot_chord(adata, "domain", slide_key="roi", max_dist=20)
    >>> len(fig.axes[0].patches) > 4  # 4 arcs and the ribbons between them
    True
    """
    if isinstance(gap, bool) or not isinstance(gap, numbers.Real) or not 0 <= gap < 1:
        raise ValueError(f"`gap` must be a fraction of the circle from 0 to below 1 (default 0.03), got {gap!r}.")
    tables = _connectivity(adata, domain_key, connectivity, slide_key, max_dist)
    _choice("weight", weight, _square_tables(tables))
    matrix = np.nan_to_num(np.asarray(tables[weight], dtype=float)).clip(0)
    np.fill_diagonal(matrix, 0)
    names = list(tables[weight].index)
    colors = domain_colors(adata, domain_key)
    totals = matrix.sum(axis=1)
    fig, ax = (plt.subplots(figsize=(6, 6)) if ax is None else (ax.figure, ax))
    ax.set_xlim(-1.25, 1.25), ax.set_ylim(-1.25, 1.25), ax.set_aspect("equal"), ax.set_axis_off()
    if totals.sum() == 0:
        ax.set_title(f"{domain_key}: no contacts between domains")
        return fig
    gap = min(gap, 0.5 / len(names))  # the gaps take half the circle at the most, however many domains
    span = 2 * np.pi * (1 - gap * len(names)) * totals / totals.sum()
    starts = np.concatenate([[0], np.cumsum(span + 2 * np.pi * gap)[:-1]])
    # sub-arc of domain a reserved for its contacts with b, partners in index order
    offsets = np.cumsum(np.divide(matrix, totals[:, None], out=np.zeros_like(matrix), where=totals[:, None] > 0)
                        * span[:, None], axis=1)
    ends = starts[:, None] + offsets
    begins = ends - np.divide(matrix, totals[:, None], out=np.zeros_like(matrix),
                              where=totals[:, None] > 0) * span[:, None]
    for i, name in enumerate(names):
        if span[i] > 0:
            ax.add_patch(Wedge((0, 0), 1.08, np.degrees(starts[i]), np.degrees(starts[i] + span[i]), width=0.06,
                               color=colors.get(name, "grey")))
            middle = starts[i] + span[i] / 2
            ax.text(1.16 * np.cos(middle), 1.16 * np.sin(middle), name, ha="center", va="center", fontsize=8,
                    rotation=np.degrees(middle) - 90 if np.sin(middle) >= 0 else np.degrees(middle) + 90)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if matrix[i, j] <= 0:
                continue
            first, second = _arc(begins[i, j], ends[i, j], 1.0), _arc(begins[j, i], ends[j, i], 1.0)
            vertices = np.vstack([first, [0, 0], second[0], second[1:], [0, 0], first[0], first[0]])
            codes = ([Path.MOVETO] + [Path.LINETO] * (len(first) - 1) + [Path.CURVE3, Path.CURVE3]
                     + [Path.LINETO] * (len(second) - 1) + [Path.CURVE3, Path.CURVE3, Path.CLOSEPOLY])
            ax.add_patch(PathPatch(Path(vertices, codes), facecolor=colors.get(names[i], "grey"), alpha=0.55,
                                   edgecolor="none"))
    ax.set_title(f"{domain_key}: contacts between domains")
    return fig


def plot_composition(
    adata: AnnData,
    domain_key: str,
    celltype_key: str,
    kind: str = "heatmap",
    value: str = "proportions",
    ax=None,
) -> Figure:
    """Cell types per domain as a heatmap or stacked bars.

    The tables are those of :func:`utag.analysis.domain_composition` (summed over slides).

    Parameters
    ----------
    adata
        Cells with domain labels and cell types in ``obs``.
    domain_key
        ``obs`` column of the domains (rows).
    celltype_key
        ``obs`` column of the cell types (heatmap columns, or bar segments coloured by
        :func:`domain_colors`, which writes ``uns[f"{celltype_key}_colors"]`` if missing).
    kind
        ``"heatmap"`` (default) or ``"bars"`` (one stacked horizontal bar per domain).
    value
        What is drawn: ``"proportions"`` (default; rows sum to 1), ``"counts"`` or
        ``"enrichment"`` (log2 of the proportion in the domain over that in the whole
        tissue, on a symmetric red-blue scale; heatmap only).
    ax
        Matplotlib axes to draw on; default ``None``: a new figure sized to the table.

    Returns
    -------
    matplotlib.figure.Figure
        The figure drawn on (that of ``ax`` if given).

    Examples
    --------
    >>> from utag.datasets import synthetic_tissue
    >>> adata = synthetic_tissue(n_cells=2_000, n_domains=3, n_cell_types=4, random_state=0)
    >>> fig = plot_composition(adata, "domain", "cell_type", kind="bars")
    >>> len(fig.axes[0].patches)  # 3 domains x 4 cell types
    12
    """
    if kind not in ("heatmap", "bars"):
        raise ValueError(f"`kind` must be 'heatmap' or 'bars', got {kind!r}.")
    composition = domain_composition(adata, domain_key, celltype_key, slide_key=None)  # the pooled tables
    _choice("value", value, composition)
    if kind == "bars" and value == "enrichment":
        raise ValueError("`value='enrichment'` (log2 fold changes, negative for depleted cell types) is drawn as "
                         "a heatmap: pass kind='heatmap', or kind='bars' with value='proportions' or 'counts'.")
    table = composition[value]
    created = ax is None
    # a heatmap has a column per cell type; bars are as wide whatever their number
    width = 1.0 + 0.45 * table.shape[1] if kind == "heatmap" else 7.0
    fig, ax = plt.subplots(figsize=(width, 1.0 + 0.4 * table.shape[0])) if ax is None else (ax.figure, ax)
    ax.set_ylabel(domain_key)
    if kind == "heatmap":
        data = table.to_numpy(dtype=float)
        finite = data[np.isfinite(data)]
        if value == "enrichment":
            limit = max(float(np.abs(finite).max()) if finite.size else 1.0, 1e-9)
            image = ax.imshow(np.clip(data, -limit, limit), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
        else:
            image = ax.imshow(data, cmap="viridis", aspect="auto")
        fig.colorbar(image, ax=ax, label=value)
        ax.set_xticks(range(table.shape[1]), table.columns, rotation=90)
        ax.set_yticks(range(table.shape[0]), table.index)
    else:
        colors = domain_colors(adata, celltype_key)
        left = np.zeros(len(table))
        for cell_type in table.columns:
            ax.barh(table.index, table[cell_type], left=left, color=colors[cell_type], label=cell_type)
            left += table[cell_type].to_numpy()
        ax.invert_yaxis()
        ax.set_xlabel(value)
        legend = ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, title=celltype_key)
        if created:  # a figure of the caller's keeps its size
            _heighten_for(fig, legend)
            _widen_for(fig, legend)
            fig.tight_layout()  # room for the domains' names too
    return fig


def plot_colocalization(
    table: pd.DataFrame,
    value: str = "log2_ratio",
    alpha: float = 0.05,
    domains=None,
    cell_types=None,
    ncols: int = 3,
    panel_size: float | None = None,
) -> Figure:
    """One cell type x cell type heatmap per domain, ``*`` where ``p_value < alpha``.

    Colours share one symmetric scale across domains (red: more contact than chance),
    with a colour bar.

    Parameters
    ----------
    table
        The output of :func:`utag.analysis.measure_per_domain_cell_type_colocalization`
        (columns ``domain``, ``cell_type_a``, ``cell_type_b``, ``p_value`` and ``value``).
    value
        Column coloured (default ``"log2_ratio"``; e.g. ``"z_score"``).
    alpha
        Pairs with ``p_value < alpha`` are marked ``*`` (default ``0.05``).
    domains
        Domain name or names to show, in this order (default ``None``: every domain, in
        the table's order); one panel each.
    cell_types
        Cell type name or names to show, in this order (default ``None``: every cell type
        of the table).
    ncols
        Panels per row (default ``3``; fewer when there are fewer domains).
    panel_size
        Width and height of each panel in inches; default ``None``: grows with the number
        of cell types (at least 4).

    Returns
    -------
    matplotlib.figure.Figure
        A new figure: one axes per domain and one for the colour bar.

    Examples
    --------
    >>> from utag.analysis import measure_per_domain_cell_type_colocalization
    >>> from utag.datasets import synthetic_tissue
    >>> adata = synthetic_tissue(n_cells=2_000, n_domains=2, n_cell_types=3, random_state=0)
    >>> table = measure_per_domain_cell_type_colocalization(
    ...     adata, "domain", "cell_type", max_dist=20, n_permutations=20)
    >>> len(plot_colocalization(table).axes)  # 2 domains and a colour bar
    3
    """
    needed = ["domain", "cell_type_a", "cell_type_b", "p_value"]
    columns = list(table.columns) if isinstance(table, pd.DataFrame) else None
    if columns is None or not set(needed) <= set(columns) or table.empty:
        got = (f"a {type(table).__name__}" if columns is None else
               "an empty table" if set(needed) <= set(columns) else f"a table with columns {columns}")
        raise ValueError(f"`table` must be what utag.analysis.measure_per_domain_cell_type_colocalization returns "
                         f"(one row per domain and pair of cell types, columns {needed} and the values), got {got}.")
    _choice("value", value, table)
    # names as text throughout: integer labels and selections of them match
    table = table.assign(**{column: table[column].astype(str) for column in ("domain", "cell_type_a", "cell_type_b")})
    known_types = pd.unique(pd.concat([table["cell_type_a"], table["cell_type_b"]]))
    if cell_types is None:
        types = pd.Index(known_types)
    else:
        types = pd.Index([str(t) for t in check.as_list(cell_types)])
        _check_selection("cell_types", types, known_types)
        table = table[table["cell_type_a"].isin(types) & table["cell_type_b"].isin(types)]
    known_domains = pd.unique(table["domain"])
    domains = list(known_domains) if domains is None else [str(d) for d in check.as_list(domains)]
    _check_selection("domains", domains, known_domains)
    limit = max(float(np.nanmax(np.abs(table[value]))), 1e-9)
    ncols = min(check.as_int("ncols", ncols, minimum=1), len(domains))
    nrows = math.ceil(len(domains) / ncols)
    if panel_size is not None:
        panel_size = check.check_positive("panel_size", panel_size, "It is each panel's width in inches.")
    panel_size = panel_size or max(4.0, 2.5 + 0.25 * len(types))
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size * ncols, panel_size * nrows), squeeze=False,
                             layout="constrained")
    for ax, domain in zip(axes.flat, domains):
        rows = table[table["domain"] == domain]
        a, b = types.get_indexer(rows["cell_type_a"]), types.get_indexer(rows["cell_type_b"])
        square = np.full((len(types), len(types)), np.nan)
        square[a, b] = square[b, a] = rows[value].to_numpy()
        image = ax.imshow(square, cmap="RdBu_r", vmin=-limit, vmax=limit)
        significant = rows["p_value"].to_numpy() < alpha
        for i, j in zip(a[significant], b[significant]):
            ax.text(j, i, "*", ha="center", va="center", fontsize=10)
            if i != j:
                ax.text(i, j, "*", ha="center", va="center", fontsize=10)
        ax.set_xticks(range(len(types)), types, rotation=90, fontsize=7)
        ax.set_yticks(range(len(types)), types, fontsize=7)
        ax.set_title(str(domain))
    for ax in axes.flat[len(domains):]:
        ax.remove()
    fig.colorbar(image, ax=list(axes.flat[: len(domains)]), label=value, shrink=0.6)
    return fig


def plot_resolution_sweep(table: pd.DataFrame, ax=None) -> Figure:
    """Stability, agreement, spatial coherence and score of a :func:`utag.tuning.resolution_sweep` against the
    resolution (log scale), with the number of domains on a second axis and the
    recommended resolutions marked (rank 1 labelled).

    Parameters
    ----------
    table
        The table of :func:`utag.tuning.resolution_sweep` (one row per resolution), or
        the dict ``utag(..., resolutions="auto")`` stores in
        ``uns['utag_resolution_sweep']`` (its ``"table"`` is drawn). Needs the columns
        ``resolution``, ``n_domains`` and ``recommended`` (and, where a row is
        recommended, ``rank`` and ``score``); each of ``stability``, ``agreement``,
        ``spatial_coherence`` and ``score`` is drawn if present.
    ax
        Matplotlib axes to draw on; default ``None``: a new 6 x 3.5 inch figure. The
        number of domains goes on a twin axes of it.

    Returns
    -------
    matplotlib.figure.Figure
        The figure drawn on (that of ``ax`` if given).

    Examples
    --------
    >>> table = pd.DataFrame({"resolution": [0.05, 0.1, 0.3], "n_domains": [2, 4, 9],
    ...     "stability": [0.9, 0.95, 0.6], "agreement": [0.8, 0.85, 0.5], "score": [0.72, 0.81, 0.3],
    ...     "recommended": [False, True, False], "rank": [None, 1, None]})
    >>> len(plot_resolution_sweep(table).axes)
    2

    The sweep ``utag(..., resolutions="auto")`` stored is drawn too:
    ``plot_resolution_sweep(result.uns["utag_resolution_sweep"])``.
    """
    if isinstance(table, dict) and "table" in table:  # what utag() stores in uns['utag_resolution_sweep']
        table = table["table"]
    needed = [c for c in ("resolution", "n_domains", "recommended", "rank", "score")
              if c not in getattr(table, "columns", [])]
    if needed:
        raise ValueError(f"`table` lacks the column(s) {needed}: pass the table of utag.tuning.resolution_sweep, "
                         "or result.uns['utag_resolution_sweep'].")
    fig, ax = (plt.subplots(figsize=(6, 3.5)) if ax is None else (ax.figure, ax))
    columns = [("stability", "o-"), ("agreement", "s--"), ("spatial_coherence", "^:"), ("score", "D-")]
    for column, style in columns:
        if column in table:  # tables from before spatial coherence have no such column
            ax.plot(table["resolution"], table[column], style, label=column.replace("_", " "),
                    linewidth=2 if column == "score" else 1)
    ax.set_xscale("log")
    ax.set_xlabel("resolution")
    ax.set_ylabel("score and its terms")
    domains = ax.twinx()
    domains.plot(table["resolution"], table["n_domains"], ":", color="grey", label="domains")
    domains.set_ylabel("domains", color="grey")
    domains.set_yscale("log")
    for row in table[table["recommended"]].itertuples():
        ax.axvline(row.resolution, color="red", alpha=0.3 if row.rank != 1 else 0.8)
        if row.rank == 1:
            ax.annotate(f"chosen: {row.resolution:g}\n({row.n_domains} domains)", (row.resolution, row.score),
                        xytext=(5, -30), textcoords="offset points", color="red", fontsize=8)
    ax.legend(loc="lower left", fontsize=8, frameon=False)
    return fig


def plot_domain_hierarchy(adata: AnnData, keys: list[str], ax=None) -> Figure:
    """How the domains of successive labellings (coarse to fine, top to bottom) nest.

    One row per labelling; a node per domain, its area proportional to its cells; a line
    from each domain to the coarser domain holding most of its cells, as wide as the
    cells they share. A domain none of whose cells has a label in the coarser labelling
    has no line up; it is drawn at the right end of its row. Node colours are the
    labellings' ``uns`` colours (:func:`domain_colors`, which writes
    ``uns[f"{key}_colors"]`` for each key that has none).

    Parameters
    ----------
    adata
        Cells with the labellings in ``obs``.
    keys
        ``obs`` columns of the labellings, coarse to fine (e.g. the same method at
        increasing resolutions); at least one. How they nest is
        :func:`utag.labels.domain_hierarchy`.
    ax
        Matplotlib axes to draw on; default ``None``: a new figure 8 inches wide, taller
        with more keys.

    Returns
    -------
    matplotlib.figure.Figure
        The figure drawn on (that of ``ax`` if given).

    Examples
    --------
    >>> import anndata
    >>> obs = pd.DataFrame({"a": list("0000111"), "b": list("0011222")}, index=list("abcdefg"))
    >>> ax = plot_domain_hierarchy(anndata.AnnData(obs=obs), ["a", "b"]).axes[0]
    >>> len(ax.collections), len(ax.lines)  # a row of nodes per labelling, a line per finer domain
    (2, 3)
    """
    from .labels import domain_hierarchy

    keys = check.as_list(keys)
    if not keys:
        raise ValueError("`keys` needs at least one labelling (obs column), coarse to fine.")
    hierarchy = domain_hierarchy(adata, keys)
    fig, ax = (plt.subplots(figsize=(8, 1.2 + 1.3 * len(keys))) if ax is None else (ax.figure, ax))
    positions: dict[tuple[str, str], float] = {}
    sizes = adata.obs[keys[0]].astype("string").value_counts()  # cells without a label are not drawn
    order = sorted(sizes.index, key=lambda d: (len(d), d))
    positions.update({(keys[0], d): (i + 0.5) / len(order) for i, d in enumerate(order)})
    for level, key in enumerate(keys):
        counts = adata.obs[key].astype("string").value_counts()
        if level > 0:
            rows = hierarchy[hierarchy["fine_key"] == key]
            rows = rows.assign(anchor=[positions[(keys[level - 1], p)] for p in rows["parent"]])
            rows = rows.sort_values(["anchor", "n_cells"], ascending=[True, False])
            # without a parent, but drawn all the same: the finer labellings may nest into it
            orphans = sorted(set(counts.index) - set(rows["domain"]), key=lambda d: (len(d), d))
            n_nodes = len(rows) + len(orphans)
            for i, row in enumerate(rows.itertuples()):
                positions[(key, row.domain)] = (i + 0.5) / n_nodes
                ax.plot([row.anchor, positions[(key, row.domain)]], [-(level - 1), -level], color="grey",
                        linewidth=0.5 + 6 * row.n_cells * row.purity / adata.n_obs, zorder=1)
            positions.update({(key, d): (len(rows) + i + 0.5) / n_nodes for i, d in enumerate(orphans)})
        colors = domain_colors(adata, key)
        domains = list(counts.index)
        ax.scatter([positions[(key, d)] for d in domains], [-level] * len(domains),
                   s=[50 + 1500 * counts[d] / adata.n_obs for d in domains],
                   c=[colors.get(d, "grey") for d in domains], edgecolors="black", linewidths=0.5, zorder=2)
        for d in domains:
            ax.annotate(d, (positions[(key, d)], -level), ha="center", va="center", fontsize=7, zorder=3)
    ax.set_yticks([-level for level in range(len(keys))], keys)
    ax.set_xticks([])
    ax.set_xlim(0, 1)
    ax.set_ylim(-len(keys) + 0.5, 0.5)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    return fig
