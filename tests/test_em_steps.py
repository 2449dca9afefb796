import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import log_softmax, logsumexp, softmax

from moejax import em_steps, predictive


def numpy_em_step(w, x, y, a, sigma):
    """One E-step + Bohning step in float64 NumPy, written from the formulas in em_steps.py."""
    x, y, a, w = (np.asarray(v, np.float64) for v in (x, y, a, w))
    n, k = len(y), len(a)
    log_gate = log_softmax(x @ w.T, axis=1)
    dens = -0.5 * ((y[:, None] - x @ a.T) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)
    q = softmax(log_gate + dens, axis=1)
    grad = (q - np.exp(log_gate))[:, :-1].T @ x / n
    bound = 0.5 * np.kron(np.eye(k - 1) - np.ones((k - 1, k - 1)) / k, x.T @ x / n)
    step = np.linalg.solve(bound, grad.ravel()).reshape(k - 1, -1)
    new = w.copy()
    new[:-1] += step
    return new, np.mean(logsumexp(log_gate + dens, axis=1))


def test_em_step_matches_numpy(small_problem):
    params, x, y = small_problem
    x, y = x[:2000], y[:2000]
    w0 = 0.3 * jax.random.normal(jax.random.key(0), params.gating.shape).at[-1].set(0.0)
    log_dens = predictive.expert_log_densities(params, x, y)
    gate, resp, log_lik = em_steps.e_step(w0, x, log_dens)
    grad = jnp.stack([q - p for q, p in zip(resp[:-1], gate[:-1])]) @ x / x.shape[0]
    new = em_steps.bohning_step(w0, grad, em_steps.gram_solver(x.T @ x / x.shape[0]))
    ll = jnp.mean(log_lik)
    new_ref, ll_ref = numpy_em_step(w0, x, y, params.experts, 0.1)
    np.testing.assert_allclose(new, new_ref, atol=1e-4)
    assert float(ll) == pytest.approx(ll_ref, rel=1e-5)


def numpy_newton_step(w, x, q):
    """One Newton step on Q(W) = sum_n sum_i q_ni log softmax(W x_n)_i over W's free rows, in
    float64 NumPy: gradient sum_n (q - p) x and Hessian -sum_n (diag p - p p^T) (x) x x^T."""
    x, q, w = (np.asarray(v, np.float64) for v in (x, q, w))
    k, d = w.shape
    p = softmax(x @ w.T, axis=1)
    grad = ((q - p)[:, :-1].T @ x).ravel()
    hess = np.zeros(((k - 1) * d, (k - 1) * d))
    for pn, xn in zip(p[:, :-1], x):
        hess += np.kron(np.diag(pn) - np.outer(pn, pn), np.outer(xn, xn))
    new = w.copy()
    new[:-1] += np.linalg.solve(hess, grad).reshape(k - 1, d)
    return new


def test_newton_step_matches_numpy():
    key_x, key_w, key_q = jax.random.split(jax.random.key(3), 3)
    n, k, d = 500, 3, 4
    x = jax.random.normal(key_x, (n, d))
    w = (0.7 * jax.random.normal(key_w, (k, d))).at[-1].set(0.0)
    q = jax.nn.softmax(2.0 * jax.random.normal(key_q, (n, k)), axis=1)
    gate = list(jax.nn.softmax(x @ w.T, axis=1).T)
    grad = (q - jnp.stack(gate).T)[:, :-1].T @ x / n
    hess = em_steps.gate_hessian(gate, x, jnp.ones(n)) / n
    new = em_steps.newton_step(w, grad, hess, x.T @ x / n, max_change=1e6)
    np.testing.assert_allclose(new, numpy_newton_step(w, x, q), rtol=2e-3, atol=2e-4)
    # The Hessian is minus the second derivative of Q, by autodiff.
    def q_of(free):
        logits = x @ jnp.concatenate([free, w[-1:]]).T
        return jnp.sum(q * jax.nn.log_softmax(logits, axis=1)) / n
    auto = jax.hessian(q_of)(w[:-1])  # (k - 1, d, k - 1, d)
    np.testing.assert_allclose(hess, -auto, rtol=1e-4, atol=1e-6)
    # The cap: the logits move by exactly max_change (rms over rows) when the step is longer.
    capped = em_steps.newton_step(w, grad, hess, x.T @ x / n, max_change=0.05)
    change = x @ (capped - w).T
    assert float(jnp.sqrt(jnp.mean(jnp.sum(change**2, axis=1)))) == pytest.approx(0.05, rel=1e-4)
