"""Property-based tests over small random tissues (hypothesis): whatever the tissue, utag()
keeps the input's cells in order, leaves the input unchanged, gives labels that do not
depend on the order of the rows or on parallel workers, probabilities that sum to 1, and
raises nothing but a ``ValueError``."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from utag import utag

#: Deterministic (the same examples on every run) and sized for CI.
PROPERTY_SETTINGS = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def tissues(draw):
    """A tissue of 1-60 cells on 1-3 slides; positions on a coarse grid and features from
    a few values, so that ties in distances and identical profiles are common."""
    n_cells = draw(st.integers(1, 60))
    n_features = draw(st.integers(1, 5))
    n_slides = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    grid = draw(st.sampled_from([1.0, 5.0, 20.0]))
    coords = rng.integers(0, 10, size=(n_cells, 2)) * grid
    levels = draw(st.sampled_from([1, 2, 4, 100]))  # 1: every feature constant
    features = rng.integers(0, levels, size=(n_cells, n_features)).astype(np.float32)
    if draw(st.booleans()):
        features *= rng.uniform(0.1, 1e4)
    obs = pd.DataFrame({"roi": rng.integers(0, n_slides, n_cells).astype(str)},
                       index=[f"cell{i}" for i in range(n_cells)])
    matrix = sp.csr_matrix(features) if draw(st.booleans()) else features
    return AnnData(matrix, obs=obs, obsm={"spatial": coords})


def _call(adata, parallel=True, **options):
    try:
        return utag(adata, slide_key="roi", parallel=parallel, processes=2, progress=False, **options)
    except ValueError:  # the documented error for input that cannot be segmented
        return None


@PROPERTY_SETTINGS
@given(adata=tissues(), method=st.sampled_from(["leiden", "parc", "kmeans"]),
       max_dist=st.sampled_from([1.0, 10.0, 60.0, 1e6]), resolution=st.sampled_from([0.05, 0.3, 1.0]),
       permutation_seed=st.integers(0, 1000))
def test_utag_invariants(adata, method, max_dist, resolution, permutation_seed):
    before = (adata.X.copy(), adata.obs.copy(), copy.deepcopy(dict(adata.obsm)))
    options = {"clustering_method": method, "resolutions": [resolution], "max_dist": max_dist}
    result = _call(adata, **options)
    np.testing.assert_array_equal(sp.csr_matrix(adata.X).toarray(), sp.csr_matrix(before[0]).toarray())
    pd.testing.assert_frame_equal(adata.obs, before[1])
    np.testing.assert_array_equal(adata.obsm["spatial"], before[2]["spatial"])
    if result is None:
        return
    assert list(result.obs_names) == list(adata.obs_names)
    key = result.uns["utag"]["label_keys"][0]
    labels = result.obs[key].to_numpy()
    probabilities = result.obsm[f"{key}_probabilities"]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert probabilities.shape == (adata.n_obs, result.obs[key].cat.categories.size)

    order = np.random.default_rng(permutation_seed).permutation(adata.n_obs)
    permuted = _call(adata[order].copy(), **options)
    assert (permuted.obs[key].to_numpy() == labels[order]).all()

    serial = _call(adata, parallel=False, **options)
    assert (serial.obs[key].to_numpy() == labels).all()
    np.testing.assert_array_equal(serial.obsm[f"{key}_probabilities"], probabilities)


@pytest.mark.parametrize("ask", [{"resolutions": "auto"}, {"n_domains": 2, "resolutions": None}])
@PROPERTY_SETTINGS
@given(adata=tissues(), max_dist=st.sampled_from([10.0, 1e6]))
def test_auto_and_n_domains_on_any_tissue(ask, adata, max_dist):
    options = {"clustering_method": ["leiden", "kmeans"], "max_dist": max_dist, **ask}
    if ask.get("n_domains", 0) > adata.n_obs:
        options["n_domains"] = adata.n_obs
    result = _call(adata, **options)
    if result is None:
        return
    for key in result.uns["utag"]["label_keys"]:
        assert result.obs[key].notna().all()
        np.testing.assert_allclose(result.obsm[f"{key}_probabilities"].sum(axis=1), 1, atol=1e-5)
