"""``numba.njit`` with an on-disk cache where one can be written, and without one elsewhere.

numba caches compiled functions next to the source or in the user's cache directory;
where it can write to neither (a read-only installation, no writable home), decorating a
function with ``cache=True`` raises at import time. :func:`jit` then compiles without the
cache (each new process compiles again) and says so in a debug message.
"""
from __future__ import annotations

import logging

import numba

__all__ = ["jit"]

logger = logging.getLogger(__name__)


def jit(function):
    """``numba.njit(cache=True, nogil=True)(function)``, uncached where no cache can be written."""
    try:
        return numba.njit(cache=True, nogil=True)(function)
    except RuntimeError as error:  # "cannot cache function ...: no locator available"
        logger.debug("numba cannot cache %s (%s); compiling it in every process", function.__name__, error)
        return numba.njit(nogil=True)(function)
