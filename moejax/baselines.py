"""Likelihood methods over experts and gating jointly (ALGORITHM.md section 5): joint EM
(Jordan and Jacobs 1994) and joint gradient descent, from random starts or from a given start
(`refine`, the spectral start of `moejax.recover`). sigma is known and stays fixed."""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from moejax import _validate
from moejax.gating import e_step, m_step
from moejax.model import MoEParams, _mean_log_likelihood, expert_log_densities
from moejax.nonlinearities import Nonlinearity, get_nonlinearity


class FitInfo(NamedTuple):
    """trace: (num_iters,) mean log-likelihood before each iteration (EM) or step (GD)."""

    trace: jax.Array


def random_init(key: jax.Array, dim: int, num_experts: int, noise_std, dtype=None) -> MoEParams:
    """A random start: unit-norm Gaussian expert rows, gating entries N(0, 1/d), last row 0."""
    dtype = dtype or jnp.result_type(float)
    key_a, key_w = jax.random.split(key)
    experts = jax.random.normal(key_a, (num_experts, dim), dtype)
    experts = experts / jnp.linalg.norm(experts, axis=1, keepdims=True)
    gating = jax.random.normal(key_w, (num_experts, dim), dtype) / jnp.sqrt(dim)
    return MoEParams(experts, gating.at[-1].set(0.0), jnp.asarray(noise_std, dtype))


def _weighted_least_squares(resp: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    """argmin_a sum_n q_ni (y_n - a . x_n)^2 for every expert i: (k, d). resp: (k, n)."""
    n, d = x.shape
    gram = jnp.einsum("kn,nd,ne->kde", resp, x, x) / n
    rhs = (resp * y) @ x / n
    # A tiny ridge keeps an expert with (almost) no responsibility solvable.
    ridge = 1e-6 * jnp.eye(d, dtype=x.dtype)
    return jnp.linalg.solve(gram + ridge, rhs[..., None])[..., 0]


@functools.partial(jax.jit, static_argnames=("nonlinearity", "num_iters", "num_inner_steps"))
def _joint_em(init: MoEParams, x, y, nonlinearity, num_iters, num_inner_steps, learning_rate):
    n = x.shape[0]
    g = get_nonlinearity(nonlinearity)
    gram_chol = jnp.linalg.cholesky(x.T @ x / n)
    optimizer = optax.adam(learning_rate)

    def expert_loss(experts, resp):
        return jnp.sum(jnp.mean(resp * jnp.square(y - g(experts @ x.T)), axis=1))

    def inner(carry, resp):
        experts, opt_state = carry
        updates, opt_state = optimizer.update(jax.grad(expert_loss)(experts, resp), opt_state)
        return (optax.apply_updates(experts, updates), opt_state)

    def body(carry, _):
        params, opt_state = carry
        log_dens = expert_log_densities(x, y, params.experts, params.noise_std, nonlinearity)
        gate, resp, log_lik = e_step(params.gating, x, log_dens)
        gating = m_step(params.gating, gate, resp, x, gram_chol)
        resp = jnp.stack(resp)
        if nonlinearity == "linear":  # closed-form M-step
            experts = _weighted_least_squares(resp, x, y)
        else:  # a few optimiser steps on the weighted squared error (a generalised M-step)
            experts, opt_state = jax.lax.fori_loop(
                0, num_inner_steps, lambda _, c: inner(c, resp), (params.experts, opt_state))
        return (MoEParams(experts, gating, params.noise_std), opt_state), jnp.mean(log_lik)

    (params, _), trace = jax.lax.scan(body, (init, optimizer.init(init.experts)), None,
                                      length=num_iters)
    return params, FitInfo(trace)


@functools.partial(jax.jit, static_argnames=("nonlinearity", "num_steps"))
def _joint_gd(init: MoEParams, x, y, nonlinearity, num_steps, learning_rate):
    optimizer = optax.adam(learning_rate)
    free = (init.experts, init.gating[:-1])

    def loss(free):
        experts, w = free
        gating = jnp.concatenate([w, jnp.zeros_like(w[:1])])
        # The plain (n, k) logsumexp form: its gradient ran 4x faster than that of the
        # expert-major E-step (k = 8, 10 seeds vmapped, n = 2e4).
        params = MoEParams(experts, gating, init.noise_std)
        return -_mean_log_likelihood(params, x, y, nonlinearity)

    def body(carry, _):
        free, opt_state = carry
        value, grad = jax.value_and_grad(loss)(free)
        updates, opt_state = optimizer.update(grad, opt_state)
        return (optax.apply_updates(free, updates), opt_state), -value

    ((experts, w), _), trace = jax.lax.scan(body, (free, optimizer.init(free)), None,
                                            length=num_steps)
    gating = jnp.concatenate([w, jnp.zeros_like(w[:1])])
    return MoEParams(experts, gating, init.noise_std), FitInfo(trace)


def refine(params: MoEParams, x: jax.Array, y: jax.Array, *,
           nonlinearity: Nonlinearity = "linear", num_iters: int = 100,
           num_inner_steps: int = 5, learning_rate: float = 0.01) -> tuple[MoEParams, FitInfo]:
    """Joint EM over (experts, gating) from the start `params` (e.g. the output of `recover`).

    Each iteration: E-step (log space); gating M-step as in the gating EM (one Bohning step);
    experts M-step by weighted least squares for g = "linear", else `num_inner_steps` Adam
    steps (rate `learning_rate`) on sum_i mean_n q_ni (y_n - g(a_i . x_n))^2. The experts are
    not renormalised. x: (n, d), y: (n,). Returns the final parameters and the likelihood trace.
    """
    x, y, _ = _validate.fit_inputs(x, y, params.experts.shape[0], nonlinearity, params.noise_std)
    params = MoEParams(*(jnp.asarray(v, x.dtype) for v in params))
    return _joint_em(params, x, y, nonlinearity, num_iters, num_inner_steps, learning_rate)


def joint_em(key: jax.Array, x: jax.Array, y: jax.Array, *, num_experts: int,
             nonlinearity: Nonlinearity = "linear", noise_std, num_iters: int = 200,
             num_inner_steps: int = 5, learning_rate: float = 0.01) -> tuple[MoEParams, FitInfo]:
    """Joint EM from the random start `random_init(key, ...)`; see `refine` for the steps."""
    x, y, noise_std = _validate.fit_inputs(x, y, num_experts, nonlinearity, noise_std)
    init = random_init(key, x.shape[1], num_experts, noise_std, x.dtype)
    return _joint_em(init, x, y, nonlinearity, num_iters, num_inner_steps, learning_rate)


def joint_gd(key: jax.Array, x: jax.Array, y: jax.Array, *, num_experts: int,
             nonlinearity: Nonlinearity = "linear", noise_std, num_steps: int = 1000,
             learning_rate: float = 0.01) -> tuple[MoEParams, FitInfo]:
    """Adam on the negative log-likelihood over (experts, gating) from `random_init(key, ...)`.

    The gating's last row stays 0; sigma stays fixed. x: (n, d), y: (n,).
    """
    x, y, noise_std = _validate.fit_inputs(x, y, num_experts, nonlinearity, noise_std)
    init = random_init(key, x.shape[1], num_experts, noise_std, x.dtype)
    return _joint_gd(init, x, y, nonlinearity, num_steps, learning_rate)
