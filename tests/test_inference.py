"""Standard errors and coefficients in data units (moejax/inference.py), checked against a
float64 NumPy likelihood differentiated by finite differences."""

import warnings

import jax
import numpy as np
import pytest
from scipy.special import log_softmax, logsumexp

import moejax as mj
from moejax import inference


def _data(seed=0, n=600):
    """Two linear experts in 'real' units: x shifted, scaled and correlated, y = 20 + 5 y_std."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(n, 2))
    x = np.c_[10 + 3 * u[:, 0], -4 + 0.5 * (u[:, 0] + u[:, 1])]
    gate = 1 / (1 + np.exp(-2.0 * u[:, 1]))
    first = rng.uniform(size=n) < gate
    y = np.where(first, 1.5 * u[:, 0] - u[:, 1], -u[:, 0] + 0.5 * u[:, 1] + 1.0)
    y = 20 + 5 * (y + np.where(first, 0.3, 0.5) * rng.normal(size=n))
    return x, y


@pytest.fixture(scope="module")
def fitted():
    x, y = _data()
    return mj.fit(jax.random.key(0), x, y, num_experts=2, feature_names=["a", "b"]), x, y


def _numpy_objective(theta, model, x, y):
    """sum_n log p(y_n | x_n) (+ log prior for a MAP fit) in float64 NumPy, from theta as
    `inference.pack` lays it out."""
    std = model.standardizer
    k, d1 = model.params.experts.shape
    z = np.c_[(x - np.asarray(std.x_mean, np.float64)) @ np.asarray(std.x_map, np.float64),
              np.ones(len(x))]
    ys = (y - float(std.y_mean)) / float(std.y_scale)
    experts = theta[:k * d1].reshape(k, d1)
    gating = np.r_[theta[k * d1:(2 * k - 1) * d1].reshape(k - 1, d1), np.zeros((1, d1))]
    sigma = np.exp(theta[(2 * k - 1) * d1:])
    log_dens = -0.5 * ((ys[:, None] - z @ experts.T) / sigma) ** 2 - np.log(sigma * np.sqrt(2 * np.pi))
    total = np.sum(logsumexp(log_softmax(z @ gating.T, axis=1) + log_dens, axis=1))
    if model.prior is not None:  # the MAP fit's objective (docs/algorithm.md section 9)
        tau, nu, s2 = model.prior.gate_scale, model.prior.noise_dof, 1.0 / k**2
        total += (-0.5 * np.sum(gating[:, :-1] ** 2) / tau**2
                  + np.sum(-(nu / 2 + 1) * np.log(sigma**2) - nu * s2 / (2 * sigma**2)))
    return total


def test_observed_information_matches_a_finite_difference_hessian(fitted):
    model, x, y = fitted
    theta = np.asarray(inference.pack(model.params, True), np.float64)
    f = lambda t: _numpy_objective(t, model, x, y)
    p, h = theta.size, 1e-4
    hess = np.zeros((p, p))
    for i in range(p):
        for j in range(p):
            e_i, e_j = h * np.eye(p)[i], h * np.eye(p)[j]
            hess[i, j] = (f(theta + e_i + e_j) - f(theta + e_i - e_j) - f(theta - e_i + e_j)
                          + f(theta - e_i - e_j)) / (4 * h * h)
    # Central differences: truncation O(h^2) and rounding O(eps |L| / h^2) ~ 1e-5 relative.
    np.testing.assert_allclose(model.inference.information, -hess, rtol=1e-4,
                               atol=1e-4 * np.max(np.abs(hess)))
    assert inference.problem(model.inference) is None
    cov = np.linalg.inv(-hess)
    np.testing.assert_allclose(inference.covariance(model.inference), cov, rtol=1e-3,
                               atol=1e-3 * np.max(np.abs(cov)))
    # The score is 0 at the maximum the fit reached (to the float32 fit's precision).
    assert float(model.inference.score @ cov @ model.inference.score) < 1e-2


def test_standard_errors_in_data_units_follow_the_delta_method(fitted):
    model, x, y = fitted
    coef = model.coefficients()
    std = model.standardizer
    m, x_map = np.asarray(std.x_mean, np.float64), np.asarray(std.x_map, np.float64)
    ys, ym = float(std.y_scale), float(std.y_mean)
    # The map theta -> data units written out for linear g: each row r (d + 1) of experts
    # becomes [ym + ys (r_d - m . M r), ys M r], each gate row [r_d - m . M r, M r].
    k, d1 = model.params.experts.shape
    theta = np.asarray(inference.pack(model.params, True), np.float64)
    rows = np.r_[theta[:k * d1].reshape(k, d1), theta[k * d1:(2 * k - 1) * d1].reshape(k - 1, d1)]
    jac = np.zeros((coef.estimate.size, theta.size))
    for i in range(2 * k - 1):
        scale = ys if i < k else 1.0
        block = np.zeros((d1, d1))
        block[1:, :-1] = scale * x_map      # slopes: M r[:d]
        block[0, :-1] = -scale * (m @ x_map)  # intercept: r_d - m . M r[:d]
        block[0, -1] = scale
        jac[i * d1:(i + 1) * d1, i * d1:(i + 1) * d1] = block
    sig = np.exp(theta[(2 * k - 1) * d1:]) * ys
    jac[(2 * k - 1) * d1:, (2 * k - 1) * d1:] = np.diag(sig)
    estimate = np.r_[(jac[:k * d1, :k * d1] @ rows[:k].ravel()).reshape(k, d1).ravel()
                     + np.tile(np.r_[ym, np.zeros(d1 - 1)], k),
                     jac[k * d1:(2 * k - 1) * d1, k * d1:(2 * k - 1) * d1] @ rows[k:].ravel(), sig]
    # (theta's log sigma here went through float32: 1e-7 relative.)
    np.testing.assert_allclose(coef.estimate, estimate, rtol=1e-6, atol=1e-9)
    cov = inference.covariance(model.inference)
    np.testing.assert_allclose(coef.std_error, np.sqrt(np.diag(jac @ cov @ jac.T)), rtol=1e-6)
    robust = inference.covariance(model.inference, robust=True)
    np.testing.assert_allclose(coef.robust_std_error, np.sqrt(np.diag(jac @ robust @ jac.T)),
                               rtol=1e-6)
    assert list(coef.term[:3]) == ["(intercept)", "a", "b"]
    assert np.all(coef.std_error > 0) and coef.problem is None


@pytest.mark.parametrize("nonlinearity", [
    "linear", pytest.param("tanh", marks=pytest.mark.slow)])  # tanh: make test-all
def test_coefficients_in_data_units_reproduce_predict(nonlinearity, fitted):
    if nonlinearity == "linear":
        model, x, _ = fitted
    else:
        x, y = _data(1, 400)
        model = mj.fit(jax.random.key(1), x, y, num_experts=2, nonlinearity=nonlinearity,
                       num_refine_iters=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # only the estimates matter here
        coef = model.coefficients()
    experts = coef.estimate[coef.block == "expert"].reshape(2, 3)
    gates = coef.estimate[coef.block == "gate"].reshape(1, 3)
    pre = experts[:, 0] + x @ experts[:, 1:].T
    logits = np.c_[gates[:, 0] + x @ gates[:, 1:].T, np.zeros(len(x))]
    p = np.exp(log_softmax(logits, axis=1))
    if nonlinearity == "linear":  # the experts are regressions of y on x
        pred = np.sum(p * pre, axis=1)
    else:  # pre-activations in x's units; g maps them to the standardised target
        pred = float(model.standardizer.y_mean) + float(model.standardizer.y_scale) * np.sum(
            p * np.tanh(pre), axis=1)
    np.testing.assert_allclose(pred, model.predict(x), rtol=1e-4, atol=1e-3)


def test_missing_or_unusable_standard_errors_are_reported_never_silent(fitted):
    model, x, y = fitted
    short = mj.fit(jax.random.key(0), x, y, num_experts=2, num_refine_iters=0)  # moment start only
    with pytest.warns(UserWarning, match="not at a maximum"):
        coef = short.coefficients()
    assert np.all(np.isnan(coef.std_error)) and "not at a maximum" in coef.problem
    assert "not at a maximum" in short.summary()
    bare = mj.FittedMoE(model.params, model.standardizer)
    with pytest.warns(UserWarning, match="no standard errors"):
        bare.coefficients()
    with pytest.raises(ValueError, match="no training statistics"):
        bare.bic()
    singular = model.inference._replace(
        information=np.diag(np.r_[np.ones(model.inference.score.size - 1), 0.0]))
    assert "singular" in inference.problem(singular)
    no_se = mj.fit(jax.random.key(0), x, y, num_experts=2, standard_errors=False)
    assert no_se.inference is None


def test_information_criteria_and_summary(fitted):
    model, x, y = fitted
    n, p = len(y), model.num_params
    assert p == 2 * 3 + 1 * 3 + 2  # experts, gate, one sigma per expert
    total = float(model.log_likelihood(x, y)) * n
    assert float(model.inference.log_likelihood) == pytest.approx(total, rel=1e-5)
    assert model.aic() == pytest.approx(-2 * total + 2 * p, rel=1e-5)
    assert model.bic() == pytest.approx(-2 * total + p * np.log(n), rel=1e-5)
    assert model.icl() >= model.bic()
    np.testing.assert_allclose(model.inference.mixing_weights, model.mixing_weights(x), atol=1e-5)
    text = model.summary()
    for part in ("rows: 600", "AIC", "BIC", "ICL", "expert 1", "expert 2", "gate 1", "sigma 2",
                 "std err", "robust se", "converged"):
        assert part in text, part
    assert repr(model).startswith("FittedMoE(k=2, d=2, nonlinearity='linear', n=600")


def test_least_squares_has_the_textbook_standard_errors():
    # k = 1 (what num_experts="auto" may choose) through the same statistics as every fit.
    import dataclasses
    from moejax import estimator
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 3)) * [1, 10, 100]
    y = 2 + x @ [1.0, -0.1, 0.01] + rng.normal(size=300)
    xj, yj = jax.numpy.asarray(x, jax.numpy.float32), jax.numpy.asarray(y, jax.numpy.float32)
    model = estimator._one_expert(xj, yj, dict(feature_names=None, target_name=None,
                                               columns=None),
                                  mj.FitConfig.of(None, dict(num_experts=1)))
    model = dataclasses.replace(model, inference=estimator._training_statistics(model, xj, yj))
    coef = model.coefficients()
    # The slopes of y on x by ordinary least squares, with their textbook standard errors
    # (sigma by maximum likelihood, as the mixture's).
    design = np.c_[np.ones(300), x]
    beta, res = np.linalg.lstsq(design, y, rcond=None)[:2]
    sigma2 = res[0] / 300
    se = np.sqrt(np.diag(sigma2 * np.linalg.inv(design.T @ design)))
    np.testing.assert_allclose(coef.estimate[:4], beta, rtol=1e-4)
    np.testing.assert_allclose(coef.std_error[:4], se, rtol=1e-3)
