"""`fit`'s refinement: joint EM from the moment start and random starts, all in one vmap,
screened (every start runs `REFINE_SCREEN_ITERS` iterations, the best `REFINE_KEEP` go on to
convergence), the best kept and reported in a `FitReport`; and what a refinement pass costs
(docs/solvers.md)."""

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from moejax import _validate, predictive, solver, sums
from moejax.em_steps import e_step
from moejax.families import get_family
from moejax.joint import gate_width_of, joint_em_map
from moejax.params import MoEParams


class FitReport(NamedTuple):
    """How `fit` got its parameters: every start refined by joint EM, the best kept.

    Attributes:
      log_likelihood, num_iters, num_passes, converged, finite, trace: as in
        `moejax.FitInfo`, one entry per start (leading axis num_starts; trace
        (num_refine_iters, num_starts)): the final training mean log-likelihood on the
        standardised scale, the refinement iterations, the passes over the data of all starts
        together, whether each met the stopping rule within the cap, stayed finite, and its L
        before each iteration.
      best: index of the kept start (0 is the moment start, 1.. the random ones).
      continued: (num_starts,) whether each start went on after the screening iterations
        (the others report their state then).
      effective_rows: (k,) the kept start's posterior weight per expert on the training
        rows, sum_n P(z = i | x_n, y_n): the rows each expert was fitted on.
      saturated_rows: the number of training rows on which the kept start's largest gate
        probability exceeds `SATURATED_GATE` (the gate decides them alone).

    With a prior (`fit`'s default), log_likelihood and trace hold the objective the solver
    maximised: (log-likelihood + log prior) / n.
    """

    log_likelihood: jax.Array
    num_iters: jax.Array
    num_passes: jax.Array
    converged: jax.Array
    finite: jax.Array
    trace: jax.Array
    best: jax.Array
    continued: jax.Array
    effective_rows: jax.Array | None = None
    saturated_rows: jax.Array | None = None


def has_moment_start(num_experts: int, dim: int, gate_dim: int | None, family) -> bool:
    """Whether `fit` starts from the moment method (start 0 of the refinement): k <= d (the
    experts' columns), a gate on the experts' design (gate_dim None) and a family whose
    moments it reads (docs/algorithm.md sections 1 and 2)."""
    return num_experts <= dim and gate_dim is None and get_family(family).moment_start


def start_name(start: int, moment_start: bool) -> str:
    """How the report's start `start` began: "the moment start" (start 0, when the fit had
    one: `has_moment_start`) or "random start i"."""
    return ("the moment start" if start == 0 and moment_start else
            f"random start {start + (not moment_start)}")


# Screening of the refinement's starts: all run this many iterations together, then the best
# few go on to convergence (docs/solvers.md has the measurement behind both numbers).
REFINE_SCREEN_ITERS = 50


REFINE_KEEP = 4


# Up to this many free gating parameters ((k - 1) (d + 1)) the refinement's gating M-step is a
# capped Newton step (its Hessian costs (k - 1)^2 (d + 1)^2 per row), above it the Bohning step.
NEWTON_GATING_MAX_PARAMS = 128


# A gate probability above this decides a row alone (`FitReport.saturated_rows`).
SATURATED_GATE = 0.999


class Refiner(NamedTuple):
    """A refinement solver, one entry of `REFINERS`: what `refine_starts` iterates.

    Attributes:
      make_map: (z, y, like, *, learn, weights, layout, penalty) -> a map theta -> (F(theta),
        L(theta)) for one start (`solver.iterate`'s contract), L the (penalised) mean
        log-likelihood; like: the starts' MoEParams (shapes, g, family).
      to_theta: MoEParams of one start -> theta.
      to_params: theta -> (experts, gating, sigma).
      monotone: whether the map never lowers L (EM), or stops on |change| (`solver.iterate`).
      accelerate: whether SQUAREM extrapolates it.
    """

    make_map: Callable
    to_theta: Callable
    to_params: Callable
    monotone: bool = True
    accelerate: bool = True


def _joint_em(z, y, like: MoEParams, *, learn, weights, layout, penalty):
    """The joint-EM map (`joint.joint_em_map`) with the capped Newton gate step when the
    gating has at most `NEWTON_GATING_MAX_PARAMS` free parameters, else Bohning's."""
    newton = (like.gating.shape[-2] - 1) * like.gating.shape[-1] <= NEWTON_GATING_MAX_PARAMS
    return joint_em_map(z, y, like.nonlinearity, learn_noise_std=learn, weights=weights,
                        layout=layout, newton_gating=newton, penalty=penalty,
                        family=like.family, gate_width=gate_width_of(like, z))


# The refiners `refine_starts` runs, by name (`FitConfig.refiner`): a new refiner is one entry.
REFINERS = {
    "joint_em": Refiner(
        make_map=_joint_em,
        to_theta=lambda p: (p.experts, p.gating, jnp.log(p.noise_std)),
        to_params=lambda theta: (theta[0], theta[1], jnp.exp(theta[2]))),
}


@functools.partial(jax.jit, static_argnames=("num_iters", "learn", "layout", "refiner"))
def refine_starts(starts: MoEParams, z, y, num_iters, tol, learn, weights=None,
                  layout=sums.Layout(), penalty=None, refiner="joint_em"):
    """The refiner (a name in `REFINERS`, joint EM by default) from m starts (leading axis)
    in one vmap, screened; the best by likelihood (by the penalised objective with a
    `moejax.prior.Penalty`)."""
    entry = REFINERS[refiner]
    em_map = jax.vmap(entry.make_map(z, y, starts, learn=learn, weights=weights,
                                       layout=layout, penalty=penalty))
    theta, kept, info = solver.iterate_screened(
        em_map, jax.vmap(entry.to_theta)(starts), tol=tol, max_iters=num_iters,
        screen_iters=REFINE_SCREEN_ITERS, keep=REFINE_KEEP, accelerate=entry.accelerate,
        value_dtype=z.dtype, monotone=entry.monotone)
    top = solver.first_best(jnp.where(info.finite[kept], info.log_likelihood[kept], -jnp.inf))
    best = jax.tree.map(lambda v: v[top], theta)
    params = MoEParams(*entry.to_params(best), *starts[3:])
    continued = jnp.zeros(info.num_iters.shape, bool).at[kept].set(True)
    report = solver.make_info(FitReport, info, best=kept[top], continued=continued,
                              **_occupancy(params, z, y, weights, layout))
    return params, report, info.finite[kept[top]]


def _occupancy(params: MoEParams, z, y, weights, layout) -> dict:
    """FitReport's effective_rows (k,) and saturated_rows of params on the rows (z, y)."""
    def block(zb, yb, w):
        log_dens = predictive.expert_log_densities(params, zb, yb)
        gate, resp, _ = e_step(params.gating, zb, log_dens)
        top = functools.reduce(jnp.maximum, gate)
        return jnp.stack(resp) @ w, jnp.sum(w * (top > SATURATED_GATE))

    rows, saturated = sums.row_sum(block, (z, y), layout, weights)
    return dict(effective_rows=rows, saturated_rows=saturated)


# One refinement pass (all starts) above this many multiply-adds gets a warning before the fit
# starts: a fit whose every pass is this large takes far longer than a table-sized one (a
# 1500-row table with 5 features and k = 2 costs about 2.4e6 per pass).
LARGE_PASS = 1e11


def refinement_cost(num_rows: int, dim: int, num_experts: int, num_starts: int,
                    chunk_size: int | None, itemsize: int) -> tuple[float, float]:
    """What one joint-EM pass of `fit`'s refinement costs, for `num_starts` starts at once (the
    screening iterations run them all): (multiply-adds, bytes of the pass's temporaries).

    Per row, start and expert: the expert's and the gate's z . w (2 (d + 1)) and the weighted
    outer product z z^T of the expert's normal equations ((d + 1)^2); per start, about eight
    (rows of a block, k) arrays and k (d + 1, d + 1) normal equations."""
    d1 = dim + 1
    block = num_rows if chunk_size is None else min(chunk_size, num_rows)
    work = float(num_starts) * num_rows * num_experts * (2 * d1 + d1 * d1)
    memory = float(itemsize) * num_starts * num_experts * (8 * block + d1 * d1)
    return work, memory


def announce_cost(num_rows: int, dim: int, num_experts: int, num_starts: int, num_iters: int,
                  chunk_size: int | None, itemsize: int, progress) -> None:
    """Says what the refinement will cost before it starts (progress), and warns when one
    pass is beyond `LARGE_PASS` multiply-adds: such a fit takes hours, not seconds."""
    if not num_iters:
        return
    starts = num_starts
    work, memory = refinement_cost(num_rows, dim, num_experts, starts, chunk_size, itemsize)
    progress(f"refinement cost: {work:.2g} multiply-adds and {memory / 2**20:.0f} MiB of "
             f"temporaries per pass of its {starts} starts, at most "
             f"{2 * num_iters} passes")
    if work > LARGE_PASS:
        _validate.warn(
            f"this fit is large: one refinement pass of its {starts} starts costs about "
            f"{work:.2g} multiply-adds (k = {num_experts} experts on {num_rows} rows of "
            f"{dim} features; minutes per pass on a CPU) and up to "
            f"{2 * num_iters} passes may run. Fewer experts, fewer starts "
            "(num_refine_inits), a lower num_refine_iters, or a GPU make it faster; "
            "chunk_size bounds its memory.")
