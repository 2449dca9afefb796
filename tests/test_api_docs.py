"""Every public function and method documents its arguments, result, errors and an example
(docs/api.md's promise); test_docs runs the examples."""

import inspect

import pytest

import moejax as mj
from moejax import io, landscape, sums
from moejax.sklearn import MoEClassifier, MoERegressor


def _public():
    out = []
    for name in mj.__all__:
        obj = getattr(mj, name)
        if inspect.isfunction(obj):
            out.append((name, obj))
    for module in (io, landscape, sums):  # the public modules' own functions (not their imports)
        out += [(f"{module.__name__.split('.')[-1]}.{name}", fn)
                for name, fn in vars(module).items()
                if inspect.isfunction(fn) and not name.startswith("_")
                and fn.__module__ == module.__name__]
    for cls in (mj.FittedMoE, MoERegressor, MoEClassifier):
        out += [(f"{cls.__name__}.{name}", fn) for name, fn in vars(cls).items()
                if inspect.isfunction(fn) and not name.startswith("_")]
    return out


PUBLIC = _public()


def test_the_list_is_not_empty():
    names = [name for name, _ in PUBLIC]
    assert len(names) > 60 and "fit" in names and "FittedMoE.predict" in names


@pytest.mark.parametrize("name, fn", PUBLIC, ids=[name for name, _ in PUBLIC])
def test_docstring_has_args_returns_raises_and_an_example(name, fn):
    doc = inspect.getdoc(fn) or ""
    params = [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]
    missing = [section for section, present in (
        ("Args:", not params or "Args:" in doc),
        ("Returns:", "Returns:" in doc),
        ("Raises:", "Raises:" in doc),
        ("an example", ">>>" in doc or "Example" in doc)) if not present]
    assert not missing, f"{name} lacks {missing}"
