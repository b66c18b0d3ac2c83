"""The published flavour keeps its results: seeded runs give the labels stored by
``utag/tests/reference_labels.py``."""
from __future__ import annotations

import numpy as np
import pytest

from utag.tests.reference_labels import PATH, RUNS, labels


@pytest.mark.parametrize("run", list(RUNS))
def test_seeded_runs_give_the_stored_labels(run):
    with np.load(PATH) as stored:
        commit = str(stored["commit"])
        expected = {name.split("|", 1)[1]: stored[name] for name in stored.files if name.startswith(f"{run}|")}
    got = labels(RUNS[run])
    assert sorted(got) == sorted(expected)
    for key, codes in got.items():
        np.testing.assert_array_equal(codes, expected[key], err_msg=f"{run}: {key} (stored at {commit})")
