"""Moment estimation (docs/algorithm.md sections 2-3): label transforms, M2 (dense, or applied
implicitly), whitening and the whitened third moment; the moments of y and sigma's moment
estimate that both EMs start from.

The sums over samples go through `moejax.sums.row_sum`, so each moment is computed in one block,
in fixed-size chunks, or data-parallel over devices (`Layout`), with the same result up to
float rounding. Per-row weights come from y through `transform` (T2 or T3), evaluated block by
block, so no (n,) temporary is formed in the chunked layouts either.
"""

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from moejax import _validate
from moejax.nonlinearities import Nonlinearity, TransformConstants, output_second_moment
from moejax.sums import Layout, row_count, row_sum


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
    """T2(y) = y^2 + b y and T3(y) = y^3 + a2 y^2 + a1 y (docs/algorithm.md section 2); y: (n,)."""
    return t2_transform(consts)(y), t3_transform(consts)(y)


def t2_transform(consts: TransformConstants) -> Callable[[jax.Array], jax.Array]:
    """y -> T2(y) = y^2 + b y, elementwise."""
    return lambda y: y * (y + consts.b)


def t3_transform(consts: TransformConstants) -> Callable[[jax.Array], jax.Array]:
    """y -> T3(y) = y^3 + a2 y^2 + a1 y, elementwise."""
    return lambda y: y * (y * (y + consts.a2) + consts.a1)


def _identity(t):
    return t


def second_moment(x: jax.Array, y: jax.Array, transform: Callable = _identity,
                  layout: Layout = Layout(), weights: jax.Array | None = None) -> jax.Array:
    """M2 = (1/n) sum_n t_n (x_n x_n^T - I) with t = transform(y): (d, d).

    x: (n, d); y: (n,). With the default identity transform, y holds the weights t itself.
    weights: None, or (n,) row weights (n becomes their sum; see `sums.row_sum`).
    Costs n d^2 multiply-adds (about 13 passes over x at d = 100 on a 2-core CPU).
    """
    d = x.shape[1]
    n = row_count(x.shape[0], weights)

    def block(xb, yb, w):
        t = transform(yb) * w
        return xb.T @ (t[:, None] * xb), jnp.sum(t)

    outer, total = row_sum(block, (x, y), layout, weights)
    return outer / n - (total / n) * jnp.eye(d, dtype=x.dtype)


def second_moment_product(x: jax.Array, y: jax.Array, v: jax.Array,
                          transform: Callable = _identity, layout: Layout = Layout(),
                          weights: jax.Array | None = None) -> jax.Array:
    """M2 @ v without forming M2: (1/n) sum_n t_n x_n (x_n . v) - mean(t) v, v: (d, m).

    Costs 2 n d m multiply-adds; in the chunked layout each block of x is read once.
    """
    n = row_count(x.shape[0], weights)

    def block(xb, yb, w):
        t = transform(yb) * w
        return xb.T @ (t[:, None] * (xb @ v)), jnp.sum(t)

    product, total = row_sum(block, (x, y), layout, weights)
    return product / n - (total / n) * v


def whitening(m2: jax.Array, num_experts: int) -> Whitening:
    """Whitening from the top-`num_experts` eigenpairs of a symmetric (d, d) M2 (section 3.2).

    M2 must already carry sign(c2), so its top eigenvalues are positive. An eigenvalue that is
    not (too few samples, or fewer experts in the data than asked for) is floored at a tiny
    positive value, which keeps the output finite; its direction is then noise.
    """
    eigvals, eigvecs = jnp.linalg.eigh(m2)
    return _whitening(eigvals[::-1][:num_experts], eigvecs[:, ::-1][:, :num_experts])


def _whitening(eigvals, eigvecs) -> Whitening:
    floor = jnp.finfo(eigvals.dtype).eps * jnp.maximum(jnp.max(jnp.abs(eigvals)), 1.0)
    eigvals = jnp.maximum(eigvals, floor)
    return Whitening(eigvecs * jax.lax.rsqrt(eigvals), eigvals, eigvecs)


def implicit_whitening(key: jax.Array, product: Callable[[jax.Array], jax.Array], dim: int,
                       num_experts: int, *, oversample: int = 5, num_iters: int = 4,
                       dtype=jnp.float32) -> Whitening:
    """Whitening from the top eigenpairs of M2 found without forming M2.

    Randomised subspace iteration (Halko, Martinsson and Tropp 2011, algorithms 4.4 and 5.3):
    Q spans M2^q Omega for a Gaussian (d, k + oversample) Omega, re-orthonormalised after each
    product, then Rayleigh-Ritz on Q^T M2 Q. `product(v)` must return M2 @ v (with sign(c2)).
    num_iters + 1 products, each n d (k + oversample) work; the error in the subspace shrinks like
    (lambda_{k+p+1} / lambda_k)^num_iters, and M2's eigenvalues past k are sampling noise.
    """
    omega = jax.random.normal(key, (dim, num_experts + oversample), dtype)
    q = jnp.linalg.qr(product(omega))[0]
    q = jax.lax.fori_loop(0, num_iters - 1, lambda _, q: jnp.linalg.qr(product(q))[0], q)
    small = q.T @ product(q)
    eigvals, eigvecs = jnp.linalg.eigh(0.5 * (small + small.T))
    eigvals, eigvecs = eigvals[::-1][:num_experts], eigvecs[:, ::-1][:, :num_experts]
    return _whitening(eigvals, q @ eigvecs)


def whitened_third_moment(x: jax.Array, y: jax.Array, wh: jax.Array,
                          transform: Callable = _identity,
                          layout: Layout = Layout(),
                          weights: jax.Array | None = None) -> jax.Array:
    """M3(Wh, Wh, Wh) = E[t S3(x)] contracted with Wh on every mode, t = transform(y): (k, k, k).

    Computed from the projections xw = x @ Wh, (rows, k) per block, never from a (d, d, d)
    tensor:

        T = (1/n) sum_n t_n xw_n (x) xw_n (x) xw_n - sym(m (x) B),
        m = (1/n) sum_n t_n xw_n,   B = Wh^T Wh,
        sym(m (x) B)_ijl = m_i B_jl + m_j B_il + m_l B_ij     (docs/algorithm.md section 3, step 3).
    """
    n = row_count(x.shape[0], weights)

    def block(xb, yb, w):
        xw = xb @ wh
        weighted = (transform(yb) * w)[:, None] * xw
        return jnp.einsum("ni,nj,nl->ijl", weighted, xw, xw), jnp.sum(weighted, axis=0)

    cube, m = row_sum(block, (x, y), layout, weights)
    cube, m = cube / n, m / n
    b = wh.T @ wh
    sym = (jnp.einsum("i,jl->ijl", m, b) + jnp.einsum("j,il->ijl", m, b)
           + jnp.einsum("l,ij->ijl", m, b))
    return cube - sym


def response_moments(y, layout: Layout = Layout(), weights=None):
    """(mean of y, mean of y^2) over the counted rows (weighted, with row weights), through
    `row_sum`."""
    total, first, second = row_sum(lambda yb, w: (jnp.sum(w), jnp.sum(w * yb),
                                                  jnp.sum(w * jnp.square(yb))),
                                   (y,), layout, weights)
    return first / total, second / total


def response_std(y, layout: Layout = Layout(), weights=None):
    """sd(y) over the counted rows (weighted, with row weights), through `row_sum`: the scale
    of `em_steps.NOISE_FLOOR` in both EMs."""
    mean, second = response_moments(y, layout, weights)
    return jnp.sqrt(jnp.maximum(second - jnp.square(mean), 0.0))


def initial_noise_std(y: jax.Array, nonlinearity: Nonlinearity = "linear") -> jax.Array:
    """A moment estimate of sigma: sqrt(mean(y^2) - E[g(Z)^2]), Z ~ N(0, 1).

    Consistent under the model's assumptions (unit-norm experts, x ~ N(0, I), gating independent
    of every a_i . x, so that each a_i . x given the expert is N(0, 1)). Its variance is large
    when sigma is small (sd of mean(y^2) / (2 sigma)), so `recover` uses it only as the start of
    the gating EM, which re-estimates sigma by maximum likelihood. Floored at 0.1 sd(y) for
    data that break the assumptions (negative estimate).

    Args:
      y: (n,) responses; nonlinearity: the experts' g.

    Returns:
      A scalar.

    Raises:
      ValueError: for malformed or non-finite y, or an unknown nonlinearity.

    >>> y = jnp.sqrt(1.0 + 0.5**2) * jax.random.normal(jax.random.key(0), (100_000,))
    >>> round(float(initial_noise_std(y)), 1)  # linear g: E[y^2] = 1 + sigma^2
    0.5
    """
    return _initial_noise_std(_validate.vector(y, "y"), nonlinearity)


# Compiled once per row bucket: eagerly, each of its few operations would compile per row
# count (and a streamed y's pass per wrapper).
@functools.partial(jax.jit, static_argnames=("nonlinearity", "layout"))
def _initial_noise_std(y, nonlinearity, weights=None, layout=Layout()):
    """`initial_noise_std` without input checks; with row weights, weighted means; one pass
    over y (`row_sum`, so a streamed y is read in blocks)."""
    mean, second = response_moments(y, layout, weights)
    floor = 0.01 * (second - jnp.square(mean))
    return jnp.sqrt(jnp.maximum(second - output_second_moment(nonlinearity), floor))
