"""Expert families (moejax/families.py): the Gaussian, binomial and Poisson entries against
SciPy's closed forms, the Gaussian's scale M-step, the robust relative density behind the one
posterior, the GLM families' IRLS weights and targets, and the registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import moejax as mj
from moejax import families
from moejax.families import BINOMIAL, GAUSSIAN, POISSON
from conftest import enable_x64


def test_gaussian_density_cdf_and_variance_match_scipy():
    rng = np.random.default_rng(0)
    y, mean, scale = rng.normal(size=50), rng.normal(size=50), rng.uniform(0.1, 3.0, 50)
    with enable_x64():
        args = tuple(jnp.asarray(v, jnp.float64) for v in (y, mean, scale))
        np.testing.assert_allclose(GAUSSIAN.log_density(*args),
                                   stats.norm.logpdf(y, mean, scale), rtol=1e-12)
        np.testing.assert_allclose(GAUSSIAN.cdf(*args), stats.norm.cdf(y, mean, scale),
                                   rtol=1e-12)
        np.testing.assert_allclose(GAUSSIAN.variance(args[1], args[2]), scale**2, rtol=1e-12)
        lo, hi = GAUSSIAN.bracket(args[1], args[2])
        assert np.all(np.asarray(GAUSSIAN.cdf(lo, args[1], args[2])) < 1e-30)
        assert np.all(np.asarray(GAUSSIAN.cdf(hi, args[1], args[2])) == 1.0)


def test_gaussian_irls_weights_make_the_m_step_weighted_least_squares():
    mean, slope = jnp.asarray([0.5, -1.0]), jnp.asarray([1.0, 2.0])
    weight, factor = GAUSSIAN.irls_weights(mean, slope)
    np.testing.assert_allclose(weight, [1.0, 4.0])
    np.testing.assert_allclose(factor, [1.0, 2.0])


def test_gaussian_draws_have_the_family_mean_and_variance():
    mean, scale = jnp.full((200_000,), 1.5), jnp.full((200_000,), 0.5)
    draws = np.asarray(GAUSSIAN.sample(jax.random.key(0), mean, scale))
    # Standard errors: 0.5 / sqrt(2e5) = 1.1e-3 for the mean, about 8e-4 for the variance.
    assert abs(draws.mean() - 1.5) < 6e-3
    assert abs(draws.var() - 0.25) < 5e-3


def test_scale_update_matches_its_closed_forms():
    rng = np.random.default_rng(0)
    sq, q = rng.random(3) * 5, np.array([2.0, 0.0, 3.0])
    shared = GAUSSIAN.scale_update(jnp.asarray(sq), jnp.asarray(q), jnp.asarray(1.0), 0.01)
    assert float(shared) == pytest.approx(np.sqrt(sq.sum() / q.sum()), rel=1e-6)
    old = jnp.array([1.0, 0.7, 1.0])
    per = np.asarray(GAUSSIAN.scale_update(jnp.asarray(sq), jnp.asarray(q), old, 0.01))
    # Each expert's own weighted residual sd; one without responsibility keeps its sigma.
    np.testing.assert_allclose(per, [np.sqrt(sq[0] / 2), 0.7, np.sqrt(sq[2] / 3)], rtol=1e-6)
    floored = GAUSSIAN.scale_update(jnp.asarray([1e-12, 1.0]), jnp.asarray([5.0, 1.0]),
                                    jnp.ones(2), 0.01)
    np.testing.assert_allclose(floored, [0.01, 1.0], rtol=1e-6)


def test_relative_density_is_the_density_up_to_a_row_constant_and_finite_far_out():
    rng = np.random.default_rng(1)
    y, mean, scale = rng.normal(size=20), rng.normal(size=(20, 3)), rng.uniform(0.2, 2, (20, 3))
    with enable_x64():
        rel = np.asarray(GAUSSIAN.relative_log_density(*(jnp.asarray(v, jnp.float64) for v in
                                                         (y, mean, scale))))
    exact = stats.norm.logpdf(y[:, None], mean, scale)
    diff = rel - exact
    np.testing.assert_allclose(diff, np.broadcast_to(diff[:, :1], diff.shape), atol=1e-9)
    far = GAUSSIAN.relative_log_density(jnp.asarray([1e20, -1e30]), jnp.asarray(mean[:2]),
                                        jnp.asarray(scale[:2]))
    assert np.all(np.isfinite(np.asarray(far)).any(axis=-1))


def test_registry_names_and_errors():
    assert mj.family_names()[0] == "gaussian" and families.get_family("gaussian") is GAUSSIAN
    assert families.get_family(GAUSSIAN) is GAUSSIAN
    with pytest.raises(ValueError, match="family must be one of"):
        families.get_family("poisson-ish")
    families.register_family(GAUSSIAN)  # the same record again: a no-op
    with pytest.raises(ValueError, match="already registered"):
        families.register_family(GAUSSIAN._replace(has_dispersion=False))
    with pytest.raises(ValueError, match="must be a Family"):
        families.register_family("gaussian")


def test_a_registered_family_runs_through_the_model():
    # A copy of the Gaussian under another name evaluates exactly as the Gaussian does: every
    # density and draw reads the params' family.
    twin = GAUSSIAN._replace(name="gaussian_twin")
    families.register_family(twin)
    truth = mj.random_params(jax.random.key(0), dim=4, num_experts=2, noise_std=0.3)
    x, y = mj.sample(jax.random.key(1), truth, 500)
    other = truth._replace(family="gaussian_twin")
    assert float(mj.log_likelihood(other, x, y)) == float(mj.log_likelihood(truth, x, y))
    np.testing.assert_array_equal(mj.sample(jax.random.key(1), other, 500)[1], y)


def test_binomial_and_poisson_match_scipy_and_stay_finite_where_the_mean_saturates():
    rng = np.random.default_rng(2)
    mean = rng.uniform(0.05, 0.95, 40)
    yb = (rng.uniform(size=40) < mean).astype(float)
    rate = rng.uniform(0.1, 30.0, 40)
    yp = rng.poisson(rate).astype(float)
    with enable_x64():
        f64 = lambda v: jnp.asarray(v, jnp.float64)
        np.testing.assert_allclose(BINOMIAL.log_density(f64(yb), f64(mean), 1.0),
                                   stats.bernoulli.logpmf(yb, mean), rtol=1e-12)
        np.testing.assert_allclose(BINOMIAL.variance(f64(mean), 1.0), mean * (1 - mean))
        np.testing.assert_allclose(POISSON.log_density(f64(yp), f64(rate), 1.0),
                                   stats.poisson.logpmf(yp, rate), rtol=1e-10)
        np.testing.assert_allclose(POISSON.variance(f64(rate), 1.0), rate)
        t = f64(np.concatenate([yp, yp + 0.5, [-0.5, -3.0]]))
        r = f64(np.concatenate([rate, rate, [1.0, 2.0]]))
        np.testing.assert_allclose(POISSON.cdf(t, r, 1.0), stats.poisson.cdf(t, r), rtol=1e-9,
                                   atol=1e-14)
        lo, hi = POISSON.bracket(r, 1.0)
        assert np.all(np.asarray(POISSON.cdf(lo, r, 1.0)) == 0.0)
        assert np.all(1 - np.asarray(POISSON.cdf(hi, r, 1.0)) < 1e-15)
    # A mean that rounds to 0 or 1 (a saturated logit, an underflowed rate) costs a finite
    # loss, not an infinite one: the E-step and the likelihood stay finite.
    for family, y, mu in ((BINOMIAL, [0.0, 1.0], [1.0, 0.0]), (POISSON, [3.0, 0.0], [0.0, 0.0])):
        out = np.asarray(family.log_density(jnp.asarray(y), jnp.asarray(mu), 1.0))
        assert np.all(np.isfinite(out)) and np.all(out <= 0)


def test_glm_irls_weights_are_fisher_scorings_for_the_canonical_link():
    # With g the inverse canonical link, slope = g'(eta) = V(mu): the general weights
    # (slope^2 / V, slope / V) reduce to the families' (V, 1).
    eta = jnp.linspace(-3.0, 3.0, 13)
    for family, g in ((BINOMIAL, jax.nn.sigmoid), (POISSON, jnp.exp)):
        mu, slope = jax.jvp(g, (eta,), (jnp.ones_like(eta),))
        w, f = family.irls_weights(mu, slope)
        v = family.variance(mu, 1.0)
        np.testing.assert_allclose(w, slope ** 2 / v, rtol=1e-5)
        np.testing.assert_allclose(f, slope / v, rtol=1e-5)
        assert family.default_nonlinearity == family.nonlinearities[0]
        assert not family.has_dispersion and not family.moment_start
    assert GAUSSIAN.default_nonlinearity == "linear" and GAUSSIAN.nonlinearities is None


def test_glm_draws_have_the_family_mean_and_variance():
    n = 200_000
    b = np.asarray(BINOMIAL.sample(jax.random.key(0), jnp.full((n,), 0.3), 1.0))
    p = np.asarray(POISSON.sample(jax.random.key(1), jnp.full((n,), 4.0), 1.0))
    assert set(np.unique(b)) == {0.0, 1.0} and np.all(p == np.round(p)) and p.min() >= 0
    # Standard errors: sqrt(0.21 / 2e5) = 1e-3 for the binomial mean; sqrt(4 / 2e5) = 4.5e-3
    # for the Poisson mean, about 0.016 for its variance (sd of the variance estimate).
    assert abs(b.mean() - 0.3) < 6e-3
    assert abs(p.mean() - 4.0) < 0.025 and abs(p.var() - 4.0) < 0.1


def test_glm_targets_name_the_rows_they_cannot_hold():
    np.testing.assert_array_equal(BINOMIAL.check_target(np.array([0.0, 1.0, 2.0, 0.5, 1.0])),
                                  [2, 3])
    np.testing.assert_array_equal(POISSON.check_target(np.array([0.0, 3.0, -1.0, 2.5, 7.0])),
                                  [2, 3])
    assert GAUSSIAN.check_target(np.array([-1.5, 2.0])).size == 0
