"""Robust tensor power method with deflation for symmetric orthogonally decomposable
(k, k, k) tensors (Anandkumar, Ge, Hsu, Kakade, Telgarsky 2014; docs/algorithm.md section 3,
step 4).

Knows nothing of mixtures of experts."""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp


class PowerInfo(NamedTuple):
    """How the power method stopped, per component (in order of discovery). The fields are
    those of `moejax.FitInfo` that apply to a method without a likelihood, in its order.

    Attributes:
      num_iters: (num_components,) power steps of the polishing run (from the best start).
      converged: (num_components,) whether the polishing run's last step moved the unit
        component by at most `tol` (up to sign) within the cap `num_iters`.
      finite: (num_components,) whether the component and its weight are finite.
    """

    num_iters: jax.Array
    converged: jax.Array
    finite: jax.Array


def contract(tensor: jax.Array, v: jax.Array) -> jax.Array:
    """T(I, v, v)_i = sum_jl T_ijl v_j v_l: (k,)."""
    return jnp.einsum("ijl,j,l->i", tensor, v, v)


def _power_steps(tensor: jax.Array, v: jax.Array, max_iters: int,
                 tol: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """v <- T(I, v, v) / ||T(I, v, v)|| until a step moves v by at most tol (up to sign: T(I,
    v, v) is even in v) or `max_iters` steps: (v, steps, converged)."""

    def step(state):
        u, _, i = state
        w = contract(tensor, u)
        w = w / jnp.linalg.norm(w)
        moved = jnp.linalg.norm(w - jnp.where(w @ u < 0, -u, u))
        return w, moved, i + 1

    def more(state):
        # A NaN step (a zero tensor) compares False and stops the run.
        return (state[2] < max_iters) & (state[1] > tol)

    inf = jnp.asarray(jnp.inf, v.dtype)
    v, moved, steps = jax.lax.while_loop(more, step, (v, inf, jnp.asarray(0, jnp.int32)))
    return v, steps, moved <= tol


def _top_component(key: jax.Array, tensor: jax.Array, num_inits: int, num_iters: int,
                   tol: float) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The start with the largest T(v, v, v) after its power run, polished by another run."""
    k = tensor.shape[0]
    starts = jax.random.normal(key, (num_inits, k), tensor.dtype)
    starts = starts / jnp.linalg.norm(starts, axis=1, keepdims=True)
    ends, _, _ = jax.vmap(_power_steps, in_axes=(None, 0, None, None))(tensor, starts,
                                                                       num_iters, tol)
    values = jax.vmap(lambda u: contract(tensor, u) @ u)(ends)
    v, steps, converged = _power_steps(tensor, ends[jnp.argmax(values)], num_iters, tol)
    return contract(tensor, v) @ v, v, steps, converged


@functools.partial(jax.jit, static_argnames=("num_components", "num_inits", "num_iters"))
def decompose(key: jax.Array, tensor: jax.Array, num_components: int, *, num_inits: int = 10,
              num_iters: int = 100, tol: float = 1e-6) -> tuple[jax.Array, jax.Array, PowerInfo]:
    """Decomposes T ~ sum_i lam_i v_i (x) v_i (x) v_i by power iterations and deflation.

    Args:
      key: PRNG key for the random starts.
      tensor: (k, k, k) symmetric.
      num_components: how many components to extract, in order of discovery.
      num_inits: random starts per component (run together with vmap).
      num_iters: cap on the power steps v <- T(I, v, v) / ||T(I, v, v)|| per start, and again
        to polish the best.
      tol: a run stops when a step moves v by at most tol (Euclidean, up to sign).

    Returns:
      (lam, v, info): weights (num_components,), unit components as rows
      (num_components, k), and how each component's polishing run stopped (`PowerInfo`).
    """

    def body(t, key):
        lam, v, steps, converged = _top_component(key, t, num_inits, num_iters, tol)
        return t - lam * jnp.einsum("i,j,l->ijl", v, v, v), (lam, v, steps, converged)

    _, (lam, v, steps, converged) = jax.lax.scan(body, tensor,
                                                 jax.random.split(key, num_components))
    finite = jnp.isfinite(lam) & jnp.all(jnp.isfinite(v), axis=1)
    return lam, v, PowerInfo(num_iters=steps, converged=converged, finite=finite)
