"""EM for the gating with the experts fixed (docs/algorithm.md section 4): `fit_gating`.

Each EM iteration takes one step of Bohning's bound method on the gating part of EM's Q
(`moejax.em_steps`): monotone, no step size, one Cholesky factor of X^T X / n per run.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from moejax import _validate, solver
from moejax.em_steps import NOISE_FLOOR, bohning_step, e_step_rows, gating_solver
from moejax.families import get_family
from moejax.moments import response_std
from moejax.nonlinearities import Nonlinearity, get_nonlinearity
from moejax.predictive import expert_scales, gate_logits
from moejax.sums import Layout, layout_of, row_count, row_sum


class GatingInfo(NamedTuple):
    """Diagnostics of `fit_gating`.

    Attributes:
      log_likelihood, num_iters, num_passes, converged, finite, trace: as in
        `moejax.FitInfo`, for the kept start; num_iters counts the screening iterations,
        num_passes all starts' passes together; trace (max_iters,) holds first the
        screening iterations (min(SCREEN_ITERS, max_iters) rows, when num_inits > 1), then
        the kept start's own run. finite False means the data or sigma are outside what the
        float type holds (see `fit_gating`).
      start_log_likelihood: (num_inits,) final L of every start: the kept start's at the end,
        the others' after the screening iterations.
      best: index of the kept start.
      noise_std: sigma of the kept start (the input unless it was learned): () or (k,) like
        the input.
    """

    log_likelihood: jax.Array
    num_iters: jax.Array
    num_passes: jax.Array
    converged: jax.Array
    finite: jax.Array
    trace: jax.Array
    start_log_likelihood: jax.Array
    best: jax.Array
    noise_std: jax.Array


def em_sums(gatings, sigmas, x, y, experts, nonlinearity, layout, weights=None,
            family="gaussian"):
    """For each of m gatings (m, k, d) and scales (m,) or (m, k): sums over rows of (q - p) x
    for the k - 1 free rows (m, k - 1, d), of log p(y | x) (m,), and of q_i r_i^2 (the
    family's scale statistic, `moejax.families`) and of q_i for each expert (m, k) each.

    One pass over the data serves every initialisation, with two matrix products per block:
    the logits of all inits and the experts' pre-activations in one, the gradients in another
    (measured 1.4x faster than a vmap over inits at n = 1e6, d = 100, k = 5, 4 inits).
    """
    g = get_nonlinearity(nonlinearity)
    family = get_family(family)
    m, k, d = gatings.shape
    stacked = jnp.concatenate([gatings[:, :-1].reshape(m * (k - 1), d), experts])

    def block(xb, yb, w):
        # The logits of every start and, in the same product (the gate's design is x here),
        # the experts' pre-activations: (m (k - 1) + k, rows); the last gating row is 0.
        proj = gate_logits(stacked, xb, expert_major=True)
        means = g(proj[m * (k - 1):])
        sq_resid = family.scale_statistic(yb, means)
        zero = jnp.zeros_like(yb)
        diffs, log_liks, sqs, counts = [], [], [], []
        for j in range(m):  # m is static and small
            logits = list(proj[j * (k - 1):(j + 1) * (k - 1)]) + [zero]
            log_dens = family.log_density(yb, means, expert_scales(sigmas[j]))
            gate, resp, log_lik = e_step_rows(logits, log_dens)
            diffs += [(q - p) * w for q, p in zip(resp[:-1], gate[:-1])]
            log_liks.append(jnp.sum(w * log_lik))
            if sigmas.ndim == 1:  # shared sigma: sum over experts first, one reduction
                sqs.append(jnp.sum(w * sum(q * r for q, r in zip(resp, sq_resid)))[None])
                counts.append(jnp.sum(w)[None])
            else:
                sqs.append(jnp.stack([jnp.sum(w * q * r) for q, r in zip(resp, sq_resid)]))
                counts.append(jnp.stack([jnp.sum(w * q) for q in resp]))
        grad = (jnp.stack(diffs) @ xb).reshape(m, k - 1, d)
        return grad, jnp.stack(log_liks), jnp.stack(sqs), jnp.stack(counts)

    return row_sum(block, (x, y), layout, weights)


# The random starts' gating entries are N(0, (INIT_SCALE / sqrt(d))^2).
INIT_SCALE = 1.0

# Screening: every start runs this many iterations in the fused pass, then only the best goes
# on (docs/solvers.md has the measurement behind the choice).
SCREEN_ITERS = 3


@functools.partial(jax.jit, static_argnames=("nonlinearity", "num_inits", "num_iters",
                                             "learn_noise_std", "layout", "matrix_free",
                                             "accelerate", "screen_iters", "family"))
def _fit_gating(key, x, y, experts, noise_std, nonlinearity, num_inits, num_iters, init_scale,
                learn_noise_std=False, layout=Layout(), matrix_free=False, tol=1e-6,
                accelerate=True, screen_iters=SCREEN_ITERS, weights=None, family="gaussian"):
    d = x.shape[1]
    n = row_count(x.shape[0], weights)
    k = experts.shape[0]
    solve = gating_solver(x, layout, matrix_free, weights=weights)
    sums = functools.partial(em_sums, x=x, y=y, experts=experts, nonlinearity=nonlinearity,
                             layout=layout, weights=weights, family=family)
    floor = NOISE_FLOOR * response_std(y, layout, weights)
    fam = get_family(family)
    update = jax.vmap(fam.scale_update, in_axes=(0, 0, 0, None))
    learn_noise_std = learn_noise_std and fam.has_dispersion

    def em_map(theta):
        # sigma enters as log sigma: the extrapolated iterates must stay valid parameters.
        gatings, log_sigmas = theta
        sigmas = jnp.exp(log_sigmas)
        grad, log_lik, sq, count = sums(gatings, sigmas)
        if learn_noise_std:  # sigma's exact M-step, from this E-step's responsibilities
            log_sigmas = jnp.log(update(sq, count, sigmas, floor))
        gatings = jax.vmap(bohning_step, in_axes=(0, 0, None))(gatings, grad / n, solve)
        return (gatings, log_sigmas), log_lik / n

    init = init_scale / jnp.sqrt(d) * jax.random.normal(key, (num_inits, k, d), x.dtype)
    theta = (init.at[:, -1].set(0.0),
             jnp.broadcast_to(jnp.log(noise_std), (num_inits,) + noise_std.shape))
    (gatings, log_sigmas), kept, info = solver.iterate_screened(
        em_map, theta, tol=tol, max_iters=num_iters, screen_iters=screen_iters, keep=1,
        accelerate=accelerate, value_dtype=x.dtype)
    return gatings[0], solver.make_info(GatingInfo, info, kept[0],
                                        start_log_likelihood=info.log_likelihood,
                                        best=kept[0], noise_std=jnp.exp(log_sigmas[0]))


def fit_gating(key: jax.Array, x: jax.Array, y: jax.Array, experts: jax.Array, *,
               noise_std, nonlinearity: Nonlinearity = "linear", num_inits: int = 1,
               num_iters: int = 50, tol: float = 1e-6, init_scale: float = INIT_SCALE,
               learn_noise_std: bool = False, chunk_size: int | None = None,
               matrix_free: bool = False, accelerate: bool = True,
               weights=None) -> tuple[jax.Array, GatingInfo]:
    """Maximum-likelihood gating W for fixed experts by accelerated EM from random starts.

    Each start W has N(0, init_scale^2 / d) entries (last row 0). With num_inits > 1, all
    starts run `SCREEN_ITERS` iterations together (one pass over the data serves them all),
    then the one with the largest L(W) runs on alone. The run stops when L rises by at most
    tol * (1 + |L|) in an iteration, or after `num_iters` iterations in all (docs/solvers.md).
    An iteration is one EM step (a Bohning step, see the module doc), or with `accelerate` a
    SQUAREM step: two EM steps and an extrapolation kept only if it raises L, so L never
    decreases either way. One start is the default: in 50 seeds over five settings, 8 starts
    never ended at different optima (`experiments/gating_starts.py`). With
    `learn_noise_std`, sigma is a parameter too: it starts at `noise_std` and every M-step
    sets sigma^2 = (1/n) sum_n sum_i q_ni (y_n - g(a_i . x_n))^2, its exact maximiser, or with
    one sigma per expert, sigma_i^2 = sum_n q_ni (y_n - g(a_i . x_n))^2 / sum_n q_ni, kept
    above NOISE_FLOOR sd(y) (`families.GAUSSIAN.scale_update`).

    With `chunk_size` each pass runs over blocks of that many rows, and x sharded along its
    rows over a device mesh runs data-parallel (see `moejax.recover`). The M-step needs
    C = X^T X / n (d x d, n d^2 work, once; with a tiny ridge, so duplicated or constant
    columns are harmless); `matrix_free` replaces it by the scalar bound 1.1 lambda_max(C) I
    (power iteration), still monotone and as fast per iteration when x is whitened.

    Under `jax.vmap` (over keys or data sets) the loop runs until every member has stopped;
    each member's result is its own, frozen when it stopped.

    Args:
      key: PRNG key for the starts.
      x: (n, d) inputs; y: (n,) responses.
      experts: (k, d) fixed expert directions.
      noise_std: sigma > 0, a scalar or one per expert (k,) (may be traced); the start value
        if `learn_noise_std`.
      nonlinearity: the experts' g.
      num_inits: random starts screened.
      num_iters: cap on iterations (screening included).
      tol: relative tolerance on the rise of L per iteration.
      accelerate: SQUAREM (True) or plain EM (False).
      weights: None, or (n,) row weights >= 0: the weighted likelihood
        sum_n w_n log p(y_n | x_n) / sum_n w_n is maximised (weight-0 rows are ignored).

    Returns:
      (gating (k, d) with last row 0, GatingInfo).

    Raises:
      ValueError: for malformed or non-finite data or experts, fewer than 2 experts, a sigma
        that is not positive (or not of shape () or (k,)), bad settings or weights, or, on
        concrete inputs, a run that produced non-finite numbers (named cause; under jit it
        is reported by `info.finite`).

    >>> from moejax.model import random_params, sample
    >>> truth = random_params(jax.random.key(0), 6, 3, noise_std=0.1)
    >>> x, y = sample(jax.random.key(1), truth, 20_000)
    >>> w, info = fit_gating(jax.random.key(2), x, y, truth.experts, noise_std=0.1)
    >>> bool(info.converged), bool(jnp.linalg.norm(w - truth.gating) < 0.3)
    (True, True)
    """
    x, y = _validate.data(x, y, streams=True)
    experts = _validate.matrix(experts, "experts", cols=x.shape[1])
    if experts.shape[0] < 2:
        raise ValueError(f"experts must have k >= 2 rows, got shape {experts.shape}.")
    _validate.nonnegative(init_scale, "init_scale")
    learn_noise_std = _validate.flag(learn_noise_std, "learn_noise_std")
    accelerate = _validate.flag(accelerate, "accelerate")
    num_inits = _validate.count(num_inits, "num_inits")
    num_iters = _validate.count(num_iters, "num_iters")
    noise_std = _validate.noise_levels(noise_std, experts.shape[0])
    _validate.positive(tol, "tol")
    weights = _validate.row_weights(weights, x.shape[0])
    layout = layout_of(x, chunk_size)
    w, info = _fit_gating(key, x, y, experts.astype(x.dtype), noise_std.astype(x.dtype),
                          nonlinearity, num_inits, num_iters, init_scale, learn_noise_std,
                          layout, matrix_free, tol, accelerate, SCREEN_ITERS,
                          None if weights is None else weights.astype(x.dtype))
    _validate.finite_result(info.finite, x, y, noise_std=None if learn_noise_std else noise_std,
                            nonlinearity=nonlinearity)
    return w, info
