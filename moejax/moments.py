"""Moment estimation (ALGORITHM.md sections 2-3): label transforms, M2, whitening and the
whitened third moment. The sums over samples live here and nowhere else."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from moejax.nonlinearities import TransformConstants


class Whitening(NamedTuple):
    """Top-k eigenpairs of M2 and the whitening matrix Wh = U diag(eigvals)^(-1/2).

    Attributes:
      matrix: (d, k) Wh, so that Wh^T M2 Wh = I_k.
      eigvals: (k,) the top-k eigenvalues of sign(c2) M2, descending.
      eigvecs: (d, k) the matching eigenvectors U.
    """

    matrix: jax.Array
    eigvals: jax.Array
    eigvecs: jax.Array


def label_transforms(y: jax.Array, consts: TransformConstants) -> tuple[jax.Array, jax.Array]:
    """T2(y) = y^2 + b y and T3(y) = y^3 + a2 y^2 + a1 y (ALGORITHM.md section 2); y: (n,)."""
    t2 = y * (y + consts.b)
    t3 = y * (y * (y + consts.a2) + consts.a1)
    return t2, t3


def second_moment(x: jax.Array, t2: jax.Array) -> jax.Array:
    """M2 = (1/n) sum_n T2(y_n) (x_n x_n^T - I): (d, d), for x: (n, d), t2: (n,)."""
    n, d = x.shape
    return (x.T @ (t2[:, None] * x)) / n - jnp.mean(t2) * jnp.eye(d, dtype=x.dtype)


def whitening(m2: jax.Array, num_experts: int) -> Whitening:
    """Whitening from the top-`num_experts` eigenpairs of a symmetric (d, d) M2 (section 3.2).

    M2 must already carry sign(c2), so its top eigenvalues are positive. An eigenvalue that is
    not (too few samples, or fewer experts in the data than asked for) is floored at a tiny
    positive value, which keeps the output finite; its direction is then noise.
    """
    eigvals, eigvecs = jnp.linalg.eigh(m2)
    eigvals = eigvals[::-1][:num_experts]
    eigvecs = eigvecs[:, ::-1][:, :num_experts]
    floor = jnp.finfo(m2.dtype).eps * jnp.maximum(jnp.max(jnp.abs(eigvals)), 1.0)
    eigvals = jnp.maximum(eigvals, floor)
    return Whitening(eigvecs * jax.lax.rsqrt(eigvals), eigvals, eigvecs)


def whitened_third_moment(xw: jax.Array, t3: jax.Array, wh: jax.Array) -> jax.Array:
    """M3(Wh, Wh, Wh) = E[T3(y) S3(x)] contracted with Wh on every mode: (k, k, k).

    Computed from the projected data xw = x @ Wh, shape (n, k), never from a (d, d, d) tensor:

        T = (1/n) sum_n T3(y_n) xw_n (x) xw_n (x) xw_n - sym(m (x) B),
        m = (1/n) sum_n T3(y_n) xw_n,   B = Wh^T Wh,
        sym(m (x) B)_ijl = m_i B_jl + m_j B_il + m_l B_ij     (ALGORITHM.md section 3.3).
    """
    n = xw.shape[0]
    weighted = t3[:, None] * xw
    cube = jnp.einsum("ni,nj,nl->ijl", weighted, xw, xw) / n
    m = jnp.mean(weighted, axis=0)
    b = wh.T @ wh
    sym = (jnp.einsum("i,jl->ijl", m, b) + jnp.einsum("j,il->ijl", m, b)
           + jnp.einsum("l,ij->ijl", m, b))
    return cube - sym
