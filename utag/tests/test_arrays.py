"""The shared array helpers (:mod:`utag._arrays`)."""
import doctest

import numpy as np
import pytest
import scipy.sparse as sp

from utag import _arrays
from utag._arrays import ROW_BLOCK, column_mean, column_range, row_blocks


def test_examples_run():
    failures, attempted = doctest.testmod(_arrays)
    assert attempted >= 3 and failures == 0


@pytest.mark.parametrize("n_rows", [0, 1, ROW_BLOCK - 1, ROW_BLOCK, 2 * ROW_BLOCK + 7])
def test_row_blocks_cover_every_row_once_in_order(n_rows):
    covered = np.concatenate([np.arange(n_rows)[rows] for rows in row_blocks(n_rows)] or [np.array([], int)])
    assert covered.tolist() == list(range(n_rows))


def test_column_range_and_mean_agree_between_dense_and_sparse():
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(50, 6)) * (rng.random((50, 6)) < 0.3)
    dense[:, 2] = 0.0  # a constant (all-zero) column
    dense[:, 3] = -1.5  # a constant column stored explicitly
    for matrix in (sp.csr_matrix(dense), sp.csc_matrix(dense), sp.coo_matrix(dense)):
        assert np.allclose(column_range(matrix), dense.max(axis=0) - dense.min(axis=0))
        assert np.allclose(column_mean(matrix), dense.mean(axis=0))
    assert column_range(dense)[2] == 0 and column_range(dense)[3] == 0
    assert (column_range(dense)[[0, 1, 4, 5]] > 0).all()
