"""Progress bars: notebook widgets where ipywidgets is installed, text bars elsewhere
(``tqdm.auto`` without ipywidgets prints an "IProgress not found" warning instead)."""
try:
    import ipywidgets  # noqa: F401
    from tqdm.auto import tqdm
except ImportError:
    from tqdm import tqdm

__all__ = ["tqdm"]
