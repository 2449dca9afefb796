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
from moejax.sums import Layout, layout_of, row_sum
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


def bohning_step(gating: jax.Array, grad: jax.Array, gram_chol: jax.Array) -> jax.Array:
    """W <- W + B^(-1) grad on the k - 1 free rows: the new gating (k, d).

    grad: (k - 1, d), (1/n) sum_n (q_ni - p_ni) x_n for i < k; gram_chol: (d, d) lower
    Cholesky factor of C = X^T X / n.
    """
    # B^(-1) grad with B = 1/2 (I - 1 1^T / k) (x) C: (I - 1 1^T/k)^(-1) = I + 1 1^T on k-1 rows.
    grad = 2.0 * (grad + jnp.sum(grad, axis=0, keepdims=True))
    step = jsp.linalg.cho_solve((gram_chol, True), grad.T).T
    return gating.at[:-1].add(step)


def m_step(gating: jax.Array, gate, resp, x: jax.Array, gram_chol: jax.Array) -> jax.Array:
    """One Bohning ascent step on sum_n sum_i q_ni log softmax(W x_n)_i: the new gating (k, d).

    gate, resp: k arrays (n,) each, p_ni and q_ni from the E-step; gram_chol: (d, d) lower
    Cholesky factor of C = X^T X / n.
    """
    grad = jnp.stack([q - p for q, p in zip(resp[:-1], gate[:-1])]) @ x / x.shape[0]
    return bohning_step(gating, grad, gram_chol)


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


def gram_matrix(x: jax.Array, layout: Layout = Layout()) -> jax.Array:
    """C = X^T X / n: (d, d)."""
    return row_sum(lambda xb, w: xb.T @ (w[:, None] * xb), (x,), layout) / x.shape[0]


def _em_sums(gatings, sigmas, x, y, experts, nonlinearity, layout):
    """For each of m gatings (m, k, d) and sigmas (m,): sums over rows of (q - p) x for the
    k - 1 free rows (m, k - 1, d), of log p(y | x) (m,), and of sum_i q_i r_i^2 (m,). One pass
    over the data serves every initialisation."""
    g = get_nonlinearity(nonlinearity)

    def block(xb, yb, w):
        sq_resid = jnp.square(yb - g(experts @ xb.T))  # (k, rows), shared by all inits

        def one(gating, sigma):
            gate, resp, log_lik = e_step(gating, xb, _log_densities(sq_resid, sigma))
            diff = jnp.stack([(q - p) * w for q, p in zip(resp[:-1], gate[:-1])])
            sq = sum(q * r for q, r in zip(resp, sq_resid))
            return diff @ xb, jnp.sum(w * log_lik), jnp.sum(w * sq)

        return jax.vmap(one)(gatings, sigmas)

    return row_sum(block, (x, y), layout)


@functools.partial(jax.jit, static_argnames=("nonlinearity", "num_inits", "num_iters",
                                             "learn_noise_std", "layout"))
def _fit_gating(key, x, y, experts, noise_std, nonlinearity, num_inits, num_iters, init_scale,
                learn_noise_std=False, layout=Layout()):
    n, d = x.shape
    k = experts.shape[0]
    gram_chol = jnp.linalg.cholesky(gram_matrix(x, layout))

    init = init_scale / jnp.sqrt(d) * jax.random.normal(key, (num_inits, k, d), x.dtype)
    init = init.at[:, -1].set(0.0)
    sums = functools.partial(_em_sums, x=x, y=y, experts=experts, nonlinearity=nonlinearity,
                             layout=layout)

    def step(carry, _):
        gatings, sigmas = carry
        grad, log_lik, sq = sums(gatings, sigmas)
        if learn_noise_std:  # sigma's exact M-step, from this E-step's responsibilities
            sigmas = jnp.sqrt(sq / n)
        gatings = jax.vmap(bohning_step, in_axes=(0, 0, None))(gatings, grad / n, gram_chol)
        return (gatings, sigmas), log_lik / n

    start = (init, jnp.full((num_inits,), noise_std, x.dtype))
    (gatings, sigmas), traces = jax.lax.scan(step, start, None, length=num_iters)
    final = sums(gatings, sigmas)[1] / n
    best = _first_best(final)
    return gatings[best], GatingInfo(final, best, traces[:, best], sigmas[best])


def _first_best(log_liks: jax.Array) -> jax.Array:
    """Index of the first likelihood within float rounding of the largest (NaN never wins).

    Runs that reach the same optimum tie up to summation order; taking the first of the tied
    ones, not the argmax of the rounding noise, makes the choice the same in every layout
    (chunked, sharded) of the sums.
    """
    clean = jnp.where(jnp.isnan(log_liks), -jnp.inf, log_liks)
    top = jnp.max(clean)
    tol = 8 * jnp.finfo(log_liks.dtype).eps * jnp.maximum(1.0, jnp.abs(top))
    return jnp.argmax(clean >= top - tol)


def fit_gating(key: jax.Array, x: jax.Array, y: jax.Array, experts: jax.Array, *,
               noise_std, nonlinearity: Nonlinearity = "linear", num_inits: int = 4,
               num_iters: int = 50, init_scale: float = 1.0, learn_noise_std: bool = False,
               chunk_size: int | None = None) -> tuple[jax.Array, GatingInfo]:
    """Maximum-likelihood gating W for fixed experts by EM from random initialisations.

    Runs `num_inits` EM runs of `num_iters` iterations in one vmap, each from W with
    N(0, init_scale^2 / d) entries (last row 0), and keeps the one with the largest L(W)
    (ALGORITHM.md section 4). With `learn_noise_std`, sigma is a parameter too: it starts at
    `noise_std` and every M-step sets sigma^2 = (1/n) sum_n sum_i q_ni (y_n - g(a_i . x_n))^2,
    its exact maximiser, so the likelihood still never decreases.

    Each iteration is one pass over the data for all initialisations together; with
    `chunk_size` the pass runs over blocks of that many rows, and x sharded along its rows
    over a device mesh runs data-parallel (see `moejax.recover`).

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
    layout = layout_of(x, chunk_size)
    return _fit_gating(key, x, y, experts.astype(x.dtype), jnp.asarray(noise_std, x.dtype),
                       nonlinearity, num_inits, num_iters, init_scale, learn_noise_std, layout)
