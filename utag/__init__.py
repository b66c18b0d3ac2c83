"""utag: Unsupervised discovery of Tissue Architecture with Graphs.

Finds microanatomical domains in single-cell spatial data (Kim et al., Nature Methods
2022): ``from utag import utag; result = utag(adata, slide_key="roi", max_dist=20)``.
"""
from importlib.metadata import PackageNotFoundError, version

from . import _numba, datasets  # noqa: F401  (_numba first: a cache for numba where the installation has none)
from .evaluation import evaluate_performance
from .graph import spatial_neighbors
from .segmentation import utag

try:
    __version__ = version("utag")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["utag", "spatial_neighbors", "evaluate_performance", "datasets", "analysis", "plotting", "image",
           "__version__"]

_LAZY_MODULES = {"analysis", "plotting", "image", "io", "tuning", "transfer", "utils", "vizualize"}


def __getattr__(name):
    # plotting pulls in matplotlib.pyplot: load these modules only when first used
    if name in _LAZY_MODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'utag' has no attribute {name!r}")
