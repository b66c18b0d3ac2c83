"""Progress bars: notebook widgets where ipywidgets is installed, text bars elsewhere
(``tqdm.auto`` without ipywidgets prints an "IProgress not found" warning instead).

Bars appear only once their work has taken :data:`DELAY` seconds, so quick runs stay
silent; every function that shows bars has a ``progress`` switch to turn them off.
"""
try:
    import ipywidgets  # noqa: F401
    from tqdm.auto import tqdm as _tqdm
except ImportError:
    from tqdm import tqdm as _tqdm

#: Seconds before a progress bar is drawn.
DELAY = 2.0


def tqdm(*args, **kwargs):
    """``tqdm`` that waits :data:`DELAY` seconds before drawing."""
    kwargs.setdefault("delay", DELAY)
    return _tqdm(*args, **kwargs)


def bar_options(desc: str, total: int, progress: bool) -> dict:
    """Keyword arguments of a bar, for APIs that build their own (``parmap``'s ``pm_pbar``)."""
    return {"desc": desc, "total": total, "disable": not progress, "delay": DELAY}


__all__ = ["DELAY", "bar_options", "tqdm"]
