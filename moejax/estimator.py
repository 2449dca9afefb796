"""Fitting an MoE to real data: standardise, moment start, gating EM, joint-EM refinement with
per-expert intercepts; a fitted model that predicts in original units."""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from moejax import _validate, gating, model, preprocessing, solver, sums
from moejax.baselines import _joint_em_map, random_init
from moejax.model import MoEParams
from moejax.nonlinearities import nonlinearity_names
from moejax.preprocessing import Standardizer
from moejax.recover import _initial_noise_std, recover_experts


class FitReport(NamedTuple):
    """How `fit` got its parameters: every start refined by joint EM, the best kept.

    Attributes:
      best: index of the kept start (0 is the moment start, 1.. the random ones).
      log_likelihood: (num_starts,) final training mean log-likelihood of every start, on
        the standardised scale.
      num_iters: (num_starts,) refinement iterations each start used.
      converged: (num_starts,) whether each met the stopping rule within the cap.
      num_passes: passes over the data of the refinement, all starts together.
      continued: (num_starts,) whether each start went on after the screening iterations
        (the others report their state then).
    """

    best: jax.Array
    log_likelihood: jax.Array
    num_iters: jax.Array
    converged: jax.Array
    num_passes: jax.Array
    continued: jax.Array


@dataclasses.dataclass(frozen=True)
class FittedMoE:
    """A fitted MoE with its preprocessing; a pytree (data: params, standardizer).

    The model acts on z = [standardize(x), 1]: params.experts and params.gating are (k, d + 1),
    their last column the intercepts, and params.noise_std (a scalar, or (k,) with one sigma per
    expert) is in standardised target units.

    Attributes:
      params: MoEParams on the standardised scale; params.nonlinearity is the experts' g
        (also `FittedMoE.nonlinearity`), a name.
      standardizer: the feature and target transform.
      feature_names: optional names of the d input columns (checked on prediction by the CLI).
      target_name: optional name of the target column.
      report: how `fit` chose the parameters (None for a loaded model).
      selection: with `fit(num_experts="auto")`, the scores of every k
        (`moejax.selection.KSelection`); else None.
    """

    params: MoEParams
    standardizer: Standardizer
    feature_names: tuple[str, ...] | None = None
    target_name: str | None = None
    report: FitReport | None = None
    selection: object = None

    @property
    def nonlinearity(self):
        """The experts' g (params.nonlinearity)."""
        return self.params.nonlinearity

    @property
    def num_experts(self) -> int:
        return self.params.experts.shape[0]

    @property
    def dim(self) -> int:
        """d, the number of input features (without the intercept)."""
        return self.params.experts.shape[1] - 1

    @property
    def noise_std(self) -> jax.Array:
        """sigma in the target's original units: a scalar, or (k,) with one per expert."""
        return self.params.noise_std * self.standardizer.y_scale

    def design(self, x) -> jax.Array:
        """[standardize(x), 1]: (n, d + 1), the model's input, for x: (n, d) in the data's
        units. Raises ValueError for x that is not a finite (n, d) array."""
        x = _validate.features(x, dim=self.dim)
        return design_matrix(self.standardizer, x)

    def predict(self, x) -> jax.Array:
        """E[y | x] = sum_i softmax(W z)_i g(a_i . z) in the target's units, z = design(x).

        Args:
          x: (n, d) features in the units the model was fitted on.

        Returns:
          (n,) predictions.

        Raises:
          ValueError: for x that is not a finite (n, d) array.
        """
        x = _validate.features(x, dim=self.dim)
        return _predict(self.params, self.standardizer, x)

    def log_likelihood(self, x, y) -> jax.Array:
        """Mean log-density of y given x, (1/n) sum_n log p(y_n | x_n), in the target's
        units (a density per unit of y, so comparable across models of the same target).

        Args:
          x: (n, d) features; y: (n,) targets.

        Returns:
          A scalar.

        Raises:
          ValueError: for malformed or non-finite x or y, or shapes that do not match.
        """
        x, y = _validate.data(x, y, dim=self.dim)
        return _log_likelihood(self.params, self.standardizer, x, y)

    def mixing_weights(self, x) -> jax.Array:
        """Mean gate probabilities (1/n) sum_n softmax(W z_n): (k,), for x: (n, d)."""
        return jnp.mean(jax.nn.softmax(self.design(x) @ self.params.gating.T, axis=-1), axis=0)


jax.tree_util.register_dataclass(
    FittedMoE, data_fields=["params", "standardizer", "report", "selection"],
    meta_fields=["feature_names", "target_name"])


def design_matrix(standardizer: Standardizer, x: jax.Array) -> jax.Array:
    """[standardize(x), 1]: (n, d + 1)."""
    xs = preprocessing._transform_features(standardizer, x)
    return jnp.concatenate([xs, jnp.ones_like(xs[:, :1])], axis=1)


@functools.partial(jax.jit, static_argnames=("rows", "nonlinearity"))
def _prepare(std, x, y, rows, nonlinearity):
    """fit's inputs in one program per table shape: standardised x and y, the design matrix
    [x_std, 1], all padded to `rows` rows, the row weights, sigma's moment estimate, and
    max(|x_std| sqrt(d), |y_std|) for the overflow check."""
    xs = preprocessing._transform_features(std, x)
    ys = preprocessing._transform_target(std, y)
    sigma0 = _initial_noise_std(ys, nonlinearity)
    top = jnp.maximum(jnp.max(jnp.abs(xs)) * jnp.sqrt(xs.shape[1]), jnp.max(jnp.abs(ys)))
    xs, ys, z, weights = sums.pad_rows(rows, xs, ys, design_matrix(std, x))
    return xs, ys, z, weights, sigma0, top


# One compiled program per table shape for each method (rather than one per operation).
@jax.jit
def _predict(params, standardizer, x):
    pred = model._predict(params, design_matrix(standardizer, x))
    return preprocessing.inverse_target(standardizer, pred)


@jax.jit
def _log_likelihood(params, standardizer, x, y):
    y_std = preprocessing._transform_target(standardizer, y)
    return (model._mean_log_likelihood(params, design_matrix(standardizer, x), y_std)
            - jnp.log(standardizer.y_scale))


# Screening of the refinement's starts: all run this many iterations together, then the best
# few go on to convergence (docs/solvers.md has the measurement behind both numbers).
REFINE_SCREEN_ITERS = 50
REFINE_KEEP = 4
# Up to this many free gating parameters ((k - 1) (d + 1)) the refinement's gating M-step is a
# capped Newton step (its Hessian costs (k - 1)^2 (d + 1)^2 per row), above it the Bohning step.
NEWTON_GATING_MAX_PARAMS = 128


@functools.partial(jax.jit, static_argnames=("num_iters", "learn", "layout"))
def _refine_starts(starts: MoEParams, z, y, num_iters, tol, learn, weights=None,
                   layout=sums.Layout()):
    """Joint EM from m starts (leading axis) in one vmap, screened; the best by likelihood."""
    newton = (starts.gating.shape[1] - 1) * starts.gating.shape[2] <= NEWTON_GATING_MAX_PARAMS
    em_map = jax.vmap(_joint_em_map(z, y, starts.nonlinearity, learn, weights, layout, newton))
    theta = (starts.experts, starts.gating, jnp.log(starts.noise_std))
    (experts, gatings, log_sigma), kept, info = solver.iterate_screened(
        em_map, theta, tol=tol, max_iters=num_iters, screen_iters=REFINE_SCREEN_ITERS,
        keep=REFINE_KEEP)
    top = solver.first_best(jnp.where(info.finite[kept], info.log_likelihood[kept], -jnp.inf))
    params = MoEParams(experts[top], gatings[top], jnp.exp(log_sigma[top]), starts.nonlinearity)
    continued = jnp.zeros(info.num_iters.shape, bool).at[kept].set(True)
    report = FitReport(kept[top], info.log_likelihood, info.num_iters, info.converged,
                       info.num_passes, continued)
    return params, report, info.finite[kept[top]]


def fit(key: jax.Array, x, y, *, num_experts: int | str, nonlinearity: str = "linear",
        noise_std=None, whiten: bool = True, refine_iters: int = 3000, tol: float = 1e-8,
        num_random_starts: int = 16, num_restarts: int = 10, num_gating_inits: int = 1,
        num_em_iters: int = 50, per_expert_noise: bool = True, feature_names=None,
        target_name=None, max_experts: int = 4, select_by: str = "bic",
        chunk_size: int | None = None, progress=None) -> FittedMoE:
    """Fits an MoE to data that need not satisfy the method's assumptions.

    1. Standardise: whiten x (or only standardise, whiten=False), centre and scale y.
    2. Unit-norm experts from the moment method on the standardised data (`recover_experts`).
       (Their un-whitened norms are not used: where the model is wrong, as on real data, a
       small tensor eigenvalue makes them blow up.)
    3. Gating by EM with the experts fixed (`fit_gating`): the moment start.
    4. Joint-EM refinement on [x_std, 1], which also estimates an intercept per expert and
       per gate, from the moment start and from `num_random_starts` random starts
       (`random_init`), all in one vmap: every start runs `REFINE_SCREEN_ITERS` iterations,
       then the `REFINE_KEEP` with the highest likelihood run on until it rises by at most
       tol * (1 + |L|) per iteration, or for `refine_iters` iterations in all (0 skips
       step 4). The gating's M-step is a capped Newton step when the gating has at most
       `NEWTON_GATING_MAX_PARAMS` free parameters, else the Bohning step (docs/solvers.md:
       on sharp gates the Newton step converges in far fewer iterations, and to the optimum
       rather than short of it). The start with the highest training likelihood is kept;
       `FittedMoE.report` says which start won and whether the runs converged. On a table
       of a thousand rows the extra starts cost a fraction of a second and guard against a
       poor local optimum.

    noise_std: sigma in the target's units (fixed; a scalar, or one per expert), or None to
    estimate it: started at the moment estimate `initial_noise_std` and updated by the
    maximum-likelihood M-step in the gating EM and in every refinement iteration. With
    `per_expert_noise` (the default) the refinement learns one sigma per expert, as mixtures of
    regressions on real data need (docs/results.md measures it); else one shared sigma.

    num_experts="auto" fits k = 1, ..., max_experts (at most d; k = 1 is least squares) and
    returns the one with the smallest BIC (`select_by="bic"`, one fit per k), or the one chosen
    by 5-fold cross-validated log-likelihood with the one-standard-error rule
    (`select_by="cv"`, six fits per k); `FittedMoE.selection` holds every k's scores and the
    M2 spectrum (`moejax.selection.select_num_experts` computes both criteria).

    Compiled once per bucket of row counts: the data are padded with weight-0 rows to
    `sums.bucket_size(n)` rows (at most 25% more), so that tables of the same width whose row
    counts share a bucket reuse one compiled program; the weights make the padding exact.

    Args:
      key: PRNG key (the moment stage, the gating EM's and the random starts).
      x: (n, d) features in any units; y: (n,) target.
      num_experts: k in [2, d], or "auto".
      nonlinearity: the experts' g, a name in `moejax.nonlinearity_names()` (so that the
        model can be saved).
      noise_std, per_expert_noise: as above.
      whiten: whiten x (True) or only standardise its columns.
      refine_iters, tol, num_random_starts: the refinement's cap, tolerance and extra starts.
      num_restarts, num_gating_inits, num_em_iters: the moment stage's and gating EM's.
      feature_names, target_name: optional names, kept with the model.
      max_experts, select_by: for num_experts="auto".
      chunk_size: None, or rows per block of every pass over the data (the moment stage, the
        gating EM and the refinement), so that temporaries do not grow with n.
      progress: if given, called with a short message as each stage starts (the command
        line prints them).

    Returns:
      A FittedMoE that predicts in original units.

    Raises:
      ValueError: for malformed, non-finite or constant data, constant or collinear
        feature columns (with whiten), k outside [2, d], n <= d, an unknown non-linearity
        or setting, or a refinement that produced non-finite numbers (named cause).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(500, 3))
    >>> y = np.where(x[:, 0] > 0, 2 * x[:, 1], -x[:, 2]) + 0.1 * rng.normal(size=500)
    >>> model = fit(jax.random.key(0), x, y, num_experts=2, refine_iters=200)
    >>> model.predict(x[:5]).shape, model.noise_std.shape
    ((5,), (2,))
    """
    progress = progress or (lambda message: None)
    if not isinstance(nonlinearity, str) or nonlinearity not in nonlinearity_names():
        raise ValueError(f"nonlinearity must be one of {nonlinearity_names()} (a name, so that "
                         "the model can be saved; moejax.register_nonlinearity adds one), got "
                         f"{nonlinearity!r}.")
    if isinstance(num_experts, str):
        if num_experts != "auto":
            raise ValueError(f"num_experts must be an integer or 'auto', got {num_experts!r}.")
        from moejax import selection
        x, y = _validate.data(x, y)
        max_experts = min(_validate.count(max_experts, "max_experts"), x.shape[1])
        if select_by not in ("bic", "cv"):
            raise ValueError(f"select_by must be 'bic' or 'cv', got {select_by!r}.")
        folds = 5 if select_by == "cv" else 0
        progress(f"choosing k in 1..{max_experts} by "
                 + ("5-fold cross-validation" if folds else "BIC"))
        settings = dict(noise_std=noise_std, whiten=whiten, refine_iters=refine_iters, tol=tol,
                        num_random_starts=num_random_starts, num_restarts=num_restarts,
                        num_gating_inits=num_gating_inits, num_em_iters=num_em_iters,
                        per_expert_noise=per_expert_noise, chunk_size=chunk_size)
        scores, models = selection._select(
            key, x, y, max_experts, nonlinearity, folds, settings,
            names=dict(feature_names=feature_names, target_name=target_name))
        best = scores.best_cv if folds else scores.best_bic
        return dataclasses.replace(models[best], selection=scores)
    learn = noise_std is None
    x, y, _ = _validate.fit_inputs(x, y, num_experts, nonlinearity, 1.0)
    if not learn:
        noise_std = _validate.noise_levels(noise_std, num_experts).astype(x.dtype)
    per_expert_noise = _validate.flag(per_expert_noise, "per_expert_noise")
    _validate.scales(x, y, power=2)
    refine_iters = _validate.count(refine_iters, "refine_iters", minimum=0)
    num_random_starts = _validate.count(num_random_starts, "num_random_starts", minimum=0)
    _validate.positive(tol, "tol")
    whiten = _validate.flag(whiten, "whiten")
    if feature_names is not None:
        if isinstance(feature_names, (str, bytes)):
            raise ValueError(f"feature_names must be a sequence of d = {x.shape[1]} names, got "
                             f"the single string {feature_names!r}.")
        feature_names = tuple(str(v) for v in feature_names)
        if len(feature_names) != x.shape[1]:
            raise ValueError(f"feature_names must name the d = {x.shape[1]} columns of x, got "
                             f"{len(feature_names)} names.")
    progress(f"standardising {x.shape[0]} rows x {x.shape[1]} features")
    std = preprocessing.fit_standardizer(x, y, whiten=whiten)
    rows = sums.bucket_size(x.shape[0])
    xs, ys, z, weights, sigma0, top = _prepare(std, x, y, rows, nonlinearity)
    if float(top) > _validate.scale_limit(x.shape[0], xs.dtype, power=3):
        _validate.scales(xs[:x.shape[0]], ys[:x.shape[0]], power=3)  # raises, naming x or y
    sigma = sigma0 if learn else noise_std / std.y_scale
    _validate.noise_scale(sigma, xs.dtype, estimated=learn)

    key_tensor, key_gating, key_starts = jax.random.split(key, 3)
    progress(f"moment stage: {num_experts} experts")
    # The moment stage's transforms assume one sigma: given one per expert, it uses their rms.
    est = recover_experts(key_tensor, xs, ys, num_experts=num_experts, nonlinearity=nonlinearity,
                          noise_std=jnp.sqrt(jnp.mean(jnp.square(sigma))),
                          num_restarts=num_restarts, weights=weights, chunk_size=chunk_size)
    experts = est.experts
    progress(f"gating EM: {num_gating_inits} starts, at most {num_em_iters} iterations")
    w, info = gating.fit_gating(key_gating, xs, ys, experts, noise_std=sigma,
                                nonlinearity=nonlinearity, num_inits=num_gating_inits,
                                num_iters=num_em_iters, learn_noise_std=learn, weights=weights,
                                chunk_size=chunk_size)
    pad = jnp.zeros((num_experts, 1), xs.dtype)
    sigma = info.noise_std
    if learn and per_expert_noise:
        sigma = jnp.broadcast_to(sigma, (num_experts,))
    params = MoEParams(jnp.concatenate([experts, pad], 1), jnp.concatenate([w, pad], 1), sigma,
                       nonlinearity)
    report = None
    if refine_iters:
        progress(f"joint-EM refinement: the moment start and {num_random_starts} random "
                 f"starts, at most {refine_iters} iterations each")
        randoms = jax.vmap(lambda k: random_init(k, z.shape[1], num_experts, sigma, z.dtype,
                                                 nonlinearity=nonlinearity))(
            jax.random.split(key_starts, num_random_starts))
        starts = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), params,
                                        randoms)
        params, report, finite = _refine_starts(starts, z, ys, refine_iters,
                                                jnp.asarray(tol, z.dtype), learn, weights,
                                                sums.layout_of(z, chunk_size))
        _validate.finite_result(finite, z, ys, what="fit's refinement")
    return FittedMoE(params, std, feature_names,
                     None if target_name is None else str(target_name), report)
