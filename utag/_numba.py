"""``numba.njit`` with an on-disk cache where one can be written, and without one elsewhere.

numba caches compiled functions next to the source or in the user's cache directory;
where it can write to neither (a read-only installation, no writable home), decorating a
function with ``cache=True`` raises at import time. utag then points numba's cache at a
directory of the system's temporary directory (:func:`cache_in_temp_where_needed`): its
own kernels and those of its dependencies that cache (squidpy's, whose import fails
otherwise) compile once per machine there. Where even that cannot be written, :func:`jit`
compiles without the cache (each new process compiles again) and says so in a debug
message.
"""
from __future__ import annotations

import getpass
import logging
import os
import tempfile

import numba

__all__ = ["jit", "cache_in_temp_where_needed"]

logger = logging.getLogger(__name__)


def _probe():  # pragma: no cover - only decorated, never called
    return 0


def cache_in_temp_where_needed() -> str | None:
    """Where numba has no cache location for the installed packages and ``NUMBA_CACHE_DIR``
    is not set, set numba's cache directory to ``<tempdir>/numba-cache-<user>``; returns
    the directory set, else ``None``."""
    if numba.config.CACHE_DIR:  # the user's choice (NUMBA_CACHE_DIR)
        return None
    try:
        numba.njit(cache=True)(_probe)  # finds a cache location for this installation, or raises
        return None
    except RuntimeError:  # "cannot cache function ...: no locator available"
        pass
    user = os.getuid() if hasattr(os, "getuid") else getpass.getuser()
    directory = os.path.join(tempfile.gettempdir(), f"numba-cache-{user}")
    numba.config.CACHE_DIR = directory
    logger.debug("numba cannot cache next to the installed packages nor in the home directory; caching in %s",
                 directory)
    return directory


def jit(function):
    """``numba.njit(cache=True, nogil=True)(function)``, uncached where no cache can be written."""
    try:
        return numba.njit(cache=True, nogil=True)(function)
    except RuntimeError as error:  # "cannot cache function ...: no locator available"
        logger.debug("numba cannot cache %s (%s); compiling it in every process", function.__name__, error)
        return numba.njit(nogil=True)(function)


cache_in_temp_where_needed()
