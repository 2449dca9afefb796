"""The consistent estimator: moments -> whitening -> tensor decomposition -> un-whitening
-> gating EM (docs/algorithm.md sections 2-4)."""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from moejax import _validate, gating, moments, solver, sums, tensor
from moejax._renamed import accepts_old_names
from moejax.moments import _initial_noise_std
from moejax.nonlinearities import Nonlinearity, transform_constants
from moejax.params import MoEParams
from moejax.sums import Layout, layout_of
from moejax.tensor import PowerInfo


class ExpertEstimate(NamedTuple):
    """Output of the moment stage.

    Attributes:
      experts: (k, d) unit-norm expert directions.
      mixing_weights: (k,) pi_i = E[p_i(x)] implied by the moments; sums to about 1.
      norms: (k,) norms of the un-whitened estimates before normalisation; about 1 when the
        model holds (a diagnostic).
    """

    experts: jax.Array
    mixing_weights: jax.Array
    norms: jax.Array


class RecoverInfo(NamedTuple):
    """What `recover` did: the gating EM's run (the same fields as every solver's info) and the
    moment stage's diagnostics.

    Attributes:
      log_likelihood: mean log-likelihood at the returned parameters.
      num_iters: gating-EM iterations used (screening included).
      num_passes: the gating EM's passes over the data.
      converged: whether the gating EM met its stopping rule within `num_gating_iters`.
      finite: whether the gating EM produced finite numbers throughout.
      trace: (num_gating_iters,) L before each gating-EM iteration (see `GatingInfo.trace`).
      mixing_weights: (k,) pi_i implied by the moments (`ExpertEstimate`).
      norms: (k,) norms of the un-whitened expert estimates, about 1 when the model holds.
      power: how the tensor power method stopped for each expert (`PowerInfo`: (k,) fields).
    """

    log_likelihood: jax.Array
    num_iters: jax.Array
    num_passes: jax.Array
    converged: jax.Array
    finite: jax.Array
    trace: jax.Array
    mixing_weights: jax.Array
    norms: jax.Array
    power: PowerInfo


# The tensor power method's defaults: a cap of iterations per restart and its tolerance.
POWER_ITERS = 100
POWER_TOL = 1e-6


@functools.partial(jax.jit, static_argnames=("num_experts", "nonlinearity", "num_inits",
                                             "num_iters", "num_subspace_iters", "layout"))
def _recover_experts(key, x, y, noise_std, num_experts, nonlinearity, num_inits, num_iters,
                     tol, num_subspace_iters=None, layout=Layout(), weights=None):
    n, d = x.shape
    consts = transform_constants(nonlinearity, noise_std)
    t2, t3 = moments.t2_transform(consts), moments.t3_transform(consts)
    sign2 = jnp.sign(consts.c2)
    if num_subspace_iters is None:
        m2 = sign2 * moments.second_moment(x, y, t2, layout, weights)
        white = moments.whitening(m2, num_experts)
    else:
        product = lambda v: sign2 * moments.second_moment_product(x, y, v, t2, layout, weights)
        white = moments.implicit_whitening(jax.random.fold_in(key, 1), product, d, num_experts,
                                           num_iters=num_subspace_iters, dtype=x.dtype)
    t = jnp.sign(consts.c3) * moments.whitened_third_moment(x, y, white.matrix, t3, layout,
                                                            weights)
    lam, v, power = tensor.decompose(key, t, num_experts, num_inits=num_inits,
                                     num_iters=num_iters, tol=tol)
    c2, c3 = jnp.abs(consts.c2), jnp.abs(consts.c3)
    # pinv(Wh^T) = U diag(eigvals)^(1/2); a_i = lam_i |c2| / |c3| pinv(Wh^T) v_i (section 3.5).
    raw = (lam * c2 / c3)[:, None] * ((v * jnp.sqrt(white.eigvals)) @ white.eigvecs.T)
    norms = jnp.linalg.norm(raw, axis=1)
    pi = jnp.square(c3 / (lam * c2**1.5))
    return ExpertEstimate(raw / norms[:, None], pi, norms), power


def _bucketed(x, y, weights, layout: Layout):
    """NumPy rows padded with weight-0 rows to their row bucket (`sums.bucket_size`), so that a
    new row count in a bucket already compiled compiles nothing; the weights make the padding
    exact. Arrays on a device, tracers, streams and sharded data are returned as they are."""
    host = (x, y) + (() if weights is None else (weights,))
    if layout.mesh is not None or not all(isinstance(a, np.ndarray) for a in host):
        return x, y, weights
    *padded, pad = sums.pad_rows(sums.bucket_size(x.shape[0]), *host)
    return padded[0], padded[1], pad if weights is None else padded[2]


def _prepared(x, y, num_experts, nonlinearity, noise_std, chunk_size, weights, *, power):
    """The boundary of an estimator that reads rows only through `row_sum` (`recover`,
    `recover_by_descent`): checked inputs (`power`: the highest power of the data it sums),
    the layout, the rows padded to their bucket, and sigma (the given one, or the moment
    estimate when None). Returns (x, y, weights, sigma, layout, given), given the rows as
    passed (for the diagnosis of a failure)."""
    learn = noise_std is None
    x, y, noise_std = _validate.fit_inputs(x, y, num_experts, nonlinearity, noise_std,
                                           streams=True, power=power)
    weights = _validate.row_weights(weights, x.shape[0])
    if weights is not None:
        weights = weights.astype(x.dtype)
    layout = layout_of(x, chunk_size)
    given = x, y
    x, y, weights = _bucketed(x, y, weights, layout)
    if learn:
        noise_std = _initial_noise_std(y, nonlinearity, weights, layout)
    _validate.noise_scale(noise_std, x.dtype, estimated=learn)
    return x, y, weights, noise_std, layout, given


def _check_subspace_iters(num_subspace_iters):
    if num_subspace_iters is not None and (isinstance(num_subspace_iters, bool)
                                           or not isinstance(num_subspace_iters, int)
                                           or num_subspace_iters < 1):
        raise ValueError(f"num_subspace_iters must be a positive integer or None, got "
                         f"{num_subspace_iters!r}.")


@accepts_old_names("num_restarts", "subspace_iters")
def recover_experts(key: jax.Array, x: jax.Array, y: jax.Array, *, num_experts: int,
                    nonlinearity: Nonlinearity = "linear", noise_std, num_power_inits: int = 10,
                    num_power_iters: int = POWER_ITERS, power_tol: float = POWER_TOL,
                    num_subspace_iters: int | None = None, chunk_size: int | None = None,
                    weights=None) -> tuple[ExpertEstimate, PowerInfo]:
    """The moment stage alone: experts and mixing weights from E[T2(y) S2(x)], E[T3(y) S3(x)].

    x: (n, d) with x ~ N(0, I_d); y: (n,). Never forms a (d, d, d) tensor: the third moment is
    taken on the whitened projection x @ Wh. With num_subspace_iters=None, M2 is formed (n d^2
    work) and fully eigendecomposed; with an integer q, its top-k eigenspace comes from q + 1
    implicit products M2 @ V (randomised subspace iteration, n d (k + 5) work each), M2 never
    formed: the choice for large d.

    Args:
      key: PRNG key of the tensor power method's random starts (and the subspace iteration).
      x: (n, d) inputs with x ~ N(0, I_d); y: (n,) responses.
      num_experts: k in [2, d]; nonlinearity: the experts' g.
      noise_std: sigma > 0, the one noise level the label transforms assume.
      num_power_inits, num_power_iters, power_tol: the tensor power method's random starts per
        expert, its cap on steps per run, and its tolerance: a run stops when a step moves the
        unit component by at most power_tol.
      num_subspace_iters: None, or q for the matrix-free whitening (see above).
      chunk_size: rows per block of every sum (see `recover`); sharded inputs as there.
      weights: None, or (n,) row weights >= 0: every mean over rows becomes a weighted one
        (`fit` pads tables to a bucketed row count with weight-0 rows, so that one program
        serves them all).

    Returns:
      (estimate, info): ExpertEstimate(experts (k, d) unit-norm, mixing_weights (k,),
      norms (k,)), and PowerInfo(num_iters, converged, finite), each (k,): how the power method
      stopped for each expert.

    Raises:
      ValueError: as `recover`, and for weights of the wrong shape, negative, or summing to 0.

    >>> from moejax.model import random_params, sample
    >>> from moejax.metrics import expert_error
    >>> truth = random_params(jax.random.key(0), dim=6, num_experts=2, noise_std=0.1)
    >>> x, y = sample(jax.random.key(1), truth, 100_000)
    >>> est, info = recover_experts(jax.random.key(2), x, y, num_experts=2, noise_std=0.1)
    >>> bool(expert_error(est.experts, truth.experts) < 0.1), info.converged.tolist()
    (True, [True, True])
    """
    x, y, noise_std = _validate.fit_inputs(x, y, num_experts, nonlinearity, noise_std,
                                           streams=True, power=3)
    _validate.noise_scale(noise_std, x.dtype)
    _check_subspace_iters(num_subspace_iters)
    num_power_inits = _validate.count(num_power_inits, "num_power_inits")
    num_power_iters = _validate.count(num_power_iters, "num_power_iters")
    _validate.positive(power_tol, "power_tol")
    weights = _validate.row_weights(weights, x.shape[0])
    layout = layout_of(x, chunk_size)
    x, y, weights = _bucketed(x, y, weights, layout)
    return _recover_experts(key, x, y, noise_std, num_experts, nonlinearity, num_power_inits,
                            num_power_iters, power_tol, num_subspace_iters, layout,
                            None if weights is None else weights.astype(x.dtype))


@accepts_old_names("num_restarts", "num_em_iters", "em_tol", "subspace_iters")
def recover(key: jax.Array, x: jax.Array, y: jax.Array, *, num_experts: int,
            nonlinearity: Nonlinearity = "linear", noise_std=None, num_power_inits: int = 10,
            num_power_iters: int = POWER_ITERS, power_tol: float = POWER_TOL,
            num_gating_inits: int = 1, num_gating_iters: int = 50, gating_tol: float = 1e-6,
            num_subspace_iters: int | None = None, chunk_size: int | None = None,
            weights=None) -> tuple[MoEParams, RecoverInfo]:
    """Consistent estimate of all MoE parameters from samples (docs/algorithm.md sections 2-4).

    1. Experts from the cross-moments of Stein score functions and transformed labels,
       whitening by the top-k eigenspace of M2 and the tensor power method with deflation
       (`recover_experts`).
    2. Gating by accelerated EM with the experts fixed, from `num_gating_inits` random starts
       screened together, the best run until the likelihood settles (`moejax.fit_gating`).

    Works eagerly, under `jax.jit` (all integer arguments and `nonlinearity` static;
    `noise_std` may be traced) and under `jax.vmap` over keys and/or datasets. Input values are
    checked only when concrete.

    Args:
      key: PRNG key.
      x: (n, d) inputs, x ~ N(0, I_d); integer arrays are cast to float.
      y: (n,) responses.
      num_experts: k, with 2 <= k <= d.
      nonlinearity: a name in `moejax.NONLINEARITIES` or an elementwise JAX callable.
      noise_std: sigma > 0, the known noise level, or None to estimate it: the moment stage
        uses `initial_noise_std(y, nonlinearity)`, and the gating EM then updates sigma with
        its maximum-likelihood M-step (`fit_gating(..., learn_noise_std=True)`).
      num_power_inits, num_power_iters, power_tol: tensor power method settings
        (`recover_experts`).
      num_gating_inits, num_gating_iters, gating_tol: gating EM settings: starts, cap on
        iterations, and the tolerance on the likelihood's relative rise per iteration
        (`fit_gating`).
      num_subspace_iters: None forms M2 and X^T X (d x d, n d^2 work each). An integer q
        switches to the matrix-free mode for large d: M2's top-k eigenspace from q + 1 implicit
        products (`recover_experts`), and the gating M-step with a scalar bound
        (`fit_gating(..., matrix_free=True)`); n d k work per pass.
      chunk_size: None sums over all rows at once; an integer sums over blocks of that many
        rows (a `lax.scan`), so temporaries do not grow with n. Same result to float rounding.
      weights: None, or (n,) row weights >= 0: every mean over rows becomes a weighted one
        (weight-0 rows are ignored: padding, e.g. to give every process the same row count).

    Data parallelism: if x is a `jax.Array` sharded along its rows over a mesh axis
    (`jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))`), every sum over samples
    runs per device inside `shard_map` and is reduced with `psum`; the small linear algebra is
    replicated. n must be a multiple of the number of devices on that axis.

    Returns:
      (params, info): MoEParams with unit-norm experts (k, d), gating (k, d) with last row 0,
      noise_std and the nonlinearity; RecoverInfo.

    Raises:
      ValueError: for malformed or non-finite inputs, k outside [2, d], n <= d, noise_std <= 0,
        an unknown nonlinearity, or one the moments cannot see; constant y; data or sigma at
        a scale whose powers the float type cannot hold.

    >>> from moejax.model import random_params, sample
    >>> from moejax.metrics import expert_error
    >>> truth = random_params(jax.random.key(0), dim=6, num_experts=2, noise_std=0.1)
    >>> x, y = sample(jax.random.key(1), truth, 100_000)
    >>> est, info = recover(jax.random.key(2), x, y, num_experts=2, noise_std=0.1)
    >>> bool(expert_error(est.experts, truth.experts) < 0.1), bool(info.converged)
    (True, True)
    """
    learn = noise_std is None
    x, y, weights, noise_std, layout, given = _prepared(
        x, y, num_experts, nonlinearity, noise_std, chunk_size, weights, power=3)
    _check_subspace_iters(num_subspace_iters)
    num_power_inits = _validate.count(num_power_inits, "num_power_inits")
    num_power_iters = _validate.count(num_power_iters, "num_power_iters")
    num_gating_inits = _validate.count(num_gating_inits, "num_gating_inits")
    num_gating_iters = _validate.count(num_gating_iters, "num_gating_iters")
    _validate.positive(power_tol, "power_tol")
    _validate.positive(gating_tol, "gating_tol")
    key_tensor, key_gating = jax.random.split(key)
    est, power = _recover_experts(key_tensor, x, y, noise_std, num_experts, nonlinearity,
                                  num_power_inits, num_power_iters, power_tol,
                                  num_subspace_iters, layout, weights)
    _validate.finite_result(jnp.all(jnp.isfinite(est.experts)), *given,
                            what="the moment stage", nonlinearity=nonlinearity)
    w, info = gating._fit_gating(key_gating, x, y, est.experts, noise_std,
                                 nonlinearity=nonlinearity, num_inits=num_gating_inits,
                                 num_iters=num_gating_iters, init_scale=gating.INIT_SCALE,
                                 learn_noise_std=learn, layout=layout,
                                 matrix_free=num_subspace_iters is not None, tol=gating_tol,
                                 weights=weights)
    _validate.finite_result(info.finite, *given, noise_std=None if learn else noise_std,
                            what="recover", nonlinearity=nonlinearity)
    return (MoEParams(est.experts, w, info.noise_std, nonlinearity),
            solver.make_info(RecoverInfo, info, mixing_weights=est.mixing_weights,
                             norms=est.norms, power=power))
