"""Progress bars: notebook widgets where ipywidgets is installed, text bars elsewhere
(``tqdm.auto`` without ipywidgets prints an "IProgress not found" warning instead).

Bars appear only once their work has taken :data:`DELAY` seconds, so quick runs stay
silent; every function that shows bars has a ``progress`` switch to turn them off. They
are drawn only to a terminal or a notebook: redrawn in a file (a job's log), a bar
leaves control characters and copies of itself.
"""
import contextlib
import logging
import sys
import time

try:
    import ipywidgets  # noqa: F401
    from tqdm.auto import tqdm as _tqdm
except ImportError:
    from tqdm import tqdm as _tqdm

#: Seconds before a progress bar is drawn.
DELAY = 2.0


def tqdm(*args, **kwargs):
    """``tqdm`` that waits :data:`DELAY` seconds before drawing, and draws nothing unless
    to a terminal or a notebook."""
    kwargs.setdefault("delay", DELAY)
    if not _can_draw():
        kwargs["disable"] = True
    return _tqdm(*args, **kwargs)


def _can_draw() -> bool:
    """Whether bars can be redrawn in place: in a notebook, or on a terminal."""
    if "ipykernel" in sys.modules:
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class Stopwatch:
    """Seconds spent per stage (summed over repeated stages), logged as they end; with
    ``progress``, a bar names the running stage (drawn once the run passes :data:`DELAY`)."""

    def __init__(self, progress: bool = False, logger: logging.Logger | None = None):
        self.seconds: dict[str, float] = {}
        self._logger = logger or logging.getLogger("utag")
        self._bar = tqdm(desc="utag", bar_format="{desc} [{elapsed}]", disable=not progress, leave=False)
        self._created = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, stage: str):
        # redrawing shows the bar at once, so only do it once the run has lasted a while
        late = time.perf_counter() - self._created >= DELAY
        self._bar.set_description_str(f"utag: {stage}", refresh=late)
        started = time.perf_counter()
        yield
        elapsed = time.perf_counter() - started
        self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed
        self._logger.info("%s: %.2f s", stage, elapsed)

    def close(self):
        self._bar.close()


__all__ = ["DELAY", "Stopwatch", "tqdm"]
