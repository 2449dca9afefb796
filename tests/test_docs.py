"""The examples in the public docstrings run and print what they say."""

import doctest
import importlib

import pytest

MODULES = ["model", "metrics", "baselines", "compilation", "datasets", "estimator", "families", "fitted", "gating", "io",
           "joint", "moments", "nonlinearities", "preprocessing", "recover", "sklearn", "sums",
           "_validate"]
# Classes whose methods' examples use the objects the class's own example makes (a fitted
# model), as a reader does: the class example runs first and shares its names.
SHARED = {"moejax.fitted.FittedMoE", "moejax.sklearn.MoERegressor"}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"moejax.{name}")
    tests = sorted(doctest.DocTestFinder().find(module), key=lambda t: t.name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    shared = {}
    for test in tests:  # sorted: a class's test comes before its methods'
        owner = test.name.rsplit(".", 1)[0]
        if owner in shared:
            test.globs.update(shared[owner])
        runner.run(test, clear_globs=test.name not in SHARED)
        if test.name in SHARED:
            shared[test.name] = test.globs
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0, result
