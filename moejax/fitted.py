"""A fitted model in the data's units: `FittedMoE`, its per-row methods (each one compiled
program per row bucket), its summary and coefficients; `design_matrix`, the input the model
acts on."""

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from moejax import _validate, inference, predictive, preprocessing, program_cache, sums
from moejax.inference import Inference
from moejax.families import get_family
from moejax.params import MoEParams
from moejax.preprocessing import Columns, Standardizer
from moejax.prior import Prior
from moejax.refinement import SATURATED_GATE, FitReport, has_moment_start, start_name
from moejax.selection import KSelection


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
      target_range: (min, max) of the training targets, or None (a model built by hand, or
        saved before it was kept): `predict` warns of predictions far outside it
        (`far_predictions`).
      columns: None (every column of x feeds the experts and the gate), or the
        `moejax.preprocessing.Columns` of a fit with expert_columns or gate_columns.

    Example (the methods' examples use this `model`, `x` and `y`):
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> x = rng.normal(size=(400, 3))
      >>> y = np.where(x[:, 0] > 0, 2 * x[:, 1], -x[:, 2]) + 0.1 * rng.normal(size=400)
      >>> from moejax import fit
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
    target_range: tuple[float, float] | None = None
    columns: Columns | None = None

    @property
    def nonlinearity(self):
        """The experts' g (params.nonlinearity)."""
        return self.params.nonlinearity

    @property
    def moment_start(self) -> bool:
        """Whether the fit had the moment start (start 0 of `report`): it needs k <= d (the
        experts' columns), a gate on the experts' design and a family whose moments it reads
        (the Gaussian); otherwise every start is random."""
        gate = None if self.columns is None else self.columns.gate
        return has_moment_start(self.num_experts, self.params.experts.shape[1] - 1,
                                None if gate is None else len(gate), self.params.family)

    @property
    def num_experts(self) -> int:
        return self.params.experts.shape[0]

    @property
    def dim(self) -> int:
        """d, the number of x's columns (the features, without the intercept)."""
        return (self.params.experts.shape[1] - 1 if self.columns is None
                else self.columns.num_features)

    def _names(self) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
        """(the experts' column names, the gate's own or None when it shares them)."""
        names = self.feature_names or _default_names(self.dim)
        if self.columns is None:
            return tuple(names), None
        pick = lambda index: tuple(names[i] for i in index)
        gate = self.columns.gate
        return pick(self.columns.experts), None if gate is None else pick(gate)

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
        return design_matrix(self.standardizer, x if self.columns is None
                             else self.columns.gather(x))

    def predict(self, x) -> jax.Array:
        """E[y | x] = sum_i softmax(W z)_i g(a_i . z) in the target's units, z = design(x).

        Args:
          x: (n, d) features in the units the model was fitted on.

        Returns:
          (n,) predictions.

        Raises:
          ValueError: for x that is not a finite (n, d) array.

        A warning says how many predictions lie more than half the training targets' range
        beyond it (`far_predictions`): there the gate sends a row to an expert whose line is
        extrapolated far from the rows it was fitted on.

        >>> model.predict(x[:3]).shape
        (3,)
        """
        pred = _on_rows(self, _predict, self._checked(x))
        far = self._far(pred)
        if far is not None and far.any():
            i = int(np.argmax(far))
            lo, hi = self.target_range
            _validate.warn(f"{int(far.sum())} of {far.size} predictions lie more than half the "
                           f"training targets' range beyond it (training targets in "
                           f"[{lo:.4g}, {hi:.4g}]; row {i} (from 0) predicts "
                           f"{float(pred[i]):.4g}): the "
                           "gate sends such rows to an expert whose line is extrapolated far "
                           "from its rows. FittedMoE.far_predictions(x) flags them.")
        return pred

    def far_predictions(self, x) -> np.ndarray:
        """Which rows' predictions lie more than half the training targets' range beyond it
        (below min - span / 2 or above max + span / 2): the rows `predict` warns about.

        Args:
          x: (n, d) features in the units the model was fitted on.

        Returns:
          (n,) booleans; all False for a model without `target_range`.

        Raises:
          ValueError: for x that is not a finite (n, d) array.

        >>> bool(model.far_predictions(x[:3]).any())
        False
        """
        pred = np.asarray(_on_rows(self, _predict, self._checked(x)))
        far = self._far(pred)
        return np.zeros(pred.shape, bool) if far is None else far

    def _far(self, pred) -> np.ndarray | None:
        """The far-prediction flags of host predictions, or None (JAX arrays, which may be
        traced, or no target_range)."""
        if self.target_range is None or not isinstance(pred, np.ndarray):
            return None
        lo, hi = self.target_range
        margin = (hi - lo) / 2
        return (pred < lo - margin) | (pred > hi + margin)

    def expert_means(self, x) -> jax.Array:
        """Each expert's mean g(a_i . x + b_i) for each row, in the target's units: what
        expert i predicts (flexmix's per-component `predict`); `predict` weighs them by the
        gate.

        Args:
          x: (n, d) features in the data's units.

        Returns:
          (n, k): column j is expert j + 1's mean.

        Raises:
          ValueError: for x that is not a finite (n, d) array.

        >>> means = model.expert_means(x[:4])
        >>> means.shape, bool(np.allclose((means * model.gate_probabilities(x[:4])).sum(1),
        ...                               model.predict(x[:4]), atol=1e-4))
        ((4, 2), True)
        """
        return _on_rows(self, _expert_means, self._checked(x))

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
        """x (and y) checked for the per-row methods: a DataFrame's columns matched to the
        fitted ones by name, errors naming the columns and rows at fault."""
        x = self._columns(x)
        try:
            if y is None:
                return _validate.features(x, dim=self.dim)
            x, y = _validate.data(x, y, dim=self.dim)
            _validate.family_target(np.asarray(y), get_family(self.params.family))
            return x, y
        except _validate.DataError as e:
            raise e.named(columns=self.feature_names, target=self.target_name) from None

    def _columns(self, x):
        """A DataFrame x's columns in the fitted order, selected by name (when the model has
        names); ValueError listing the missing and the unknown names. Arrays stay positional
        (their width is checked by the caller)."""
        columns = getattr(x, "columns", None)
        if columns is None or self.feature_names is None or isinstance(x, np.ndarray):
            return x
        given = [str(c) for c in columns]
        missing = [c for c in self.feature_names if c not in given]
        unknown = [c for c in given if c not in self.feature_names]
        if missing or unknown or len(set(given)) != len(given):
            raise ValueError(
                "x's columns must be the fitted features " + repr(list(self.feature_names))
                + " (in any order)" + (f"; missing: {missing}" if missing else "")
                + (f"; not fitted: {unknown}" if unknown else "")
                + ("; some names repeat" if len(set(given)) != len(given) else "") + ".")
        return x[[list(columns)[given.index(c)] for c in self.feature_names]]

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
        """The most probable expert of each row given x and y, numbered 1..k as the summary,
        the coefficients and the command line number experts (flexmix's `clusters`).

        Args:
          x: (n, d) features; y: (n,) targets, in the data's units.

        Returns:
          (n,) integers in 1..k: 1 + the argmax of `posteriors` (whose column j is expert
          j + 1).

        Raises:
          ValueError: for malformed or non-finite x or y, or shapes that do not match.

        >>> sorted(set(np.asarray(model.clusters(x, y)).tolist()))
        [1, 2]
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
        normal approximation; integers for a count (Poisson) model, whose interval covers
        at least `level`.

        Args:
          x: (n, d) features in the data's units.
          level: the interval's probability, in (0, 1).

        Returns:
          (lower, upper), each (n,), in the target's units.

        Raises:
          ValueError: for x that is not a finite (n, d) array, level outside (0, 1), or a
            binomial model (a 0/1 outcome has no informative interval: use `predict`'s
            probabilities).

        >>> lower, upper = model.predict_interval(x[:3], 0.9)
        >>> lower.shape, bool(np.all(lower < upper))
        ((3,), True)
        """
        family = get_family(self.params.family)
        if family.cdf is None:
            raise ValueError(f"predict_interval: a {family.name} model's outcome ({family.target}"
                             ") has no informative predictive interval; predict gives its mean "
                             "(the probability of a 1 for binomial).")
        level = _validate.positive(level, "level")
        if not 0 < float(level) < 1:
            raise ValueError(f"level must be in (0, 1), got {level!r}.")
        probs = np.asarray([(1 - float(level)) / 2, (1 + float(level)) / 2],
                           self.params.experts.dtype)
        return _on_rows(self, functools.partial(_interval, probs=probs), self._checked(x))

    def sample_response(self, key: jax.Array, x) -> jax.Array:
        """One draw of y given each row of x from the fitted model (`moejax.sample` draws x
        too, from a model's parameters).

        Args:
          key: PRNG key.
          x: (n, d) features in the data's units.

        Returns:
          (n,) draws in the target's units.

        Raises:
          ValueError: for x that is not a finite (n, d) array.

        >>> model.sample_response(jax.random.key(1), x[:4]).shape
        (4,)
        """
        return _on_rows(self, functools.partial(_sample, key=key), self._checked(x))

    def sample(self, key: jax.Array, x) -> jax.Array:
        """`sample_response` under its 0.2 name, kept for one version (a DeprecationWarning).

        Args:
          key: PRNG key; x: (n, d) features.

        Returns:
          (n,) draws in the target's units.

        Raises:
          ValueError: as `sample_response`.

        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", DeprecationWarning)
        ...     model.sample(jax.random.key(1), x[:4]).shape
        (4,)
        """
        _validate.warn("FittedMoE.sample is now called sample_response (one draw of y given "
                       "x); the old name will be removed in moejax 0.3.", DeprecationWarning)
        return self.sample_response(key, x)

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

    def deviance(self) -> float:
        """The residual deviance 2 (log L_saturated - log L) on the training rows, as R's
        `glm` and statsmodels report it: for binomial and Poisson experts, whose saturated
        model predicts each row's own y (-2 log L for a 0/1 outcome). A Gaussian mixture has
        no deviance (its saturated likelihood is unbounded); compare -2 log L or `aic`.

        Returns:
          A float >= 0 (up to rounding); smaller is better. On n - num_params degrees of
          freedom.

        Raises:
          ValueError: for a Gaussian model, or one without the training statistics (fitted
            with standard_errors=False, built by hand, or saved by a moejax before 0.3).

        >>> x = np.random.default_rng(0).normal(size=(300, 2))
        >>> counts = np.random.default_rng(1).poisson(np.exp(0.5 + x[:, 0]))
        >>> glm = fit(jax.random.key(0), x, counts, num_experts=1, family="poisson")
        >>> 0 < glm.deviance() < glm.null_deviance()
        True
        """
        return self._deviance(self._stats().log_likelihood)

    def null_deviance(self) -> float:
        """The deviance of the null model (one expert with an intercept only, mu = mean(y)):
        2 (log L_saturated - log L_null) on n - 1 degrees of freedom, what `deviance` is
        compared with (R's `glm`, statsmodels' `null_deviance`).

        Returns:
          A float >= 0.

        Raises:
          ValueError: as `deviance`.

        >>> model.null_deviance()  # the class example's Gaussian mixture
        Traceback (most recent call last):
        ValueError: a mixture of gaussian experts has no deviance ...
        """
        return self._deviance(self._stats().null_log_likelihood)

    def _deviance(self, log_likelihood) -> float:
        """2 (log L_saturated - log_likelihood) on the training rows, or the ValueError of
        `deviance`."""
        family = get_family(self.params.family)
        if family.saturated_log_density is None:
            raise ValueError(f"a mixture of {family.name} experts has no deviance (its "
                             "saturated likelihood is unbounded): compare -2 log-likelihood, "
                             "aic() or bic().")
        top = self._stats().saturated_log_likelihood
        if top is None:
            raise ValueError("this model was saved without its deviance (by a moejax before "
                             "0.3); refit it to get the deviance.")
        return float(2 * (top - log_likelihood))

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
        experts, gate = self._names()
        out = inference.coefficients(self.params, self.standardizer, self.inference, experts,
                                     self.noise_learned, gate)
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
        family = get_family(self.params.family)
        names, gate = self._names()
        kind = ("experts, g = " + str(self.nonlinearity) if family.nonlinearities is None else
                f"{family.name} experts, {family.link} link")
        lines = [f"Mixture of {self.num_experts} {kind}; target "
                 f"{self.target_name or 'y'} on {', '.join(names)}"
                 + ("" if gate is None else
                    f"; gate on {', '.join(gate) if gate else 'an intercept only'}")]
        if self.inference is not None:
            s = self.inference
            lines.append(f"rows: {int(s.num_rows)}   parameters: {self.num_params}   "
                         f"log-likelihood: {float(s.log_likelihood):.2f}")
            lines.append(f"AIC: {self.aic():.2f}   BIC: {self.bic():.2f}   ICL: {self.icl():.2f}")
            if s.saturated_log_likelihood is not None:
                n = int(s.num_rows)
                lines.append(f"deviance: {self.deviance():.2f} on {n - self.num_params} "
                             f"degrees of freedom   null deviance: {self.null_deviance():.2f} "
                             f"on {n - 1}")
            lines.append("mixing weights: " + " ".join(f"{v:.3f}" for v in s.mixing_weights))
        if self.report is not None:
            # On the host: indexing device arrays compiles a small program per index.
            r = jax.device_get(self.report)
            best = int(r.best)
            start = start_name(best, self.moment_start)
            state = ("converged" if bool(r.converged[best]) else "NOT converged (raise "
                     "num_refine_iters)")
            lines.append(f"fit: kept {start} of {len(r.converged)}, "
                         f"{int(r.num_iters[best])} iterations, {state}")
            lines.append(_prior_line(self.prior, float(r.log_likelihood[best]),
                                     family.has_dispersion))
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
        out, own = [], self.params.experts.shape[1] + 1  # an expert's d + 1 coefficients, sigma
        if self.report is not None and self.report.effective_rows is not None:
            rows = np.asarray(self.report.effective_rows)
            out += [f"expert {i + 1} was fitted on {v:.1f} rows of posterior weight, fewer than "
                    f"its d + 2 = {own} parameters" for i, v in enumerate(rows) if v < own]
        if self.report is not None and get_family(self.params.family).has_dispersion:
            sigma = np.atleast_1d(np.asarray(self.params.noise_std))  # in units of sd(y)
            out += [f"expert {i + 1}'s sigma is {v:.2g} sd(y), a spike on a few rows (fit with the "
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
    meta_fields=["feature_names", "target_name", "noise_learned", "prior", "target_range",
                 "columns"])


# `FittedMoE.degeneracy`: a sigma below this fraction of sd(y) marks a degenerate expert.
DEGENERATE_NOISE = 0.01


def _prior_line(prior, objective: float, dispersion: bool = True) -> str:
    """The summary's line on the prior and the objective the fit maximised; dispersion:
    whether the family has one (a prior on sigma), else the prior is on the expert slopes."""
    if prior is None:
        return f"objective: maximum likelihood (prior=None), {objective:.4f} per row"
    experts = (f"sigma^2 scaled-inv-chi^2({prior.noise_dof:g}, (sd(y) / k)^2)" if dispersion
               else f"expert slopes N(0, {prior.expert_scale:g}^2)")
    return (f"objective: penalised log-likelihood {objective:.4f} per row (standardised "
            f"scale); prior: gate slopes N(0, {prior.gate_scale:g}^2), {experts}")


def _default_names(dim: int) -> tuple[str, ...]:
    """The names of unnamed columns: x1, ..., xd."""
    return tuple(f"x{i + 1}" for i in range(dim))


def design_matrix(standardizer: Standardizer, x: jax.Array, xp=jnp) -> jax.Array:
    """[standardize(x), 1]: (n, d + 1); when the gate has columns of its own
    (`Standardizer.gate_map`), x holds the experts' d_e columns then the gate's d_gate
    (`Columns.gather`) and the design is [z_experts, z_gate], each part [standardised, 1]:
    (n, d_e + 1 + d_gate + 1) (`predictive.expert_part`, `predictive.gate_part`). xp: jnp,
    or np for host arrays (a standardizer of NumPy arrays), which compiles nothing."""
    s = standardizer
    dim = s.x_mean.shape[0]
    xs = preprocessing._transform_features(s, x[:, :dim] if s.gate_map is not None else x)
    parts = [xs, xp.ones_like(x[:, :1])]
    if s.gate_map is not None:
        parts += [(x[:, dim:] - s.gate_mean) @ s.gate_map, xp.ones_like(x[:, :1])]
    return xp.concatenate(parts, axis=1)


def _on_rows(model: "FittedMoE", fn, *arrays, reduce: bool = False):
    """fn(params, standardizer, *arrays) for a method of `model` on checked rows. Host
    (NumPy) rows are padded with zero rows to their row bucket and the outputs cut back to n
    rows on the host, as NumPy arrays, so that a new row count compiles nothing (even moving
    an array of a new shape to the device compiles a program); with `reduce`, fn also takes
    the row weights (0 on padding) and returns a weighted mean. JAX arrays (on a device, or
    traced) go as they are, and give JAX arrays. With the persistent cache on, host rows go
    through the exported program (`program_cache.cached_call`), which a later process need not
    trace."""
    if model.columns is not None:  # the experts' and the gate's columns, in the design's order
        arrays = (model.columns.gather(arrays[0]), *arrays[1:])
    if not all(isinstance(a, np.ndarray) for a in arrays):
        return fn(model.params, model.standardizer, *arrays)
    n = arrays[0].shape[0]
    *padded, weights = sums.pad_rows(sums.bucket_size(n), *arrays)
    args = (model.params, model.standardizer, *padded, *([weights] if reduce else []))
    out = program_cache.cached_call(fn, args)
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
def _expert_means(params, standardizer, x):
    means = predictive.expert_means(params.experts, design_matrix(standardizer, x),
                                    params.nonlinearity)
    return preprocessing.inverse_target(standardizer, means)


@jax.jit
def _clusters(params, standardizer, x, y):
    # Expert numbers count from 1, as in the summary and the command line (docs/api.md).
    return jnp.argmax(_posteriors(params, standardizer, x, y), axis=-1) + 1


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
