"""The 0.1 argument names (moejax/_renamed.py): still accepted for one version, with a
DeprecationWarning, and giving the same result as the new names."""

import jax
import numpy as np
import pytest

import moejax as mj
from conftest import NOISE_STD, NUM_EXPERTS, truth_and_data


def test_recover_accepts_the_old_names_with_a_warning():
    _, x, y = truth_and_data(0, 20_000)
    kw = dict(num_experts=NUM_EXPERTS, noise_std=NOISE_STD)
    new, new_info = mj.recover(jax.random.key(1), x, y, num_power_inits=3, num_gating_iters=7,
                               gating_tol=1e-5, **kw)
    with pytest.warns(DeprecationWarning) as caught:
        old, old_info = mj.recover(jax.random.key(1), x, y, num_restarts=3, num_em_iters=7,
                                   em_tol=1e-5, **kw)
    assert sorted(str(w.message).split("'")[1] for w in caught) == [
        "em_tol", "num_em_iters", "num_restarts"]
    assert all("removed in moejax 0.3" in str(w.message) for w in caught)
    assert caught[0].filename == __file__  # the warning points at the caller's line
    np.testing.assert_array_equal(old.experts, new.experts)
    np.testing.assert_array_equal(old.gating, new.gating)
    assert new_info.trace.shape == old_info.trace.shape == (7,)
    with pytest.warns(DeprecationWarning, match="'subspace_iters' is now called"):
        est, _ = mj.recover_experts(jax.random.key(1), x, y, subspace_iters=3, **kw)
    ref, _ = mj.recover_experts(jax.random.key(1), x, y, num_subspace_iters=3, **kw)
    np.testing.assert_array_equal(est.experts, ref.experts)


def test_both_names_of_one_idea_is_an_error():
    _, x, y = truth_and_data(0, 1000)
    with pytest.raises(TypeError, match="both 'num_restarts' and its new name "
                                        "'num_power_inits'"):
        mj.recover(jax.random.key(1), x, y, num_experts=2, num_restarts=3, num_power_inits=3)
    with pytest.raises(TypeError, match="both 'tol' and its new name 'refine_tol'"):
        mj.fit(jax.random.key(1), x, y, num_experts=2, tol=1e-6, refine_tol=1e-6)


def test_a_bad_value_under_an_old_name_is_reported_under_that_name():
    _, x, y = truth_and_data(0, 1000)
    with pytest.warns(DeprecationWarning), pytest.raises(
            ValueError, match=r"^refine_iters \(now called num_refine_iters\) must be an "
                              r"integer >= 0, got -1"):
        mj.fit(jax.random.key(1), x, y, num_experts=2, refine_iters=-1)
    with pytest.warns(DeprecationWarning), pytest.raises(
            ValueError, match=r"^num_em_iters \(now called num_gating_iters\) must be"):
        mj.recover(jax.random.key(1), x, y, num_experts=2, num_em_iters=0)


def test_fit_accepts_the_old_names_with_a_warning():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    y = np.where(x[:, 0] > 0, 2 * x[:, 1], -x[:, 2]) + 0.1 * rng.normal(size=300)
    kw = dict(num_experts=2, standard_errors=False)
    new = mj.fit(jax.random.key(0), x, y, num_refine_iters=30, num_refine_inits=2,
                 refine_tol=1e-6, **kw)
    with pytest.warns(DeprecationWarning) as caught:
        old = mj.fit(jax.random.key(0), x, y, refine_iters=30, num_random_starts=2, tol=1e-6,
                     **kw)
    assert len(caught) == 3
    np.testing.assert_array_equal(old.params.experts, new.params.experts)
    assert old.report.trace.shape == new.report.trace.shape == (30, 3)


def test_fitted_sample_is_sample_response_under_its_old_name():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 2))
    model = mj.fit(jax.random.key(0), x, x @ [1.0, -1.0] + rng.normal(size=100), num_experts=1)
    with pytest.warns(DeprecationWarning, match="now called sample_response"):
        old = model.sample(jax.random.key(1), x[:5])
    np.testing.assert_array_equal(old, model.sample_response(jax.random.key(1), x[:5]))
