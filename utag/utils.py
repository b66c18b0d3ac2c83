"""Original ``utag.utils`` names, kept importable (see :mod:`utag.analysis`).

Call them with keywords: the argument order of the original functions differed.
"""
from .analysis import (  # noqa: F401
    celltype_connectivity,
    domain_composition,
    domain_connectivity,
    evaluate_clustering,
    measure_per_domain_cell_type_colocalization,
    slide_connectivity,
)
