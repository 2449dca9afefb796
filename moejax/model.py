"""The mixture-of-experts regression model (docs/algorithm.md section 1)."""

import functools

import jax
import jax.numpy as jnp

from moejax import _validate, predictive
from moejax.families import get_family
from moejax.nonlinearities import Nonlinearity, get_nonlinearity
from moejax.params import MoEParams
from moejax.sums import Layout, layout_of, row_sum


def random_params(key: jax.Array, dim: int, num_experts: int, *, noise_std=0.1,
                  gating_norm: float = 2.0, orthogonal_gating: bool = True,
                  nonlinearity: Nonlinearity = "linear") -> MoEParams:
    """Draws a synthetic ground truth: orthonormal experts and gating rows of norm `gating_norm`.

    Args:
      key: PRNG key.
      dim: d >= 2, the input dimension.
      num_experts: k in [2, d].
      noise_std: sigma > 0: one, or a sequence of k (one per expert).
      gating_norm: the norm of each of the k - 1 free gating rows (the last row is 0).
      orthogonal_gating: put the gating rows in the orthogonal complement of the experts'
        span (the assumption of the consistency result; needs d > k).
      nonlinearity: the experts' g.

    Returns:
      MoEParams with experts (k, d), gating (k, d), noise_std () or (k,) and nonlinearity.

    Raises:
      ValueError: for k outside [2, d], orthogonal gating with d <= k, a sigma or
        gating_norm that is not positive, or an unknown non-linearity.

    >>> p = random_params(jax.random.key(0), dim=5, num_experts=3, noise_std=0.1)
    >>> p.experts.shape, p.gating.shape, float(p.noise_std)
    ((3, 5), (3, 5), 0.1...)
    """
    dim = _validate.count(dim, "dim", minimum=2)
    num_experts = _validate.count(num_experts, "num_experts", minimum=2)
    if num_experts > dim:
        raise ValueError(f"num_experts must be in [2, dim={dim}], got {num_experts}.")
    noise_std = _validate.noise_levels(noise_std, num_experts)
    _validate.positive(gating_norm, "gating_norm")
    orthogonal_gating = _validate.flag(orthogonal_gating, "orthogonal_gating")
    get_nonlinearity(nonlinearity)
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
    return MoEParams(experts, gating, noise_std.astype(w.dtype), nonlinearity)


def sample(key: jax.Array, params: MoEParams, n: int) -> tuple[jax.Array, jax.Array]:
    """Draws n samples of the model (docs/algorithm.md section 1).

    Args:
      key: PRNG key.
      params: the model (its g is params.nonlinearity); noise_std one sigma or one per expert.
      n: number of samples.

    Returns:
      (x, y): x ~ N(0, I_d) of shape (n, d) and y of shape (n,).

    Raises:
      ValueError: for malformed params or n < 1.

    >>> p = random_params(jax.random.key(0), dim=5, num_experts=3, nonlinearity="tanh")
    >>> x, y = sample(jax.random.key(1), p, 1000)
    >>> x.shape, y.shape
    ((1000, 5), (1000,))
    """
    params = _validate.params(params)
    n = _validate.count(n, "n")
    k, d = params.experts.shape
    key_x, key_z, key_eps = jax.random.split(key, 3)
    x = jax.random.normal(key_x, (n, d), params.experts.dtype)
    z = jax.random.categorical(key_z, predictive.gate_logits(params.gating, x))
    mean = jnp.take_along_axis(predictive.expert_means(params.experts, x, params.nonlinearity),
                               z[:, None], 1)[:, 0]
    scale = jnp.broadcast_to(params.noise_std, (k,))[z]
    return x, get_family(params.family).sample(key_eps, mean, scale)


def log_likelihood(params: MoEParams, x: jax.Array, y: jax.Array, *,
                   chunk_size: int | None = None) -> jax.Array:
    """Mean log-likelihood (1/n) sum_n log sum_i softmax(W x_n)_i N(y_n | g(a_i . x_n), sigma_i^2).

    One pass through `sums.row_sum`: in one block, in blocks of `chunk_size` rows, over the
    devices x is sharded on, or from streamed host data (`moejax.streamed`).

    Args:
      params: the model (one sigma, or one per expert; g is params.nonlinearity).
      x: (n, d) inputs; y: (n,) responses.
      chunk_size: None, or rows per block (required for streamed data).

    Returns:
      A scalar: docs/algorithm.md section 4's L.

    Raises:
      ValueError: for malformed or non-finite params or data, or d not matching.

    >>> p = random_params(jax.random.key(0), dim=5, num_experts=3, noise_std=(0.1, 0.2, 0.3))
    >>> x, y = sample(jax.random.key(1), p, 1000)
    >>> bool(log_likelihood(p, x, y) > log_likelihood(p._replace(noise_std=1.0), x, y))
    True
    """
    x, y = _validate.data(x, y, streams=True)
    params = _validate.params(params, design=x.shape[1])
    out = _summed_log_likelihood(params, x, y, layout_of(x, chunk_size))
    _validate.stream_errors(x, y)
    return out


@functools.partial(jax.jit, static_argnames="layout")
def _summed_log_likelihood(params: MoEParams, x, y, layout: Layout) -> jax.Array:
    def block(xb, yb, w):
        log_lik = predictive.log_density(params, xb, yb)
        return jnp.sum(w * log_lik), jnp.sum(w)

    total, count = row_sum(block, (x, y), layout)
    return total / count


def posteriors(params: MoEParams, x: jax.Array, y: jax.Array) -> jax.Array:
    """P(z = i | x, y): the E-step responsibilities, also where y lies so far from every
    expert that each joint density underflows (their limit, the nearest expert, not NaN).

    Args:
      params: the model; x: (n, d) inputs; y: (n,) responses.

    Returns:
      (n, k), rows summing to 1.

    Raises:
      ValueError: as `log_likelihood`.

    >>> p = random_params(jax.random.key(0), dim=5, num_experts=3)
    >>> x, y = sample(jax.random.key(1), p, 10)
    >>> posteriors(p, x, y).shape
    (10, 3)
    """
    x, y = _validate.data(x, y)
    params = _validate.params(params, design=x.shape[1])
    return predictive.posteriors(params, x, y)


def predict(params: MoEParams, x: jax.Array) -> jax.Array:
    """E[y | x] = sum_i softmax(W x)_i g(a_i . x), g = params.nonlinearity.

    Args:
      params: the model; x: (n, d) inputs.

    Returns:
      (n,) predictions.

    Raises:
      ValueError: for malformed params or x, or d not matching.

    >>> p = random_params(jax.random.key(0), dim=5, num_experts=3, nonlinearity="relu")
    >>> predict(p, jax.numpy.zeros((4, 5)))  # g(0) = 0 for every expert
    Array([0., 0., 0., 0.], dtype=float32)
    """
    x = _validate.features(x)
    params = _validate.params(params, design=x.shape[1])
    return predictive.predict(params, x)
