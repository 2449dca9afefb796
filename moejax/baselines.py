"""The baselines the consistent method is measured against (docs/algorithm.md section 5): joint
EM (Jordan and Jacobs 1994) and joint gradient descent from random starts (`random_init`).
sigma is fixed when given, else learned. Joint EM from a given start is `moejax.refine`
(`moejax.joint`)."""

import functools

import jax
import jax.numpy as jnp
import optax

from moejax import _validate, joint, predictive, solver
from moejax.inference import free_parts, from_parts
from moejax.moments import _initial_noise_std
from moejax.nonlinearities import Nonlinearity
from moejax.params import MoEParams
from moejax.solver import FitInfo
from moejax.sums import Layout, layout_of


def random_init(key: jax.Array, dim: int, num_experts: int, noise_std, dtype=None, *,
                nonlinearity: Nonlinearity = "linear", gate_dim: int | None = None
                ) -> MoEParams:
    """A random start: unit-norm Gaussian expert rows, gating entries N(0, 1/d_gate), last
    row 0.

    Args:
      key: PRNG key; dim: d; num_experts: k.
      noise_std: sigma of the start (one, or one per expert).
      dtype: the float type (default: JAX's default float).
      nonlinearity: the experts' g, carried by the result.
      gate_dim: the width of the gate's design when it is not the experts' (default: dim).

    Returns:
      MoEParams with experts (k, d), gating (k, d_gate) and noise_std shaped like the input.

    Raises:
      ValueError: for dim or num_experts that is not a positive integer (noise_std is not
        checked: it may be traced).

    >>> p = random_init(jax.random.key(0), 4, 3, 0.5)
    >>> [round(float(v), 5) for v in jnp.linalg.norm(p.experts, axis=1)]
    [1.0, 1.0, 1.0]
    >>> bool(jnp.all(p.gating[-1] == 0))
    True
    """
    dim = _validate.count(dim, "dim")
    num_experts = _validate.count(num_experts, "num_experts")
    dtype = dtype or jnp.result_type(float)
    key_a, key_w = jax.random.split(key)
    experts = jax.random.normal(key_a, (num_experts, dim), dtype)
    experts = experts / jnp.linalg.norm(experts, axis=1, keepdims=True)
    gate_dim = dim if gate_dim is None else _validate.count(gate_dim, "gate_dim")
    gating = jax.random.normal(key_w, (num_experts, gate_dim), dtype) / jnp.sqrt(gate_dim)
    return MoEParams(experts, gating.at[-1].set(0.0), jnp.asarray(noise_std, dtype),
                     nonlinearity)


def gradient_map(loss, optimizer):
    """theta = (free, optimiser state) -> (one optimiser step, -loss(free)): a map for
    `solver.iterate(..., monotone=False)`, one gradient evaluation per step, for one problem
    (no leading axis)."""
    value_and_grad = jax.value_and_grad(loss)

    def step(theta):
        free, opt_state = theta
        value, grad = value_and_grad(free)
        updates, opt_state = optimizer.update(grad, opt_state)
        return (optax.apply_updates(free, updates), opt_state), -value

    return step


def adam_descent(loss, start, num_steps: int, learning_rate, tol, dtype):
    """Adam on loss from start (a pytree, one problem): (the last iterate, FitInfo), stopped
    by the solver's rule for maps that are not monotone (-loss changed by at most
    tol * (1 + |loss|) in a step), num_steps a cap. The descent of `joint_gd` and of the
    designed losses (`moejax.landscape`)."""
    optimizer = optax.adam(learning_rate)
    step = gradient_map(loss, optimizer)
    one = lambda theta: jax.tree.map(lambda v: v[None], theta)  # iterate's leading axis
    (free, _), info = solver.iterate(
        lambda theta: one(step(jax.tree.map(lambda v: v[0], theta))),
        one((start, optimizer.init(start))), tol=tol, max_iters=num_steps, accelerate=False,
        value_dtype=dtype, monotone=False)
    return jax.tree.map(lambda v: v[0], free), solver.make_info(FitInfo, info, 0)


@functools.partial(jax.jit, static_argnames=("num_steps", "learn_noise_std"))
def _joint_gd(init: MoEParams, x, y, num_steps, learning_rate, tol, learn_noise_std=False):
    # The free parameters as inference packs them (sigma as log sigma, so it stays positive).
    free = free_parts(init, learn_noise_std)

    def loss(free):
        # The plain (n, k) logsumexp form: its gradient ran 4x faster than that of the
        # expert-major E-step (k = 8, 10 seeds vmapped, n = 2e4).
        return -jnp.mean(predictive.log_density(from_parts(free, init), x, y))

    free, info = adam_descent(loss, free, num_steps, learning_rate, tol, x.dtype)
    return from_parts(free, init), info


def _start_noise_std(x, y, num_experts, nonlinearity, noise_std, layout=None):
    """Checked inputs and sigma's start: the given value, or the moment estimate if None.
    With a `layout`, the caller reads rows through `row_sum` (streamed data accepted)."""
    x, y, sigma = _validate.fit_inputs(x, y, num_experts, nonlinearity, noise_std,
                                       streams=layout is not None)
    layout = Layout() if layout is None else layout
    _validate.scales(x, y, power=2)
    if noise_std is None:
        sigma = _initial_noise_std(y, nonlinearity, layout=layout).astype(x.dtype)
    _validate.noise_scale(sigma, x.dtype, estimated=noise_std is None)
    return x, y, sigma


def joint_em(key: jax.Array, x: jax.Array, y: jax.Array, *, num_experts: int,
             nonlinearity: Nonlinearity = "linear", noise_std=None, num_iters: int = 200,
             tol: float = 1e-7, accelerate: bool = True,
             chunk_size: int | None = None) -> tuple[MoEParams, FitInfo]:
    """Joint EM from the random start `random_init(key, ...)`; see `refine` for the steps and
    the stopping rule.

    Args:
      key: PRNG key of the start.
      x: (n, d) inputs; y: (n,) responses.
      num_experts: k in [2, d].
      nonlinearity: the experts' g.
      noise_std: the known sigma, or None to learn it (starting from `initial_noise_std`).
      num_iters, tol, accelerate, chunk_size: as in `refine`.

    Returns:
      (MoEParams, FitInfo).

    Raises:
      ValueError: as `refine`, and for k outside [2, d] or n <= d.

    >>> from moejax.model import random_params, sample
    >>> x, y = sample(jax.random.key(1), random_params(jax.random.key(0), 4, 2), 2000)
    >>> params, info = joint_em(jax.random.key(2), x, y, num_experts=2, num_iters=50)
    >>> params.experts.shape, int(info.num_iters) <= 50
    ((2, 4), True)
    """
    learn = noise_std is None
    layout = layout_of(x, chunk_size)
    x, y, noise_std = _start_noise_std(x, y, num_experts, nonlinearity, noise_std, layout)
    num_iters = _validate.count(num_iters, "num_iters")
    _validate.positive(tol, "tol")
    init = random_init(key, x.shape[1], num_experts, noise_std, x.dtype,
                       nonlinearity=nonlinearity)
    out = joint._refine(init, x, y, num_iters, tol, learn, accelerate, layout)
    _validate.finite_result(out[1].finite, x, y, noise_std=None if learn else noise_std,
                            what="joint_em", nonlinearity=nonlinearity)
    return out


def joint_gd(key: jax.Array, x: jax.Array, y: jax.Array, *, num_experts: int,
             nonlinearity: Nonlinearity = "linear", noise_std=None, num_iters: int = 1000,
             learning_rate: float = 0.01, tol: float = 1e-7) -> tuple[MoEParams, FitInfo]:
    """Adam on the negative log-likelihood over (experts, gating) from `random_init(key, ...)`.

    The gating's last row stays 0. Stops when L changed by at most tol * (1 + |L|) in a
    step, or after `num_iters` steps.

    Args:
      key: PRNG key of the start.
      x: (n, d) inputs; y: (n,) responses.
      num_experts: k in [2, d]; nonlinearity: the experts' g.
      noise_std: the known sigma (kept fixed), or None to learn log sigma with the rest
        (starting from `initial_noise_std`).
      num_iters: cap on Adam steps; learning_rate: Adam's; tol: as above.

    Returns:
      (MoEParams, FitInfo) with num_passes the gradient evaluations.

    Raises:
      ValueError: as `joint_em`, and for a learning rate that is not positive.

    >>> from moejax.model import random_params, sample
    >>> x, y = sample(jax.random.key(1), random_params(jax.random.key(0), 4, 2), 2000)
    >>> params, info = joint_gd(jax.random.key(2), x, y, num_experts=2, num_iters=20)
    >>> int(info.num_iters) <= 20, bool(info.trace[-1] >= info.trace[0])
    (True, True)
    """
    learn = noise_std is None
    x, y, noise_std = _start_noise_std(x, y, num_experts, nonlinearity, noise_std)
    num_iters = _validate.count(num_iters, "num_iters")
    _validate.positive(tol, "tol")
    _validate.positive(learning_rate, "learning_rate")
    init = random_init(key, x.shape[1], num_experts, noise_std, x.dtype,
                       nonlinearity=nonlinearity)
    out = _joint_gd(init, x, y, num_iters, learning_rate, tol, learn)
    _validate.finite_result(out[1].finite, x, y, noise_std=None if learn else noise_std,
                            what="joint_gd", step=("learning_rate", learning_rate),
                            nonlinearity=nonlinearity)
    return out
