"""Joint EM over experts and gating (Jordan and Jacobs 1994; docs/algorithm.md section 5,
docs/solvers.md): the EM map, one pass over the rows per evaluation, and `refine`, joint EM from
a given start (the moment estimate of `moejax.recover`). The engine of `moejax.fit`.

E-step in log space; the gating's M-step one Bohning or capped Newton step (`moejax.em_steps`);
the experts' M-step weighted least squares (linear g) or one Gauss-Newton step (non-linear g);
sigma's exact M-step when it is learned.
"""

import functools

import jax
import jax.numpy as jnp

from moejax import _validate, solver
from moejax.em_steps import (NOISE_FLOOR, bohning_step, e_step, gate_hessian, gram_matrix,
                             gram_solver, newton_step)
from moejax.families import Family, get_family
from moejax.moments import response_std
from moejax.nonlinearities import get_nonlinearity
from moejax.predictive import expert_log_densities, expert_part, gate_part
from moejax.params import MoEParams
from moejax.prior import Penalty, log_prior
from moejax.solver import FitInfo
from moejax.sums import Layout, layout_of, row_count, row_sum


def expert_sums(experts, resp, x, y, g, family: Family):
    """Sums over rows for the experts' M-step, at the current experts: G_i = sum_n q_ni w_ni
    x_n x_n^T (k, d, d), b_i = sum_n q_ni f_ni r_ni x_n (k, d) and S_i = sum_n q_ni
    (the family's scale statistic) (k,), with r_ni = y_n - g(a_i . x_n) and the family's IRLS
    weights (w, f) at slope s_ni = g'(a_i . x_n) (Gaussian: s^2 and s). resp: (k, n), row
    weights folded in. x: the design, of which the experts read their part
    (`predictive.expert_part`)."""
    x = expert_part(experts, x)
    pre = experts @ x.T
    out, slope = jax.jvp(g, (pre,), (jnp.ones_like(pre),))
    resid = y - out
    weight, factor = family.irls_weights(out, slope)
    gram = jnp.einsum("kn,nd,ne->kde", resp * weight, x, x)
    return (gram, (resp * factor * resid) @ x,
            jnp.sum(resp * family.scale_statistic(y, out), axis=1))


def gate_width_of(params: MoEParams, x) -> int | None:
    """`joint_em_map`'s gate_width for params on the design x: None when they share it."""
    width = params.gating.shape[-1]
    return None if width == params.experts.shape[-1] == x.shape[1] else width


def expert_step(gram, rhs, count, experts=None, ridge=None):
    """The experts' M-step from `expert_sums`: delta_i = G_i^(-1) b_i, (k, d), one
    Gauss-Newton (IRLS) step on sum_n q_ni log p(y_n | a_i . x_n) for every expert. For linear
    g and the Gaussian it is the exact weighted least-squares update; otherwise a generalised
    M-step (docs/solvers.md). count: the number of rows counted, the scale of the ridge;
    ridge: None, or (d,) a Gaussian prior's precision per column divided by count
    (`moejax.prior`): then the step is the penalised one, (G_i + n R) delta_i = b_i - n R a_i,
    at the current experts (k, d)."""
    d = gram.shape[-1]
    # A tiny ridge keeps an expert with (almost) no responsibility solvable.
    lhs, rhs = gram / count + 1e-6 * jnp.eye(d, dtype=gram.dtype), rhs / count
    if ridge is not None:
        lhs, rhs = lhs + jnp.diag(ridge), rhs - ridge * experts
    return jnp.linalg.solve(lhs, rhs[..., None])[..., 0]


def capped(delta, gram_x, max_step):
    """delta (k, d) with each row shortened so that its linear predictor moves by at most
    max_step in root mean square over the rows: sqrt(delta_i^T C delta_i) <= max_step, C =
    X^T X / n (the family's `max_step`; Newton's step on a GLM can overshoot far away)."""
    size = jnp.sqrt(jnp.maximum(jnp.einsum("kd,de,ke->k", delta, gram_x, delta), 0.0))
    return delta * jnp.minimum(1.0, max_step / jnp.maximum(size, jnp.finfo(delta.dtype).tiny)
                               )[:, None]


# The Newton gating step's trust region: the logits move by at most this much (root mean
# square over the rows) per iteration; measured on airfoil, docs/solvers.md.
NEWTON_MAX_CHANGE = 3.0


def joint_em_map(x, y, nonlinearity, learn_noise_std, weights=None, layout=Layout(),
                 newton_gating=False, penalty: Penalty | None = None, family="gaussian",
                 gate_width: int | None = None):
    """theta = (experts, gating, log sigma) -> (F(theta), L(theta)) for one problem, one pass
    over the rows (`row_sum`: in one block, in chunks, or over devices); weights: None or (n,)
    row weights (0 on padding rows). newton_gating: the gating's M-step is a capped Newton step
    (`em_steps.newton_step`, (k - 1)^2 d^2 more work per row) instead of the Bohning step.

    penalty: None (maximum likelihood), or a `moejax.prior.Penalty`: then L is the penalised
    objective (log-likelihood + log prior) / n and F its MAP-EM map: the gating step ascends
    the penalised Q (the Bohning bound grows by k ridge (x) I, which bounds the ridge's
    curvature on the k - 1 free rows, so the step stays monotone), sigma's M-step adds the
    prior's pseudo-rows (docs/algorithm.md section 9). family: the experts' (`moejax.families`);
    its scale is learned only if it has a dispersion. gate_width: None when the gate shares
    the experts' design x, else the width of the gate's part of x = [z_experts, z_gate]
    (`predictive.gate_part`)."""
    g = get_nonlinearity(nonlinearity)
    family = get_family(family)
    learn_noise_std = learn_noise_std and family.has_dispersion
    # C = X^T X / n of the whole design; the gate's and the experts' blocks are its corners
    # (the same matrix when the gate shares the experts' design).
    gram_u = gram_matrix(x, layout, weights)
    gate_from = 0 if gate_width is None else x.shape[1] - gate_width
    gram_x = gram_u[gate_from:, gate_from:]
    floor = NOISE_FLOOR * response_std(y, layout, weights)
    count = row_count(x.shape[0], weights)
    ridge = None if penalty is None else penalty.gate_ridge / count
    expert_ridge = (None if penalty is None or penalty.expert_ridge is None else
                    penalty.expert_ridge / count)
    solve = gram_solver(gram_x) if penalty is None else None  # else it depends on k

    def em_map(theta):
        experts, gating, log_sigma = theta
        sigma = jnp.exp(log_sigma)
        k = experts.shape[0]
        gram_e = gram_u[:experts.shape[1], :experts.shape[1]]

        def block(xb, yb, w):
            log_dens = expert_log_densities(
                MoEParams(experts, gating, sigma, nonlinearity, family), xb, yb)
            gate, resp, log_lik = e_step(gating, xb, log_dens)
            diff = jnp.stack([q - p for q, p in zip(resp[:-1], gate[:-1])]) * w
            vb = gate_part(gating, xb)
            hess = (gate_hessian(gate, vb, w),) if newton_gating else ()
            resp = jnp.stack(resp) * w
            return (diff @ vb, jnp.sum(w * log_lik), *expert_sums(experts, resp, xb, yb, g, family),
                    jnp.sum(resp, axis=1), *hess)

        grad, log_lik, gram, rhs, sq, resp_sum, *hess = row_sum(block, (x, y), layout,
                                                                 weights)
        grad = grad / count
        if penalty is not None:
            grad = grad - ridge * gating[:-1]
            log_lik = log_lik + log_prior(penalty, MoEParams(experts, gating, sigma),
                                          learn_noise_std)
        if newton_gating:
            new_gating = newton_step(gating, grad, hess[0] / count, gram_x, NEWTON_MAX_CHANGE,
                                     ridge)
        else:
            # (I - 1 1^T / k) >= I / k on the free rows: k ridge bounds the ridge's curvature.
            new_gating = bohning_step(gating, grad, solve if penalty is None else
                                      gram_solver(gram_x + 2 * k * jnp.diag(ridge)))
        delta = expert_step(gram, rhs, count, experts, expert_ridge)
        if family.max_step is not None:
            delta = capped(delta, gram_e, family.max_step)
        if learn_noise_std:
            # sigma's exact maximiser given the new experts (ECM order), without another pass:
            # sum_n q (r - s delta . x)^2 = S - 2 delta . b + delta^T G delta, exact for linear
            # g (s = 1) and the Gauss-Newton model's residual otherwise.
            new_sq = sq - 2 * jnp.sum(delta * rhs, axis=1) + jnp.einsum(
                "kd,kde,ke->k", delta, gram, delta)
            prior = (() if penalty is None else
                     (penalty.noise_dof * penalty.noise_scale, penalty.noise_dof + 2))
            log_sigma = jnp.log(family.scale_update(jnp.maximum(new_sq, 0.0), resp_sum, sigma,
                                                    floor, *prior))
        return (experts + delta, new_gating, log_sigma), log_lik / count

    return em_map


@functools.partial(jax.jit, static_argnames=("num_iters", "learn_noise_std", "accelerate",
                                             "layout", "newton_gating"))
def _refine(init: MoEParams, x, y, num_iters, tol, learn_noise_std=False, accelerate=True,
              layout=Layout(), weights=None, newton_gating=False):
    em_map = jax.vmap(joint_em_map(x, y, init.nonlinearity, learn_noise_std, weights, layout,
                                   newton_gating, family=init.family,
                                   gate_width=gate_width_of(init, x)))
    theta = (init.experts[None], init.gating[None], jnp.log(init.noise_std)[None])
    (experts, gating, log_sigma), info = solver.iterate(em_map, theta, tol=tol,
                                                        max_iters=num_iters,
                                                        accelerate=accelerate,
                                                        value_dtype=x.dtype)
    return init._replace(experts=experts[0], gating=gating[0],
                         noise_std=jnp.exp(log_sigma[0])), solver.make_info(FitInfo, info, 0)


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
    (y_n - g(a_i . x_n))^2 / sum_n q_ni (kept above `em_steps.NOISE_FLOOR` sd(y)).
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
    x, y, _ = _validate.fit_inputs(x, y, params.experts.shape[0], params.nonlinearity,
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
    out = _refine(params, x, y, num_iters, tol, learn_noise_std, accelerate, layout,
                    None if weights is None else weights.astype(x.dtype),
                    gating_step == "newton")
    _validate.finite_result(out[1].finite, x, y, noise_std=params.noise_std, what="refine",
                            nonlinearity=params.nonlinearity)
    return out
