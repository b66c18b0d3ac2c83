"""Sphinx configuration: Markdown pages (MyST), API from docstrings, and the notebooks of
../notebooks executed at build time (any error fails the build)."""
import shutil
from pathlib import Path

import utag

HERE = Path(__file__).parent

# The notebooks live in ../notebooks (where users find them); Sphinx reads them from here.
TUTORIALS = HERE / "tutorials"
TUTORIALS.mkdir(exist_ok=True)
for notebook in sorted((HERE.parent / "notebooks").glob("*.ipynb")):
    shutil.copyfile(notebook, TUTORIALS / notebook.name)

project = "utag"
author = "the utag developers"
copyright = "2026, the utag developers"
release = utag.__version__

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "generated/*", "figures/*.py", "make_figures.py", "**/.ipynb_checkpoints"]
myst_heading_anchors = 3

nb_execution_mode = "force"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_in_temp = True  # files the notebooks write do not land in the source tree
nb_execution_show_tb = True
nb_merge_streams = True

autodoc_default_options = {"members": True, "undoc-members": False}
autodoc_typehints = "description"
napoleon_numpy_docstring = True
napoleon_use_rtype = False
# docstring examples are tested by utag/tests/test_docstrings.py, not rendered as tests here
suppress_warnings = ["mystnb.unknown_mime_type"]

html_theme = "alabaster"
html_title = f"utag {release}"
html_static_path = []
