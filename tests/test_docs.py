"""The examples in the public docstrings run and print what they say."""

import doctest
import importlib

import pytest

MODULES = ["model", "metrics", "baselines", "compilation", "datasets", "estimator", "gating", "io", "joint",
           "moments", "nonlinearities", "preprocessing", "recover", "sklearn"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"moejax.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, result
