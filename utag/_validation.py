"""Input checks shared by the public functions.

Every check raises a ``ValueError`` whose message names the offending argument, says what
was found and how to fix the call.
"""
from __future__ import annotations

import logging
import numbers
from collections.abc import Hashable, Iterable

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

CLUSTERING_METHODS = ("leiden", "parc", "kmeans")


def as_list(values) -> list:
    """``values`` as a list: a string or any single value (an integer slide name) is one item."""
    if isinstance(values, str) or not pd.api.types.is_list_like(values):
        return [values]
    return list(values)


def as_int(name: str, value, minimum: int = 1) -> int:
    """Accept ints and integral floats (R sends ``10`` as ``10.0``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) \
            or value != int(value):
        raise ValueError(f"`{name}` must be a whole number, got {value!r}.")
    if int(value) < minimum:
        raise ValueError(f"`{name}` must be at least {minimum}, got {value!r}.")
    return int(value)


def n_jobs(value, name: str = "n_jobs") -> int | None:
    """Threads: ``None`` or ``-1`` (every core) or a whole number of at least 1."""
    if value is None or (not isinstance(value, bool) and isinstance(value, numbers.Real) and value == -1):
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) \
            or value != int(value) or value < 1:
        raise ValueError(f"`{name}` must be a number of threads (1 or more), or None or -1 for one per core; "
                         f"got {value!r}.")
    return int(value)


def seed(value, name: str = "random_state") -> int:
    """A seed from an integer, an integral float (R sends ``1`` as ``1.0``) or ``None``
    (a fresh seed, which the caller records so that the run can be repeated)."""
    if value is None:
        return int(np.random.SeedSequence().generate_state(1)[0])
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) \
            or value != int(value) or not 0 <= int(value) < 2**32:
        raise ValueError(f"`{name}` must be a whole number from 0 to 2**32 - 1 (or None for a fresh seed), "
                         f"got {value!r}.")
    return int(value)


def as_float(value) -> float:
    """``float(value)``, with single-precision numbers as they print: ``np.float32(0.3)``
    (also after pandas or NumPy widened it to 0.30000001192092896) gives 0.3, so keys made
    from it read as the user typed them; so does the rounding noise of double-precision
    arithmetic (``0.1 + 0.2``, ``np.arange(0.1, 0.4, 0.1)``: 0.30000000000000004).

    Examples
    --------
    >>> as_float(np.float32(0.3)), as_float(0.1 + 0.2), as_float(1 / 3)
    (0.3, 0.3, 0.3333333333333333)
    """
    if isinstance(value, np.floating) and value.dtype.itemsize < 8:  # single or half precision
        return float(str(value))
    value = float(value)
    single = np.float32(value)
    if np.isfinite(single) and float(single) == value:
        return float(str(single))
    short = float(f"{value:.12g}")  # within a few units in the last place: the number meant
    return short if abs(short - value) <= 4 * np.spacing(abs(value)) else value


#: What :func:`check_positive` says of a distance that is not positive.
DISTANCE_HINT = ("It is a distance in the units of `obsm['spatial']` (e.g. pixels); for IMC (1 px = 1 um) "
                 "10-40 is typical.")


def check_positive(name: str, value, hint: str = DISTANCE_HINT) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}.")
    if value <= 0:
        raise ValueError(f"`{name}` must be > 0, got {value!r}. {hint}")
    return as_float(value)


#: ``normalization_mode`` names: the neighbourhood mean (the published method) and the
#: plain sum (what the original does for any other value).
NORMALIZATION_MODES = {"l1_norm": "l1_norm", "mean": "l1_norm", "sum": "sum", "none": "sum"}


def normalization_mode(value) -> str:
    """``"l1_norm"`` (mean) or ``"sum"``; ``None`` is the sum too (no normalisation)."""
    if value is None:
        return "sum"
    if isinstance(value, str) and value.lower() in NORMALIZATION_MODES:
        return NORMALIZATION_MODES[value.lower()]
    raise ValueError(f"`normalization_mode` must be one of {list(NORMALIZATION_MODES)} (or None), got {value!r}: "
                     "'l1_norm' (or 'mean') averages over the neighbourhood, as published; 'sum' (or 'none', "
                     "None) adds the neighbours up, which is what the original code did for any other value.")


def check_n_cells(adata: AnnData, features: bool = True) -> None:
    """An AnnData with cells (and, unless ``features=False``, features)."""
    if not isinstance(adata, AnnData):
        raise ValueError(f"`adata` must be an AnnData object, got {type(adata).__name__}.")
    if adata.n_obs == 0:
        raise ValueError("`adata` has zero cells (n_obs == 0); there is nothing to segment.")
    if features and adata.n_vars == 0:
        raise ValueError("`adata` has zero features (n_vars == 0); UTAG needs marker intensities.")


def spatial_coordinates(adata: AnnData, basis: str = "spatial") -> np.ndarray:
    """Return ``obsm[basis]`` as a finite float64 array of shape (n_cells, 2 or 3)."""
    if basis not in adata.obsm:
        present = list(adata.obsm.keys()) or "nothing"
        raise ValueError(
            f"`adata.obsm['{basis}']` is missing (obsm holds: {present}). Store the cell "
            f"centroids there, e.g. `adata.obsm['{basis}'] = df[['x', 'y']].to_numpy()`."
        )
    coords = adata.obsm[basis]
    coords = coords.to_numpy() if isinstance(coords, pd.DataFrame) else np.asarray(coords)
    if coords.ndim != 2 or coords.shape[0] != adata.n_obs or coords.shape[1] not in (2, 3):
        raise ValueError(
            f"`adata.obsm['{basis}']` must have shape (n_cells, 2) or (n_cells, 3) with one "
            f"row of x, y[, z] per cell; got shape {coords.shape} for {adata.n_obs} cells."
        )
    try:
        coords = coords.astype(np.float64, copy=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"`adata.obsm['{basis}']` must be numeric: {error}") from None
    bad = ~np.isfinite(coords).all(axis=1)
    if bad.any():
        examples = list(adata.obs_names[bad][:5])
        raise ValueError(
            f"`adata.obsm['{basis}']` has NaN or infinite coordinates for {bad.sum()} cells "
            f"(e.g. {examples}). Remove those cells or fix their centroids first."
        )
    return coords


#: The ``slide_key`` default of the functions that read what ``utag()`` wrote: the slide
#: column it recorded in ``uns['utag']['slide_key']`` (see :func:`recorded_slide_key`).
RECORDED_SLIDE_KEY = "auto"

_logger = logging.getLogger("utag")

#: The name of the one slide of ``slide_key=None``, and the ``slide`` of the rows that pool
#: every slide (:func:`utag.evaluation.evaluate_performance`,
#: :func:`utag.tuning.max_dist_report`); no slide may then have that name.
POOLED = "all"


def recorded_slide_key(adata: AnnData, slide_key: str | None, record: AnnData | None = None) -> str | None:
    """``slide_key`` as given; for :data:`RECORDED_SLIDE_KEY`, the slide column ``utag()``
    recorded in ``record.uns['utag']`` (default ``record``: ``adata``), so that slides whose
    coordinates overlap are never pooled by default. ``None`` (all cells one slide) when
    nothing was recorded or ``utag()`` ran on one slide, and, with a warning, when
    ``adata.obs`` lacks the recorded column."""
    if not is_auto(slide_key):  # "auto" in any case asks for the recorded column
        return slide_key
    recorded = (adata if record is None else record).uns.get("utag", {}).get("slide_key")
    if recorded is None or recorded == "None":  # utag() records slide_key=None as "None"
        return None
    if recorded not in adata.obs.columns:
        _logger.warning("utag() ran with slide_key=%r, but `adata.obs` has no column %r: all cells are taken as one "
                        "slide. Pass `slide_key=` the column naming the slides, or `slide_key=None` if they are "
                        "one slide.", recorded, recorded)
        return None
    return str(recorded)


def check_no_slide_named_pooled(slide_names, slide_key: str, parameter: str = "slide_key") -> None:
    """Refuse a slide named :data:`POOLED` where pooled rows are made: the two could not be
    told apart."""
    if POOLED in {str(name) for name in slide_names}:
        raise ValueError(f"`{parameter}={slide_key!r}` names a slide {POOLED!r}, the name of the row that pools "
                         f"every slide, so the two could not be told apart: rename that slide, e.g. "
                         f"adata.obs[{slide_key!r}] = adata.obs[{slide_key!r}].astype(str).replace({POOLED!r}, "
                         f"'{POOLED}_1').")


def slide_codes(adata: AnnData, slide_key: str | None) -> tuple[np.ndarray, pd.Index]:
    """Integer code per cell and the slide names; one slide when ``slide_key`` is None."""
    if slide_key is None:
        return np.zeros(adata.n_obs, dtype=np.int64), pd.Index([POOLED])
    if not isinstance(slide_key, Hashable):
        raise ValueError(f"`slide_key` must name a column of `adata.obs`, got a {type(slide_key).__name__}; to "
                         "use these values, store them first: `adata.obs['slide'] = values`, then "
                         "`slide_key='slide'`.")
    if slide_key not in adata.obs.columns:
        raise ValueError(
            f"`slide_key={slide_key!r}` is not a column of `adata.obs` (columns: "
            f"{list(adata.obs.columns)}). Pass the column that names each cell's slide/image, "
            "or `slide_key=None` if all cells come from one image."
        )
    values = adata.obs[slide_key]
    if not isinstance(values, pd.Series):  # obs read lazily (anndata.experimental.read_lazy): xarray
        values = values.to_pandas()
    if values.isna().any():
        raise ValueError(
            f"`adata.obs[{slide_key!r}]` is missing for {int(values.isna().sum())} cells; "
            "every cell needs a slide. Fill or drop them first."
        )
    codes, names = pd.factorize(values, sort=True)
    return codes.astype(np.int64), pd.Index(names)


def warn_if_names_are_not_text(adata: AnnData) -> None:
    """Warn when ``obs_names`` are not text (an index set to integers in place): AnnData
    turns them into text in the result, so assigning a result column back by name would
    match no cell."""
    if not pd.api.types.is_string_dtype(adata.obs_names) and adata.n_obs:
        _logger.warning("adata.obs_names are %s, not text: the result's are their text ('0', '1', ...), so copy "
                        "labels back by position, e.g. `adata.obs[key] = result.obs[key].to_numpy()`.",
                        adata.obs_names.dtype)


def save_key(key, name: str = "save_key", what: str = "the start of the label columns' names") -> None:
    """A ``ValueError`` unless ``key`` (the parameter ``name``) can name ``obs`` columns,
    ``obsm`` or ``uns`` keys that .h5ad and .zarr files store (text without '/', which
    they read as a folder)."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"`{name}` must be a non-empty string ({what}), got {key!r}.")
    if "/" in key:
        raise ValueError(f"`{name}={key!r}` contains '/': .h5ad and .zarr files take it for a folder, and the "
                         "result could not be written and read back. Use another character, e.g. "
                         f"{key.replace('/', '_')!r}.")


def channel_indices(adata: AnnData, channels_to_use) -> np.ndarray | None:
    """Positions of ``channels_to_use`` in ``var_names`` (None keeps all)."""
    if channels_to_use is None:
        return None
    if not isinstance(channels_to_use, str) and not pd.api.types.is_list_like(channels_to_use):
        raise ValueError(f"`channels_to_use` must be a list of feature names (or of positions, or a mask), got "
                         f"{channels_to_use!r}; pass None to use every feature.")
    channels = [channels_to_use] if isinstance(channels_to_use, str) else list(channels_to_use)
    if not channels:
        raise ValueError("`channels_to_use` is empty; pass None to use every feature.")
    if all(isinstance(c, (bool, np.bool_)) for c in channels):  # a mask over the features
        if len(channels) != adata.n_vars:
            raise ValueError(f"`channels_to_use` is a mask of {len(channels)} values for {adata.n_vars} features; "
                             "give one per feature, or the channels' names.")
        channels = list(adata.var_names[np.asarray(channels, dtype=bool)])
        if not channels:
            raise ValueError("`channels_to_use` selects no feature; pass None to use every feature.")
    elif all(isinstance(c, numbers.Integral) for c in channels) and not adata.var_names.isin(channels).any():
        outside = [int(c) for c in channels if not -adata.n_vars <= c < adata.n_vars]
        if outside:  # positions, as the original's adata[:, channels_to_use] took them
            raise ValueError(f"`channels_to_use` positions {outside} are outside the {adata.n_vars} features.")
        channels = list(adata.var_names[np.asarray(channels, dtype=np.int64)])
    repeated = sorted({c for c in channels if channels.count(c) > 1}, key=channels.index)
    if repeated:
        raise ValueError(f"`channels_to_use` names {repeated} more than once; name each channel once.")
    missing = [c for c in channels if c not in adata.var_names]
    if missing:
        raise ValueError(
            f"`channels_to_use` names {len(missing)} channels not in `adata.var_names`: "
            f"{missing}. Available: {list(adata.var_names)}."
        )
    if adata.var_names.is_unique:
        return adata.var_names.get_indexer(channels)
    names = np.asarray(adata.var_names)
    ambiguous = [c for c in channels if (names == c).sum() > 1]
    if ambiguous:
        raise ValueError(f"`channels_to_use` names {ambiguous}, which `adata.var_names` holds more than once; "
                         "make the names unique first (`adata.var_names_make_unique()`).")
    return np.array([np.flatnonzero(names == c)[0] for c in channels])


def feature_matrix(adata, columns: np.ndarray | None):
    """``adata.X`` (its ``columns`` in that order; all if ``None``), checked
    (:func:`check_features`): read into memory from a backed file, which reads columns
    only in increasing order; booleans (one-hot cell types) as 0/1 float32."""
    if adata.X is None:
        layers = f" (layers: {list(adata.layers)})" if len(adata.layers) else ""
        raise ValueError("`adata.X` is empty (None): utag aggregates the features in `adata.X`. Put them there "
                         f"first, e.g. `adata.X = adata.layers['counts']`{layers}.")
    if not adata.isbacked:
        features = adata.X if columns is None else adata.X[:, columns]
    elif columns is None:
        features = adata.X[:, :]
    else:
        increasing = np.unique(columns)
        features = adata.X[:, increasing][:, np.searchsorted(increasing, columns)]
    if features.dtype == bool:
        features = features.astype(np.float32)
    check_features(features)
    return features


def check_features(features) -> None:
    values = features.data if sp.issparse(features) else np.asarray(features)
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
        raise ValueError(f"`adata.X` must hold real numbers, got dtype {values.dtype}.")
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise ValueError(
            "`adata.X` contains NaN or infinite values. Impute or drop them (e.g. "
            "`adata.X = np.nan_to_num(adata.X)`) before running UTAG."
        )
    largest = float(np.abs(values).max()) if values.size else 0.0  # a Python float: no float16 overflow
    if largest > FLOAT32_LIMIT:
        raise ValueError(
            f"`adata.X` holds values up to {largest:.3g}, beyond what float32 features "
            f"(and sums of a neighbourhood's values) can hold (|x| <= {FLOAT32_LIMIT:.0e}). Rescale the "
            "features first, e.g. `adata.X = np.log1p(adata.X)` or divide them by a constant."
        )


#: Largest feature magnitude accepted: float32's range (3.4e38) with room for the sum of
#: a million neighbours.
FLOAT32_LIMIT = 1e32


def choice(name: str, value, options) -> str:
    """``value`` as the one of ``options`` it names, whatever its case; a ValueError
    listing them otherwise."""
    if isinstance(value, str) and value.lower() in options:
        return value.lower()
    raise ValueError(f"`{name}` must be one of {list(options)}, got {value!r}.")


def is_auto(value) -> bool:
    """Whether ``value`` is the string ``"auto"`` (any case)."""
    return isinstance(value, str) and value.lower() == "auto"


def clustering_methods(clustering_method) -> tuple[str, ...]:
    if isinstance(clustering_method, str):
        clustering_method = [clustering_method]
    if not isinstance(clustering_method, Iterable):
        raise ValueError(
            f"`clustering_method` must be a string or a list of strings from "
            f"{list(CLUSTERING_METHODS)}, got {clustering_method!r}."
        )
    methods = tuple(dict.fromkeys(str(m).lower() for m in clustering_method))
    if not methods:
        raise ValueError(f"`clustering_method` is empty: pass one or more of {list(CLUSTERING_METHODS)}, or "
                         "`apply_clustering=False` to stop after the embedding.")
    unknown = [m for m in methods if m not in CLUSTERING_METHODS]
    if unknown or not methods:
        raise ValueError(
            f"`clustering_method` has unknown method(s) {unknown or clustering_method!r}; "
            f"choose from {list(CLUSTERING_METHODS)}."
        )
    return methods


def resolution_list(resolutions) -> list[float]:
    """Any number or iterable of numbers (list, array, pandas Series, R vector) as floats."""
    if isinstance(resolutions, numbers.Real):
        resolutions = [resolutions]
    if resolutions is None:
        raise ValueError("`resolutions` is None: pass a list of resolutions (e.g. [0.05, 0.1, 0.3]) or 'auto'; "
                         "None goes with `n_domains=K`, to run only the routes that give K domains.")
    if isinstance(resolutions, (str, bytes, dict)) or not isinstance(resolutions, Iterable):
        raise ValueError(f"`resolutions` must be a number, a list of numbers or 'auto', got {resolutions!r}.")
    resolutions = list(resolutions)
    values = []
    for resolution in resolutions:
        value = check_positive("resolutions", resolution, hint="Typical resolutions are 0.01-2, e.g. [0.05, 0.1, 0.3].")
        # whole numbers stay whole, so that their keys read as the original's str(resolution): "_1"
        values.append(int(resolution) if isinstance(resolution, numbers.Integral) else value)
    if not values:
        raise ValueError("`resolutions` is empty; pass e.g. `resolutions=[0.05, 0.1, 0.3]`.")
    return list(dict.fromkeys(values))


def kwargs_dict(name: str, kwargs) -> dict:
    """A copy of the keyword arguments ``kwargs`` (the parameter ``name``; ``None``: none),
    refusing anything but a dict."""
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ValueError(f"`{name}` must be a dict of keyword arguments, got {type(kwargs).__name__}.")
    return dict(kwargs or {})


def known_keywords(name: str, kwargs: dict, known, what: str, note: str = "") -> None:
    """Refuse keys of ``kwargs`` (the parameter ``name``) that are not in ``known``, the
    keywords ``what`` takes, before any work (else its TypeError comes after all of it)."""
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ValueError(f"`{name}` has keys {what} does not take: {unknown}{note}; it takes {sorted(known)}.")
