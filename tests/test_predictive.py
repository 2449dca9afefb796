"""Per-row outputs of a fitted model: posteriors, densities, variances, draws and predictive
intervals (moejax/predictive.py through FittedMoE), on a known model in 'real' units."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

import moejax as mj


@pytest.fixture(scope="module")
def known():
    """A FittedMoE built from chosen parameters (not fitted): its draws are exactly from it."""
    rng = np.random.default_rng(0)
    u = rng.normal(size=(1000, 3))
    x = 5 + u @ np.array([[2.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 0.2]])
    std = mj.fit_standardizer(x, rng.normal(50, 8, size=1000))
    params = mj.MoEParams(jnp.asarray([[1.0, -0.5, 0.2, 0.3], [-0.8, 0.4, 0.0, -0.2],
                                       [0.1, 0.9, -0.6, 0.0]]),
                          jnp.asarray([[1.5, 0.0, -1.0, 0.5], [0.0, 2.0, 0.5, 0.0],
                                       [0.0, 0.0, 0.0, 0.0]]),
                          jnp.asarray([0.2, 0.5, 0.3]), "tanh")
    return mj.FittedMoE(params, std)


def _rows(n, seed):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(n, 3))
    return 5 + u @ np.array([[2.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 0.2]])


def test_intervals_cover_at_their_level_on_draws_from_the_model(known):
    # 1e5 held-out rows: the binomial sd of a 90% coverage is 0.1 percentage points, so a
    # correct interval lands within 1 point at every level.
    x = _rows(100_000, 1)
    y = np.asarray(known.sample_response(jax.random.key(2), x))
    for level in (0.5, 0.8, 0.9, 0.95):
        lower, upper = map(np.asarray, known.predict_interval(x, level))
        coverage = np.mean((lower <= y) & (y <= upper))
        assert abs(coverage - level) < 0.01, (level, coverage)
        # Each end is its quantile: the mixture CDF there is (1 -+ level) / 2.
        p = np.asarray(known.gate_probabilities(x[:50]))
        z = np.c_[np.asarray(mj.transform_features(known.standardizer, x[:50])), np.ones(50)]
        mu = np.tanh(z @ np.asarray(known.params.experts).T)
        scale = float(known.standardizer.y_scale)
        y_std = lambda t: (t - float(known.standardizer.y_mean)) / scale
        cdf = lambda t: np.sum(p * norm.cdf((y_std(t)[:, None] - mu) / known.params.noise_std),
                               axis=1)
        np.testing.assert_allclose(cdf(lower[:50]), (1 - level) / 2, atol=2e-5)
        np.testing.assert_allclose(cdf(upper[:50]), (1 + level) / 2, atol=2e-5)


def test_mean_and_variance_match_draws_at_one_row(known):
    x = np.repeat(_rows(1, 3), 200_000, axis=0)
    y = np.asarray(known.sample_response(jax.random.key(4), x), np.float64)
    mean, var = float(known.predict(x[:1])[0]), float(known.predict_variance(x[:1])[0])
    # Monte Carlo error: sd(mean) = sqrt(var / N), sd(var) ~ var sqrt(2 / N) for near-normal
    # tails; 5 of them.
    assert abs(y.mean() - mean) < 5 * np.sqrt(var / y.size)
    assert abs(y.var() - var) < 5 * var * np.sqrt(2 / y.size) * 2


def test_posteriors_clusters_and_densities_agree(known):
    x = _rows(500, 5)
    y = np.asarray(known.sample_response(jax.random.key(6), x))
    post = np.asarray(known.posteriors(x, y))
    np.testing.assert_allclose(post.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(known.clusters(x, y)), post.argmax(axis=1) + 1)
    z = known.design(x)
    y_std = mj.transform_target(known.standardizer, y)
    np.testing.assert_allclose(post, mj.posteriors(known.params, z, y_std), atol=1e-6)
    dens = np.asarray(known.log_density(x, y))
    assert dens.shape == (500,)
    assert float(np.mean(dens)) == pytest.approx(float(known.log_likelihood(x, y)), rel=1e-5)
    gates = np.asarray(known.gate_probabilities(x))
    assert gates.shape == (500, 3) and np.allclose(gates.sum(axis=1), 1.0, atol=1e-5)


def test_posteriors_of_targets_far_from_every_expert_are_their_limit(known):
    # Every joint density underflows; the posterior tends to the expert with the largest
    # sigma (expert 2, column 1, sigma 0.5), not NaN.
    x = _rows(4, 7)
    y = np.array([1e20, -1e30, 1e35, -3e38])
    post = np.asarray(known.posteriors(x, y))
    assert np.all(np.isfinite(post)) and np.allclose(post.sum(axis=1), 1.0)
    np.testing.assert_array_equal(post.argmax(axis=1), 1)
    np.testing.assert_array_equal(np.asarray(known.clusters(x, y)), 2)


def test_bad_levels_and_inputs_are_refused(known):
    x = _rows(5, 7)
    for level in (0.0, 1.0, 1.5, -0.2, "0.9"):
        with pytest.raises(ValueError, match="level"):
            known.predict_interval(x, level)
    with pytest.raises(ValueError, match="columns"):
        known.predict_interval(x[:, :2])
    with pytest.raises(ValueError, match="y must"):
        known.posteriors(x, np.ones(4))
