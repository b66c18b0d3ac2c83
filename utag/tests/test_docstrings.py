"""The examples in the docstrings run and print what they say; every public module says
what it exports."""
import doctest
import importlib
import pkgutil

import pytest

import utag

PUBLIC_MODULES = sorted(
    f"utag.{module.name}" for module in pkgutil.iter_modules(utag.__path__)
    if not module.name.startswith("_") and module.name != "tests"
)
#: Modules whose functions are examples enough elsewhere (the command line has its own tests).
WITHOUT_EXAMPLES = {"utag.cli", "utag.clustering", "utag.embedding", "utag.message_passing"}


@pytest.mark.parametrize("name", sorted(set(PUBLIC_MODULES) - WITHOUT_EXAMPLES))
def test_docstring_examples(name):
    module = importlib.import_module(name)
    failures, attempted = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert attempted > 0, f"{name} has no docstring example"
    assert failures == 0


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_modules_list_their_names(name):
    module = importlib.import_module(name)
    assert isinstance(module.__all__, list) and module.__all__
    assert [n for n in module.__all__ if not hasattr(module, n)] == []
