"""Original ``utag.vizualize`` names (sic), kept importable (see :mod:`utag.plotting`
and :mod:`utag.image`).

``adj2chord`` now draws with matplotlib (no holoviews); ``draw_network`` with networkx on
matplotlib; ``rgbfy_multiplexed_image`` is :func:`utag.image.rgb_image`.
"""
from .image import add_spatial_image  # noqa: F401
from .image import rgb_image as rgbfy_multiplexed_image  # noqa: F401
from .plotting import plot_chord as adj2chord  # noqa: F401
from .plotting import plot_domain_network as draw_network  # noqa: F401
from .plotting import plot_domains  # noqa: F401
