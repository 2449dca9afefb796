"""EM for the gating with the experts fixed (ALGORITHM.md section 4).

The M-step maximises sum_n sum_i q_ni log softmax(W x_n)_i, a weighted multinomial logistic
regression. Each EM iteration takes one step of Bohning's bound method on it: the negative
Hessian is bounded by B = 1/2 (I - 1 1^T / k) (x) C over the k - 1 free rows, C = X^T X / n,
so W <- W + B^(-1) grad is a monotone ascent step for any data (no step size), and
B^(-1) = 2 (I + 1 1^T) (x) C^(-1) costs one Cholesky factor of C for the whole run.
E-step and M-step together are a generalised EM: the likelihood never decreases.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy as jsp

from moejax import _validate
from moejax.nonlinearities import Nonlinearity, get_nonlinearity


class GatingInfo(NamedTuple):
    """Diagnostics of `fit_gating`.

    Attributes:
      log_likelihood: (num_inits,) final mean log-likelihood L(W) of every initialisation.
      best: index of the kept initialisation.
      trace: (num_iters,) L(W) of the kept initialisation before each iteration.
      noise_std: sigma of the kept initialisation (the input unless it was learned).
    """

    log_likelihood: jax.Array
    best: jax.Array
    trace: jax.Array
    noise_std: jax.Array


# The E-step works expert-major, on k rows of length n combined by k elementwise ops rather
# than a reduction over an expert axis: XLA:CPU runs a reduction over a few entries as a
# separate slow loop, while elementwise ops fuse into one pass over the data (measured 2-4x
# faster for n = 1e5, k = 3). k is static and small.


def _softmax_experts(rows):
    """softmax and logsumexp across a list of k equal-shape arrays: (list of k, lse)."""
    top = functools.reduce(jnp.maximum, rows)
    exps = [jnp.exp(r - top) for r in rows]
    total = functools.reduce(jnp.add, exps)
    return [e / total for e in exps], top + jnp.log(total)


def e_step(gating, x, log_dens):
    """Gate probabilities p and responsibilities q (each k arrays (n,)), log p(y_n | x_n): (n,).

    q_ni is proportional to p_ni N(y_n | g(a_i . x_n), sigma^2) = softmax(logits + log_dens)_i.
    """
    logits = list(gating @ x.T)
    gate, log_z = _softmax_experts(logits)
    resp, log_joint = _softmax_experts([l + ld for l, ld in zip(logits, log_dens)])
    return gate, resp, log_joint - log_z


def gating_log_likelihood(gating: jax.Array, x: jax.Array, log_dens: jax.Array) -> jax.Array:
    """L(W) = (1/n) sum_n log sum_i softmax(W x_n)_i N(y_n | g(a_i . x_n), sigma^2), a scalar.

    gating: (k, d); x: (n, d); log_dens: (k, n) from `expert_log_densities`.
    """
    return jnp.mean(e_step(gating, x, log_dens)[2])


def m_step(gating: jax.Array, gate, resp, x: jax.Array, gram_chol: jax.Array) -> jax.Array:
    """One Bohning ascent step on sum_n sum_i q_ni log softmax(W x_n)_i: the new gating (k, d).

    gate, resp: k arrays (n,) each, p_ni and q_ni from the E-step; gram_chol: (d, d) lower
    Cholesky factor of C = X^T X / n.
    """
    grad = jnp.stack([q - p for q, p in zip(resp[:-1], gate[:-1])]) @ x / x.shape[0]
    # B^(-1) grad with B = 1/2 (I - 1 1^T / k) (x) C: (I - 1 1^T/k)^(-1) = I + 1 1^T on k-1 rows.
    grad = 2.0 * (grad + jnp.sum(grad, axis=0, keepdims=True))
    step = jsp.linalg.cho_solve((gram_chol, True), grad.T).T
    return gating.at[:-1].add(step)


def em_step(gating: jax.Array, x: jax.Array, log_dens: jax.Array,
            gram_chol: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One EM iteration for the gating; returns (new gating (k, d), L(W) before the step).

    gating: (k, d) with last row 0; x: (n, d); log_dens: (k, n) from `expert_log_densities`;
    gram_chol: (d, d) lower Cholesky factor of C = X^T X / n.
    """
    gate, resp, log_lik = e_step(gating, x, log_dens)
    return m_step(gating, gate, resp, x, gram_chol), jnp.mean(log_lik)


def noise_std_update(resp, sq_resid) -> jax.Array:
    """The M-step for sigma: sqrt((1/n) sum_n sum_i q_ni r_ni^2), a scalar.

    resp: k arrays (n,) of responsibilities; sq_resid: (k, n) squared residuals (y - g(a_i . x))^2.
    """
    return jnp.sqrt(jnp.mean(sum(q * r for q, r in zip(resp, sq_resid))))


def _log_densities(sq_resid, noise_std):
    return -0.5 * sq_resid / jnp.square(noise_std) - jnp.log(noise_std) - 0.5 * jnp.log(2 * jnp.pi)


@functools.partial(jax.jit, static_argnames=("nonlinearity", "num_inits", "num_iters",
                                             "learn_noise_std"))
def _fit_gating(key, x, y, experts, noise_std, nonlinearity, num_inits, num_iters, init_scale,
                learn_noise_std=False):
    n, d = x.shape
    k = experts.shape[0]
    sq_resid = jnp.square(y - get_nonlinearity(nonlinearity)(experts @ x.T))
    gram_chol = jnp.linalg.cholesky(x.T @ x / n)

    init = init_scale / jnp.sqrt(d) * jax.random.normal(key, (num_inits, k, d), x.dtype)
    init = init.at[:, -1].set(0.0)

    def step(carry, _):
        w, sigma = carry
        gate, resp, log_lik = e_step(w, x, _log_densities(sq_resid, sigma))
        if learn_noise_std:
            sigma = noise_std_update(resp, sq_resid)
        return (m_step(w, gate, resp, x, gram_chol), sigma), jnp.mean(log_lik)

    def run(w0):
        return jax.lax.scan(step, (w0, noise_std), None, length=num_iters)

    (gatings, sigmas), traces = jax.vmap(run)(init)
    final = jax.vmap(lambda w, s: gating_log_likelihood(w, x, _log_densities(sq_resid, s)))(
        gatings, sigmas)
    # A NaN likelihood (diverged run) must never be selected.
    best = jnp.argmax(jnp.where(jnp.isnan(final), -jnp.inf, final))
    return gatings[best], GatingInfo(final, best, traces[best], sigmas[best])


def fit_gating(key: jax.Array, x: jax.Array, y: jax.Array, experts: jax.Array, *,
               noise_std, nonlinearity: Nonlinearity = "linear", num_inits: int = 4,
               num_iters: int = 50, init_scale: float = 1.0,
               learn_noise_std: bool = False) -> tuple[jax.Array, GatingInfo]:
    """Maximum-likelihood gating W for fixed experts by EM from random initialisations.

    Runs `num_inits` EM runs of `num_iters` iterations in one vmap, each from W with
    N(0, init_scale^2 / d) entries (last row 0), and keeps the one with the largest L(W)
    (ALGORITHM.md section 4). With `learn_noise_std`, sigma is a parameter too: it starts at
    `noise_std` and every M-step sets sigma^2 = (1/n) sum_n sum_i q_ni (y_n - g(a_i . x_n))^2,
    its exact maximiser, so the likelihood still never decreases.

    Args:
      key: PRNG key for the initialisations.
      x: (n, d) inputs; y: (n,) responses.
      experts: (k, d) fixed expert directions.
      noise_std: sigma > 0 (may be traced); the start value if `learn_noise_std`.
      nonlinearity: the experts' g.

    Returns:
      (gating (k, d) with last row 0, GatingInfo).
    """
    x, y = _validate.data(x, y)
    if experts.ndim != 2 or experts.shape[1] != x.shape[1]:
        raise ValueError(f"experts must have shape (k, d={x.shape[1]}), got {experts.shape}.")
    if num_inits < 1 or num_iters < 1:
        raise ValueError(f"num_inits and num_iters must be >= 1, got {num_inits}, {num_iters}.")
    _validate.positive(noise_std, "noise_std")
    return _fit_gating(key, x, y, experts.astype(x.dtype), jnp.asarray(noise_std, x.dtype),
                       nonlinearity, num_inits, num_iters, init_scale, learn_noise_std)
