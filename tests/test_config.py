"""FitConfig (moejax/config.py): `fit`'s settings declared once, and the scikit-learn estimator
and the command line held to the same names and defaults."""

import dataclasses
import inspect
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

import moejax as mj
from moejax.config import FitConfig

FIELDS = {f.name: f.default for f in dataclasses.fields(FitConfig)}


def test_of_merges_settings_into_a_config_and_checks_them():
    base = FitConfig(num_experts=3, num_refine_iters=10)
    merged = FitConfig.of(base, dict(whiten=False))
    assert (merged.num_experts, merged.num_refine_iters, merged.whiten) == (3, 10, False)
    assert FitConfig.of(None, dict(num_experts="auto")).max_experts == FIELDS["max_experts"]
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['num_expert'\]"):
        FitConfig.of(None, dict(num_expert=2))
    with pytest.raises(TypeError, match="needs num_experts"):
        FitConfig.of(None, dict(whiten=False))
    with pytest.raises(ValueError, match="config must be a moejax.FitConfig"):
        FitConfig.of(dict(num_experts=2), {})
    for setting, message in (("chunk_size", "chunk_size must be an integer >= 1"),
                             ("num_refine_iters", "num_refine_iters must be an integer >= 0"),
                             ("select_by", "select_by must be 'bic' or 'cv'")):
        with pytest.raises(ValueError, match=message):
            FitConfig.of(base, {setting: -1})


def test_fit_takes_a_config_or_settings_and_rejects_unknown_ones():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    y = np.where(x[:, 0] > 0, x[:, 1], -x[:, 2]) + 0.1 * rng.normal(size=300)
    config = FitConfig(num_experts=2, num_refine_iters=30, standard_errors=False)
    by_config = mj.fit(jax.random.key(0), x, y, config)
    by_settings = mj.fit(jax.random.key(0), x, y, num_experts=2, num_refine_iters=30,
                         standard_errors=False)
    np.testing.assert_array_equal(by_config.params.experts, by_settings.params.experts)
    with pytest.raises(TypeError, match="unexpected keyword"):
        mj.fit(jax.random.key(0), x, y, num_experts=2, num_refine_iter=30)
    with pytest.raises(ValueError, match="chunk_size"):  # checked before the data
        mj.fit(jax.random.key(0), x, y, num_experts=2, chunk_size=0)


def test_the_scikit_learn_estimator_passes_fitconfig_settings_with_its_defaults():
    pytest.importorskip("sklearn")
    from moejax.sklearn import _NOT_SETTINGS, MoERegressor
    params = inspect.signature(MoERegressor).parameters
    settings = {name: p.default for name, p in params.items() if name not in _NOT_SETTINGS}
    assert set(settings) <= set(FIELDS), set(settings) - set(FIELDS)
    # Where scikit-learn's defaults differ on purpose: k is required by fit, cross-validation
    # needs no standard errors, and "default" stands for Prior() (a parameter must be a value
    # that get_params can return unchanged).
    differ = {name for name in settings if settings[name] != FIELDS[name]}
    assert differ == {"num_experts", "standard_errors", "prior"}
    assert settings["prior"] == "default" and FIELDS["prior"] == mj.Prior()


def test_the_command_lines_fit_flags_are_fitconfig_settings_with_its_defaults():
    # In a process of its own: the command line's absl flags are process-wide, and the
    # experiments' binaries define flags of the same names.
    script = ("import json; from moejax import cli; print(json.dumps({name: ["
              "cli.flags.FLAGS[name].default, name in cli.COMMAND_FLAGS['fit']] "
              "for name in cli.FIT_SETTINGS}))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True)
    flags = json.loads(out.stdout)
    assert set(flags) <= set(FIELDS) and len(flags) >= 9
    for name, (default, listed) in flags.items():
        assert listed and default == FIELDS[name], name
