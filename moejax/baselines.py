"""Likelihood methods over experts and gating jointly (ALGORITHM.md section 5): joint EM
(Jordan and Jacobs 1994) and joint gradient descent, from random starts or from a given start
(`refine`, the spectral start of `moejax.recover`). sigma is fixed when given, else learned."""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from moejax import _validate
from moejax.gating import e_step, m_step, noise_std_update
from moejax.model import MoEParams, _mean_log_likelihood, expert_log_densities
from moejax.nonlinearities import Nonlinearity, get_nonlinearity
from moejax.recover import initial_noise_std


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


@functools.partial(jax.jit, static_argnames=("nonlinearity", "num_iters", "num_inner_steps",
                                             "learn_noise_std"))
def _joint_em(init: MoEParams, x, y, nonlinearity, num_iters, num_inner_steps, learning_rate,
              learn_noise_std=False):
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
        noise_std = params.noise_std
        if learn_noise_std:  # exact maximiser given the new experts (ECM order)
            noise_std = noise_std_update(resp, jnp.square(y - g(experts @ x.T)))
        return (MoEParams(experts, gating, noise_std), opt_state), jnp.mean(log_lik)

    (params, _), trace = jax.lax.scan(body, (init, optimizer.init(init.experts)), None,
                                      length=num_iters)
    return params, FitInfo(trace)


@functools.partial(jax.jit, static_argnames=("nonlinearity", "num_steps", "learn_noise_std"))
def _joint_gd(init: MoEParams, x, y, nonlinearity, num_steps, learning_rate,
              learn_noise_std=False):
    optimizer = optax.adam(learning_rate)
    # sigma is optimised as log sigma, so it stays positive.
    free = (init.experts, init.gating[:-1], jnp.log(init.noise_std))

    def unpack(free):
        experts, w, log_sigma = free
        sigma = jnp.exp(log_sigma) if learn_noise_std else init.noise_std
        return MoEParams(experts, jnp.concatenate([w, jnp.zeros_like(w[:1])]), sigma)

    def loss(free):
        # The plain (n, k) logsumexp form: its gradient ran 4x faster than that of the
        # expert-major E-step (k = 8, 10 seeds vmapped, n = 2e4).
        return -_mean_log_likelihood(unpack(free), x, y, nonlinearity)

    def body(carry, _):
        free, opt_state = carry
        value, grad = jax.value_and_grad(loss)(free)
        updates, opt_state = optimizer.update(grad, opt_state)
        return (optax.apply_updates(free, updates), opt_state), -value

    (free, _), trace = jax.lax.scan(body, (free, optimizer.init(free)), None, length=num_steps)
    return unpack(free), FitInfo(trace)


def refine(params: MoEParams, x: jax.Array, y: jax.Array, *,
           nonlinearity: Nonlinearity = "linear", num_iters: int = 100,
           num_inner_steps: int = 5, learning_rate: float = 0.01,
           learn_noise_std: bool = False) -> tuple[MoEParams, FitInfo]:
    """Joint EM over (experts, gating) from the start `params` (e.g. the output of `recover`).

    Each iteration: E-step (log space); gating M-step as in the gating EM (one Bohning step);
    experts M-step by weighted least squares for g = "linear", else `num_inner_steps` Adam
    steps (rate `learning_rate`) on sum_i mean_n q_ni (y_n - g(a_i . x_n))^2. The experts are
    not renormalised. With `learn_noise_std`, sigma starts at `params.noise_std` and each
    iteration ends with its exact M-step, sigma^2 = (1/n) sum_n sum_i q_ni (y_n - g(a_i . x_n))^2
    (the maximum-likelihood estimate; accurate once the experts are). x: (n, d), y: (n,).
    Returns the final parameters and the likelihood trace.
    """
    x, y, _ = _validate.fit_inputs(x, y, params.experts.shape[0], nonlinearity, params.noise_std)
    params = MoEParams(*(jnp.asarray(v, x.dtype) for v in params))
    if params.experts.shape != params.gating.shape or params.experts.shape[1] != x.shape[1]:
        raise ValueError(f"params.experts and params.gating must both have shape (k, d={x.shape[1]}),"
                         f" got {params.experts.shape} and {params.gating.shape}.")
    return _joint_em(params, x, y, nonlinearity, num_iters, num_inner_steps, learning_rate,
                     learn_noise_std)


def _start_noise_std(x, y, num_experts, nonlinearity, noise_std):
    """Checked inputs and sigma's start: the given value, or the moment estimate if None."""
    x, y, sigma = _validate.fit_inputs(x, y, num_experts, nonlinearity,
                                       1.0 if noise_std is None else noise_std)
    if noise_std is None:
        sigma = initial_noise_std(y, nonlinearity).astype(x.dtype)
    return x, y, sigma


def joint_em(key: jax.Array, x: jax.Array, y: jax.Array, *, num_experts: int,
             nonlinearity: Nonlinearity = "linear", noise_std=None, num_iters: int = 200,
             num_inner_steps: int = 5, learning_rate: float = 0.01) -> tuple[MoEParams, FitInfo]:
    """Joint EM from the random start `random_init(key, ...)`; see `refine` for the steps.

    noise_std: the known sigma, or None to learn it (starting from `initial_noise_std`).
    """
    learn = noise_std is None
    x, y, noise_std = _start_noise_std(x, y, num_experts, nonlinearity, noise_std)
    init = random_init(key, x.shape[1], num_experts, noise_std, x.dtype)
    return _joint_em(init, x, y, nonlinearity, num_iters, num_inner_steps, learning_rate, learn)


def joint_gd(key: jax.Array, x: jax.Array, y: jax.Array, *, num_experts: int,
             nonlinearity: Nonlinearity = "linear", noise_std=None, num_steps: int = 1000,
             learning_rate: float = 0.01) -> tuple[MoEParams, FitInfo]:
    """Adam on the negative log-likelihood over (experts, gating) from `random_init(key, ...)`.

    The gating's last row stays 0. noise_std: the known sigma (kept fixed), or None to learn
    log sigma with the rest (starting from `initial_noise_std`). x: (n, d), y: (n,).
    """
    learn = noise_std is None
    x, y, noise_std = _start_noise_std(x, y, num_experts, nonlinearity, noise_std)
    init = random_init(key, x.shape[1], num_experts, noise_std, x.dtype)
    return _joint_gd(init, x, y, nonlinearity, num_steps, learning_rate, learn)
