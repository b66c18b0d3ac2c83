"""Images behind the domains: RGB composites of multiplexed images, attached where
``scanpy.pl.spatial`` and ``squidpy.pl.spatial_scatter`` look for them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from anndata import AnnData

from . import _validation as check

__all__ = ["rgb_image", "add_spatial_image"]


def rgb_image(
    image,
    channels,
    channel_names=None,
    percentiles: tuple[float, float] = (1.0, 99.0),
    gamma: float = 1.0,
    log_transform: bool = False,
    channel_axis: int = 0,
) -> np.ndarray:
    """An RGB composite (height x width x 3, floats in [0, 1]) of up to 3 channels.

    Parameters
    ----------
    image
        A multiplexed image (channels x height x width, e.g. an IMC/CODEX/CyCIF stack; see
        ``channel_axis`` for another layout) or the path of a (OME-)TIFF holding one (read
        with tifffile).
    channels
        1 to 3 channels for red, green and blue, in that order (a single one: red only):
        indices along ``channel_axis``, or names looked up in ``channel_names``; ``None``
        in the list leaves that colour black.
    channel_names
        The name of every channel, in order (e.g. the panel's marker names, or
        ``adata.var_names`` when the image's channels are the AnnData's features); needed
        only when ``channels`` gives names. Default ``None``: channels by index only.
    percentiles
        ``(low, high)``, ``0 <= low < high <= 100`` (default ``(1.0, 99.0)``): each channel
        is linearly stretched so that these percentiles of its finite intensities map to
        0 and 1 (contrast), then clipped. A channel with no contrast is black.
    gamma
        Applied after stretching as ``x ** (1 / gamma)`` (default ``1.0``: none; > 1
        brightens dim signal; must be > 0).
    log_transform
        ``log1p`` the intensities (negative ones taken as 0) before stretching, for very
        skewed markers (default ``False``).
    channel_axis
        Axis of ``image`` holding the channels (default ``0``; ``-1`` for height x width x
        channels).

    Returns
    -------
    numpy.ndarray
        float32 array of shape (height, width, 3), values in [0, 1]; NaN pixels are black.

    Examples
    --------
    >>> stack = np.random.default_rng(0).gamma(1.0, size=(5, 32, 48))
    >>> rgb = rgb_image(stack, channels=[4, 0, None])
    >>> rgb.shape, float(rgb[..., 2].max()), bool(rgb.min() >= 0 and rgb.max() <= 1)
    ((32, 48, 3), 0.0, True)
    >>> names = ["DNA", "CD3", "CD20", "CD68", "panCK"]
    >>> by_name = rgb_image(stack, channels=["panCK", "DNA", None], channel_names=names)
    >>> bool(np.array_equal(by_name, rgb))
    True
    """
    if isinstance(image, (str, Path)):
        import tifffile

        image = tifffile.imread(image)
    stack = np.moveaxis(np.asarray(image), channel_axis, 0)
    if stack.ndim != 3:
        raise ValueError(f"`image` must have 3 dimensions (channels, height, width); got shape {stack.shape}.")
    channels = check.as_list(channels)
    if not 1 <= len(channels) <= 3:
        raise ValueError(f"`channels` needs 1 to 3 entries (red, green, blue), got {len(channels)}.")
    low, high = percentiles
    if not 0 <= low < high <= 100:
        raise ValueError(f"`percentiles` must satisfy 0 <= low < high <= 100, got {percentiles}.")
    if gamma <= 0:
        raise ValueError(f"`gamma` must be > 0, got {gamma}.")
    rgb = np.zeros(stack.shape[1:] + (3,), dtype=np.float32)
    for colour, channel in enumerate(channels):
        if channel is None:
            continue
        if isinstance(channel, str):
            names = [] if channel_names is None else [str(name) for name in channel_names]
            if channel not in names:
                raise ValueError(f"channel {channel!r} is not in `channel_names` ({names}).")
            channel = names.index(channel)
        if not 0 <= int(channel) < stack.shape[0]:
            raise ValueError(f"channel {channel} is out of range: the image has {stack.shape[0]} channels.")
        values = stack[int(channel)].astype(np.float32)
        if log_transform:
            values = np.log1p(np.clip(values, 0, None))
        finite = np.isfinite(values)  # a NaN pixel must not blank the channel: it is drawn black
        bottom, top = np.percentile(values[finite], [low, high]) if finite.any() else (0.0, 0.0)
        values = np.where(finite, values, bottom)
        scaled = np.clip((values - bottom) / (top - bottom), 0, 1) if top > bottom else np.zeros_like(values)
        rgb[..., colour] = scaled ** (1.0 / gamma)
    return rgb


def add_spatial_image(
    adata: AnnData,
    image: np.ndarray,
    library_id: str,
    scale: float = 1.0,
    img_key: str = "hires",
    spot_diameter: float = 10.0,
) -> None:
    """Attach ``image`` so that scanpy/squidpy spatial plots draw the cells over it.

    Writes ``adata.uns['spatial'][library_id]`` (replacing what was there) with
    ``images[img_key]`` and the ``scalefactors`` (``tissue_{img_key}_scalef`` and
    ``spot_diameter_fullres``); other libraries in ``uns['spatial']`` are kept. Then,
    e.g. ``sc.pl.spatial(adata[adata.obs["roi"] == library_id],
    color="UTAG Label_leiden_0.1", library_id=library_id, img_key=img_key)``.

    Parameters
    ----------
    adata
        Cells with ``obsm['spatial']``, changed in place.
    image
        The image: height x width (grey) or height x width x 3 or 4 (RGB(A), e.g. from
        :func:`rgb_image`).
    library_id
        Name of the image in ``uns['spatial']``; scanpy and squidpy pick it by this name
        (typically the slide's name in ``obs``, e.g. ``"roi_0"``).
    scale
        Image pixels per unit of ``obsm['spatial']`` (default ``1.0``: the coordinates are
        pixels of this image), stored as ``tissue_{img_key}_scalef``.
    img_key
        Key of the image in ``images`` and in the scale factor's name (default
        ``"hires"``, scanpy's default).
    spot_diameter
        Diameter of a cell's dot in units of ``obsm['spatial']`` (default ``10.0``),
        stored as ``spot_diameter_fullres``; scanpy sizes the dots by it.

    Examples
    --------
    >>> import anndata
    >>> adata = anndata.AnnData(np.zeros((3, 1)), obsm={"spatial": np.ones((3, 2))})
    >>> add_spatial_image(adata, np.zeros((10, 10, 3)), "roi_0")
    >>> sorted(adata.uns["spatial"]["roi_0"])
    ['images', 'scalefactors']
    >>> adata.uns["spatial"]["roi_0"]["scalefactors"]
    {'tissue_hires_scalef': 1.0, 'spot_diameter_fullres': 10.0}
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"`image` must be height x width (x 3 or 4); got shape {image.shape}.")
    # one assignment of a new dict: on a view (one slide of a result) it makes the view its
    # own AnnData, as anndata does for any write, and never writes into the parent's uns
    spatial = dict(adata.uns.get("spatial", {}))
    spatial[library_id] = {
        "images": {img_key: image},
        "scalefactors": {f"tissue_{img_key}_scalef": float(scale), "spot_diameter_fullres": float(spot_diameter)},
    }
    adata.uns["spatial"] = spatial
