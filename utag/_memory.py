"""How much memory this process may still take: the operating system's figure, capped by
the room left under cgroup memory limits (containers, SLURM jobs).

:mod:`utag.graph` reads it before building a spatial graph (see its memory guard).
"""
from __future__ import annotations

import os

__all__ = ["available_memory", "cgroup_headroom"]


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
