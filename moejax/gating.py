"""EM for the gating with the experts fixed (docs/algorithm.md section 4).

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

from moejax import _validate, solver
from moejax.model import gaussian_log_density
from moejax.sums import Layout, layout_of, row_count, row_sum
from moejax.nonlinearities import Nonlinearity, get_nonlinearity


class GatingInfo(NamedTuple):
    """Diagnostics of `fit_gating`.

    Attributes:
      log_likelihood: final mean log-likelihood L(W) of the kept start, a scalar.
      start_log_likelihood: (num_inits,) final L of every start: the kept start's at the end,
        the others' after the screening iterations.
      best: index of the kept start.
      num_iters: iterations used, screening included.
      num_passes: passes over the data (EM map evaluations, all starts together).
      converged: whether the stopping rule was met within `max_iters`.
      finite: whether the run produced finite numbers throughout (False means the data or
        sigma are outside what the float type holds; see `fit_gating`).
      trace: (max_iters,) L of the kept start before each iteration: first the screening
        iterations (min(SCREEN_ITERS, max_iters) rows, when num_inits > 1), then its own run;
        the rows of a run that stopped early hold its final value.
      noise_std: sigma of the kept start (the input unless it was learned): () or (k,) like
        the input.
    """

    log_likelihood: jax.Array
    start_log_likelihood: jax.Array
    best: jax.Array
    num_iters: jax.Array
    num_passes: jax.Array
    converged: jax.Array
    finite: jax.Array
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
    return _e_step_rows(list(gating @ x.T), log_dens)


def _e_step_rows(logits, log_dens):
    """`e_step` from the k logit rows (n,) each."""
    gate, log_z = _softmax_experts(logits)
    resp, log_joint = _softmax_experts([l + ld for l, ld in zip(logits, log_dens)])
    return gate, resp, log_joint - log_z


def gating_log_likelihood(gating: jax.Array, x: jax.Array, log_dens: jax.Array) -> jax.Array:
    """L(W) = (1/n) sum_n log sum_i softmax(W x_n)_i N(y_n | g(a_i . x_n), sigma^2), a scalar.

    gating: (k, d); x: (n, d); log_dens: (k, n) from `expert_log_densities`.
    """
    return jnp.mean(e_step(gating, x, log_dens)[2])


def bohning_step(gating: jax.Array, grad: jax.Array, solve) -> jax.Array:
    """W <- W + B^(-1) grad on the k - 1 free rows: the new gating (k, d).

    grad: (k - 1, d), (1/n) sum_n (q_ni - p_ni) x_n for i < k; solve: v (d, m) -> C^(-1) v
    for C = X^T X / n, or -> v / L for a scalar bound L >= lambda_max(C) (`_gram_solver`).
    """
    # B^(-1) grad with B = 1/2 (I - 1 1^T / k) (x) C: (I - 1 1^T/k)^(-1) = I + 1 1^T on k-1 rows.
    grad = 2.0 * (grad + jnp.sum(grad, axis=0, keepdims=True))
    return gating.at[:-1].add(solve(grad.T).T)


def gate_hessian(gate, x: jax.Array, w) -> jax.Array:
    """sum_n w_n (diag(p_n) - p_n p_n^T) (x) x_n x_n^T over the k - 1 free gating rows:
    (k - 1, d, k - 1, d), minus the Hessian of sum_n log softmax(W x_n)_z in W's free rows
    (any z: it does not depend on the label). gate: the k arrays (n,) of `e_step`."""
    p = jnp.stack(gate[:-1])
    eye = jnp.eye(p.shape[0], dtype=p.dtype)
    weight = (eye[:, :, None] * p[:, None, :] - p[:, None, :] * p[None, :, :]) * w
    return jnp.einsum("ijn,nd,ne->idje", weight, x, x)


def newton_step(gating: jax.Array, grad: jax.Array, hess: jax.Array, gram: jax.Array,
                max_change: float) -> jax.Array:
    """W <- W + s on the k - 1 free rows, s = H^(-1) grad the Newton step on the gating part of
    EM's Q (docs/solvers.md), shortened so that the logits change by at most `max_change` in
    root mean square over the rows: sqrt(sum_i s_i^T C s_i) <= max_change, C = X^T X / n.

    grad: (k - 1, d) as in `bohning_step`; hess: (k - 1, d, k - 1, d) from `gate_hessian`,
    divided by n; gram: C (d, d). Where the Bohning bound B is far above H (sharp gates), the
    Bohning step is short and EM crawls; the Newton step is not, and the cap keeps it from
    overshooting where the quadratic model is poor.
    """
    m = grad.size
    h = hess.reshape(m, m)
    # The ridge makes a saturated gate's flat directions solvable; the cap bounds the result.
    h = h + 1e-6 * jnp.trace(h) / m * jnp.eye(m, dtype=h.dtype)
    step = jnp.linalg.solve(h, grad.reshape(m)).reshape(grad.shape)
    size = jnp.sqrt(jnp.maximum(jnp.sum(step * (step @ gram)), 0.0))
    step = step * jnp.minimum(1.0, max_change / jnp.maximum(size, jnp.finfo(h.dtype).tiny))
    return gating.at[:-1].add(step)


def gram_solver(gram: jax.Array):
    """v -> (C + delta I)^(-1) v for a symmetric positive semi-definite C (d, d), with the
    tiny ridge delta = eps tr(C), by one Cholesky factor.

    With duplicated, constant or collinear columns in x, C = X^T X / n is singular and has no
    Cholesky factor; the ridge, at the size of Cholesky's own rounding error, gives it one.
    The gradient (a combination of rows of x) has no component in C's null space, so the step
    there stays 0, and on C's range it is C^(-1) to relative precision delta / lambda: the
    Bohning step stays monotone (a larger metric only shortens it) and finite. (A batched
    eigendecomposition here, which would give the exact pseudo-inverse, made XLA:CPU hang
    when vmapped over 64 data sets inside `recover` with jaxlib 0.10.2.)
    """
    delta = jnp.finfo(gram.dtype).eps * jnp.trace(gram)
    chol = jnp.linalg.cholesky(gram + delta * jnp.eye(gram.shape[0], dtype=gram.dtype))
    return lambda v: jsp.linalg.cho_solve((chol, True), v)


def _gram_solver(x: jax.Array, layout: Layout, matrix_free: bool, num_iters: int = 30,
                 weights=None):
    """v -> C^(-1) v with C = X^T X / n (`gram_solver`, n d^2 work), or, matrix free,
    v -> v / L with L = 1.1 lambda_max(C), lambda_max by power iteration (num_iters
    passes of n d work). L I >= C keeps the Bohning step monotone; the 10% margin covers the
    power iteration's shortfall below lambda_max, which is largest when C's top eigenvalues
    are close (as for whitened data) and then the shortfall is small."""
    if not matrix_free:
        return gram_solver(gram_matrix(x, layout, weights))
    d = x.shape[1]
    n = row_count(x.shape[0], weights)

    def product(v):
        return row_sum(lambda xb, w: xb.T @ (w * (xb @ v)), (x,), layout, weights) / n

    def power_step(_, v):
        u = product(v)
        return u / jnp.linalg.norm(u)

    v = jax.lax.fori_loop(0, num_iters, power_step, jnp.ones((d,), x.dtype) / jnp.sqrt(d))
    bound = 1.1 * jnp.dot(v, product(v))
    return lambda v: v / bound


def m_step(gating: jax.Array, gate, resp, x: jax.Array, solve, weights=None) -> jax.Array:
    """One Bohning ascent step on sum_n sum_i q_ni log softmax(W x_n)_i: the new gating (k, d).

    gate, resp: k arrays (n,) each, p_ni and q_ni from the E-step; solve: v -> C^(-1) v for
    C = X^T X / n (`gram_solver`); weights: None or (n,) row weights (C weighted alike).
    """
    diff = jnp.stack([q - p for q, p in zip(resp[:-1], gate[:-1])])
    if weights is not None:
        diff = diff * weights
    grad = diff @ x / row_count(x.shape[0], weights)
    return bohning_step(gating, grad, solve)


def em_step(gating: jax.Array, x: jax.Array, log_dens: jax.Array,
            solve) -> tuple[jax.Array, jax.Array]:
    """One EM iteration for the gating; returns (new gating (k, d), L(W) before the step).

    gating: (k, d) with last row 0; x: (n, d); log_dens: (k, n) from `expert_log_densities`;
    solve: v -> C^(-1) v for C = X^T X / n (`gram_solver`).
    """
    gate, resp, log_lik = e_step(gating, x, log_dens)
    return m_step(gating, gate, resp, x, solve), jnp.mean(log_lik)


# Per-expert sigmas are kept at or above this fraction of sd(y): an expert that fits a few
# rows exactly would otherwise drive its sigma, and the likelihood, to infinity.
NOISE_FLOOR = 1e-3


def noise_std_update(weighted_sq: jax.Array, weights: jax.Array, noise_std: jax.Array,
                     floor) -> jax.Array:
    """The M-step for sigma from S_i = sum_n q_ni r_ni^2 and N_i = sum_n q_ni: (k,) each,
    r_ni = y_n - g(a_i . x_n) (docs/algorithm.md section 4).

    Shared (noise_std a scalar): sigma^2 = sum_i S_i / sum_i N_i, its exact maximiser.
    Per expert (noise_std (k,)): sigma_i^2 = S_i / N_i, clipped below at `floor` (the exact
    maximiser over sigma_i >= floor); an expert with no responsibility keeps its sigma.
    """
    if jnp.ndim(noise_std) == 0:
        return jnp.sqrt(jnp.sum(weighted_sq) / jnp.sum(weights))
    tiny = jnp.finfo(weighted_sq.dtype).tiny
    var = jnp.where(weights > tiny, weighted_sq / jnp.maximum(weights, tiny),
                    jnp.square(noise_std))
    return jnp.maximum(jnp.sqrt(var), floor)


def gram_matrix(x: jax.Array, layout: Layout = Layout(), weights=None) -> jax.Array:
    """C = X^T X / n: (d, d) (with row weights: sum_n w_n x_n x_n^T / sum_n w_n)."""
    return (row_sum(lambda xb, w: xb.T @ (w[:, None] * xb), (x,), layout, weights)
            / row_count(x.shape[0], weights))


def _em_sums(gatings, sigmas, x, y, experts, nonlinearity, layout, weights=None):
    """For each of m gatings (m, k, d) and sigmas (m,) or (m, k): sums over rows of (q - p) x
    for the k - 1 free rows (m, k - 1, d), of log p(y | x) (m,), and of q_i r_i^2 and of q_i
    for each expert (m, k) each.

    One pass over the data serves every initialisation, with two matrix products per block:
    the logits of all inits and the experts' pre-activations in one, the gradients in another
    (measured 1.4x faster than a vmap over inits at n = 1e6, d = 100, k = 5, 4 inits).
    """
    g = get_nonlinearity(nonlinearity)
    m, k, d = gatings.shape
    stacked = jnp.concatenate([gatings[:, :-1].reshape(m * (k - 1), d), experts])

    def block(xb, yb, w):
        proj = stacked @ xb.T  # (m (k - 1) + k, rows); the last gating row is 0
        sq_resid = jnp.square(yb - g(proj[m * (k - 1):]))
        zero = jnp.zeros_like(yb)
        diffs, log_liks, sqs, counts = [], [], [], []
        for j in range(m):  # m is static and small
            logits = list(proj[j * (k - 1):(j + 1) * (k - 1)]) + [zero]
            gate, resp, log_lik = _e_step_rows(logits, gaussian_log_density(sq_resid, sigmas[j]))
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


def response_moments(y, layout: Layout = Layout(), weights=None):
    """(mean of y, mean of y^2) over the counted rows (weighted, with row weights), through
    `row_sum`."""
    total, first, second = row_sum(lambda yb, w: (jnp.sum(w), jnp.sum(w * yb),
                                                  jnp.sum(w * jnp.square(yb))),
                                   (y,), layout, weights)
    return first / total, second / total


def response_std(y, layout: Layout = Layout(), weights=None):
    """sd(y) over the counted rows (weighted, with row weights), through `row_sum`: the scale
    of `NOISE_FLOOR` in both EMs."""
    mean, second = response_moments(y, layout, weights)
    return jnp.sqrt(jnp.maximum(second - jnp.square(mean), 0.0))


# Screening: every start runs this many iterations in the fused pass, then only the best goes
# on (docs/solvers.md has the measurement behind the choice).
SCREEN_ITERS = 3


@functools.partial(jax.jit, static_argnames=("nonlinearity", "num_inits", "num_iters",
                                             "learn_noise_std", "layout", "matrix_free",
                                             "accelerate", "screen_iters"))
def _fit_gating(key, x, y, experts, noise_std, nonlinearity, num_inits, num_iters, init_scale,
                learn_noise_std=False, layout=Layout(), matrix_free=False, tol=1e-6,
                accelerate=True, screen_iters=SCREEN_ITERS, weights=None):
    d = x.shape[1]
    n = row_count(x.shape[0], weights)
    k = experts.shape[0]
    solve = _gram_solver(x, layout, matrix_free, weights=weights)
    sums = functools.partial(_em_sums, x=x, y=y, experts=experts, nonlinearity=nonlinearity,
                             layout=layout, weights=weights)
    floor = NOISE_FLOOR * response_std(y, layout, weights)
    update = jax.vmap(noise_std_update, in_axes=(0, 0, 0, None))

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
        accelerate=accelerate)
    best = kept[0]
    return gatings[0], GatingInfo(
        log_likelihood=info.log_likelihood[best],
        start_log_likelihood=info.log_likelihood,
        best=best,
        num_iters=info.num_iters[best],
        num_passes=info.num_passes,
        converged=info.converged[best],
        finite=info.finite[best],
        trace=info.trace[:, best],
        noise_std=jnp.exp(log_sigmas[0]))


def fit_gating(key: jax.Array, x: jax.Array, y: jax.Array, experts: jax.Array, *,
               noise_std, nonlinearity: Nonlinearity = "linear", num_inits: int = 1,
               num_iters: int = 50, tol: float = 1e-6, init_scale: float = 1.0,
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
    above NOISE_FLOOR sd(y) (`noise_std_update`).

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
    _validate.finite_result(info.finite, x, y, noise_std=None if learn_noise_std else noise_std)
    return w, info
