"""The second consistent route: gradient descent on designed losses (docs/algorithm.md section
10), after Makkuva, Kannan, Oh and Viswanath ("Learning in gated neural networks", AISTATS
2020), who build on the landscape design of Ge, Lee and Ma (ICLR 2018).

The experts: for standard Gaussian x and unit directions u, v, the fourth Hermite contraction

    t4(u, v, x) = (u.x)^2 (v.x)^2 - |u|^2 (v.x)^2 - |v|^2 (u.x)^2 - 4 (u.v)(u.x)(v.x)
                  + |u|^2 |v|^2 + 2 (u.v)^2

and the fourth-order label transform Q4 (`moejax.quartic_constants`) give, with the gating
orthogonal to the experts, E[Q4(y) t4(u, v, x)] = sum_i c4 pi_i (a_i.u)^2 (a_i.v)^2. After the
whitening Wh of the paper's M2 (u = Wh b), this is sum_i (c4 / c2^2 pi_i) (at_i.b)^2 (at_i.b')^2
with orthonormal at_i, and the loss over the k rows b_j of B (each used as b_j / |b_j|)

    L(B) = sum_{j != l} T(b_j, b_l) - mu sum_j T(b_j, b_j) + lambda sum_j (|b_j|^2 - 1)^2,
    T = (c2^2 / c4) E[Q4(y) t4(Wh b, Wh b', x)],

has its minima at b_j = +-at_pi(j) (a permutation): the cross terms push the rows apart, the
diagonal pulls each onto one direction. Each step of its minimisation (Adam, vmapped over
random starts) is one pass over the rows: every expectation is a row sum (`sums.row_sum`), so
chunks, shards and streams work unchanged. The signs, which an even loss cannot see, come from
the third moment: sign(c3 E[T3(y) t3(a_j, x)]) = sign(c3^2 pi_j) > 0 for the true sign.

The gating: with the experts fixed, the log-likelihood that the gating EM maximises
(`moejax.fit_gating`), here by Adam (`gating_loss`).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from moejax import _validate, moments, predictive, solver
from moejax.baselines import adam_descent
from moejax.nonlinearities import (Nonlinearity, QuarticConstants, quartic_constants,
                                   transform_constants)
from moejax.params import MoEParams
from moejax.recover import _prepared
from moejax.solver import FitInfo
from moejax.sums import Layout, row_count, row_sum

# mu, the weight of the diagonal terms, and lambda, the norm penalty's: on the population loss
# with mixing weights drawn from Dirichlet(2, ..., 2), every random start of k = 2, 3, 5 reached
# a permutation of the true directions for (mu, lambda) in {(0.1, 1), (0.25, 5), (0.5, 10)}.
DIAGONAL_WEIGHT = 0.25
NORM_WEIGHT = 1.0


class DescentInfo(NamedTuple):
    """What `recover_by_descent` did: the gating descent's run (the six fields every solver
    reports) and the expert descent's.

    Attributes:
      log_likelihood, num_iters, num_passes, converged, finite, trace: the gating descent's
        (`solver.FitInfo`): mean log-likelihood at the returned parameters, Adam steps, passes
        over the data (gradient evaluations), whether the likelihood changed by at most
        tol * (1 + |L|) in a step within the cap, finiteness, and L before each step.
      experts: the expert descent's FitInfo, one entry per random start, its log_likelihood
        the negative designed loss -L(B) (num_passes all starts together, plus 3: M2, the kept
        start's pair table and the signs).
      best_start: which start's experts were kept (the smallest loss).
      mixing_weights: (k,) pi_j = 1 / T(b_j, b_j) at the kept start, near the truth's
        E[p_j(x)] when the model holds (a diagnostic, as `RecoverInfo.mixing_weights`).
    """

    log_likelihood: jax.Array
    num_iters: jax.Array
    num_passes: jax.Array
    converged: jax.Array
    finite: jax.Array
    trace: jax.Array
    experts: FitInfo
    best_start: jax.Array
    mixing_weights: jax.Array


def q4_transform(consts: QuarticConstants):
    """The fourth-order label transform as a function.

    Args:
      consts: `QuarticConstants` (`moejax.quartic_constants`).

    Returns:
      y -> Q4(y) = y^4 + b3 y^3 + b2 y^2 + b1 y + b0, elementwise.

    Raises:
      Nothing.

    >>> q4 = q4_transform(quartic_constants("linear", 0.0))  # y^4 - 6 y^2 + 3 = He4(y)
    >>> float(q4(jnp.asarray(1.0)))
    -2.0
    """
    return lambda y: y * (y * (y * (y + consts.b3) + consts.b2) + consts.b1) + consts.b0


def pair_moments(x: jax.Array, y: jax.Array, directions: jax.Array, transform,
                 layout: Layout = Layout(), weights: jax.Array | None = None) -> jax.Array:
    """The pair table T[j, l] = (1/n) sum_n q_n t4(u_j, u_l, x_n), q = transform(y), from the
    projections x u_j only (n d k + n k^2 work, one pass; docs/algorithm.md section 10).

    With P = x U^T, G = U U^T, s = diag(G), C = (1/n) P^T diag(q) P, m = diag(C),
    A = (1/n) (P^2)^T diag(q) P^2 and q_bar = mean(q):
    T = A - s m^T - m s^T - 4 G * C + q_bar (s s^T + 2 G * G)  (* elementwise).

    Args:
      x: (n, d) inputs; y: (n,) responses.
      directions: (k, d) the rows u_j.
      transform: y -> q elementwise (Q4: `q4_transform`).
      layout, weights: how the rows are summed (`sums.row_sum`).

    Returns:
      (k, k) symmetric table.

    Raises:
      Nothing (the caller checks the data).

    >>> x = jax.random.normal(jax.random.key(0), (100_000, 3))
    >>> t = pair_moments(x, jnp.ones(100_000), jnp.eye(3), lambda y: y)  # E[t4] = 0
    >>> bool(jnp.max(jnp.abs(t)) < 0.2)
    True
    """
    n = row_count(x.shape[0], weights)

    def block(xb, yb, w):
        q = transform(yb) * w
        p = xb @ directions.T
        p2 = jnp.square(p)
        return (q[:, None] * p2).T @ p2, (q[:, None] * p).T @ p, jnp.sum(q)

    quad, cross, total = row_sum(block, (x, y), layout, weights)
    quad, cross, total = quad / n, cross / n, total / n
    gram = directions @ directions.T
    s, m = jnp.diag(gram), jnp.diag(cross)
    return (quad - jnp.outer(s, m) - jnp.outer(m, s) - 4 * gram * cross
            + total * (jnp.outer(s, s) + 2 * jnp.square(gram)))


def _unit_rows(b):
    return b / jnp.linalg.norm(b, axis=-1, keepdims=True)


def expert_loss(b: jax.Array, x: jax.Array, y: jax.Array, whitening: jax.Array, transform,
                scale, *, diagonal_weight: float = DIAGONAL_WEIGHT,
                norm_weight: float = NORM_WEIGHT, layout: Layout = Layout(),
                weights: jax.Array | None = None):
    """The designed expert loss L(B) of the module docstring, and the pair table T (k, k).

    Args:
      b: (k, k) rows b_j in whitened coordinates (used as b_j / |b_j|).
      x: (n, d) standard Gaussian inputs; y: (n,) responses.
      whitening: (d, k) Wh with Wh^T M2 Wh = I (`moments.whitening`).
      transform: Q4 (`q4_transform`); scale: c2^2 / c4.
      diagonal_weight, norm_weight: mu and lambda.
      layout, weights: how the rows are summed (`sums.row_sum`).

    Returns:
      (L (), T (k, k)), T the scaled pair table at the unit rows.

    Raises:
      Nothing (the caller checks the data).

    >>> from moejax import moments
    >>> from moejax.model import random_params, sample
    >>> truth = random_params(jax.random.key(0), dim=4, num_experts=2, noise_std=0.1)
    >>> x, y = sample(jax.random.key(1), truth, 50_000)
    >>> c2 = transform_constants("linear", 0.1)
    >>> wh = moments.whitening(moments.second_moment(x, y, moments.t2_transform(c2)), 2)
    >>> q4 = q4_transform(quartic_constants("linear", 0.1))
    >>> loss, table = expert_loss(jnp.eye(2), x, y, wh.matrix, q4, 4.0 / 24.0)
    >>> table.shape
    (2, 2)
    """
    table = scale * pair_moments(x, y, _unit_rows(b) @ whitening.T, transform, layout, weights)
    diag = jnp.trace(table)
    loss = (jnp.sum(table) - (1 + diagonal_weight) * diag
            + norm_weight * jnp.sum(jnp.square(jnp.sum(jnp.square(b), axis=-1) - 1)))
    return loss, table


def gating_loss(free: tuple, experts: jax.Array, x: jax.Array, y: jax.Array, nonlinearity,
                layout: Layout = Layout(), weights: jax.Array | None = None):
    """Minus the mean log-likelihood with the experts fixed, -(1/n) sum_n log p(y_n | x_n):
    the objective the gating EM ascends (`moejax.fit_gating`), as a row sum.

    Args:
      free: (gating (k, d), log sigma () or (k,)).
      experts: (k, d) the fixed experts.
      x: (n, d) inputs; y: (n,) responses.
      nonlinearity: the experts' g.
      layout, weights: how the rows are summed (`sums.row_sum`).

    Returns:
      The loss, a scalar.

    Raises:
      Nothing (the caller checks the data).

    >>> from moejax.model import random_params, sample
    >>> truth = random_params(jax.random.key(0), dim=4, num_experts=2, noise_std=0.1)
    >>> x, y = sample(jax.random.key(1), truth, 1000)
    >>> free = (truth.gating, jnp.log(truth.noise_std))
    >>> bool(gating_loss(free, truth.experts, x, y, "linear")
    ...      < gating_loss((0 * truth.gating, free[1]), truth.experts, x, y, "linear"))
    True
    """
    gating, log_sigma = free
    params = MoEParams(experts, gating, jnp.exp(log_sigma), nonlinearity)
    n = row_count(x.shape[0], weights)
    total = row_sum(lambda xb, yb, w: w @ predictive.log_density(params, xb, yb), (x, y),
                    layout, weights)
    return -total / n


@functools.partial(jax.jit, static_argnames=("num_experts", "nonlinearity", "num_starts",
                                             "num_expert_steps", "num_gating_steps", "learn",
                                             "layout"))
def _recover_by_descent(key, x, y, noise_std, weights, learning_rate, gating_learning_rate,
                        tol, num_experts, nonlinearity, num_starts, num_expert_steps,
                        num_gating_steps, learn, layout):
    k, d = num_experts, x.shape[1]
    consts = transform_constants(nonlinearity, noise_std)
    quartic = quartic_constants(nonlinearity, noise_std)
    m2 = jnp.sign(consts.c2) * moments.second_moment(x, y, moments.t2_transform(consts), layout,
                                                     weights)
    white = moments.whitening(m2, k)
    q4 = q4_transform(quartic)
    scale = jnp.square(consts.c2) / quartic.c4
    loss = lambda b: expert_loss(b, x, y, white.matrix, q4, scale, layout=layout,
                                 weights=weights)[0]
    starts = _unit_rows(jax.random.normal(key, (num_starts, k, k), x.dtype))
    bs, expert_info = jax.vmap(
        lambda b: adam_descent(loss, b, num_expert_steps, learning_rate, tol, x.dtype))(starts)
    best = jnp.argmin(jnp.where(jnp.isfinite(expert_info.log_likelihood),
                                -expert_info.log_likelihood, jnp.inf))
    b = _unit_rows(bs[best])
    table = expert_loss(b, x, y, white.matrix, q4, scale, layout=layout, weights=weights)[1]
    # Back to R^d: a_j is proportional to pinv(Wh^T) b_j = U diag(eigvals)^(1/2) b_j.
    a = _unit_rows((b * jnp.sqrt(white.eigvals)) @ white.eigvecs.T)
    # The signs from E[T3(y) t3(a_j, x)] = c3 pi_j (for the true sign), t3 the third Hermite
    # contraction (a.x)^3 - 3 |a|^2 (a.x) with |a| = 1.
    t3 = moments.t3_transform(consts)
    n = row_count(x.shape[0], weights)
    third = row_sum(lambda xb, yb, w: (t3(yb) * w) @ ((xb @ a.T) ** 3 - 3 * (xb @ a.T)),
                    (x, y), layout, weights) / n
    experts = jnp.where((jnp.sign(consts.c3) * third >= 0)[:, None], a, -a)

    def gate_loss(free):
        return gating_loss(free if learn else (free[0], jnp.log(noise_std)), experts, x, y,
                           nonlinearity, layout, weights)

    start = (jnp.zeros((k, d), x.dtype), jnp.log(noise_std).astype(x.dtype))
    (gating, log_sigma), gate_info = adam_descent(gate_loss, start, num_gating_steps,
                                              gating_learning_rate, tol, x.dtype)
    gating = gating - gating[-1]  # the softmax is unchanged; the last row 0 as everywhere
    # Passes: one per Adam step of every start, M2, the pair table and the signs.
    expert_info = expert_info._replace(num_passes=jnp.sum(expert_info.num_passes) + 3)
    params = MoEParams(experts, gating, jnp.exp(log_sigma) if learn else noise_std,
                       nonlinearity)
    return params, solver.make_info(DescentInfo, gate_info, experts=expert_info,
                                    best_start=best, mixing_weights=1 / jnp.diag(table))


def recover_by_descent(key: jax.Array, x: jax.Array, y: jax.Array, *, num_experts: int,
                       nonlinearity: Nonlinearity = "linear", noise_std=None,
                       num_starts: int = 4, num_expert_steps: int = 1000,
                       num_gating_steps: int = 1000, learning_rate: float = 0.02,
                       gating_learning_rate: float = 0.05, tol: float = 1e-7,
                       chunk_size: int | None = None,
                       weights=None) -> tuple[MoEParams, DescentInfo]:
    """All MoE parameters by gradient descent on designed losses (docs/algorithm.md section
    10): the experts from the fourth-order loss `expert_loss` after the paper's whitening, by
    Adam from `num_starts` random starts at once (the smallest loss kept), their signs from the
    third moment; then the gating (and sigma, when learned) by Adam on the fixed-expert
    likelihood `gating_loss`, from the uniform gate.

    The same model, assumptions and output as `recover` (x ~ N(0, I_d), unit-norm experts,
    gating orthogonal to them for the consistency guarantee); works under `jax.jit` and
    `jax.vmap` like it.

    Args:
      key: PRNG key of the expert descent's starts.
      x: (n, d) inputs, x ~ N(0, I_d); y: (n,) responses.
      num_experts: k, 2 <= k <= d.
      nonlinearity: the experts' g (`moejax.NONLINEARITIES` or a callable).
      noise_std: the known sigma, or None to estimate it (`initial_noise_std` for the
        transforms, then learned with the gating).
      num_starts: random starts of the expert descent (one vmap).
      num_expert_steps, num_gating_steps: caps on Adam steps (one pass over the data each).
      learning_rate, gating_learning_rate: Adam's, for the experts' unit rows and for the
        gating's entries.
      tol: a descent stops when its objective changed by at most tol * (1 + |L|) in a step.
      chunk_size, weights: as in `recover`.

    Returns:
      (params, info): MoEParams (unit-norm experts (k, d), gating (k, d) with last row 0,
      noise_std, nonlinearity) and DescentInfo.

    Raises:
      ValueError: as `recover`; for a g whose fourth moment cannot see the experts; for
        num_starts or a cap that is not a positive integer, or a rate or tol that is not
        positive.

    >>> from moejax.model import random_params, sample
    >>> from moejax.metrics import expert_error
    >>> truth = random_params(jax.random.key(0), dim=6, num_experts=2, noise_std=0.1)
    >>> x, y = sample(jax.random.key(1), truth, 100_000)
    >>> est, info = recover_by_descent(jax.random.key(2), x, y, num_experts=2, noise_std=0.1)
    >>> bool(expert_error(est.experts, truth.experts) < 0.1)
    True
    """
    learn = noise_std is None
    x, y, weights, noise_std, layout, given = _prepared(
        x, y, num_experts, nonlinearity, noise_std, chunk_size, weights, power=4)
    quartic_constants(nonlinearity, 1.0)  # raises for a g the fourth moment cannot see
    num_starts = _validate.count(num_starts, "num_starts")
    num_expert_steps = _validate.count(num_expert_steps, "num_expert_steps")
    num_gating_steps = _validate.count(num_gating_steps, "num_gating_steps")
    for value, name in ((learning_rate, "learning_rate"),
                        (gating_learning_rate, "gating_learning_rate"), (tol, "tol")):
        _validate.positive(value, name)
    params, info = _recover_by_descent(
        key, x, y, jnp.asarray(noise_std, x.dtype), weights, learning_rate,
        gating_learning_rate, tol, num_experts, nonlinearity, num_starts, num_expert_steps,
        num_gating_steps, learn, layout)
    _validate.finite_result(info.finite & jnp.all(jnp.isfinite(params.experts)), *given,
                            noise_std=None if learn else noise_std,
                            what="recover_by_descent", nonlinearity=nonlinearity)
    return params, info
