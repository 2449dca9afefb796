import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import moejax as mj


def _correlated(seed=0, n=2000):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4)) @ rng.standard_normal((4, 4)) * [1, 10, 1e3, 1e-2] + 5.0
    return x, 100.0 + 3.0 * rng.standard_normal(n)


def test_whitening_gives_zero_mean_identity_covariance():
    x, y = _correlated()
    s = mj.fit_standardizer(x, y)
    xs = np.asarray(mj.transform_features(s, jnp.asarray(x)), np.float64)
    np.testing.assert_allclose(xs.mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(np.cov(xs.T, bias=True), np.eye(4), atol=1e-3)
    # ZCA-cor: diag(1 / sd) R^(-1/2), against a float64 reference.
    sd = x.std(0)
    expected = np.diag(1 / sd) @ np.linalg.inv(np.real(scipy.linalg.sqrtm(np.corrcoef(x.T))))
    np.testing.assert_allclose(np.asarray(s.x_map) * sd[:, None], expected * sd[:, None],
                               atol=2e-3)


def test_standardise_only_and_target_round_trip():
    x, y = _correlated(1)
    s = mj.fit_standardizer(x, y, whiten=False)
    xs = np.asarray(mj.transform_features(s, jnp.asarray(x)))
    np.testing.assert_allclose(xs.std(0), 1, atol=1e-4)
    assert np.count_nonzero(np.asarray(s.x_map) - np.diag(np.diag(s.x_map))) == 0
    ys = mj.transform_target(s, jnp.asarray(y))
    assert abs(float(jnp.mean(ys))) < 1e-4 and abs(float(jnp.std(ys)) - 1) < 1e-4
    np.testing.assert_allclose(mj.inverse_target(s, ys), y, rtol=1e-6)


def test_bad_inputs_are_named():
    x, y = _correlated()
    with pytest.raises(ValueError, match=r"constant column\(s\), .*: x\[:, 2\]\. Drop"):
        mj.fit_standardizer(np.where(np.arange(4) == 2, 1.0, x), y)
    collinear = np.c_[x[:, :3], x[:, 0] + 2 * x[:, 1]]
    with pytest.raises(ValueError, match="collinear"):
        mj.fit_standardizer(collinear, y)
    mj.fit_standardizer(collinear, y, whiten=False)  # standardising alone is fine
    with pytest.raises(ValueError, match="y is constant"):
        mj.fit_standardizer(x, np.ones_like(y))
