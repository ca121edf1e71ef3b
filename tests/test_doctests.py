"""Run the numpydoc Examples sections of every fastmeta module as doctests."""
import doctest
import importlib
import pkgutil

import pytest

import fastmeta

MODULES = sorted(name for _, name, _ in pkgutil.walk_packages(fastmeta.__path__, "fastmeta.")
                 if name not in ("fastmeta.__main__",))


def test_the_public_classes_have_examples():
    for obj in (fastmeta.MetaRL, fastmeta.MetaSL, fastmeta.TabularMDP, fastmeta.visitation.visitation,
                fastmeta.visitation.family_expectation):
        assert "Examples\n" in obj.__doc__ and ">>> " in obj.__doc__, obj.__qualname__


@pytest.mark.parametrize("name", MODULES)
def test_module_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
