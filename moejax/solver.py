"""Fixed-point iteration of EM maps, plain or accelerated by SQUAREM, stopped on a tolerance.

An EM map takes parameters theta to F(theta) and returns, from the same pass over the data, the
mean log-likelihood L(theta). `iterate` runs m independent problems at once (every leaf of
theta has a leading axis of size m, and L is (m,)), so that one pass over the data serves all
of them (the gating EM's random starts share their matrix products).

Acceleration (docs/solvers.md): SQUAREM (Varadhan and Roland 2008, steplength S3) extrapolates
two EM steps, r = F(theta) - theta and v = F(F(theta)) - 2 F(theta) + theta, to
theta' = theta + 2 s r + s^2 v with s = ||r|| / ||v|| (s = 1 gives F(F(theta))). Here theta' is
kept only if L(theta') >= L(F(theta)), which the pass F(theta') computes, so the accepted
iterates never lower the likelihood; otherwise the iteration falls back to F(theta). Because
F(theta') comes with L(theta'), an iteration costs two passes. The largest step s starts at 1
and grows 4x each time it is used successfully (and shrinks 4x when it fails), as in the
reference implementation.

Stopping: a problem stops when its accepted likelihood rose by at most tol * (1 + |L|) in one
iteration (a relative change, absolute near L = 0), when its likelihood stops being finite, or
after `max_iters` iterations. A map that is not monotone (a gradient step, `monotone=False`)
stops when L changed by at most that much either way: a fall is not convergence.
"""

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class FitInfo(NamedTuple):
    """What an iterative fit did: the fields every solver reports, in this order. Every other
    info type (`GatingInfo`, `RecoverInfo`, `FitReport`) begins with these six fields in this
    order and adds only its own; `make_info` builds them all, by keyword.

    Scalars for one problem; from `iterate`, each field but `num_passes` has a leading axis m
    (`trace` a trailing one: (max_iters, m)).

    Attributes:
      log_likelihood: mean log-likelihood L at the returned parameters.
      num_iters: iterations run (each one EM map evaluation, or two when accelerated; Adam
        steps for gradient descent).
      num_passes: passes over the data (EM map or gradient evaluations), all problems together.
      converged: whether the stopping rule (L rose by at most tol * (1 + |L|) in an
        iteration) was met within the cap.
      finite: whether every likelihood the plain steps produced was finite, and the returned
        parameters and L are. A problem whose step gives a non-finite likelihood stops there
        and returns its last finite iterate with finite = False.
      trace: (max_iters,) L before each iteration; entries past `num_iters` hold the final
        value.
    """

    log_likelihood: jax.Array
    num_iters: jax.Array
    num_passes: jax.Array
    converged: jax.Array
    finite: jax.Array
    trace: jax.Array


def make_info(cls, info: FitInfo, index=None, **own):
    """An info of type `cls` (FitInfo or one that begins with its fields): FitInfo's fields
    from `info`, of problem `index` if given (info from `iterate`), then the type's own fields
    from `own`, all by keyword."""
    common = {name: getattr(info, name) for name in FitInfo._fields}
    if index is not None:
        common = {name: (value if name == "num_passes" else
                         value[:, index] if name == "trace" else value[index])
                  for name, value in common.items()}
    return cls(**common, **own)


class _State(NamedTuple):
    x0: object  # accepted iterate
    x1: object  # F(x0)
    x2: object  # F(x1), between the two passes of an accelerated iteration
    xp: object  # the extrapolated point, likewise
    l0: jax.Array  # L(x0), (m,)
    l1: jax.Array  # L(x1), (m,)
    step: jax.Array  # the extrapolation's step, (m,)
    phase: jax.Array  # what the next pass evaluates: 0 x0 (the start), 1 x1, 2 xp
    num_iters: jax.Array
    done: jax.Array
    converged: jax.Array
    broken: jax.Array
    step_max: jax.Array
    count: jax.Array
    passes: jax.Array
    trace: jax.Array


def _per_problem(mask, a, b):
    """where(mask, a, b) leaf by leaf, mask (m,) broadcast over each leaf's trailing axes."""
    return jax.tree_util.tree_map(
        lambda u, v: jnp.where(_scale(mask, u), u, v), a, b)


def _sq_norms(tree) -> jax.Array:
    """Squared norm of each problem's part of a pytree: (m,)."""
    leaves = jax.tree_util.tree_leaves(tree)
    return sum(jnp.sum(jnp.square(v).reshape(v.shape[0], -1), axis=1) for v in leaves)


def _all_finite(tree) -> jax.Array:
    """Whether each problem's part of a pytree is finite: (m,) bool."""
    leaves = jax.tree_util.tree_leaves(tree)
    return functools.reduce(jnp.logical_and, [
        jnp.all(jnp.isfinite(v).reshape(v.shape[0], -1), axis=1) for v in leaves])


def _scale(c, leaf):
    """c (m,) shaped to multiply a leaf with leading axis m."""
    return c.reshape(c.shape + (1,) * (leaf.ndim - 1))


def iterate(em_map: Callable, params, *, tol: float, max_iters: int,
            accelerate: bool = True, value_dtype=None,
            monotone: bool = True) -> tuple[object, FitInfo]:
    """Iterates `em_map` from `params` until the likelihood stops rising; see the module doc.

    Args:
      em_map: theta -> (F(theta), L(theta)), with L (m,); F must be a function of theta
        alone (no hidden state), defined on the unconstrained parameterisation (for example
        log sigma rather than sigma), since extrapolation may go anywhere.
      params: pytree, every leaf with leading axis m.
      tol: stop when L rose by at most tol * (1 + |L|) in an iteration (tol may be traced).
      max_iters: cap on iterations (static).
      accelerate: SQUAREM (True) or the plain EM iteration (False).
      value_dtype: the dtype of L, if the caller knows it; None traces em_map once more to
        find it.
      monotone: whether the map never lowers L (EM); False (a gradient step, with its
        optimiser's state in theta) stops on |change of L| instead of its rise.

    Returns:
      (the last accepted iterate, FitInfo with leading axis m). Under vmap the loop runs
      until every problem in the batch has stopped; a stopped problem's values do not
      change after it stops.
    """
    m = jax.tree_util.tree_leaves(params)[0].shape[0]
    # One evaluation of em_map per trip of the loop, whatever it evaluates (the start, F(x1)
    # or the extrapolated point): XLA compiles em_map once, not three times.
    dtype = (jax.eval_shape(em_map, params)[1].dtype if value_dtype is None
             else jnp.dtype(value_dtype))
    vec = lambda value, kind=dtype: jnp.full((m,), value, kind)
    state = _State(params, params, params, params, vec(jnp.nan), vec(jnp.nan), vec(1.0),
                   jnp.asarray(0, jnp.int32), vec(0, jnp.int32), vec(False, bool),
                   vec(False, bool), vec(False, bool), vec(1.0), jnp.asarray(0, jnp.int32),
                   jnp.asarray(0, jnp.int32),
                   # One spare row: the body is traced even when max_iters is 0.
                   jnp.zeros((max_iters + 1, m), dtype))

    def cond(s):
        return (s.phase == 0) | ((s.count < max_iters) & ~jnp.all(s.done))

    def pick(phase, *trees):
        """trees[phase] (phase traced)."""
        return jax.tree_util.tree_map(
            lambda *leaves: functools.reduce(
                lambda acc, i: jnp.where(phase == i, leaves[i], acc),
                range(1, len(leaves)), leaves[0]), *trees)

    def start(s, out, lik):
        bad = ~jnp.isfinite(lik)
        return s._replace(x1=out, l0=lik, done=bad, broken=bad, phase=jnp.asarray(1, jnp.int32))

    def finish(s, x0_new, x1_new, l0_new, step_max):
        """The end of an iteration: the accepted iterate, the stopping rule, the trace."""
        broken = ~jnp.isfinite(l0_new)
        change = l0_new - s.l0 if monotone else jnp.abs(l0_new - s.l0)
        converged = ~broken & (change <= tol * (1.0 + jnp.abs(s.l0)))
        live = ~s.done
        # A problem whose likelihood stops being finite keeps its last finite iterate.
        advance = live & ~broken
        trace = s.trace.at[s.count].set(jnp.where(live, s.l0, jnp.nan))
        return s._replace(
            x0=_per_problem(advance, x0_new, s.x0), x1=_per_problem(advance, x1_new, s.x1),
            l0=jnp.where(advance, l0_new, s.l0), num_iters=s.num_iters + live.astype(jnp.int32),
            done=s.done | converged | broken, converged=s.converged | (live & converged),
            broken=s.broken | (live & broken),
            step_max=jnp.where(live, step_max, s.step_max), count=s.count + 1,
            phase=jnp.asarray(1, jnp.int32), trace=trace)

    def plain(s, x2, l1):
        """After F(x1): the plain iteration ends; the accelerated one extrapolates."""
        if not accelerate:
            return finish(s, s.x1, x2, l1, s.step_max)
        r = jax.tree_util.tree_map(lambda a, b: b - a, s.x0, s.x1)
        v = jax.tree_util.tree_map(lambda a, b, c: c - 2 * b + a, s.x0, s.x1, x2)
        rr, vv = _sq_norms(r), _sq_norms(v)
        ratio = jnp.sqrt(rr / jnp.where(vv > 0, vv, 1.0))
        step = jnp.where(vv > 0, jnp.clip(ratio, 1.0, s.step_max), 1.0)
        xp = jax.tree_util.tree_map(
            lambda a, dr, dv: a + _scale(2 * step, a) * dr + _scale(step**2, a) * dv,
            s.x0, r, v)
        return s._replace(x2=x2, xp=xp, l1=l1, step=step, phase=jnp.asarray(2, jnp.int32))

    def extrapolated(s, fp, lp):
        """After F(xp): keep xp if its likelihood is at least L(F(x1)), else F(x1)."""
        accept = jnp.isfinite(lp) & (lp >= s.l1)
        at_max = s.step >= s.step_max
        step_max = jnp.where(at_max & accept, 4.0 * s.step_max,
                             jnp.where(at_max & ~accept, jnp.maximum(1.0, s.step_max / 4.0),
                                       s.step_max))
        return finish(s, _per_problem(accept, s.xp, s.x1), _per_problem(accept, fp, s.x2),
                      jnp.where(accept, lp, s.l1), step_max)

    def body(s):
        out, lik = em_map(pick(s.phase, s.x0, s.x1, s.xp))
        s = s._replace(passes=s.passes + 1)
        return jax.lax.switch(s.phase, [start, plain, extrapolated][:3 if accelerate else 2],
                              s, out, lik)

    s = jax.lax.while_loop(cond, body, state)
    rows = jnp.arange(max_iters)[:, None]
    trace = jnp.where(rows < s.num_iters[None, :], s.trace[:max_iters], s.l0[None, :])
    finite = ~s.broken & jnp.isfinite(s.l0) & _all_finite(s.x0)
    return s.x0, FitInfo(log_likelihood=s.l0, num_iters=s.num_iters, num_passes=s.passes,
                         converged=s.converged, finite=finite, trace=trace)


def _top(log_liks: jax.Array, keep: int) -> jax.Array:
    """Indices of the `keep` largest likelihoods (NaN never wins), best first; for keep = 1 the
    first of those tied with the largest up to float rounding (`first_best`)."""
    if keep == 1:
        return first_best(log_liks)[None]
    return jax.lax.top_k(jnp.where(jnp.isnan(log_liks), -jnp.inf, log_liks), keep)[1]


def first_best(log_liks: jax.Array) -> jax.Array:
    """Index of the first likelihood within float rounding of the largest (NaN never wins).

    Runs that reach the same optimum tie up to summation order; taking the first of the tied
    ones, not the argmax of the rounding noise, makes the choice the same in every layout
    (chunked, sharded) of the sums.
    """
    clean = jnp.where(jnp.isnan(log_liks), -jnp.inf, log_liks)
    top = jnp.max(clean)
    tol = 8 * jnp.finfo(log_liks.dtype).eps * jnp.maximum(1.0, jnp.abs(top))
    return jnp.argmax(clean >= top - tol)


def iterate_screened(em_map: Callable, params, *, tol: float, max_iters: int,
                     screen_iters: int, keep: int, accelerate: bool = True,
                     value_dtype=None, monotone: bool = True):
    """`iterate` from m starts, screened: all run `screen_iters` iterations together, then only
    the `keep` with the largest likelihood go on, for at most `max_iters` iterations in all.

    Screening pays when the starts end at different optima and a few iterations already rank
    them: the later, slow iterations then run for `keep` problems instead of m. With keep >= m
    or screen_iters = 0 it is `iterate`.

    Returns:
      (the kept problems' last iterates, leading axis keep, best first after screening;
      kept (keep,) their indices among the m starts; FitInfo over all m starts, where a
      start dropped at screening reports its state then and `trace` holds its last value).
    """
    m = jax.tree_util.tree_leaves(params)[0].shape[0]
    screen = min(screen_iters, max_iters)
    if keep >= m or screen == 0:
        params, info = iterate(em_map, params, tol=tol, max_iters=max_iters,
                               accelerate=accelerate, value_dtype=value_dtype,
                               monotone=monotone)
        return params, jnp.arange(m), info
    params, first = iterate(em_map, params, tol=tol, max_iters=screen, accelerate=accelerate,
                            value_dtype=value_dtype, monotone=monotone)
    kept = _top(first.log_likelihood, keep)
    params, rest = iterate(em_map, jax.tree_util.tree_map(lambda v: v[kept], params), tol=tol,
                           max_iters=max_iters - screen, accelerate=accelerate,
                           value_dtype=first.log_likelihood.dtype, monotone=monotone)
    # A start that converged while screening takes one more iteration, which confirms it.
    tail = jnp.broadcast_to(first.log_likelihood, (max_iters - screen, m))
    return params, kept, FitInfo(
        log_likelihood=first.log_likelihood.at[kept].set(rest.log_likelihood),
        num_iters=first.num_iters.at[kept].add(rest.num_iters),
        num_passes=first.num_passes + rest.num_passes,
        converged=first.converged.at[kept].set(first.converged[kept] | rest.converged),
        finite=first.finite.at[kept].set(first.finite[kept] & rest.finite),
        trace=jnp.concatenate([first.trace, tail.at[:, kept].set(rest.trace)]))
