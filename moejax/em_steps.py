"""The pieces of EM that the gating EM (`moejax.gating`) and the joint EM (`moejax.joint`) share
(docs/algorithm.md section 4, docs/solvers.md): the E-step, the gating's M-steps (Bohning's bound
and the capped Newton step) and the Gram solves they need. The scale's M-step is the family's
(`moejax.families`).

The gating M-step maximises sum_n sum_i q_ni log softmax(W x_n)_i, a weighted multinomial
logistic regression. Bohning's bound: the negative Hessian is bounded by
B = 1/2 (I - 1 1^T / k) (x) C over the k - 1 free rows, C = X^T X / n, so W <- W + B^(-1) grad is
a monotone ascent step for any data (no step size), and B^(-1) = 2 (I + 1 1^T) (x) C^(-1) costs
one Cholesky factor of C for the whole run. E-step and M-step together are a generalised EM: the
likelihood never decreases.
"""

import functools

import jax
import jax.numpy as jnp
import jax.scipy as jsp

from moejax.predictive import gate_logits
from moejax.sums import Layout, row_count, row_sum


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

    q_ni is proportional to p_ni p(y_n | expert i, x_n) = softmax(logits + log_dens)_i;
    log_dens: (k, n) (`predictive.expert_log_densities`).
    """
    return e_step_rows(list(gate_logits(gating, x, expert_major=True)), log_dens)


def e_step_rows(logits, log_dens):
    """`e_step` from the k logit rows (n,) each."""
    gate, log_z = _softmax_experts(logits)
    resp, log_joint = _softmax_experts([l + ld for l, ld in zip(logits, log_dens)])
    return gate, resp, log_joint - log_z


def bohning_step(gating: jax.Array, grad: jax.Array, solve) -> jax.Array:
    """W <- W + B^(-1) grad on the k - 1 free rows: the new gating (k, d).

    grad: (k - 1, d), (1/n) sum_n (q_ni - p_ni) x_n for i < k; solve: v (d, m) -> C^(-1) v
    for C = X^T X / n, or -> v / L for a scalar bound L >= lambda_max(C) (`gating_solver`).
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
                max_change: float, ridge=None) -> jax.Array:
    """W <- W + s on the k - 1 free rows, s = H^(-1) grad the Newton step on the gating part of
    EM's Q (docs/solvers.md), shortened so that the logits change by at most `max_change` in
    root mean square over the rows: sqrt(sum_i s_i^T C s_i) <= max_change, C = X^T X / n.

    grad: (k - 1, d) as in `bohning_step`; hess: (k - 1, d, k - 1, d) from `gate_hessian`,
    divided by n; gram: C (d, d); ridge: None, or (d,) a Gaussian prior's precision per
    column divided by n, already in grad (`moejax.prior`), added to H here. Where the
    Bohning bound B is far above H (sharp gates), the Bohning step is short and EM crawls;
    the Newton step is not, and the cap keeps it from overshooting where the quadratic model
    is poor.
    """
    m = grad.size
    h = hess.reshape(m, m)
    if ridge is not None:
        h = h + jnp.diag(jnp.tile(ridge, grad.shape[0]))
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


def gating_solver(x: jax.Array, layout: Layout, matrix_free: bool, num_iters: int = 30,
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


# Per-expert sigmas are kept at or above this fraction of sd(y): an expert that fits a few
# rows exactly would otherwise drive its sigma, and the likelihood, to infinity.
NOISE_FLOOR = 1e-3


def gram_matrix(x: jax.Array, layout: Layout = Layout(), weights=None) -> jax.Array:
    """C = X^T X / n: (d, d) (with row weights: sum_n w_n x_n x_n^T / sum_n w_n)."""
    return (row_sum(lambda xb, w: xb.T @ (w[:, None] * xb), (x,), layout, weights)
            / row_count(x.shape[0], weights))
