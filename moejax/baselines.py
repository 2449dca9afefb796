"""Likelihood methods over experts and gating jointly (docs/algorithm.md section 5): joint EM
(Jordan and Jacobs 1994) and joint gradient descent, from random starts or from a given start
(`refine`, the spectral start of `moejax.recover`). sigma is fixed when given, else learned."""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from moejax import _validate, solver
from moejax.gating import (NOISE_FLOOR, bohning_step, e_step, gate_hessian, gram_matrix,
                           gram_solver, newton_step,
                           noise_std_update, response_std)
from moejax.model import MoEParams, _mean_log_likelihood, expert_log_densities
from moejax.nonlinearities import Nonlinearity, get_nonlinearity
from moejax.sums import Layout, layout_of, row_count, row_sum
from moejax.recover import _initial_noise_std


class FitInfo(NamedTuple):
    """What a likelihood method did (scalars, or one per problem under vmap).

    Attributes:
      log_likelihood: mean log-likelihood at the returned parameters.
      num_iters: iterations used (EM or SQUAREM iterations, or Adam steps).
      num_passes: passes over the data: EM map evaluations, or gradient evaluations for GD.
      converged: whether the stopping rule (L rose by at most tol * (1 + |L|) in an
        iteration) was met within the cap.
      finite: whether the run produced finite numbers throughout.
      trace: (max_iters,) L before each iteration; rows past `num_iters` hold the final value.
    """

    log_likelihood: jax.Array
    num_iters: jax.Array
    num_passes: jax.Array
    converged: jax.Array
    finite: jax.Array
    trace: jax.Array


def random_init(key: jax.Array, dim: int, num_experts: int, noise_std, dtype=None, *,
                nonlinearity: Nonlinearity = "linear") -> MoEParams:
    """A random start: unit-norm Gaussian expert rows, gating entries N(0, 1/d), last row 0.

    Args:
      key: PRNG key; dim: d; num_experts: k.
      noise_std: sigma of the start (one, or one per expert).
      dtype: the float type (default: JAX's default float).
      nonlinearity: the experts' g, carried by the result.

    Returns:
      MoEParams with experts (k, d), gating (k, d) and noise_std shaped like the input.

    >>> p = random_init(jax.random.key(0), 4, 3, 0.5)
    >>> [round(float(v), 5) for v in jnp.linalg.norm(p.experts, axis=1)], bool(jnp.all(p.gating[-1] == 0))
    ([1.0, 1.0, 1.0], True)
    """
    dtype = dtype or jnp.result_type(float)
    key_a, key_w = jax.random.split(key)
    experts = jax.random.normal(key_a, (num_experts, dim), dtype)
    experts = experts / jnp.linalg.norm(experts, axis=1, keepdims=True)
    gating = jax.random.normal(key_w, (num_experts, dim), dtype) / jnp.sqrt(dim)
    return MoEParams(experts, gating.at[-1].set(0.0), jnp.asarray(noise_std, dtype),
                     nonlinearity)


def _weighted_least_squares(resp: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    """argmin_a sum_n q_ni (y_n - a . x_n)^2 for every expert i: (k, d). resp: (k, n)."""
    experts = jnp.zeros((resp.shape[0], x.shape[1]), x.dtype)
    gram, rhs, _ = _expert_sums(experts, resp, x, y, lambda z: z)
    return experts + _expert_step(gram, rhs, x.shape[0])


def _expert_sums(experts, resp, x, y, g):
    """Sums over rows for the experts' M-step, at the current experts: G_i = sum_n q_ni s_ni^2
    x_n x_n^T (k, d, d), b_i = sum_n q_ni s_ni r_ni x_n (k, d) and S_i = sum_n q_ni r_ni^2
    (k,), with r_ni = y_n - g(a_i . x_n) and s_ni = g'(a_i . x_n). resp: (k, n), row weights
    folded in."""
    pre = experts @ x.T
    out, slope = jax.jvp(g, (pre,), (jnp.ones_like(pre),))
    resid = y - out
    gram = jnp.einsum("kn,nd,ne->kde", resp * jnp.square(slope), x, x)
    return gram, (resp * slope * resid) @ x, jnp.sum(resp * jnp.square(resid), axis=1)


def _expert_step(gram, rhs, count):
    """The experts' M-step from `_expert_sums`: delta_i = G_i^(-1) b_i, (k, d), one
    Gauss-Newton step on sum_n q_ni (y_n - g(a_i . x_n))^2 for every expert. For linear g it
    is the exact weighted least-squares update; for non-linear g a generalised M-step (weights
    q g'^2, docs/solvers.md). count: the number of rows counted, the scale of the ridge."""
    d = gram.shape[-1]
    # A tiny ridge keeps an expert with (almost) no responsibility solvable.
    ridge = 1e-6 * jnp.eye(d, dtype=gram.dtype)
    return jnp.linalg.solve(gram / count + ridge, (rhs / count)[..., None])[..., 0]


# The Newton gating step's trust region: the logits move by at most this much (root mean
# square over the rows) per iteration; measured on airfoil, docs/solvers.md.
NEWTON_MAX_CHANGE = 3.0


def _joint_em_map(x, y, nonlinearity, learn_noise_std, weights=None, layout=Layout(),
                  newton_gating=False):
    """theta = (experts, gating, log sigma) -> (F(theta), L(theta)) for one problem, one pass
    over the rows (`row_sum`: in one block, in chunks, or over devices); weights: None or (n,)
    row weights (0 on padding rows). newton_gating: the gating's M-step is a capped Newton step
    (`gating.newton_step`, (k - 1)^2 d^2 more work per row) instead of the Bohning step."""
    g = get_nonlinearity(nonlinearity)
    gram_x = gram_matrix(x, layout, weights)
    solve = gram_solver(gram_x)
    floor = NOISE_FLOOR * response_std(y, layout, weights)
    count = row_count(x.shape[0], weights)

    def em_map(theta):
        experts, gating, log_sigma = theta
        sigma = jnp.exp(log_sigma)

        def block(xb, yb, w):
            log_dens = expert_log_densities(xb, yb, experts, sigma, nonlinearity)
            gate, resp, log_lik = e_step(gating, xb, log_dens)
            diff = jnp.stack([q - p for q, p in zip(resp[:-1], gate[:-1])]) * w
            hess = (gate_hessian(gate, xb, w),) if newton_gating else ()
            resp = jnp.stack(resp) * w
            return (diff @ xb, jnp.sum(w * log_lik), *_expert_sums(experts, resp, xb, yb, g),
                    jnp.sum(resp, axis=1), *hess)

        grad, log_lik, gram, rhs, sq, resp_sum, *hess = row_sum(block, (x, y), layout,
                                                                 weights)
        if newton_gating:
            new_gating = newton_step(gating, grad / count, hess[0] / count, gram_x,
                                     NEWTON_MAX_CHANGE)
        else:
            new_gating = bohning_step(gating, grad / count, solve)
        delta = _expert_step(gram, rhs, count)
        if learn_noise_std:
            # sigma's exact maximiser given the new experts (ECM order), without another pass:
            # sum_n q (r - s delta . x)^2 = S - 2 delta . b + delta^T G delta, exact for linear
            # g (s = 1) and the Gauss-Newton model's residual otherwise.
            new_sq = sq - 2 * jnp.sum(delta * rhs, axis=1) + jnp.einsum(
                "kd,kde,ke->k", delta, gram, delta)
            log_sigma = jnp.log(noise_std_update(jnp.maximum(new_sq, 0.0), resp_sum, sigma,
                                                 floor))
        return (experts + delta, new_gating, log_sigma), log_lik / count

    return em_map


def _fit_info(info: solver.SolverInfo, index=0) -> FitInfo:
    return FitInfo(info.log_likelihood[index], info.num_iters[index], info.num_passes,
                   info.converged[index], info.finite[index], info.trace[:, index])


@functools.partial(jax.jit, static_argnames=("num_iters", "learn_noise_std", "accelerate",
                                             "layout", "newton_gating"))
def _joint_em(init: MoEParams, x, y, num_iters, tol, learn_noise_std=False, accelerate=True,
              layout=Layout(), weights=None, newton_gating=False):
    em_map = jax.vmap(_joint_em_map(x, y, init.nonlinearity, learn_noise_std, weights, layout,
                                    newton_gating))
    theta = (init.experts[None], init.gating[None], jnp.log(init.noise_std)[None])
    (experts, gating, log_sigma), info = solver.iterate(em_map, theta, tol=tol,
                                                        max_iters=num_iters,
                                                        accelerate=accelerate)
    return init._replace(experts=experts[0], gating=gating[0],
                         noise_std=jnp.exp(log_sigma[0])), _fit_info(info)


@functools.partial(jax.jit, static_argnames=("num_steps", "learn_noise_std"))
def _joint_gd(init: MoEParams, x, y, num_steps, learning_rate, tol, learn_noise_std=False):
    optimizer = optax.adam(learning_rate)
    # sigma is optimised as log sigma, so it stays positive.
    free = (init.experts, init.gating[:-1], jnp.log(init.noise_std))

    def unpack(free):
        experts, w, log_sigma = free
        sigma = jnp.exp(log_sigma) if learn_noise_std else init.noise_std
        return init._replace(experts=experts, gating=jnp.concatenate([w, jnp.zeros_like(w[:1])]),
                             noise_std=sigma)

    def loss(free):
        # The plain (n, k) logsumexp form: its gradient ran 4x faster than that of the
        # expert-major E-step (k = 8, 10 seeds vmapped, n = 2e4).
        return -_mean_log_likelihood(unpack(free), x, y)

    value_and_grad = jax.value_and_grad(loss)

    def cond(c):
        return (c[4] < num_steps) & ~c[5] & jnp.isfinite(c[2])

    def body(c):
        free, opt_state, value, grad, it, _, trace = c
        updates, opt_state = optimizer.update(grad, opt_state)
        new_free = optax.apply_updates(free, updates)
        new_value, new_grad = value_and_grad(new_free)
        converged = jnp.abs(new_value - value) <= tol * (1.0 + jnp.abs(value))
        trace = trace.at[it].set(-value)
        return new_free, opt_state, new_value, new_grad, it + 1, converged, trace

    value, grad = value_and_grad(free)
    start = (free, optimizer.init(free), value, grad, jnp.asarray(0, jnp.int32),
             jnp.asarray(False), jnp.zeros((num_steps,), x.dtype))
    free, _, value, _, it, converged, trace = jax.lax.while_loop(cond, body, start)
    trace = jnp.where(jnp.arange(num_steps) < it, trace, -value)
    params = unpack(free)
    finite = jnp.isfinite(value) & jnp.all(jnp.asarray(
        [jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(params)]))
    return params, FitInfo(-value, it, it + 1, converged, finite, trace)


def refine(params: MoEParams, x: jax.Array, y: jax.Array, *, num_iters: int = 200,
           tol: float = 1e-7,
           learn_noise_std: bool = False, accelerate: bool = True,
           chunk_size: int | None = None, weights=None,
           gating_step: str = "bohning") -> tuple[MoEParams, FitInfo]:
    """Joint EM over (experts, gating) from the start `params` (e.g. the output of `recover`),
    run until the likelihood settles (docs/solvers.md).

    Each EM step: E-step (log space); gating M-step as in the gating EM (one Bohning step), or
    with gating_step="newton" one Newton step capped at an rms logit change of
    `NEWTON_MAX_CHANGE` (what `fit` uses for small gatings: far fewer iterations where the
    gates are sharp, at (k - 1)^2 d^2 more work per row);
    experts M-step by weighted least squares for g = "linear", else one Gauss-Newton step on
    sum_n q_ni (y_n - g(a_i . x_n))^2 (a generalised M-step). The experts are not
    renormalised. With `learn_noise_std`, sigma starts at `params.noise_std` and each step
    ends with its exact M-step, sigma^2 = (1/n) sum_n sum_i q_ni (y_n - g(a_i . x_n))^2, or,
    when `params.noise_std` has one sigma per expert (k,), sigma_i^2 = sum_n q_ni
    (y_n - g(a_i . x_n))^2 / sum_n q_ni (kept above `gating.NOISE_FLOOR` sd(y)).
    With `accelerate`, SQUAREM steps (two EM steps and an extrapolation kept only if it raises
    L); the run stops when L rose by at most tol * (1 + |L|) in an iteration, or after
    `num_iters` iterations.

    Args:
      params: the start (MoEParams; noise_std one sigma or one per expert; g is
        params.nonlinearity, kept by the result).
      x: (n, d) inputs; y: (n,) responses.
      num_iters: cap on iterations; tol: relative tolerance on the rise of L per iteration.
      learn_noise_std: update sigma (shaped like params.noise_std) in every M-step.
      accelerate: SQUAREM (True) or plain EM (False).
      chunk_size: None, or rows per block of every pass; x sharded along its rows over a
        device mesh runs data-parallel (as in `moejax.recover`).
      weights: None, or (n,) row weights >= 0: the weighted likelihood is maximised.
      gating_step: "bohning" (monotone, no step size) or "newton" (docs/solvers.md).

    Returns:
      (the final parameters, FitInfo).

    Raises:
      ValueError: for malformed or non-finite inputs, or, on concrete inputs, a run that
        produced non-finite numbers (named cause); under jit, `info.finite` says so.

    >>> from moejax.model import random_params, sample
    >>> truth = random_params(jax.random.key(0), 4, 2, noise_std=0.2)
    >>> x, y = sample(jax.random.key(1), truth, 2000)
    >>> fitted, info = refine(truth, x, y, num_iters=100)
    >>> bool(info.converged), bool(info.trace[-1] >= info.trace[0])
    (True, True)
    """
    params = _validate.params(params)
    x, y, _ = _validate.fit_inputs(x, y, params.experts.shape[0], params.nonlinearity, 1.0,
                                   streams=True)
    _validate.params(params, dim=x.shape[1])
    _validate.scales(x, y, power=2)
    params = jax.tree.map(lambda v: v.astype(x.dtype), params)
    _validate.noise_scale(params.noise_std, x.dtype)
    num_iters = _validate.count(num_iters, "num_iters")
    _validate.positive(tol, "tol")
    layout = layout_of(x, chunk_size)
    weights = _validate.row_weights(weights, x.shape[0])
    if gating_step not in ("bohning", "newton"):
        raise ValueError(f"gating_step must be 'bohning' or 'newton', got {gating_step!r}.")
    out = _joint_em(params, x, y, num_iters, tol, learn_noise_std, accelerate, layout,
                    None if weights is None else weights.astype(x.dtype),
                    gating_step == "newton")
    _validate.finite_result(out[1].finite, x, y, noise_std=params.noise_std, what="refine")
    return out


def _start_noise_std(x, y, num_experts, nonlinearity, noise_std, layout=None):
    """Checked inputs and sigma's start: the given value, or the moment estimate if None.
    With a `layout`, the caller reads rows through `row_sum` (streamed data accepted)."""
    x, y, sigma = _validate.fit_inputs(x, y, num_experts, nonlinearity,
                                       1.0 if noise_std is None else noise_std,
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
    out = _joint_em(init, x, y, num_iters, tol, learn, accelerate, layout)
    _validate.finite_result(out[1].finite, x, y, noise_std=None if learn else noise_std,
                            what="joint_em")
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
                            what="joint_gd")
    return out
