"""Robust tensor power method with deflation for symmetric orthogonally decomposable
(k, k, k) tensors (Anandkumar, Ge, Hsu, Kakade, Telgarsky 2014; docs/algorithm.md section 3,
step 4).

Knows nothing of mixtures of experts."""

import functools

import jax
import jax.numpy as jnp


def contract(tensor: jax.Array, v: jax.Array) -> jax.Array:
    """T(I, v, v)_i = sum_jl T_ijl v_j v_l: (k,)."""
    return jnp.einsum("ijl,j,l->i", tensor, v, v)


def _power_steps(tensor: jax.Array, v: jax.Array, num_iters: int) -> jax.Array:
    def step(_, u):
        u = contract(tensor, u)
        return u / jnp.linalg.norm(u)

    return jax.lax.fori_loop(0, num_iters, step, v)


def _top_component(key: jax.Array, tensor: jax.Array, num_restarts: int,
                   num_iters: int) -> tuple[jax.Array, jax.Array]:
    """The restart with the largest T(v, v, v) after `num_iters` steps, polished by as many more."""
    k = tensor.shape[0]
    starts = jax.random.normal(key, (num_restarts, k), tensor.dtype)
    starts = starts / jnp.linalg.norm(starts, axis=1, keepdims=True)
    ends = jax.vmap(_power_steps, in_axes=(None, 0, None))(tensor, starts, num_iters)
    values = jax.vmap(lambda u: contract(tensor, u) @ u)(ends)
    v = _power_steps(tensor, ends[jnp.argmax(values)], num_iters)
    return contract(tensor, v) @ v, v


@functools.partial(jax.jit, static_argnames=("num_components", "num_restarts", "num_iters"))
def decompose(key: jax.Array, tensor: jax.Array, num_components: int, *, num_restarts: int = 10,
              num_iters: int = 100) -> tuple[jax.Array, jax.Array]:
    """Decomposes T ~ sum_i lam_i v_i (x) v_i (x) v_i by power iterations and deflation.

    Args:
      key: PRNG key for the random restarts.
      tensor: (k, k, k) symmetric.
      num_components: how many components to extract, in order of discovery.
      num_restarts: random starts per component (run together with vmap).
      num_iters: power steps v <- T(I, v, v) / ||T(I, v, v)|| per start, and again to polish.

    Returns:
      (lam, v): weights (num_components,) and unit components as rows (num_components, k).
    """

    def body(t, key):
        lam, v = _top_component(key, t, num_restarts, num_iters)
        return t - lam * jnp.einsum("i,j,l->ijl", v, v, v), (lam, v)

    _, (lam, v) = jax.lax.scan(body, tensor, jax.random.split(key, num_components))
    return lam, v
