"""The model's formulas per row (docs/algorithm.md sections 1 and 6): the gate's logits and
probabilities, the experts' means, the joint and posterior probabilities of the experts, the
density of y given x, its mean and variance, its quantiles and draws. Pure functions of
`MoEParams` on checked inputs (shapes: x (n, d), y (n,)); every estimator, E-step and
`FittedMoE` method computes these quantities here, and y's distribution around an expert's
mean comes from the params' family (`moejax.families`).

Given x, y is a mixture of k family members: weights p_i(x) = softmax(W v)_i (v the gate's
design, x in the paper's model), means mu_i = g(a_i . x), scales s_i (the Gaussian's sigma_i).
Its CDF F(t) = sum_i p_i F_i(t) is increasing, so a quantile is found by bisection between the
smallest and largest of the experts' `Family.bracket`s, where F is 0 and 1 to float precision.
"""

import jax
import jax.numpy as jnp

from moejax.families import get_family
from moejax.nonlinearities import Nonlinearity, get_nonlinearity
from moejax.params import MoEParams

# Bisection halves the bracket each step: 60 steps take a bracket of 24 sigma to 2e-17 of it,
# below float64 rounding, so the quantile is exact to the float type.
_BISECTION_STEPS = 60


def expert_part(experts: jax.Array, u: jax.Array) -> jax.Array:
    """The experts' columns of a design u: u itself when the gate shares the experts' design
    (u (n, d_e)), else its first d_e columns (u = [z_experts, z_gate], (n, d_e + d_gate);
    docs/algorithm.md section 1, "The gate's design"). d_e is read from experts (k, d_e)."""
    return u[:, :experts.shape[-1]]


def gate_part(gating: jax.Array, u: jax.Array) -> jax.Array:
    """The gate's columns of a design u: u itself when shared, else its last d_gate columns
    (d_gate read from gating (k, d_gate))."""
    return u[:, u.shape[1] - gating.shape[-1]:]


def gate_logits(gating: jax.Array, v: jax.Array, expert_major: bool = False) -> jax.Array:
    """The gate's logits W v_n for the gate's part of the design v (`gate_part`): (n, k), or
    (k, n) expert-major (the layout of the fused E-steps). The one formula for the logits."""
    v = gate_part(gating, v)
    return gating @ v.T if expert_major else v @ gating.T


def expert_means(experts: jax.Array, x: jax.Array, nonlinearity: Nonlinearity,
                 expert_major: bool = False) -> jax.Array:
    """g(a_i . x_n), each expert's mean on the experts' part of the design x
    (`expert_part`): (n, k), or (k, n) expert-major."""
    g = get_nonlinearity(nonlinearity)
    x = expert_part(experts, x)
    return g(experts @ x.T) if expert_major else g(x @ experts.T)


def expert_scales(noise_std: jax.Array) -> jax.Array:
    """The experts' scales shaped to broadcast against expert-major (k, n) arrays: () or
    (k, 1)."""
    return noise_std[:, None] if jnp.ndim(noise_std) else noise_std


def expert_log_densities(params: MoEParams, x: jax.Array, y: jax.Array) -> jax.Array:
    """log p(y_n | expert i, x_n), expert-major: (k, n)."""
    mean = expert_means(params.experts, x, params.nonlinearity, expert_major=True)
    return get_family(params.family).log_density(y, mean, expert_scales(params.noise_std))


def gate_probabilities(params: MoEParams, x: jax.Array) -> jax.Array:
    """p_i(x) = softmax(W x)_i: (n, k)."""
    return jax.nn.softmax(gate_logits(params.gating, x), axis=-1)


def joint_log_probs(params: MoEParams, x: jax.Array, y: jax.Array) -> jax.Array:
    """log [p_i(x_n) p(y_n | expert i, x_n)]: (n, k)."""
    log_gate = jax.nn.log_softmax(gate_logits(params.gating, x), axis=-1)
    return log_gate + expert_log_densities(params, x, y).T


def log_density(params: MoEParams, x: jax.Array, y: jax.Array) -> jax.Array:
    """log p(y_n | x_n): (n,)."""
    return jax.nn.logsumexp(joint_log_probs(params, x, y), axis=-1)


def posteriors(params: MoEParams, x: jax.Array, y: jax.Array) -> jax.Array:
    """P(z = i | x, y): (n, k), rows summing to 1, also where y lies so far from every expert
    that each joint density underflows (their limit, not NaN)."""
    mu = expert_means(params.experts, x, params.nonlinearity)
    log_gate = jax.nn.log_softmax(gate_logits(params.gating, x), axis=-1)
    scale = jnp.broadcast_to(params.noise_std, mu.shape)
    relative = get_family(params.family).relative_log_density(y, mu, scale)
    return jax.nn.softmax(log_gate + relative, axis=-1)


def _components(params: MoEParams, x: jax.Array):
    """(weights p (n, k), means mu (n, k), scales broadcast to (n, k))."""
    p = gate_probabilities(params, x)
    mu = expert_means(params.experts, x, params.nonlinearity)
    return p, mu, jnp.broadcast_to(params.noise_std, mu.shape)


def predict(params: MoEParams, x: jax.Array) -> jax.Array:
    """E[y | x] = sum_i p_i(x) mu_i(x): (n,)."""
    p, mu, _ = _components(params, x)
    return jnp.sum(p * mu, axis=-1)


def mean_and_variance(params: MoEParams, x: jax.Array):
    """E[y | x] and Var[y | x] = sum_i p_i (Var_i + (mu_i - E[y | x])^2): (n,) each."""
    p, mu, scale = _components(params, x)
    mean = jnp.sum(p * mu, axis=-1)
    # The spread of the means around the mixture mean, plus each expert's own: never negative.
    var = jnp.sum(p * (get_family(params.family).variance(mu, scale)
                       + jnp.square(mu - mean[:, None])), axis=-1)
    return mean, var


def quantiles(params: MoEParams, x: jax.Array, probs: jax.Array) -> jax.Array:
    """The probs-quantiles of y given each row of x: (n, m) for probs (m,) in (0, 1)."""
    p, mu, scale = _components(params, x)
    family = get_family(params.family)

    def cdf(t):  # t (n, m) -> F(t) (n, m)
        return jnp.sum(p[:, None, :] * family.cdf(t[:, :, None], mu[:, None, :],
                                                  scale[:, None, :]), axis=-1)

    low, high = family.bracket(mu, scale)
    lo = jnp.min(low, axis=-1)[:, None] * jnp.ones_like(probs)
    hi = jnp.max(high, axis=-1)[:, None] * jnp.ones_like(probs)

    def step(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        below = cdf(mid) < probs
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, _BISECTION_STEPS, step, (lo, hi))
    # A discrete y's CDF is constant on [q, q + 1): F(floor(hi)) = F(hi) >= probs, and
    # F(lo) < probs, so floor(hi) is the smallest integer quantile.
    return jnp.floor(hi) if family.discrete else 0.5 * (lo + hi)


def sample_response(key: jax.Array, params: MoEParams, x: jax.Array) -> jax.Array:
    """One draw of y given each row of x: (n,). (`moejax.sample` draws x as well.)"""
    key_z, key_eps = jax.random.split(key)
    p, mu, scale = _components(params, x)
    z = jax.random.categorical(key_z, jnp.log(p), axis=-1)
    pick = lambda a: jnp.take_along_axis(a, z[:, None], axis=1)[:, 0]
    return get_family(params.family).sample(key_eps, pick(mu), pick(scale))
