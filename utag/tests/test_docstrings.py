"""The examples in the docstrings run and print what they say."""
import doctest
import importlib

import pytest

MODULES = ["utag.segmentation", "utag.graph", "utag.datasets", "utag.evaluation", "utag.analysis", "utag.io",
           "utag.tuning", "utag.transfer",
           "utag.plotting", "utag.image"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    failures, attempted = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert attempted > 0, f"{name} has no docstring example"
    assert failures == 0
