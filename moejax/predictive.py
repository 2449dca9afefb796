"""The model's predictive distribution per row (docs/algorithm.md section 6): gate
probabilities, posteriors, the density of y given x, its mean and variance, its quantiles and
draws. Pure functions of `MoEParams` on checked inputs (shapes: x (n, d), y (n,)); `FittedMoE`
wraps them in the data's units.

Given x, y is a mixture of k normals: weights p_i(x) = softmax(W x)_i, means mu_i = g(a_i . x),
sds sigma_i. Its CDF F(t) = sum_i p_i Phi((t - mu_i) / sigma_i) is increasing, so a quantile
is found by bisection between the smallest mu_i - 12 sigma_i and the largest mu_i + 12 sigma_i,
where F is 0 and 1 to float precision.
"""

import jax
import jax.numpy as jnp
from jax.scipy.stats import norm

from moejax.model import _joint_log_probs, expert_outputs
from moejax.params import MoEParams

# Bisection halves the bracket each step: 60 steps take a bracket of 24 sigma to 2e-17 of it,
# below float64 rounding, so the quantile is exact to the float type.
_BISECTION_STEPS = 60


def gate_probabilities(params: MoEParams, x: jax.Array) -> jax.Array:
    """p_i(x) = softmax(W x)_i: (n, k)."""
    return jax.nn.softmax(x @ params.gating.T, axis=-1)


def posteriors(params: MoEParams, x: jax.Array, y: jax.Array) -> jax.Array:
    """P(z = i | x, y): (n, k), rows summing to 1, also where y lies so far from every expert
    that each joint density underflows (their limit, not NaN)."""
    p, mu, sigma = _components(params, x)
    t = (y[:, None] - mu) / sigma
    # softmax_i(log p_i - log sigma_i - t_i^2 / 2), with the t_i^2 compared as
    # m^2 ((t_i / m)^2 - min_j (t_j / m)^2), m = max_j |t_j|, and the smallest term set to
    # exactly 0: the row keeps a finite entry where m^2 overflows.
    m = jnp.maximum(jnp.max(jnp.abs(t), axis=-1, keepdims=True), 1.0)
    root = jnp.sqrt(m)  # t / m in two steps: 1 / m can be subnormal, which XLA flushes to 0
    u = jnp.square(t / root / root)
    excess = jnp.maximum(u - jnp.min(u, axis=-1, keepdims=True), 0.0)
    nearest = jax.nn.one_hot(jnp.argmin(u, axis=-1), u.shape[-1], dtype=bool)
    gap = jnp.where(nearest, 0.0, -0.5 * (m * excess) * m)
    log_gate = jax.nn.log_softmax(x @ params.gating.T, axis=-1)
    return jax.nn.softmax(log_gate - jnp.log(sigma) + gap, axis=-1)


def log_density(params: MoEParams, x: jax.Array, y: jax.Array) -> jax.Array:
    """log p(y_n | x_n): (n,)."""
    return jax.nn.logsumexp(_joint_log_probs(params, x, y), axis=-1)


def _components(params: MoEParams, x: jax.Array):
    """(weights p (n, k), means mu (n, k), sds sigma broadcast to (n, k))."""
    p = gate_probabilities(params, x)
    mu = expert_outputs(params.experts, x, params.nonlinearity)
    return p, mu, jnp.broadcast_to(params.noise_std, mu.shape)


def mean_and_variance(params: MoEParams, x: jax.Array):
    """E[y | x] and Var[y | x] = sum_i p_i (sigma_i^2 + mu_i^2) - E[y | x]^2: (n,) each."""
    p, mu, sigma = _components(params, x)
    mean = jnp.sum(p * mu, axis=-1)
    # The spread of the means around the mixture mean, plus the noise: never negative.
    var = jnp.sum(p * (jnp.square(sigma) + jnp.square(mu - mean[:, None])), axis=-1)
    return mean, var


def quantiles(params: MoEParams, x: jax.Array, probs: jax.Array) -> jax.Array:
    """The probs-quantiles of y given each row of x: (n, m) for probs (m,) in (0, 1)."""
    p, mu, sigma = _components(params, x)

    def cdf(t):  # t (n, m) -> F(t) (n, m)
        u = (t[:, :, None] - mu[:, None, :]) / sigma[:, None, :]
        return jnp.sum(p[:, None, :] * norm.cdf(u), axis=-1)

    lo = jnp.min(mu - 12 * sigma, axis=-1)[:, None] * jnp.ones_like(probs)
    hi = jnp.max(mu + 12 * sigma, axis=-1)[:, None] * jnp.ones_like(probs)

    def step(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        below = cdf(mid) < probs
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, _BISECTION_STEPS, step, (lo, hi))
    return 0.5 * (lo + hi)


def sample(key: jax.Array, params: MoEParams, x: jax.Array) -> jax.Array:
    """One draw of y for each row of x: (n,)."""
    key_z, key_eps = jax.random.split(key)
    p, mu, sigma = _components(params, x)
    z = jax.random.categorical(key_z, jnp.log(p), axis=-1)
    pick = lambda a: jnp.take_along_axis(a, z[:, None], axis=1)[:, 0]
    return pick(mu) + pick(sigma) * jax.random.normal(key_eps, z.shape, mu.dtype)
