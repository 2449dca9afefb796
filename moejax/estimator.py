"""`fit`: an MoE fitted to real data (standardise, moment start, gating EM, the screened
joint-EM refinement with per-expert intercepts) as a `FittedMoE`; `select_num_experts`."""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from moejax import _validate, compilation, gating, inference, preprocessing, program_cache
from moejax import refinement, selection
from moejax import prior as prior_lib
from moejax import sums
from moejax.baselines import random_init
from moejax.config import FitConfig
from moejax.families import get_family
from moejax.fitted import FittedMoE, _log_likelihood, _on_rows, design_matrix
from moejax.inference import Inference
from moejax.moments import _initial_noise_std
from moejax.nonlinearities import get_nonlinearity
from moejax.params import MoEParams
from moejax.preprocessing import Columns, Standardizer
from moejax._renamed import FIT_RENAMED, accepts_old_names
from moejax.recover import POWER_ITERS, POWER_TOL, _recover_experts
from moejax.selection import (MIN_ROWS_PER_EXPERT_PARAMETER, ROWS_PER_PARAMETER, KSelection,
                              check_rows, num_free_params, row_groups, supported_experts)


@accepts_old_names(*FIT_RENAMED, renamed=FIT_RENAMED)
def fit(key: jax.Array, x, y, config: FitConfig | None = None, *, feature_names=None,
        target_name=None, expert_columns=None, gate_columns=None, progress=None,
        **settings) -> FittedMoE:
    """Fits an MoE to data that need not satisfy the method's assumptions.

    1. Standardise: whiten x (or only standardise, whiten=False), centre and scale y.
    2. Unit-norm experts from the moment method on the standardised data (`recover_experts`).
       (Their un-whitened norms are not used: where the model is wrong, as on real data, a
       small tensor eigenvalue makes them blow up.)
    3. Gating by EM with the experts fixed (`fit_gating`): the moment start.
    4. Joint-EM refinement on [x_std, 1], which also estimates an intercept per expert and
       per gate, from the moment start and from `num_refine_inits` random starts
       (`random_init`), all in one vmap: every start runs `REFINE_SCREEN_ITERS` iterations,
       then the `REFINE_KEEP` with the highest likelihood run on until it rises by at most
       refine_tol * (1 + |L|) per iteration, or for `num_refine_iters` iterations in all (0 skips
       step 4). The gating's M-step is a capped Newton step when the gating has at most
       `NEWTON_GATING_MAX_PARAMS` free parameters, else the Bohning step (docs/solvers.md:
       on sharp gates the Newton step converges in far fewer iterations, and to the optimum
       rather than short of it). The start with the highest training likelihood is kept;
       `FittedMoE.report` says which start won and whether the runs converged. On a table
       of a thousand rows the extra starts cost a fraction of a second and guard against a
       poor local optimum.

    noise_std (a setting): sigma in the target's units (fixed), or None to estimate it:
    started at the moment estimate `initial_noise_std` and updated by the maximum-likelihood
    M-step in the gating EM and in every refinement iteration. With `per_expert_noise` (the
    default) the refinement learns one sigma per expert, as mixtures of regressions on real
    data need (docs/results.md measures it); else one shared sigma.

    prior: by default `fit` is regularised: it maximises the log-likelihood plus the log of a
    weak prior (`moejax.Prior`: a N(0, 2.5^2) prior on every gate slope per sd of the input,
    a scaled inverse-chi^2 prior on each sigma^2 worth 5 rows at variance 0.6 var(y) / k^2),
    a MAP estimate
    (docs/algorithm.md section 9), so that no sigma collapses onto a few rows and no gate
    saturates on separable rows; its EM steps stay monotone in the penalised objective, and
    the prior's weight fades as n grows. `prior=None` is plain maximum likelihood (the
    paper's estimator). With the prior, an expert that ends with fewer than 2 posterior rows
    per parameter (2 (d + 2), `MIN_ROWS_PER_EXPERT_PARAMETER`) is dropped, with a warning,
    and k - 1 experts are fitted instead.

    k may exceed d: the moment start needs k <= d, so beyond it every start is random (the
    refinement is then required, and `FittedMoE.moment_start` is False).

    num_experts="auto" fits k = 1, ..., max_experts (k = 1 is least squares) and
    returns the one with the smallest BIC (`select_by="bic"`, one fit per k), or the one chosen
    by 5-fold cross-validated log-likelihood with the one-standard-error rule
    (`select_by="cv"`, six fits per k); `FittedMoE.selection` holds every k's scores and the
    M2 spectrum (`moejax.selection.select_num_experts` computes both criteria).

    Compiled once per bucket of row counts: the checks and the standardisation run on the
    host, and the data are padded with weight-0 rows to `sums.bucket_size(n)` rows (at most
    50% more), so that tables of the same width whose row counts share a bucket reuse one
    compiled program for steps 2-4 (docs/scale.md); the weights make the padding exact.

    Args:
      key: PRNG key (the moment stage, the gating EM's and the random starts).
      x: (n, d) features in any units; y: (n,) target.
      config: a `moejax.FitConfig`, or None for its defaults.
      feature_names, target_name: optional names, kept with the model; by default a
        DataFrame x's columns and a Series y's name.
      expert_columns: None (every column of x), or the columns of x the experts regress on:
        names (with feature_names or a DataFrame) or integer positions.
      gate_columns: None (the gate reads the experts' columns), or the gate's own columns
        (concomitant variables, flexmix's `FLXPmultinom(~ v)`), named or positioned as
        expert_columns; overlapping the experts' or not; [] for a gate of intercepts only
        (constant mixing weights: a plain mixture of regressions). Standardised on their
        own; a fit whose gate has its own columns has no moment start (docs/algorithm.md
        section 1, "The gate's design").
      **settings: `FitConfig`'s fields (num_experts, nonlinearity, noise_std, prior, ...),
        in place of config's; num_experts is required without a config.
      progress: if given, called with a short message as each stage starts (the command
        line prints them).

    Returns:
      A FittedMoE that predicts in original units.

    Raises:
      ValueError: for malformed, non-finite or constant data, constant or collinear
        feature columns (with whiten), k < 1, n <= d, more free parameters than
        rows, an unknown non-linearity or a bad setting value (or prior), or a refinement that
        produced non-finite numbers (named cause).
      TypeError: for a keyword that is not a setting, or no num_experts.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(500, 3))
    >>> y = np.where(x[:, 0] > 0, 2 * x[:, 1], -x[:, 2]) + 0.1 * rng.normal(size=500)
    >>> model = fit(jax.random.key(0), x, y, num_experts=2, num_refine_iters=200)
    >>> model.predict(x[:5]).shape, model.noise_std.shape
    ((5,), (2,))
    """
    config = FitConfig.of(config, settings)
    _validate.host_side("fit", x, y, key, config.noise_std)
    # A DataFrame's columns and a Series' name, unless names are given (no pandas import).
    if feature_names is None and not isinstance(x, np.ndarray):
        feature_names = getattr(x, "columns", None)
    if target_name is None and not isinstance(y, np.ndarray):
        target_name = getattr(y, "name", None)
    try:
        # A damaged entry of the persistent cache: deleted and compiled again (one warning).
        return program_cache.guarded(lambda: _fit_any_k(
            key, x, y, config, feature_names, target_name, progress,
            (expert_columns, gate_columns)))
    except _validate.DataError as e:  # the cells at fault, named as the caller names them
        raise e.named(columns=None if feature_names is None else
                      [str(v) for v in feature_names],
                      target=None if target_name is None else str(target_name)) from None


def _fit_any_k(key, x, y, config: FitConfig, feature_names, target_name, progress,
               roles=(None, None)) -> FittedMoE:
    """`fit` after its settings are checked: k chosen, one k, or least squares. roles: fit's
    (expert_columns, gate_columns)."""
    progress = progress or (lambda message: None)
    family = get_family(config.family)
    if config.num_experts in ("auto", 1):
        x, y = _validate.data(x, y)
    else:
        x, y, _ = _validate.fit_inputs(x, y, config.num_experts, config.nonlinearity, power=2,
                                       beyond_dim=True)
    _validate.family_target(y, family)
    names = _names(feature_names, target_name, x.shape[1], *roles)
    dim, gate_dim = _widths(names["columns"], x.shape[1])
    if config.num_experts in ("auto", 1) and x.shape[0] < dim + 2:  # k = 1 always a candidate
        raise ValueError(f"least squares (num_experts={config.num_experts!r}) needs at "
                         f"least d + 2 = {dim + 2} rows for d = {dim} "
                         f"features, got {x.shape[0]}.")
    if config.num_experts == "auto":
        rows = row_groups(x, y)
        distinct = rows[0]
        supported = supported_experts(distinct, dim, config.per_expert_noise, gate_dim)
        max_experts = min(config.max_experts, supported)
        folds = 5 if config.select_by == "cv" else 0
        progress(f"choosing k in 1..{max_experts} by "
                 + ("5-fold cross-validation" if folds else "BIC")
                 + (f" ({distinct} distinct rows support at most k = {supported}: "
                    f"{ROWS_PER_PARAMETER} rows per parameter)"
                    if supported < config.max_experts else ""))
        scores, models = _select(key, x, y, rows, config, max_experts, folds, names)
        best = scores.best_cv if folds else scores.best_bic
        model = dataclasses.replace(models[best], selection=scores)
        if best == max_experts and scores.at_largest():
            _validate.warn(scores.at_largest())
    elif config.num_experts == 1:
        progress(("least squares" if family.has_dispersion else f"a {family.name} GLM")
                 + f" on {x.shape[0]} rows x {dim} features")
        model = _one_expert(x, y, names, config)
    else:
        if not _has_moment_start(config, dim, gate_dim) and not config.num_refine_iters:
            why = (f"of family {family.name!r} has no moment start" if not family.moment_start
                   else "with a gate on columns of its own has no moment start"
                   if gate_dim is not None else
                   f"> d = {dim} features has no moment start (it needs k <= d)")
            raise ValueError(f"num_experts={config.num_experts} {why}: it is fitted from "
                             "random starts by the refinement, so num_refine_iters must be "
                             "positive.")
        check_rows(row_groups(x, y)[0], dim, config.num_experts,
                   config.per_expert_noise, num_given=x.shape[0], gate_dim=gate_dim)
        model = _fit(key, x, y, config, names, progress)
    if not config.standard_errors:
        return model
    progress("standard errors: the observed information at the fit")
    return dataclasses.replace(model, inference=_training_statistics(model, x, y))


def _training_statistics(model: "FittedMoE", x, y) -> Inference:
    """The model's `Inference` on its checked training data, padded to the fit's row bucket
    (one compiled program per bucket)."""
    z, ys = _host_design(model.standardizer, _gathered(model.columns, x), y)
    z, ys, weights = sums.pad_rows(sums.bucket_size(x.shape[0]), z, ys)
    stats = inference.statistics(model.params, z, ys, weights, model.standardizer.y_scale,
                                 model.noise_learned, model.prior)
    family = get_family(model.params.family)
    if family.saturated_log_density is None:
        return stats
    y = np.asarray(y, np.float64)
    with inference.x64():
        return stats._replace(
            saturated_log_likelihood=np.sum(np.asarray(family.saturated_log_density(y))),
            null_log_likelihood=np.sum(np.asarray(family.log_density(y, np.mean(y), 1.0))))


def _has_moment_start(config: "FitConfig | _Stages", dim: int, gate_dim=None) -> bool:
    """`refinement.has_moment_start` for config's k and family."""
    return refinement.has_moment_start(config.num_experts, dim, gate_dim, config.family)


def _widths(columns: Columns | None, num_features: int) -> tuple[int, int | None]:
    """(the experts' number of columns d, the gate's own number or None when it shares)."""
    if columns is None:
        return num_features, None
    return len(columns.experts), None if columns.gate is None else len(columns.gate)


def _gathered(columns: Columns | None, x):
    """x's columns in the design's order (`Columns.gather`), or x."""
    return x if columns is None else columns.gather(x)


def _column_roles(expert_columns, gate_columns, feature_names, dim: int) -> Columns | None:
    """fit's expert_columns and gate_columns as a `Columns` (None: all columns to both);
    ValueError naming the argument for a string, an unknown name or position, a repeat, or
    no expert column."""
    def indices(value, argument):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise ValueError(f"{argument} must be a list of column names or positions, got "
                             f"{value!r}.")
        out = []
        for v in value:
            if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
                if not 0 <= v < dim:
                    raise ValueError(f"{argument}: position {v} is not a column of x "
                                     f"(0..{dim - 1}).")
                out.append(int(v))
            elif feature_names is not None and str(v) in feature_names:
                out.append(feature_names.index(str(v)))
            else:
                known = (f"the columns are {list(feature_names)}" if feature_names is not None
                         else "x has no column names: give positions, or feature_names")
                raise ValueError(f"{argument}: {v!r} is not a column of x ({known}).")
        if len(set(out)) != len(out):
            raise ValueError(f"{argument} names a column twice: {list(value)!r}.")
        return tuple(out)

    if expert_columns is None and gate_columns is None:
        return None
    experts = (tuple(range(dim)) if expert_columns is None
               else indices(expert_columns, "expert_columns"))
    if not experts:
        raise ValueError("expert_columns must name at least one column (the experts regress "
                         "on them).")
    gate = None if gate_columns is None else indices(gate_columns, "gate_columns")
    if gate == experts:
        gate = None  # the gate reads the experts' design: the model without roles
    if gate is None and experts == tuple(range(dim)):
        return None
    return Columns(dim, experts, gate)


def _names(feature_names, target_name, dim: int, expert_columns=None,
           gate_columns=None) -> dict:
    """The model's column names as strings and its column roles (`_column_roles`); ValueError
    unless feature_names names d columns."""
    if feature_names is not None:
        if isinstance(feature_names, (str, bytes)):
            raise ValueError(f"feature_names must be a sequence of d = {dim} names, got "
                             f"the single string {feature_names!r}.")
        feature_names = tuple(str(v) for v in feature_names)
        if len(feature_names) != dim:
            raise ValueError(f"feature_names must name the d = {dim} columns of x, got "
                             f"{len(feature_names)} names.")
    return dict(feature_names=feature_names,
                target_name=None if target_name is None else str(target_name),
                columns=_column_roles(expert_columns, gate_columns, feature_names, dim))


def _fit(key, x, y, config: FitConfig, names: dict, progress, quiet: bool = False
         ) -> FittedMoE:
    """`fit` for one k on checked host data (x, y) with checked settings: the standardisation
    and the padding to the row bucket on the host, stages 2-4 in one compiled program
    (`_fit_program`), then the checks of what it reports. With a prior, an expert left with
    fewer than `MIN_ROWS_PER_EXPERT_PARAMETER` (d + 2) posterior rows is dropped and k - 1
    experts are fitted instead (least squares for k = 1), with a warning unless `quiet`."""
    family = get_family(config.family)
    num_experts = config.num_experts
    learn = config.noise_std is None and family.has_dispersion
    noise_std = (np.ones((), x.dtype) if not family.has_dispersion else None if learn else
                 _validate.noise_levels(config.noise_std, num_experts).astype(x.dtype))
    columns = names["columns"]
    dim, gate_dim = _widths(columns, x.shape[1])
    progress(f"standardising {x.shape[0]} rows x {x.shape[1]} features")
    std = preprocessing._fit_standardizer(
        x, y, whiten=config.whiten, scale_target=family.has_dispersion,
        columns=None if columns is None else (columns.experts, columns.gate))
    xp, yp, weights = sums.pad_rows(sums.bucket_size(x.shape[0]), _gathered(columns, x), y)
    moment = _has_moment_start(config, dim, gate_dim)
    progress((f"moment stage ({num_experts} experts), gating EM ({config.num_gating_inits} "
              f"starts, at most {config.num_gating_iters} iterations)" if moment else
              f"no moment start ({num_experts} experts)")
             + (f", joint-EM refinement ({'the moment start and ' if moment else ''}"
                f"{config.num_refine_inits + (not moment)} random starts, at most "
                f"{config.num_refine_iters} iterations each)" if config.num_refine_iters else ""))
    refinement.announce_cost(x.shape[0], max(dim, gate_dim or 0), num_experts,
                             1 + config.num_refine_inits, config.num_refine_iters,
                             config.chunk_size, x.dtype.itemsize, progress)
    penalty = (None if config.prior is None else
               prior_lib.penalty(config.prior, num_experts, dim, x.dtype, family, gate_dim))
    # A random start's experts begin at the one-expert model without slopes (a GLM's Newton
    # step from a mean far from the data's can overshoot); the Gaussian's y is centred.
    intercept = (None if family.has_dispersion else
                 np.asarray(family.start_intercept(float(np.mean(y))), x.dtype))
    params, report, checks = program_cache.cached_call(
        _fit_program,
        (key, xp, yp, weights, std, noise_std, np.asarray(config.refine_tol, x.dtype), penalty,
         intercept),
        config=_Stages(**{name: getattr(config, name) for name in _Stages._fields}),
        layout=sums.Layout(config.chunk_size))
    top, sigma, gating_finite, refine_finite = jax.device_get(checks)
    if top > _validate.scale_limit(x.shape[0], x.dtype, power=3):
        z, ys = _host_design(std, _gathered(columns, x), y)
        _validate.scales(z, ys, power=3)  # raises, naming x or y
    _validate.noise_scale(sigma, x.dtype, estimated=learn)
    if not (gating_finite and refine_finite):
        z, ys = _host_design(std, _gathered(columns, x), y)
        xs = z[:, :dim]
        _validate.finite_result(gating_finite, xs, ys, noise_std=None if learn else sigma,
                                nonlinearity=config.nonlinearity)
        _validate.finite_result(refine_finite, xs, ys, what="fit's refinement",
                                nonlinearity=config.nonlinearity)
    model = FittedMoE(params, std, report=report, noise_learned=learn, prior=config.prior,
                      target_range=_target_range(y), **names)
    rows = None if report is None else np.asarray(report.effective_rows)
    need = MIN_ROWS_PER_EXPERT_PARAMETER * (dim + 2)
    if (rows is None or rows.min() >= need or config.noise_std is not None
            or config.prior is None):
        return model
    i = int(np.argmin(rows))
    if not quiet:
        _validate.warn(f"expert {i + 1} of {num_experts} was fitted on {rows[i]:.1f} rows of "
                       f"posterior weight, fewer than {MIN_ROWS_PER_EXPERT_PARAMETER} per each "
                       f"of its d + 2 = {dim + 2} parameters: it is dropped and "
                       f"{num_experts - 1} expert(s) are fitted instead.")
    if num_experts == 2:
        return _one_expert(x, y, names, config)
    return _fit(key, x, y, dataclasses.replace(config, num_experts=num_experts - 1), names,
                progress, quiet)


def _host_design(std: Standardizer, x, y) -> tuple[np.ndarray, np.ndarray]:
    """`fitted.design_matrix` of x (in the design's column order, `Columns.gather`) and the
    standardised y, on the host in float64."""
    std = jax.tree.map(lambda v: np.asarray(v, np.float64), std)
    return (design_matrix(std, np.asarray(x, np.float64), xp=np),
            (np.asarray(y, np.float64) - std.y_mean) / std.y_scale)


class _Stages(NamedTuple):
    """The settings that shape `_fit_program`: static, so a new value compiles a new program
    (the others, and sigma, the tolerance and the data's values, do not)."""

    num_experts: int
    nonlinearity: str
    family: str
    per_expert_noise: bool
    num_power_inits: int
    num_gating_inits: int
    num_gating_iters: int
    num_refine_iters: int
    num_refine_inits: int
    refiner: str


@compilation.jit(static_argnames=("config", "layout"))
def _fit_program(key, x, y, weights, std: Standardizer, noise_std, tol, penalty, intercept,
                 config: _Stages, layout: sums.Layout):
    """Stages 2-4 of `fit` as one compiled program, for x: (rows, d) and y: (rows,) padded
    with weight-0 rows (`weights`: (rows,), 1 on the data's rows) and standardised here.
    noise_std: the given sigma in the target's units, or None to learn it; penalty: the
    prior's `moejax.prior.Penalty` for the refinement, or None; intercept: None, or the
    random starts' expert intercept (a GLM family's). Returns the
    parameters, the refinement's FitReport (None without refinement) and what the host
    checks afterwards: (max(|x_std| sqrt(d), |y_std|) for the overflow check, sigma's start,
    whether the gating EM and the refinement stayed finite)."""
    k, g, learn = config.num_experts, config.nonlinearity, noise_std is None
    fam = config.family
    real = weights > 0
    z = jnp.where(real[:, None], design_matrix(std, x), 0.0)  # padding rows all 0
    dim = std.x_mean.shape[0]
    gate_dim = None if std.gate_map is None else std.gate_map.shape[0]
    xs = z[:, :dim]
    ys = jnp.where(real, preprocessing._transform_target(std, y), 0.0)
    top = jnp.maximum(jnp.max(jnp.abs(xs)) * jnp.sqrt(dim), jnp.max(jnp.abs(ys)))
    if gate_dim:
        top = jnp.maximum(top, jnp.max(jnp.abs(z[:, dim + 1:-1])) * jnp.sqrt(gate_dim))
    sigma = (_initial_noise_std(ys, g, weights) if learn else noise_std / std.y_scale)
    key_tensor, key_gating, key_starts = jax.random.split(key, 3)

    def random_start(key, sigma):
        p = random_init(key, dim + 1, k, sigma, z.dtype, nonlinearity=g,
                        gate_dim=None if gate_dim is None else gate_dim + 1)._replace(family=fam)
        return p if intercept is None else p._replace(experts=p.experts.at[:, -1].set(intercept))

    if _has_moment_start(config, dim, gate_dim):
        params, gating_finite = _moment_start(key_tensor, key_gating, xs, ys, weights, sigma,
                                              config, layout, learn)
    else:  # no moment start (k > d, the gate's own columns or the family's): start 0 is one
        # more random start
        start_sigma = jnp.broadcast_to(sigma, (k,)) if learn and config.per_expert_noise \
            else sigma
        params = random_start(key_tensor, start_sigma)
        gating_finite = jnp.asarray(True)
    start_sigma = params.noise_std
    report, refine_finite = None, jnp.asarray(True)
    if config.num_refine_iters:
        randoms = jax.vmap(lambda key: random_start(key, start_sigma))(
            jax.random.split(key_starts, config.num_refine_inits))
        starts = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), params, randoms)
        params, report, refine_finite = refinement.refine_starts(
            starts, z, ys, num_iters=config.num_refine_iters, tol=tol, learn=learn,
            weights=weights, layout=layout, penalty=penalty, refiner=config.refiner)
    return params, report, (top, sigma, gating_finite, refine_finite)


def _moment_start(key_tensor, key_gating, xs, ys, weights, sigma, config: _Stages,
                  layout: sums.Layout, learn: bool):
    """Stages 2-3 of `fit` on the standardised rows: the experts by the moment method, the
    gating by EM with them fixed, as MoEParams on [x_std, 1] (zero intercepts); and whether
    the gating EM stayed finite."""
    k, g = config.num_experts, config.nonlinearity
    # The moment stage's transforms assume one sigma: given one per expert, it uses their rms.
    est, _ = _recover_experts(key_tensor, xs, ys, jnp.sqrt(jnp.mean(jnp.square(sigma))),
                              num_experts=k, nonlinearity=g, num_inits=config.num_power_inits,
                              num_iters=POWER_ITERS, tol=POWER_TOL, layout=layout,
                              weights=weights)
    w, info = gating._fit_gating(key_gating, xs, ys, est.experts, sigma, nonlinearity=g,
                                 num_inits=config.num_gating_inits,
                                 num_iters=config.num_gating_iters,
                                 init_scale=gating.INIT_SCALE, learn_noise_std=learn,
                                 layout=layout, weights=weights)
    pad = jnp.zeros((k, 1), xs.dtype)
    start_sigma = info.noise_std
    if learn and config.per_expert_noise:
        start_sigma = jnp.broadcast_to(start_sigma, (k,))
    return MoEParams(jnp.concatenate([est.experts, pad], 1), jnp.concatenate([w, pad], 1),
                     start_sigma, g, config.family), info.finite


def _one_expert(x, y, names: dict, config: FitConfig) -> FittedMoE:
    """k = 1 as a one-expert FittedMoE (the gate is constant) on the same standardised scale as
    `fit`'s models, x and y checked: least squares with Gaussian noise (sigma by maximum
    likelihood unless config.noise_std gives it), or the family's GLM (`_glm`, with the
    prior's ridge on the slopes when config.prior is set)."""
    family = get_family(config.family)
    columns = names["columns"]
    std = preprocessing._fit_standardizer(
        x, y, scale_target=family.has_dispersion,
        columns=None if columns is None else (columns.experts, columns.gate))
    design, ys = _host_design(std, _gathered(columns, x), y)
    dim = std.x_mean.shape[0]
    z = design[:, :dim + 1]  # the expert's columns; the gate of one expert is constant
    prior = None
    if not family.has_dispersion:
        ridge = None
        if config.prior is not None:
            prior = config.prior
            ridge = prior_lib.penalty(prior, 1, dim, np.float64, family).expert_ridge
        beta, sigma = _glm(z, ys, family, ridge), np.ones(())
    else:
        beta = np.linalg.lstsq(z, ys, rcond=None)[0]
        if config.noise_std is None:
            sigma = np.sqrt(np.mean(np.square(ys - z @ beta)))
        else:
            sigma = np.asarray(_validate.noise_levels(config.noise_std, 1), np.float64).reshape(
                ()) / float(std.y_scale)
    # Cast on the host (a cast on the device compiles a program per shape).
    gate_width = design.shape[1] - (dim + 1) if std.gate_map is not None else dim + 1
    params = MoEParams(*(jax.device_put(np.asarray(v, x.dtype)) for v in (
        beta[None], np.zeros((1, gate_width)), sigma)), config.nonlinearity, family.name)
    return FittedMoE(params, std, noise_learned=config.noise_std is None and
                     family.has_dispersion, prior=prior, target_range=_target_range(y), **names)


# The one-expert GLM's Newton iterations: a cap, and the tolerance on the change of the
# penalised mean log-likelihood (relative, absolute near 0) at which they stop.
GLM_MAX_ITERS, GLM_TOL = 100, 1e-12


def _glm(z: np.ndarray, y: np.ndarray, family, ridge=None) -> np.ndarray:
    """The maximum (penalised, with ridge (d + 1,) per column) likelihood coefficients (d + 1,)
    of a GLM of `family` with its canonical link on the host, in float64: Newton's method
    (IRLS) from the model without slopes, halving a step that lowers the objective."""
    n = z.shape[0]
    ridge = np.zeros(z.shape[1]) if ridge is None else np.asarray(ridge, np.float64)
    g = get_nonlinearity(family.default_nonlinearity)

    def objective(beta):
        mean = np.asarray(g(z @ beta), np.float64)
        return (float(np.mean(np.asarray(family.log_density(y, mean, 1.0))))
                - 0.5 * float(np.sum(ridge * beta ** 2)) / n), mean

    beta = np.zeros(z.shape[1])
    beta[-1] = family.start_intercept(float(np.mean(y)))
    value, mean = objective(beta)
    for _ in range(GLM_MAX_ITERS):
        w, _ = (np.asarray(v, np.float64) for v in family.irls_weights(mean, mean))
        hess = (z.T * w) @ z / n + np.diag(ridge) / n
        step = np.linalg.solve(hess, z.T @ (y - mean) / n - ridge * beta / n)
        for _ in range(30):
            new_value, new_mean = objective(beta + step)
            if new_value >= value:
                break
            step = step / 2
        else:
            break
        beta, old, value, mean = beta + step, value, new_value, new_mean
        if new_value - old <= GLM_TOL * (1 + abs(new_value)):
            break
    return beta


def _target_range(y) -> tuple[float, float]:
    """(min, max) of checked host targets, as Python floats (a model's static metadata)."""
    y = np.asarray(y, np.float64)
    return float(y.min()), float(y.max())


def _select(key, x, y, rows, config: FitConfig, max_experts: int, num_folds: int,
            names: dict):
    """`selection.score` with least squares for k = 1 and `_fit` for k >= 2; rows:
    `row_groups(x, y)`."""
    family = get_family(config.family)
    dim, gate_dim = _widths(names["columns"], x.shape[1])

    def fit_k(key, x, y, k):
        if k == 1:
            return _one_expert(x, y, names, dataclasses.replace(config, noise_std=None))
        return _fit(key, x, y, dataclasses.replace(config, num_experts=k), names,
                    lambda message: None, quiet=True)

    def num_params(k):  # least squares learns its sigma; k >= 2 as configured
        return num_free_params(k, dim, config.per_expert_noise,
                               learn_sigma=family.has_dispersion and (
                                   k == 1 or config.noise_std is None), gate_dim=gate_dim)

    # The M2 spectrum reads the moments of all of x: only for the model the moment start fits.
    spectrum = family.moment_start and names["columns"] is None
    return selection.score(key, x, y, rows, max_experts=max_experts, num_folds=num_folds,
                           nonlinearity=config.nonlinearity if spectrum else None,
                           fit_k=fit_k, num_params=num_params,
                           log_likelihood=lambda m, x, y: _on_rows(m, _log_likelihood, x, y,
                                                                   reduce=True))


@accepts_old_names(*FIT_RENAMED, renamed=FIT_RENAMED)
def select_num_experts(key: jax.Array, x, y, *, max_experts: int = 4,
                       nonlinearity: str | None = None, num_folds: int = 5,
                       **fit_kwargs) -> KSelection:
    """Scores k = 1, ..., max_experts by BIC (fitted on all rows) and by `num_folds`-fold
    cross-validated log-likelihood; k = 1 is least squares, k >= 2 `fit` (with `fit_kwargs`).
    Every fold holds out n // num_folds rows and trains on the rest, so that all folds share
    one shape (one compilation per k). docs/selection.md has the rules.

    Args:
      key: PRNG key (the folds and every fit).
      x: (n, d) features; y: (n,) target.
      max_experts: the largest k (lowered, with a warning, to what the rows support).
      nonlinearity: the experts' g (a name), or None for the family's default (linear for
        the Gaussian).
      num_folds: F >= 2 cross-validation folds.
      **fit_kwargs: passed to every `fit` (e.g. num_refine_iters, per_expert_noise).

    Returns:
      KSelection: every k's parameter count, training log-likelihood, BIC, cross-validated
      log-likelihood and its sd, the M2 spectrum, and the k each criterion picks.

    Raises:
      ValueError: for malformed data, num_folds < 2, or too few rows for
        the folds; and as `fit`.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(400, 3))
    >>> y = np.where(x[:, 0] > 0, 2 * x[:, 1], -x[:, 2]) + 0.1 * rng.normal(size=400)
    >>> scores = select_num_experts(jax.random.key(0), x, y, max_experts=2, num_folds=2,
    ...                             num_refine_iters=200)
    >>> scores.num_experts.tolist(), scores.best_bic, scores.best_cv
    ([1, 2], 2, 2)
    """
    _validate.host_side("select_num_experts", x, y, key)
    num_folds = _validate.count(num_folds, "num_folds", minimum=2)
    names = {name: fit_kwargs.pop(name, None) for name in (
        "feature_names", "target_name", "expert_columns", "gate_columns")}
    config = FitConfig.of(None, dict(num_experts="auto", nonlinearity=nonlinearity,
                                     max_experts=max_experts, **fit_kwargs),
                          "select_num_experts")
    x, y = _validate.data(x, y)
    _validate.family_target(y, get_family(config.family))
    names = _names(names["feature_names"], names["target_name"], x.shape[1],
                   names["expert_columns"], names["gate_columns"])
    rows = row_groups(x, y)
    dim, gate_dim = _widths(names["columns"], x.shape[1])
    supported = supported_experts(rows[0], dim, config.per_expert_noise, gate_dim)
    if config.max_experts > supported:  # the rule `fit` applies to num_experts="auto"
        _validate.warn(f"max_experts={config.max_experts}: the rows support k up to "
                       f"{supported} ({ROWS_PER_PARAMETER} distinct rows per free parameter, "
                       f"as fit(num_experts='auto') requires); scoring k = 1..{supported}.")
        config = dataclasses.replace(config, max_experts=supported)
    return _select(key, x, y, rows, config, config.max_experts, num_folds, names)[0]
