"""Fitting an MoE to real data: standardise, moment start, gating EM, joint-EM refinement with
per-expert intercepts; a fitted model that predicts in original units."""

import dataclasses
import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from moejax import _validate, compilation, gating, inference, predictive, preprocessing
from moejax import selection
from moejax import prior as prior_lib
from moejax import solver, sums
from moejax.inference import Inference
from moejax.baselines import random_init
from moejax.em_steps import e_step
from moejax.joint import joint_em_map
from moejax.moments import _initial_noise_std
from moejax.nonlinearities import nonlinearity_names
from moejax.params import MoEParams
from moejax.preprocessing import Standardizer
from moejax._renamed import FIT_RENAMED, accepts_old_names
from moejax.prior import Prior
from moejax.recover import _recover_experts
from moejax.selection import KSelection


class FitReport(NamedTuple):
    """How `fit` got its parameters: every start refined by joint EM, the best kept.

    Attributes:
      log_likelihood, num_iters, num_passes, converged, finite, trace: as in
        `moejax.FitInfo`, one entry per start (leading axis num_starts; trace
        (num_refine_iters, num_starts)): the final training mean log-likelihood on the
        standardised scale, the refinement iterations, the passes over the data of all starts
        together, whether each met the stopping rule within the cap, stayed finite, and its L
        before each iteration.
      best: index of the kept start (0 is the moment start, 1.. the random ones).
      continued: (num_starts,) whether each start went on after the screening iterations
        (the others report their state then).
      effective_rows: (k,) the kept start's posterior weight per expert on the training
        rows, sum_n P(z = i | x_n, y_n): the rows each expert was fitted on.
      saturated_rows: the number of training rows on which the kept start's largest gate
        probability exceeds `SATURATED_GATE` (the gate decides them alone).

    With a prior (`fit`'s default), log_likelihood and trace hold the objective the solver
    maximised: (log-likelihood + log prior) / n.
    """

    log_likelihood: jax.Array
    num_iters: jax.Array
    num_passes: jax.Array
    converged: jax.Array
    finite: jax.Array
    trace: jax.Array
    best: jax.Array
    continued: jax.Array
    effective_rows: jax.Array | None = None
    saturated_rows: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class FittedMoE:
    """A fitted MoE with its preprocessing; a pytree (data: params, standardizer).

    The model acts on z = [standardize(x), 1]: params.experts and params.gating are (k, d + 1),
    their last column the intercepts, and params.noise_std (a scalar, or (k,) with one sigma per
    expert) is in standardised target units.

    The per-row methods (predict, log_density, posteriors, ...) run on the host's side of the
    boundary: NumPy rows (and lists, DataFrames) are padded to a row bucket, so that a new row
    count compiles nothing, and the results come back as NumPy arrays; JAX arrays give JAX
    arrays, and the methods can be traced (jit, vmap) with them.

    Attributes:
      params: MoEParams on the standardised scale; params.nonlinearity is the experts' g
        (also `FittedMoE.nonlinearity`), a name.
      standardizer: the feature and target transform.
      feature_names: optional names of the d input columns (checked on prediction by the CLI).
      target_name: optional name of the target column.
      report: how `fit` chose the parameters (None for least squares or a model built by
        hand).
      selection: with `fit(num_experts="auto")`, the scores of every k (`KSelection`);
        else None.
      inference: the training statistics behind standard errors and information criteria
        (`moejax.inference.Inference`), or None.
      noise_learned: whether sigma was fitted (False: it was given, and has no standard
        error).
      prior: the `moejax.Prior` of a regularised (MAP) fit, or None for maximum likelihood
        (and for least squares and models built by hand).

    Example (the methods' examples use this `model`, `x` and `y`):
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> x = rng.normal(size=(400, 3))
      >>> y = np.where(x[:, 0] > 0, 2 * x[:, 1], -x[:, 2]) + 0.1 * rng.normal(size=400)
      >>> model = fit(jax.random.key(0), x, y, num_experts=2, num_refine_iters=200)
      >>> model
      FittedMoE(k=2, d=3, nonlinearity='linear', n=400, log_likelihood=..., bic=...)
    """

    params: MoEParams
    standardizer: Standardizer
    feature_names: tuple[str, ...] | None = None
    target_name: str | None = None
    report: FitReport | None = None
    selection: KSelection | None = None
    inference: Inference | None = None
    noise_learned: bool = True
    prior: Prior | None = None

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
        """The model's input z = [standardize(x), 1] (docs/algorithm.md section 5).

        Args:
          x: (n, d) features in the data's units.

        Returns:
          (n, d + 1) array.

        Raises:
          ValueError: for x that is not a finite (n, d) array.

        >>> model.design(x[:2]).shape
        (2, 4)
        """
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

        >>> model.predict(x[:3]).shape
        (3,)
        """
        return _on_rows(self, _predict, self._checked(x))

    def log_likelihood(self, x, y) -> jax.Array:
        """Mean log-density of y given x, (1/n) sum_n log p(y_n | x_n), in the target's
        units (a density per unit of y, so comparable across models of the same target).

        Args:
          x: (n, d) features; y: (n,) targets.

        Returns:
          A scalar.

        Raises:
          ValueError: for malformed or non-finite x or y, or shapes that do not match.

        >>> bool(model.log_likelihood(x, y) > 0)  # sigma about 0.1: a density above 1
        True
        """
        return _on_rows(self, _log_likelihood, *self._checked(x, y), reduce=True)

    def mixing_weights(self, x) -> jax.Array:
        """Mean gate probabilities (1/n) sum_n softmax(W z_n).

        Args:
          x: (n, d) features in the data's units.

        Returns:
          (k,) weights summing to 1.

        Raises:
          ValueError: for x that is not a finite (n, d) array.

        >>> w = np.asarray(model.mixing_weights(x))  # about the share of rows with x1 > 0
        >>> w.shape, round(float(w.sum()), 4)
        ((2,), 1.0)
        """
        return _on_rows(self, _mixing_weights, self._checked(x), reduce=True)

    def _checked(self, x, y=None):
        if y is None:
            return _validate.features(x, dim=self.dim)
        return _validate.data(x, y, dim=self.dim)

    def gate_probabilities(self, x) -> jax.Array:
        """P(z = i | x) = softmax(W z)_i for each row: the gate alone, before y is seen.

        Args:
          x: (n, d) features in the data's units.

        Returns:
          (n, k) probabilities, rows summing to 1.

        Raises:
          ValueError: for x that is not a finite (n, d) array.

        >>> model.gate_probabilities(x[:3]).shape
        (3, 2)
        """
        return _on_rows(self, _gate_probabilities, self._checked(x))

    def posteriors(self, x, y) -> jax.Array:
        """P(z = i | x, y) for each row: which expert produced it (flexmix's `posterior`).

        Args:
          x: (n, d) features; y: (n,) targets, in the data's units.

        Returns:
          (n, k) probabilities, rows summing to 1.

        Raises:
          ValueError: for malformed or non-finite x or y, or shapes that do not match.

        >>> np.asarray(model.posteriors(x[:3], y[:3])).sum(axis=1).round(4)
        array([1., 1., 1.], dtype=float32)
        """
        return _on_rows(self, _posteriors, *self._checked(x, y))

    def clusters(self, x, y) -> jax.Array:
        """The most probable expert of each row given x and y (flexmix's `clusters`, 0-based).

        Args:
          x: (n, d) features; y: (n,) targets, in the data's units.

        Returns:
          (n,) integers in 0..k-1, the argmax of `posteriors`.

        Raises:
          ValueError: for malformed or non-finite x or y, or shapes that do not match.

        >>> sorted(set(np.asarray(model.clusters(x, y)).tolist()))
        [0, 1]
        """
        return _on_rows(self, _clusters, *self._checked(x, y))

    def log_density(self, x, y) -> jax.Array:
        """log p(y_n | x_n) for each row, a density per unit of y (its mean is
        `log_likelihood`).

        Args:
          x: (n, d) features; y: (n,) targets, in the data's units.

        Returns:
          (n,) log-densities.

        Raises:
          ValueError: for malformed or non-finite x or y, or shapes that do not match.

        >>> bool(np.isclose(np.mean(model.log_density(x, y)), model.log_likelihood(x, y)))
        True
        """
        return _on_rows(self, _log_density, *self._checked(x, y))

    def predict_variance(self, x) -> jax.Array:
        """Var[y | x] for each row, in squared target units: the noise of each expert plus
        the spread of the experts' means around `predict(x)`.

        Args:
          x: (n, d) features in the data's units.

        Returns:
          (n,) variances.

        Raises:
          ValueError: for x that is not a finite (n, d) array.

        >>> bool(np.all(np.asarray(model.predict_variance(x[:5])) > 0))
        True
        """
        return _on_rows(self, _predict_variance, self._checked(x))

    def predict_interval(self, x, level: float = 0.9):
        """The central `level` predictive interval of y given each row of x: the
        (1 - level) / 2 and (1 + level) / 2 quantiles of the mixture's predictive
        distribution, found by bisection on its CDF (docs/algorithm.md section 6), not a
        normal approximation.

        Args:
          x: (n, d) features in the data's units.
          level: the interval's probability, in (0, 1).

        Returns:
          (lower, upper), each (n,), in the target's units.

        Raises:
          ValueError: for x that is not a finite (n, d) array, or level outside (0, 1).

        >>> lower, upper = model.predict_interval(x[:3], 0.9)
        >>> lower.shape, bool(np.all(lower < upper))
        ((3,), True)
        """
        level = _validate.positive(level, "level")
        if not 0 < float(level) < 1:
            raise ValueError(f"level must be in (0, 1), got {level!r}.")
        probs = np.asarray([(1 - float(level)) / 2, (1 + float(level)) / 2],
                           self.params.experts.dtype)
        return _on_rows(self, functools.partial(_interval, probs=probs), self._checked(x))

    def sample(self, key: jax.Array, x) -> jax.Array:
        """One draw of y from the fitted model for each row of x.

        Args:
          key: PRNG key.
          x: (n, d) features in the data's units.

        Returns:
          (n,) draws in the target's units.

        Raises:
          ValueError: for x that is not a finite (n, d) array.

        >>> model.sample(jax.random.key(1), x[:4]).shape
        (4,)
        """
        return _on_rows(self, functools.partial(_sample, key=key), self._checked(x))

    def _stats(self) -> "inference.Inference":
        if self.inference is None:
            raise ValueError("this model has no training statistics (fitted with "
                             "standard_errors=False, built by hand, or saved by an older "
                             "moejax); refit it to get information criteria.")
        return self.inference

    @property
    def num_params(self) -> int:
        """Free parameters: k (d + 1) expert and (k - 1)(d + 1) gate coefficients, and the
        fitted sigmas."""
        return inference.num_params(self.params, self.noise_learned)

    def aic(self) -> float:
        """Akaike's criterion -2 log-likelihood + 2 num_params, on the training rows.

        Returns:
          A float; smaller is better.

        Raises:
          ValueError: for a model without training statistics (fitted with
            standard_errors=False, or built by hand).

        >>> model.aic() < model.bic()  # log(400) > 2
        True
        """
        return float(-2 * self._stats().log_likelihood + 2 * self.num_params)

    def bic(self) -> float:
        """The Bayesian information criterion -2 log-likelihood + num_params log n, on the
        training rows.

        Returns:
          A float; smaller is better.

        Raises:
          ValueError: for a model without training statistics (as `aic`).

        >>> model.num_params  # 2 experts x 4 and 1 gate x 4 coefficients, 2 sigmas
        14
        >>> bool(np.isclose(model.bic(), model.aic() + 14 * (np.log(400) - 2)))
        True
        """
        s = self._stats()
        return float(-2 * s.log_likelihood + self.num_params * np.log(s.num_rows))

    def icl(self) -> float:
        """The integrated completed likelihood BIC + 2 * the entropy of the training
        posteriors (Biernacki, Celeux and Govaert 2000): BIC penalised for experts that
        overlap.

        Returns:
          A float, at least `bic()`; smaller is better.

        Raises:
          ValueError: for a model without training statistics (as `aic`).

        >>> model.icl() >= model.bic()
        True
        """
        return self.bic() + 2 * float(self._stats().entropy)

    def coefficients(self) -> "inference.Coefficients":
        """Every coefficient in the units of the data, with standard errors (statsmodels'
        `params` / `bse`, flexmix's `refit`): each expert's intercept and slopes (for linear
        g, its regression of y on x; else the pre-activation a . x + b in x's units), each
        gate's intercept and slopes (its logit relative to the last expert), and sigma.
        Standard errors from the observed information at the fit, and robust ones from the
        sandwich (docs/algorithm.md section 7). When they are unavailable (a singular
        information, a fit short of the maximum, no training statistics) the standard errors
        are NaN, `problem` says why, and a warning is issued.

        Returns:
          `moejax.inference.Coefficients` (with `.table()` for a printout).

        Raises:
          Nothing: missing standard errors are NaN, with a warning (see above).

        >>> c = model.coefficients()
        >>> len(c.estimate) == model.num_params, bool(np.all(c.std_error > 0))
        (True, True)
        """
        out = inference.coefficients(self.params, self.standardizer, self.inference,
                                     self.feature_names or _default_names(self.dim),
                                     self.noise_learned)
        if out.problem:
            _validate.warn(out.problem)
        return out

    def coefficient_covariance(self, robust: bool = False) -> np.ndarray:
        """The covariance matrix of `coefficients().estimate` (statsmodels' `cov_params`).

        Args:
          robust: False for the inverse observed information, True for the sandwich.

        Returns:
          (m, m) covariance, m = num_params, in the data's units.

        Raises:
          ValueError: when the standard errors are unavailable (`coefficients().problem`
            says why), or robust is not a bool.

        >>> cov = model.coefficient_covariance()
        >>> bool(np.allclose(np.sqrt(np.diag(cov)), model.coefficients().std_error))
        True
        """
        why = inference.problem(self.inference)
        if why:
            raise ValueError(why + ".")
        return inference.data_covariance(self.params, self.standardizer, self.inference,
                                         self.noise_learned, _validate.flag(robust, "robust"))

    def summary(self) -> str:
        """A printable summary: the data, the likelihood and information criteria, how the
        fit stopped, the prior, degeneracies, and every coefficient with its standard error,
        z and p-value.

        Returns:
          The text, lines separated by newlines.

        Raises:
          Nothing: what is unavailable is said in the text.

        >>> print(model.summary().splitlines()[0])
        Mixture of 2 experts, g = linear; target y on x1, x2, x3
        """
        g = self.nonlinearity
        names = self.feature_names or _default_names(self.dim)
        lines = [f"Mixture of {self.num_experts} experts, g = {g}; target "
                 f"{self.target_name or 'y'} on {', '.join(names)}"]
        if self.inference is not None:
            s = self.inference
            lines.append(f"rows: {int(s.num_rows)}   parameters: {self.num_params}   "
                         f"log-likelihood: {float(s.log_likelihood):.2f}")
            lines.append(f"AIC: {self.aic():.2f}   BIC: {self.bic():.2f}   ICL: {self.icl():.2f}")
            lines.append("mixing weights: " + " ".join(f"{v:.3f}" for v in s.mixing_weights))
        if self.report is not None:
            # On the host: indexing device arrays compiles a small program per index.
            r = jax.device_get(self.report)
            best = int(r.best)
            start = "the moment start" if best == 0 else f"random start {best}"
            state = ("converged" if bool(r.converged[best]) else "NOT converged (raise "
                     "num_refine_iters)")
            lines.append(f"fit: kept {start} of {len(r.converged)}, "
                         f"{int(r.num_iters[best])} iterations, {state}")
            lines.append(_prior_line(self.prior, float(r.log_likelihood[best])))
            if r.effective_rows is not None:
                rows = np.asarray(r.effective_rows)
                n = float(np.sum(rows))
                lines.append("rows per expert (posterior weight): "
                             + " ".join(f"{v:.1f}" for v in rows)
                             + f"; the gate alone decides {int(r.saturated_rows)} of "
                             f"{n:.0f} rows (probability > {SATURATED_GATE})")
        lines += [f"WARNING: {problem}" for problem in self.degeneracy()]
        if self.selection is not None:
            lines += ["", "k chosen from:", self.selection.table()]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the table states the problem itself
            lines += ["", self.coefficients().table()]
        return "\n".join(lines)

    def degeneracy(self) -> list[str]:
        """What makes the fit degenerate: an expert fitted on fewer posterior rows than its
        d + 2 parameters, or a sigma below `DEGENERATE_NOISE` sd(y) (a spike on a few rows).

        Returns:
          One sentence per problem; empty when there is none, and for a model without a
          fit report.

        Raises:
          Nothing.

        >>> model.degeneracy()
        []
        """
        out = []
        if self.report is not None and self.report.effective_rows is not None:
            rows = np.asarray(self.report.effective_rows)
            out += [f"expert {i} was fitted on {v:.1f} rows of posterior weight, fewer than "
                    f"its d + 2 = {self.dim + 2} parameters" for i, v in enumerate(rows)
                    if v < self.dim + 2]
        if self.report is not None:
            sigma = np.atleast_1d(np.asarray(self.params.noise_std))  # in units of sd(y)
            out += [f"expert {i}'s sigma is {v:.2g} sd(y), a spike on a few rows (fit with the "
                    "default prior)" for i, v in enumerate(np.broadcast_to(
                        sigma, (self.num_experts,))) if v < DEGENERATE_NOISE]
        return out

    def __repr__(self) -> str:
        fit = "" if self.inference is None else (
            f", n={int(self.inference.num_rows)}, "
            f"log_likelihood={float(self.inference.log_likelihood):.2f}, bic={self.bic():.2f}")
        return (f"FittedMoE(k={self.num_experts}, d={self.dim}, "
                f"nonlinearity={self.nonlinearity!r}{fit})")


jax.tree_util.register_dataclass(
    FittedMoE, data_fields=["params", "standardizer", "report", "selection", "inference"],
    meta_fields=["feature_names", "target_name", "noise_learned", "prior"])


# `FittedMoE.degeneracy`: a sigma below this fraction of sd(y) marks a degenerate expert.
DEGENERATE_NOISE = 0.01


def _prior_line(prior, objective: float) -> str:
    """The summary's line on the prior and the objective the fit maximised."""
    if prior is None:
        return f"objective: maximum likelihood (prior=None), {objective:.4f} per row"
    return (f"objective: penalised log-likelihood {objective:.4f} per row (standardised "
            f"scale); prior: gate slopes N(0, {prior.gate_scale:g}^2), sigma^2 scaled-inv-chi^2("
            f"{prior.noise_dof:g}, (sd(y) / k)^2)")


def _default_names(dim: int) -> tuple[str, ...]:
    """The names of unnamed columns: x1, ..., xd."""
    return tuple(f"x{i + 1}" for i in range(dim))


def design_matrix(standardizer: Standardizer, x: jax.Array) -> jax.Array:
    """[standardize(x), 1]: (n, d + 1)."""
    xs = preprocessing._transform_features(standardizer, x)
    return jnp.concatenate([xs, jnp.ones_like(xs[:, :1])], axis=1)


def _on_rows(model: "FittedMoE", fn, *arrays, reduce: bool = False):
    """fn(params, standardizer, *arrays) for a method of `model` on checked rows. Host
    (NumPy) rows are padded with zero rows to their row bucket and the outputs cut back to n
    rows on the host, as NumPy arrays, so that a new row count compiles nothing (even moving
    an array of a new shape to the device compiles a program); with `reduce`, fn also takes
    the row weights (0 on padding) and returns a weighted mean. JAX arrays (on a device, or
    traced) go as they are, and give JAX arrays. With the persistent cache on, host rows go
    through the exported program (`compilation.cached_call`), which a later process need not
    trace."""
    if not all(isinstance(a, np.ndarray) for a in arrays):
        return fn(model.params, model.standardizer, *arrays)
    n = arrays[0].shape[0]
    *padded, weights = sums.pad_rows(sums.bucket_size(n), *arrays)
    args = (model.params, model.standardizer, *padded, *([weights] if reduce else []))
    out = compilation.cached_call(fn, args)
    return out if reduce else jax.tree.map(lambda v: np.asarray(v)[:n], out)


# One compiled program per row bucket for each method (rather than one per operation).
@jax.jit
def _predict(params, standardizer, x):
    pred = predictive.predict(params, design_matrix(standardizer, x))
    return preprocessing.inverse_target(standardizer, pred)


def _mean(values, weights):
    return jnp.mean(values, axis=0) if weights is None else (
        jnp.tensordot(weights, values, axes=1) / jnp.sum(weights))


@jax.jit
def _log_likelihood(params, standardizer, x, y, weights=None):
    return _mean(_log_density(params, standardizer, x, y), weights)


@jax.jit
def _mixing_weights(params, standardizer, x, weights=None):
    return _mean(_gate_probabilities(params, standardizer, x), weights)


@jax.jit
def _gate_probabilities(params, standardizer, x):
    return predictive.gate_probabilities(params, design_matrix(standardizer, x))


@jax.jit
def _posteriors(params, standardizer, x, y):
    y_std = preprocessing._transform_target(standardizer, y)
    return predictive.posteriors(params, design_matrix(standardizer, x), y_std)


@jax.jit
def _clusters(params, standardizer, x, y):
    return jnp.argmax(_posteriors(params, standardizer, x, y), axis=-1)


@jax.jit
def _log_density(params, standardizer, x, y):
    y_std = preprocessing._transform_target(standardizer, y)
    return (predictive.log_density(params, design_matrix(standardizer, x), y_std)
            - jnp.log(standardizer.y_scale))


@jax.jit
def _predict_variance(params, standardizer, x):
    _, var = predictive.mean_and_variance(params, design_matrix(standardizer, x))
    return jnp.square(standardizer.y_scale) * var


@jax.jit
def _interval(params, standardizer, x, probs):
    q = predictive.quantiles(params, design_matrix(standardizer, x), probs)
    q = preprocessing.inverse_target(standardizer, q)
    return q[:, 0], q[:, 1]


@jax.jit
def _sample(params, standardizer, x, key):
    draws = predictive.sample_response(key, params, design_matrix(standardizer, x))
    return preprocessing.inverse_target(standardizer, draws)


# Screening of the refinement's starts: all run this many iterations together, then the best
# few go on to convergence (docs/solvers.md has the measurement behind both numbers).
REFINE_SCREEN_ITERS = 50
REFINE_KEEP = 4
# Up to this many free gating parameters ((k - 1) (d + 1)) the refinement's gating M-step is a
# capped Newton step (its Hessian costs (k - 1)^2 (d + 1)^2 per row), above it the Bohning step.
NEWTON_GATING_MAX_PARAMS = 128


# A gate probability above this decides a row alone (`FitReport.saturated_rows`).
SATURATED_GATE = 0.999


@functools.partial(jax.jit, static_argnames=("num_iters", "learn", "layout"))
def _refine_starts(starts: MoEParams, z, y, num_iters, tol, learn, weights=None,
                   layout=sums.Layout(), penalty=None):
    """Joint EM from m starts (leading axis) in one vmap, screened; the best by likelihood
    (by the penalised objective with a `moejax.prior.Penalty`)."""
    newton = (starts.gating.shape[1] - 1) * starts.gating.shape[2] <= NEWTON_GATING_MAX_PARAMS
    em_map = jax.vmap(joint_em_map(z, y, starts.nonlinearity, learn, weights, layout, newton,
                                   penalty))
    theta = (starts.experts, starts.gating, jnp.log(starts.noise_std))
    (experts, gatings, log_sigma), kept, info = solver.iterate_screened(
        em_map, theta, tol=tol, max_iters=num_iters, screen_iters=REFINE_SCREEN_ITERS,
        keep=REFINE_KEEP, value_dtype=z.dtype)
    top = solver.first_best(jnp.where(info.finite[kept], info.log_likelihood[kept], -jnp.inf))
    params = MoEParams(experts[top], gatings[top], jnp.exp(log_sigma[top]), starts.nonlinearity)
    continued = jnp.zeros(info.num_iters.shape, bool).at[kept].set(True)
    report = solver.make_info(FitReport, info, best=kept[top], continued=continued,
                              **_occupancy(params, z, y, weights, layout))
    return params, report, info.finite[kept[top]]


def _occupancy(params: MoEParams, z, y, weights, layout) -> dict:
    """FitReport's effective_rows (k,) and saturated_rows of params on the rows (z, y)."""
    def block(zb, yb, w):
        log_dens = predictive.expert_log_densities(params, zb, yb)
        gate, resp, _ = e_step(params.gating, zb, log_dens)
        top = functools.reduce(jnp.maximum, gate)
        return jnp.stack(resp) @ w, jnp.sum(w * (top > SATURATED_GATE))

    rows, saturated = sums.row_sum(block, (z, y), layout, weights)
    return dict(effective_rows=rows, saturated_rows=saturated)


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """`fit`'s settings (see `fit` for each), checked once by `checked`; the stages read them
    from here, and k selection fits each k with `dataclasses.replace(config, num_experts=k)`."""

    num_experts: int | str
    nonlinearity: str = "linear"
    noise_std: object = None
    whiten: bool = True
    num_refine_iters: int = 3000
    refine_tol: float = 1e-8
    num_refine_inits: int = 16
    num_power_inits: int = 10
    num_gating_inits: int = 1
    num_gating_iters: int = 50
    per_expert_noise: bool = True
    max_experts: int = 4
    select_by: str = "bic"
    chunk_size: int | None = None
    standard_errors: bool = True
    prior: Prior | None = Prior()

    def checked(self) -> "FitConfig":
        """The settings with counts and flags as Python values; ValueError naming the first
        bad one. num_experts's range and sigma's shape depend on the data (`fit` checks
        them)."""
        if not isinstance(self.nonlinearity, str) or self.nonlinearity not in nonlinearity_names():
            raise ValueError(f"nonlinearity must be one of {nonlinearity_names()} (a name, so "
                             "that the model can be saved; moejax.register_nonlinearity adds "
                             f"one), got {self.nonlinearity!r}.")
        if isinstance(self.num_experts, str) and self.num_experts != "auto":
            raise ValueError(f"num_experts must be an integer or 'auto', got "
                             f"{self.num_experts!r}.")
        if self.select_by not in ("bic", "cv"):
            raise ValueError(f"select_by must be 'bic' or 'cv', got {self.select_by!r}.")
        _validate.positive(self.refine_tol, "refine_tol")
        return dataclasses.replace(
            self,
            prior=prior_lib.check(self.prior),
            whiten=_validate.flag(self.whiten, "whiten"),
            standard_errors=_validate.flag(self.standard_errors, "standard_errors"),
            per_expert_noise=_validate.flag(self.per_expert_noise, "per_expert_noise"),
            num_refine_iters=_validate.count(self.num_refine_iters, "num_refine_iters", minimum=0),
            num_refine_inits=_validate.count(self.num_refine_inits, "num_refine_inits",
                                              minimum=0),
            num_power_inits=_validate.count(self.num_power_inits, "num_power_inits"),
            num_gating_inits=_validate.count(self.num_gating_inits, "num_gating_inits"),
            num_gating_iters=_validate.count(self.num_gating_iters, "num_gating_iters"),
            max_experts=_validate.count(self.max_experts, "max_experts"))


@accepts_old_names(*FIT_RENAMED, renamed=FIT_RENAMED)
def fit(key: jax.Array, x, y, *, num_experts: int | str, nonlinearity: str = "linear",
        noise_std=None, whiten: bool = True, num_refine_iters: int = 3000,
        refine_tol: float = 1e-8,
        num_refine_inits: int = 16, num_power_inits: int = 10, num_gating_inits: int = 1,
        num_gating_iters: int = 50, per_expert_noise: bool = True, feature_names=None,
        target_name=None, max_experts: int = 4, select_by: str = "bic",
        chunk_size: int | None = None, standard_errors: bool = True,
        prior: Prior | None = Prior(), progress=None) -> FittedMoE:
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

    noise_std: sigma in the target's units (fixed; a scalar, or one per expert), or None to
    estimate it: started at the moment estimate `initial_noise_std` and updated by the
    maximum-likelihood M-step in the gating EM and in every refinement iteration. With
    `per_expert_noise` (the default) the refinement learns one sigma per expert, as mixtures of
    regressions on real data need (docs/results.md measures it); else one shared sigma.

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

    num_experts="auto" fits k = 1, ..., max_experts (at most d; k = 1 is least squares) and
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
      num_experts: k in [2, d]; 1 for least squares (one linear expert, a constant gate,
        sigma by maximum likelihood unless noise_std is given); or "auto", which considers
        only k whose free parameters number at most n / `ROWS_PER_PARAMETER`
        (`supported_experts`). An explicit k with more free parameters than rows is an
        error, and one with fewer than `ROWS_PER_PARAMETER` rows per parameter a warning.
      nonlinearity: the experts' g, a name in `moejax.nonlinearity_names()` (so that the
        model can be saved).
      noise_std, per_expert_noise: as above.
      whiten: whiten x (True) or only standardise its columns.
      num_refine_iters, refine_tol, num_refine_inits: the refinement's cap, tolerance and
        extra random starts.
      num_power_inits, num_gating_inits, num_gating_iters: the moment stage's and gating EM's.
      feature_names, target_name: optional names, kept with the model; by default a
        DataFrame x's columns and a Series y's name.
      max_experts, select_by: for num_experts="auto".
      chunk_size: None, or rows per block of every pass over the data (the moment stage, the
        gating EM and the refinement), so that temporaries do not grow with n.
      standard_errors: keep the training statistics behind `FittedMoE.coefficients`'
        standard errors and the information criteria: the observed information at the fit by
        exact autodiff, in float64 (docs/algorithm.md section 7); one more compiled program.
      prior: a `moejax.Prior` (the default's strengths, or others), or None for maximum
        likelihood.
      progress: if given, called with a short message as each stage starts (the command
        line prints them).

    Returns:
      A FittedMoE that predicts in original units.

    Raises:
      ValueError: for malformed, non-finite or constant data, constant or collinear
        feature columns (with whiten), k outside [2, d], n <= d, more free parameters than
        rows, an unknown non-linearity or setting (or prior), or a refinement that produced
        non-finite numbers (named cause).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(500, 3))
    >>> y = np.where(x[:, 0] > 0, 2 * x[:, 1], -x[:, 2]) + 0.1 * rng.normal(size=500)
    >>> model = fit(jax.random.key(0), x, y, num_experts=2, num_refine_iters=200)
    >>> model.predict(x[:5]).shape, model.noise_std.shape
    ((5,), (2,))
    """
    _validate.host_side("fit", x, y, key, noise_std)
    config = FitConfig(num_experts=num_experts, nonlinearity=nonlinearity, noise_std=noise_std,
                       whiten=whiten, num_refine_iters=num_refine_iters, refine_tol=refine_tol,
                       num_refine_inits=num_refine_inits, num_power_inits=num_power_inits,
                       num_gating_inits=num_gating_inits, num_gating_iters=num_gating_iters,
                       per_expert_noise=per_expert_noise, max_experts=max_experts,
                       select_by=select_by, chunk_size=chunk_size,
                       standard_errors=standard_errors, prior=prior).checked()
    progress = progress or (lambda message: None)
    # A DataFrame's columns and a Series' name, unless names are given (no pandas import).
    if feature_names is None and not isinstance(x, np.ndarray):
        feature_names = getattr(x, "columns", None)
    if target_name is None and not isinstance(y, np.ndarray):
        target_name = getattr(y, "name", None)
    if config.num_experts == "auto":
        x, y = _validate.data(x, y)
        names = _names(feature_names, target_name, x.shape[1])
        supported = supported_experts(*x.shape, config.per_expert_noise)
        max_experts = min(config.max_experts, x.shape[1], supported)
        folds = 5 if config.select_by == "cv" else 0
        progress(f"choosing k in 1..{max_experts} by "
                 + ("5-fold cross-validation" if folds else "BIC")
                 + (f" ({x.shape[0]} rows support at most k = {supported}: "
                    f"{ROWS_PER_PARAMETER} rows per parameter)"
                    if supported < min(config.max_experts, x.shape[1]) else ""))
        scores, models = _select(key, x, y, config, max_experts, folds, names)
        best = scores.best_cv if folds else scores.best_bic
        model = dataclasses.replace(models[best], selection=scores)
        if best == max_experts and scores.at_largest():
            _validate.warn(scores.at_largest())
    elif config.num_experts == 1:
        x, y = _validate.data(x, y)
        if x.shape[0] < x.shape[1] + 2:
            raise ValueError(f"least squares (num_experts=1) needs at least d + 2 = "
                             f"{x.shape[1] + 2} rows, got {x.shape[0]}.")
        progress(f"least squares on {x.shape[0]} rows x {x.shape[1]} features")
        model = _least_squares(x, y, _names(feature_names, target_name, x.shape[1]),
                               config.noise_std)
    else:
        x, y, _ = _validate.fit_inputs(x, y, config.num_experts, config.nonlinearity, 1.0,
                                       power=2)
        _check_rows(*x.shape, config)
        model = _fit(key, x, y, config, _names(feature_names, target_name, x.shape[1]),
                     progress)
    if not config.standard_errors:
        return model
    progress("standard errors: the observed information at the fit")
    return dataclasses.replace(model, inference=_training_statistics(model, x, y))


def _training_statistics(model: "FittedMoE", x, y) -> Inference:
    """The model's `Inference` on its checked training data, padded to the fit's row bucket
    (one compiled program per bucket)."""
    xs, ys = _standardised(model.standardizer, x, y)
    z = np.concatenate([xs, np.ones_like(xs[:, :1])], axis=1)
    z, ys, weights = sums.pad_rows(sums.bucket_size(x.shape[0]), z, ys)
    return inference.statistics(model.params, z, ys, weights, model.standardizer.y_scale,
                                model.noise_learned, model.prior)


def _names(feature_names, target_name, dim: int) -> dict:
    """The model's column names as strings; ValueError unless feature_names names d columns."""
    if feature_names is not None:
        if isinstance(feature_names, (str, bytes)):
            raise ValueError(f"feature_names must be a sequence of d = {dim} names, got "
                             f"the single string {feature_names!r}.")
        feature_names = tuple(str(v) for v in feature_names)
        if len(feature_names) != dim:
            raise ValueError(f"feature_names must name the d = {dim} columns of x, got "
                             f"{len(feature_names)} names.")
    return dict(feature_names=feature_names,
                target_name=None if target_name is None else str(target_name))


# `num_experts="auto"` considers k only when the rows number at least this many per free
# parameter (`supported_experts`); an explicit k gets a warning below it.
ROWS_PER_PARAMETER = 5
# A regularised fit drops an expert with fewer posterior rows than this many per parameter of
# its own (d + 2: slopes, intercept, sigma): measured on six public tables
# (experiments/generalisation.py, docs/results.md), fits whose smallest expert had under 1.5
# rows per parameter lost to least squares on held-out likelihood in 18 of 24 cases.
MIN_ROWS_PER_EXPERT_PARAMETER = 2


def _num_params(num_experts: int, dim: int, per_expert_noise: bool,
                learn_sigma: bool = True) -> int:
    """`inference.parameter_count` of a fit that learns sigma (one per expert, or shared), or
    of one given sigma (`learn_sigma=False`: none counted)."""
    k = num_experts
    sigmas = (k if per_expert_noise and k > 1 else 1) if learn_sigma else 0
    return inference.parameter_count(k, dim, sigmas)


def supported_experts(num_rows: int, dim: int, per_expert_noise: bool = True) -> int:
    """The largest k (at least 1) whose free parameters the rows support, at least
    `ROWS_PER_PARAMETER` rows per parameter: the largest k `num_experts="auto"` considers."""
    k = 1
    while ROWS_PER_PARAMETER * _num_params(k + 1, dim, per_expert_noise) <= num_rows:
        k += 1
    return k


# One refinement pass (all starts) above this many multiply-adds gets a warning before the fit
# starts: a fit whose every pass is this large takes far longer than a table-sized one (a
# 1500-row table with 5 features and k = 2 costs about 2.4e6 per pass).
LARGE_PASS = 1e11


def refinement_cost(num_rows: int, dim: int, num_experts: int, num_starts: int,
                    chunk_size: int | None, itemsize: int) -> tuple[float, float]:
    """What one joint-EM pass of `fit`'s refinement costs, for `num_starts` starts at once (the
    screening iterations run them all): (multiply-adds, bytes of the pass's temporaries).

    Per row, start and expert: the expert's and the gate's z . w (2 (d + 1)) and the weighted
    outer product z z^T of the expert's normal equations ((d + 1)^2); per start, about eight
    (rows of a block, k) arrays and k (d + 1, d + 1) normal equations."""
    d1 = dim + 1
    block = num_rows if chunk_size is None else min(chunk_size, num_rows)
    work = float(num_starts) * num_rows * num_experts * (2 * d1 + d1 * d1)
    memory = float(itemsize) * num_starts * num_experts * (8 * block + d1 * d1)
    return work, memory


def _announce_cost(num_rows: int, dim: int, config: FitConfig, itemsize: int,
                   progress) -> None:
    """Says what the refinement will cost before it starts (progress), and warns when one
    pass is beyond `LARGE_PASS` multiply-adds: such a fit takes hours, not seconds."""
    if not config.num_refine_iters:
        return
    starts = 1 + config.num_refine_inits
    work, memory = refinement_cost(num_rows, dim, config.num_experts, starts,
                                   config.chunk_size, itemsize)
    progress(f"refinement cost: {work:.2g} multiply-adds and {memory / 2**20:.0f} MiB of "
             f"temporaries per pass of its {starts} starts, at most "
             f"{2 * config.num_refine_iters} passes")
    if work > LARGE_PASS:
        _validate.warn(
            f"this fit is large: one refinement pass of its {starts} starts costs about "
            f"{work:.2g} multiply-adds (k = {config.num_experts} experts on {num_rows} rows of "
            f"{dim} features; minutes per pass on a CPU) and up to "
            f"{2 * config.num_refine_iters} passes may run. Fewer experts, fewer starts "
            "(num_refine_inits), a lower num_refine_iters, or a GPU make it faster; "
            "chunk_size bounds its memory.")


def _check_rows(num_rows: int, d: int, config: FitConfig) -> None:
    """ValueError when an explicit k has more free parameters than there are rows; a warning
    when it has more than a `ROWS_PER_PARAMETER`-th of them (the fit will overfit)."""
    k = config.num_experts
    params = _num_params(k, d, config.per_expert_noise)
    if num_rows < params:
        raise ValueError(f"num_experts={k} has {params} free parameters on d = {d} features, "
                         f"more than the {num_rows} rows: the fit would interpolate them. "
                         f"Use fewer experts (the rows support k = "
                         f"{supported_experts(num_rows, d, config.per_expert_noise)}) or "
                         "num_experts='auto'.")
    if num_rows < ROWS_PER_PARAMETER * params:
        _validate.warn(f"num_experts={k} has {params} free parameters for {num_rows} rows, "
                       f"fewer than {ROWS_PER_PARAMETER} rows per parameter: expect the fit "
                       "to overfit (num_experts='auto' considers k up to "
                       f"{supported_experts(num_rows, d, config.per_expert_noise)}).")


def _fit(key, x, y, config: FitConfig, names: dict, progress, quiet: bool = False
         ) -> FittedMoE:
    """`fit` for one k on checked host data (x, y) with checked settings: the standardisation
    and the padding to the row bucket on the host, stages 2-4 in one compiled program
    (`_fit_program`), then the checks of what it reports. With a prior, an expert left with
    fewer than `MIN_ROWS_PER_EXPERT_PARAMETER` (d + 2) posterior rows is dropped and k - 1
    experts are fitted instead (least squares for k = 1), with a warning unless `quiet`."""
    num_experts, learn = config.num_experts, config.noise_std is None
    noise_std = None if learn else _validate.noise_levels(config.noise_std,
                                                          num_experts).astype(x.dtype)
    progress(f"standardising {x.shape[0]} rows x {x.shape[1]} features")
    std = preprocessing._fit_standardizer(x, y, whiten=config.whiten)
    xp, yp, weights = sums.pad_rows(sums.bucket_size(x.shape[0]), x, y)
    progress(f"moment stage ({num_experts} experts), gating EM ({config.num_gating_inits} "
             f"starts, at most {config.num_gating_iters} iterations)"
             + (f", joint-EM refinement (the moment start and {config.num_refine_inits} "
                f"random starts, at most {config.num_refine_iters} iterations each)"
                if config.num_refine_iters else ""))
    _announce_cost(x.shape[0], x.shape[1], config, x.dtype.itemsize, progress)
    penalty = (None if config.prior is None else
               prior_lib.penalty(config.prior, num_experts, x.shape[1], x.dtype))
    params, report, checks = compilation.cached_call(
        _fit_program,
        (key, xp, yp, weights, std, noise_std, np.asarray(config.refine_tol, x.dtype), penalty),
        config=_Stages(**{name: getattr(config, name) for name in _Stages._fields}),
        layout=sums.Layout(config.chunk_size))
    top, sigma, gating_finite, refine_finite = jax.device_get(checks)
    if top > _validate.scale_limit(x.shape[0], x.dtype, power=3):
        _validate.scales(*_standardised(std, x, y), power=3)  # raises, naming x or y
    _validate.noise_scale(sigma, x.dtype, estimated=learn)
    if not (gating_finite and refine_finite):
        xs, ys = _standardised(std, x, y)
        _validate.finite_result(gating_finite, xs, ys, noise_std=None if learn else sigma,
                                nonlinearity=config.nonlinearity)
        _validate.finite_result(refine_finite, xs, ys, what="fit's refinement",
                                nonlinearity=config.nonlinearity)
    model = FittedMoE(params, std, report=report, noise_learned=learn, prior=config.prior,
                      **names)
    rows = None if report is None else np.asarray(report.effective_rows)
    need = MIN_ROWS_PER_EXPERT_PARAMETER * (x.shape[1] + 2)
    if rows is None or rows.min() >= need or not learn or config.prior is None:
        return model
    i = int(np.argmin(rows))
    if not quiet:
        _validate.warn(f"expert {i} of {num_experts} was fitted on {rows[i]:.1f} rows of "
                       f"posterior weight, fewer than {MIN_ROWS_PER_EXPERT_PARAMETER} per each "
                       f"of its d + 2 = {x.shape[1] + 2} parameters: it is dropped and "
                       f"{num_experts - 1} expert(s) are fitted instead.")
    if num_experts == 2:
        return _least_squares(x, y, names, config.noise_std)
    return _fit(key, x, y, dataclasses.replace(config, num_experts=num_experts - 1), names,
                progress, quiet)


def _standardised(std: Standardizer, x, y) -> tuple[np.ndarray, np.ndarray]:
    """The standardised (x, y) on the host, in float64."""
    std = jax.tree.map(lambda v: np.asarray(v, np.float64), std)
    return ((np.asarray(x, np.float64) - std.x_mean) @ std.x_map,
            (np.asarray(y, np.float64) - std.y_mean) / std.y_scale)


class _Stages(NamedTuple):
    """The settings that shape `_fit_program`: static, so a new value compiles a new program
    (the others, and sigma, the tolerance and the data's values, do not)."""

    num_experts: int
    nonlinearity: str
    per_expert_noise: bool
    num_power_inits: int
    num_gating_inits: int
    num_gating_iters: int
    num_refine_iters: int
    num_refine_inits: int


@compilation.jit(static_argnames=("config", "layout"))
def _fit_program(key, x, y, weights, std: Standardizer, noise_std, tol, penalty,
                 config: _Stages, layout: sums.Layout):
    """Stages 2-4 of `fit` as one compiled program, for x: (rows, d) and y: (rows,) padded
    with weight-0 rows (`weights`: (rows,), 1 on the data's rows) and standardised here.
    noise_std: the given sigma in the target's units, or None to learn it; penalty: the
    prior's `moejax.prior.Penalty` for the refinement, or None. Returns the
    parameters, the refinement's FitReport (None without refinement) and what the host
    checks afterwards: (max(|x_std| sqrt(d), |y_std|) for the overflow check, sigma's start,
    whether the gating EM and the refinement stayed finite)."""
    k, g, learn = config.num_experts, config.nonlinearity, noise_std is None
    real = weights > 0
    xs = jnp.where(real[:, None], preprocessing._transform_features(std, x), 0.0)
    ys = jnp.where(real, preprocessing._transform_target(std, y), 0.0)
    z = jnp.concatenate([xs, real[:, None].astype(xs.dtype)], axis=1)  # padding rows all 0
    top = jnp.maximum(jnp.max(jnp.abs(xs)) * jnp.sqrt(xs.shape[1]), jnp.max(jnp.abs(ys)))
    sigma = (_initial_noise_std(ys, g, weights) if learn else noise_std / std.y_scale)
    key_tensor, key_gating, key_starts = jax.random.split(key, 3)
    # The moment stage's transforms assume one sigma: given one per expert, it uses their rms.
    est, _ = _recover_experts(key_tensor, xs, ys, jnp.sqrt(jnp.mean(jnp.square(sigma))), k, g,
                              config.num_power_inits, 100, 1e-6, None, layout, weights)
    w, info = gating._fit_gating(key_gating, xs, ys, est.experts, sigma, g,
                                 config.num_gating_inits, config.num_gating_iters, 1.0, learn,
                                 layout, weights=weights)
    pad = jnp.zeros((k, 1), xs.dtype)
    start_sigma = info.noise_std
    if learn and config.per_expert_noise:
        start_sigma = jnp.broadcast_to(start_sigma, (k,))
    params = MoEParams(jnp.concatenate([est.experts, pad], 1), jnp.concatenate([w, pad], 1),
                       start_sigma, g)
    report, refine_finite = None, jnp.asarray(True)
    if config.num_refine_iters:
        randoms = jax.vmap(lambda key: random_init(key, z.shape[1], k, start_sigma, z.dtype,
                                                   nonlinearity=g))(
            jax.random.split(key_starts, config.num_refine_inits))
        starts = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), params, randoms)
        params, report, refine_finite = _refine_starts(starts, z, ys, config.num_refine_iters, tol,
                                                       learn, weights, layout, penalty)
    return params, report, (top, sigma, info.finite, refine_finite)


def _least_squares(x, y, names: dict, noise_std=None) -> FittedMoE:
    """Least squares with Gaussian noise as a one-expert FittedMoE (k = 1: the gate is constant),
    on the same standardised scale as `fit`'s models; x, y checked. noise_std: sigma in the
    target's units (fixed), or None for its maximum-likelihood estimate."""
    std = preprocessing._fit_standardizer(x, y)
    xs, ys = _standardised(std, x, y)
    z = np.concatenate([xs, np.ones_like(xs[:, :1])], axis=1)
    beta = np.linalg.lstsq(z, ys, rcond=None)[0]
    if noise_std is None:
        sigma = np.sqrt(np.mean(np.square(ys - z @ beta)))
    else:
        sigma = np.asarray(_validate.noise_levels(noise_std, 1), np.float64).reshape(()) / float(
            std.y_scale)
    # Cast on the host (a cast on the device compiles a program per shape).
    params = MoEParams(*(jax.device_put(np.asarray(v, x.dtype)) for v in (
        beta[None], np.zeros((1, z.shape[1])), sigma)), "linear")
    return FittedMoE(params, std, noise_learned=noise_std is None, **names)


def _select(key, x, y, config: FitConfig, max_experts: int, num_folds: int, names: dict):
    """`selection.score` with least squares for k = 1 and `_fit` for k >= 2."""
    def fit_k(key, x, y, k):
        if k == 1:
            return _least_squares(x, y, names)
        return _fit(key, x, y, dataclasses.replace(config, num_experts=k), names,
                    lambda message: None, quiet=True)

    def num_params(k):  # least squares learns its sigma; k >= 2 as configured
        return _num_params(k, x.shape[1], config.per_expert_noise,
                           learn_sigma=k == 1 or config.noise_std is None)

    return selection.score(key, x, y, max_experts=max_experts, num_folds=num_folds,
                           nonlinearity=config.nonlinearity, fit_k=fit_k, num_params=num_params,
                           log_likelihood=lambda m, x, y: _on_rows(m, _log_likelihood, x, y,
                                                                   reduce=True))


@accepts_old_names(*FIT_RENAMED, renamed=FIT_RENAMED)
def select_num_experts(key: jax.Array, x, y, *, max_experts: int = 4,
                       nonlinearity: str = "linear", num_folds: int = 5,
                       **fit_kwargs) -> KSelection:
    """Scores k = 1, ..., max_experts by BIC (fitted on all rows) and by `num_folds`-fold
    cross-validated log-likelihood; k = 1 is least squares, k >= 2 `fit` (with `fit_kwargs`).
    Every fold holds out n // num_folds rows and trains on the rest, so that all folds share
    one shape (one compilation per k). docs/selection.md has the rules.

    Args:
      key: PRNG key (the folds and every fit).
      x: (n, d) features; y: (n,) target.
      max_experts: the largest k, at most d.
      nonlinearity: the experts' g (a name).
      num_folds: F >= 2 cross-validation folds.
      **fit_kwargs: passed to every `fit` (e.g. num_refine_iters, per_expert_noise).

    Returns:
      KSelection: every k's parameter count, training log-likelihood, BIC, cross-validated
      log-likelihood and its sd, the M2 spectrum, and the k each criterion picks.

    Raises:
      ValueError: for malformed data, max_experts > d, num_folds < 2, or too few rows for
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
    names = {name: fit_kwargs.pop(name, None) for name in ("feature_names", "target_name")}
    config = FitConfig(num_experts="auto", nonlinearity=nonlinearity, max_experts=max_experts,
                       **fit_kwargs).checked()
    x, y = _validate.data(x, y)
    if config.max_experts > x.shape[1]:
        raise ValueError(f"max_experts must be at most d = {x.shape[1]}, got "
                         f"{config.max_experts}.")
    names = _names(names["feature_names"], names["target_name"], x.shape[1])
    return _select(key, x, y, config, config.max_experts, num_folds, names)[0]
