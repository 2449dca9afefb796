"""The mixture-of-experts regression model (docs/algorithm.md section 1)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from moejax import _validate
from moejax.nonlinearities import Nonlinearity, get_nonlinearity


class MoEParams(NamedTuple):
    """Parameters of y = g(a_z . x) + noise_std * eps, P(z = i | x) = softmax(gating @ x)_i.

    Attributes:
      experts: (k, d), unit-norm rows a_i.
      gating: (k, d), rows w_i; the last row is zero (the gating is identified only up to
        adding one vector to every row).
      noise_std: sigma > 0: a scalar (one noise level shared by the experts, the model of
        the consistency result) or (k,), one per expert.
    """

    experts: jax.Array
    gating: jax.Array
    noise_std: jax.Array


def random_params(key: jax.Array, dim: int, num_experts: int, *, noise_std=0.1,
                  gating_norm: float = 2.0, orthogonal_gating: bool = True) -> MoEParams:
    """Draws a synthetic ground truth: orthonormal experts and gating rows of norm `gating_norm`.

    With `orthogonal_gating` the gating rows lie in the orthogonal complement of the experts'
    span (the assumption of the consistency result); this needs dim > num_experts.
    noise_std: one sigma, or a sequence of num_experts (one per expert).
    """
    dim = _validate.count(dim, "dim", minimum=2)
    num_experts = _validate.count(num_experts, "num_experts", minimum=2)
    if num_experts > dim:
        raise ValueError(f"num_experts must be in [2, dim={dim}], got {num_experts}.")
    noise_std = _validate.noise_levels(noise_std, num_experts)
    _validate.positive(gating_norm, "gating_norm")
    orthogonal_gating = _validate.flag(orthogonal_gating, "orthogonal_gating")
    if orthogonal_gating and dim <= num_experts:
        raise ValueError(
            f"orthogonal_gating needs dim > num_experts, got dim={dim}, num_experts={num_experts}.")
    key_a, key_w = jax.random.split(key)
    q, _ = jnp.linalg.qr(jax.random.normal(key_a, (dim, dim)))
    experts = q[:, :num_experts].T
    w = jax.random.normal(key_w, (num_experts - 1, dim))
    if orthogonal_gating:
        w = w - (w @ experts.T) @ experts
    w = gating_norm * w / jnp.linalg.norm(w, axis=1, keepdims=True)
    gating = jnp.concatenate([w, jnp.zeros((1, dim), w.dtype)])
    return MoEParams(experts, gating, noise_std.astype(w.dtype))


def expert_noise(noise_std: jax.Array) -> jax.Array:
    """sigma shaped to broadcast against expert-major (k, n) arrays: () or (k, 1)."""
    return noise_std[:, None] if jnp.ndim(noise_std) else noise_std


def expert_outputs(experts: jax.Array, x: jax.Array, nonlinearity: Nonlinearity) -> jax.Array:
    """g(x @ experts.T): (n, k), each expert's noiseless output."""
    return get_nonlinearity(nonlinearity)(x @ experts.T)


def sample(key: jax.Array, params: MoEParams, n: int,
           nonlinearity: Nonlinearity = "linear") -> tuple[jax.Array, jax.Array]:
    """Draws n samples: x ~ N(0, I_d) of shape (n, d) and y of shape (n,)."""
    params = _validate.params(params)
    n = _validate.count(n, "n")
    k, d = params.experts.shape
    key_x, key_z, key_eps = jax.random.split(key, 3)
    x = jax.random.normal(key_x, (n, d), params.experts.dtype)
    z = jax.random.categorical(key_z, x @ params.gating.T)
    mean = jnp.take_along_axis(expert_outputs(params.experts, x, nonlinearity), z[:, None], 1)[:, 0]
    sigma = jnp.broadcast_to(params.noise_std, (k,))[z]
    y = mean + sigma * jax.random.normal(key_eps, (n,), mean.dtype)
    return x, y


def expert_log_densities(x: jax.Array, y: jax.Array, experts: jax.Array, noise_std: jax.Array,
                         nonlinearity: Nonlinearity) -> jax.Array:
    """log N(y_n | g(a_i . x_n), sigma_i^2), expert-major: (k, n). noise_std: () or (k,)."""
    sigma = expert_noise(noise_std)
    resid = (y - get_nonlinearity(nonlinearity)(experts @ x.T)) / sigma
    return -0.5 * jnp.square(resid) - jnp.log(sigma) - 0.5 * jnp.log(2 * jnp.pi)


def _joint_log_probs(params: MoEParams, x: jax.Array, y: jax.Array,
                     nonlinearity: Nonlinearity) -> jax.Array:
    """log [softmax(W x)_i N(y | g(a_i . x), sigma_i^2)]: (n, k)."""
    log_gate = jax.nn.log_softmax(x @ params.gating.T, axis=-1)
    return log_gate + expert_log_densities(x, y, params.experts, params.noise_std,
                                           nonlinearity).T


def log_likelihood(params: MoEParams, x: jax.Array, y: jax.Array,
                   nonlinearity: Nonlinearity = "linear") -> jax.Array:
    """Mean log-likelihood (1/n) sum_n log sum_i softmax(W x_n)_i N(y_n | g(a_i . x_n), sigma_i^2).

    x: (n, d), y: (n,). Returns a scalar (docs/algorithm.md section 4's L).
    """
    params = _validate.params(params)
    x, y = _validate.data(x, y, dim=params.experts.shape[1])
    return _mean_log_likelihood(params, x, y, nonlinearity)


def _mean_log_likelihood(params: MoEParams, x, y, nonlinearity) -> jax.Array:
    """`log_likelihood` without input checks, for use inside jitted code."""
    return jnp.mean(jax.nn.logsumexp(_joint_log_probs(params, x, y, nonlinearity), axis=-1))


def posteriors(params: MoEParams, x: jax.Array, y: jax.Array,
               nonlinearity: Nonlinearity = "linear") -> jax.Array:
    """P(z = i | x, y): (n, k), the E-step responsibilities."""
    params = _validate.params(params)
    x, y = _validate.data(x, y, dim=params.experts.shape[1])
    return jax.nn.softmax(_joint_log_probs(params, x, y, nonlinearity), axis=-1)


def predict(params: MoEParams, x: jax.Array, nonlinearity: Nonlinearity = "linear") -> jax.Array:
    """E[y | x] = sum_i softmax(W x)_i g(a_i . x): (n,) for x: (n, d)."""
    params = _validate.params(params)
    x = _validate.features(x, dim=params.experts.shape[1])
    return _predict(params, x, nonlinearity)


def _predict(params: MoEParams, x, nonlinearity) -> jax.Array:
    """`predict` without input checks, for use inside jitted code."""
    gate = jax.nn.softmax(x @ params.gating.T, axis=-1)
    return jnp.sum(gate * expert_outputs(params.experts, x, nonlinearity), axis=-1)
