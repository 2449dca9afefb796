"""Errors up to the permutation of the experts (docs/algorithm.md section 6). Host-side NumPy/SciPy;
inputs may carry leading batch axes, broadcast against each other (one result per item)."""

import numpy as np

from moejax import _validate
from moejax.model import MoEParams


def _batched(fn, *arrays, names, core_ndim=2, what: str):
    # Matching is SciPy's Hungarian algorithm on concrete numbers: no tracing.
    _validate.host_side(what, *arrays, advice="call it on the results, outside the "
                        "transformation (vmapped estimates carry a batch axis it takes)")
    arrays = [np.asarray(_validate._as_float(a, name), np.float64)
              for a, name in zip(arrays, names)]
    core = arrays[0].shape[-core_ndim:]
    for a, name in zip(arrays, names):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contains NaN or infinite values (a diverged fit?); the "
                             "matching of experts needs finite numbers.")
        if a.ndim < core_ndim or a.shape[-core_ndim:] != core:
            raise ValueError(f"{name} must have shape (..., k, d) = (..., {core[0]}, {core[1]}) "
                             f"like {names[0]}, got {a.shape}.")
    try:
        batch = np.broadcast_shapes(*(a.shape[:-core_ndim] for a in arrays))
    except ValueError:
        raise ValueError(f"the leading (batch) axes of {', '.join(names)} do not broadcast: "
                         f"{[a.shape for a in arrays]}.") from None
    arrays = [np.broadcast_to(a, batch + a.shape[-core_ndim:]) for a in arrays]
    out = [fn(*(a[idx] for a in arrays)) for idx in np.ndindex(*batch)]
    return np.asarray(out).reshape(batch + np.shape(out[0]))


def _match(est, truth):
    # Squared distances: their sum is ||P A_hat - A||_F^2, so the assignment is the exact minimiser.
    # Imported here: scipy.optimize adds ~0.4 s to `import moejax`, which every CLI run pays.
    from scipy.optimize import linear_sum_assignment

    cost = np.sum(np.square(est[:, None, :] - truth[None, :, :]), axis=-1)
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty_like(cols)
    perm[cols] = rows
    return perm


def match_experts(est_experts, true_experts) -> np.ndarray:
    """The permutation perm with est_experts[perm] closest to true_experts.

    Minimises sum_i ||est_{perm_i} - true_i||^2 (Hungarian algorithm).

    Args:
      est_experts, true_experts: (..., k, d), leading axes broadcast, or MoEParams (their
        experts).

    Returns:
      (..., k) integer permutations.

    Raises:
      ValueError: for shapes that do not match or broadcast, or traced arguments (jax.jit,
        jax.vmap: the matching runs on the host; call it on the results).

    >>> match_experts(np.eye(3)[[2, 0, 1]], np.eye(3))
    array([1, 2, 0])
    """
    return _batched(_match, _experts(est_experts), _experts(true_experts),
                    names=("est_experts", "true_experts"), what="match_experts")


def _experts(a):
    """The experts of MoEParams, or `a` itself (an array of experts)."""
    return a.experts if isinstance(a, MoEParams) else a


def expert_error(est_experts, true_experts) -> np.ndarray:
    """min_P ||P A_hat - A||_F over permutations P, with P from `match_experts`.

    Args:
      est_experts, true_experts: (..., k, d), leading axes broadcast (e.g. a vmapped sweep's
        (seeds, k, d) against one truth), or MoEParams (their experts), as `gating_error`
        takes them.

    Returns:
      (...) errors, float64.

    Raises:
      ValueError: for shapes that do not match or broadcast, or traced arguments (jax.jit,
        jax.vmap: the matching runs on the host; call it on the results).

    >>> float(expert_error(np.eye(3)[[2, 0, 1]], np.eye(3)))  # the same experts, reordered
    0.0
    """
    def one(est, truth):
        return np.linalg.norm(est[_match(est, truth)] - truth)

    return _batched(one, _experts(est_experts), _experts(true_experts),
                    names=("est_experts", "true_experts"), what="expert_error")


def gating_error(est: MoEParams, truth: MoEParams) -> np.ndarray:
    """||(W_hat_i - W_hat_k) - (W_i - W_k)||_F with the experts' permutation applied.

    Rows are taken relative to the last expert's row, since the gating is identified only up
    to adding one vector to every row.

    Args:
      est, truth: MoEParams (leading batch axes broadcast).

    Returns:
      (...) errors, float64.

    Raises:
      ValueError: for arguments that are not MoEParams, shapes that do not match, or traced
        arguments (jax.jit, jax.vmap: the matching runs on the host).

    >>> import jax
    >>> from moejax.model import random_params
    >>> p = random_params(jax.random.key(0), 5, 3)
    >>> round(float(gating_error(p._replace(gating=p.gating + 1.0), p)), 5)  # a common shift
    0.0
    """
    def one(a_hat, w_hat, a, w):
        w_hat = w_hat[_match(a_hat, a)]
        return np.linalg.norm((w_hat - w_hat[-1]) - (w - w[-1]))

    for p, name in ((est, "est"), (truth, "truth")):
        if not isinstance(p, tuple) or len(p) not in (3, len(MoEParams._fields)):
            raise ValueError(f"{name} must be MoEParams, got {type(p).__name__}.")
    return _batched(one, est[0], est[1], truth[0], truth[1],
                    names=("est.experts", "est.gating", "truth.experts", "truth.gating"),
                    what="gating_error")
