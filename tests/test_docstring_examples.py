"""The ``Example:`` blocks of the package's docstrings run and print what they say (doctest), module by module:
an example that drifts from the code it documents fails here."""
from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil

import pytest

import oddsparse


def _modules_with_examples() -> list[str]:
    names = ["oddsparse"] + [info.name for info in pkgutil.walk_packages(oddsparse.__path__, "oddsparse.")]
    return [name for name in names if ">>>" in (importlib.util.find_spec(name).loader.get_source(name) or "")]


MODULES = _modules_with_examples()


def test_the_package_has_examples_to_run():
    assert len(MODULES) >= 20 and "oddsparse.renderers.raymarch" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run_as_written(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, verbose=False,
                             report=True)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} docstring example lines failed"
