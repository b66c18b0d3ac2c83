"""Shared fixtures: small synthetic tissues, the bundled spleen subset, shared data."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")  # figures are rendered off-screen in tests

from utag import utag
from utag.datasets import codex_mouse_spleen, synthetic_tissue

SHARED_SPLEEN = Path("data", "codex_mouse_spleen", "codex_mouse_spleen.h5ad")


def shared_spleen_path() -> Path | None:
    """The full CODEX spleen file of the project's ``shared/`` folder, if present.

    Looked for in ``$UTAG_SHARED_DIR`` and in ``shared/`` next to the current folder or
    any of its parents (CI runs in a clone with ``shared/`` beside it).
    """
    candidates = []
    if os.environ.get("UTAG_SHARED_DIR"):
        candidates.append(Path(os.environ["UTAG_SHARED_DIR"]))
    for folder in [Path.cwd(), *Path.cwd().parents]:
        candidates += [folder / "shared", folder.parent / "shared"]
    for shared in candidates:
        if (shared / SHARED_SPLEEN).is_file():
            return shared / SHARED_SPLEEN
    return None


@pytest.fixture(scope="session")
def tissue():
    """3,000 cells on 3 slides with known domains (slides contiguous)."""
    return synthetic_tissue(n_cells=3_000, n_slides=3, n_markers=12, n_domains=3, n_cell_types=5,
                            random_state=1)


@pytest.fixture(scope="module")
def four_domains():
    """8,000 cells on 2 slides with 4 domains, and utag()'s Leiden at 0.1 on them (one per test module)."""
    adata = synthetic_tissue(n_cells=8_000, n_slides=2, n_domains=4, random_state=3)
    result = utag(adata, slide_key="roi", clustering_method=["leiden"], resolutions=[0.1], progress=False)
    return adata, result


@pytest.fixture(scope="session")
def interleaved(tissue):
    """The same cells, shuffled so that slides are interleaved."""
    order = np.random.default_rng(7).permutation(tissue.n_obs)
    return tissue[order].copy()


@pytest.fixture(scope="session")
def spleen_subset():
    return codex_mouse_spleen()


@pytest.fixture(scope="session")
def spleen_full():
    path = shared_spleen_path()
    if path is None:
        pytest.skip(f"the full CODEX spleen data ({SHARED_SPLEEN}) is not in a shared/ folder next to "
                    "the working directory; set UTAG_SHARED_DIR to run this test")
    return codex_mouse_spleen(path)
