"""`MoERegressor` and `MoEClassifier` (a two-class target): `moejax.fit` as scikit-learn
estimators, for `Pipeline`, `cross_val_score`, `GridSearchCV` and the rest of scikit-learn (an
optional dependency: `pip install moejax[sklearn]`).

    from sklearn.model_selection import GridSearchCV
    from moejax.sklearn import MoERegressor
    search = GridSearchCV(MoERegressor(random_state=0), {"num_experts": [1, 2, 3]}, cv=5)
    search.fit(X, y)

What a call costs: the first fit of a table compiles `fit`'s program for its row bucket, d,
k and settings (about 10 s on a 2-core CPU); every later fit in the same bucket with the same
d, k and settings reuses it (docs/scale.md, "Compiling once"). The folds of a
cross-validation have one row count, so a grid search over k compiles once per k, and
`moejax.enable_compilation_cache()` keeps the programs for the next process.
"""

import numbers

import jax
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from moejax import _validate, estimator, selection
from moejax.prior import Prior


# The estimator's parameters that are not `moejax.FitConfig` settings; every other one is passed
# to `moejax.fit` by name (tests/test_config.py holds them to FitConfig's names and defaults).
_NOT_SETTINGS = ("random_state", "expert_columns", "gate_columns")


class MoERegressor(RegressorMixin, BaseEstimator):
    """A mixture of experts fitted by `moejax.fit` (moment start, gating EM, joint-EM
    refinement; docs/algorithm.md), with scikit-learn's interface.

    Args:
      num_experts: k >= 1 (1 is least squares), at most the number of features, or "auto"
        to choose k in 1..max_experts by `select_by`.
      family: "gaussian", or "poisson" for a count y (log link); the experts'
        distribution, a name in `moejax.family_names()`.
      nonlinearity: the experts' g, a name in `moejax.nonlinearity_names()`, or None for the
        family's default (linear for the Gaussian).
      num_refine_inits, num_refine_iters, refine_tol: the refinement's extra random starts, cap
        and tolerance.
      per_expert_noise: one noise sd per expert (else one shared).
      whiten: whiten the features (else only standardise them).
      max_experts, select_by: for num_experts="auto" ("bic" or "cv").
      standard_errors: keep the statistics behind `model_.coefficients()` (one more compiled
        program per fit; off by default, since cross-validation does not need them).
      prior: "default" (`moejax.Prior()`, the regularised fit), a `moejax.Prior`, or None
        (maximum likelihood).
      expert_columns, gate_columns: the experts' columns and the gate's own (concomitant
        variables; [] for constant mixing weights), as `moejax.fit` takes them: names of a
        DataFrame X's columns, or positions; None: every column to both.
      random_state: None, an int or a `numpy.random.RandomState`: the seed of the PRNG key.

    Attributes (after `fit`):
      model_: the `moejax.FittedMoE` (coefficients, summary, posteriors, ...).
      n_features_in_: d; feature_names_in_: the column names of a DataFrame X.

    The methods' examples use the `reg`, `X` and `y` of this example.

    Example:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> X = rng.normal(size=(300, 3))
      >>> y = np.where(X[:, 0] > 0, 2 * X[:, 1], -X[:, 2]) + 0.1 * rng.normal(size=300)
      >>> reg = MoERegressor(num_experts=2, num_refine_iters=100, random_state=0).fit(X, y)
      >>> reg.predict(X[:4]).shape, bool(reg.score(X, y) > 0.9)
      ((4,), True)
    """

    def __init__(self, num_experts=2, *, family="gaussian", nonlinearity=None, num_refine_inits=16,
                 num_refine_iters=3000, refine_tol=1e-8, per_expert_noise=True, whiten=True,
                 max_experts=4, select_by="bic", standard_errors=False, prior="default",
                 expert_columns=None, gate_columns=None, random_state=None):
        self.num_experts = num_experts
        self.family = family
        self.nonlinearity = nonlinearity
        self.num_refine_inits = num_refine_inits
        self.num_refine_iters = num_refine_iters
        self.refine_tol = refine_tol
        self.per_expert_noise = per_expert_noise
        self.whiten = whiten
        self.max_experts = max_experts
        self.select_by = select_by
        self.standard_errors = standard_errors
        self.prior = prior
        self.expert_columns = expert_columns
        self.gate_columns = gate_columns
        self.random_state = random_state

    def fit(self, X, y):
        """Fits the model by `moejax.fit` with this estimator's settings.

        Args:
          X: (n, d) features (an array or a DataFrame, whose columns name the features).
          y: (n,) targets (a Series' name names the target).

        Returns:
          self, fitted: `model_` holds the `moejax.FittedMoE`.

        Raises:
          ValueError: for bad data or settings (as `moejax.fit`).

        >>> reg.fit(X, y).model_.num_experts
        2
        """
        target_name = getattr(y, "name", None) if not isinstance(y, np.ndarray) else None
        X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64)
        self.model_ = _fit_model(self, X, y, target_name)
        return self

    def predict(self, X, return_std: bool = False):
        """E[y | x] for each row of X, and with return_std the predictive standard deviation
        sqrt(Var[y | x]) (the experts' noise and their spread; `FittedMoE.predict_variance`).

        Args:
          X: (n, d) features.
          return_std: also return the standard deviations.

        Returns:
          (n,) means, or (means, stds) with return_std.

        Raises:
          ValueError: for X that does not match the fitted features; NotFittedError before
            `fit`.

        >>> mean, std = reg.predict(X[:3], return_std=True)
        >>> mean.shape, bool(np.all(std > 0))
        ((3,), True)
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        mean = np.asarray(self.model_.predict(X), np.float64)
        if not return_std:
            return mean
        return mean, np.sqrt(np.asarray(self.model_.predict_variance(X), np.float64))

    def predict_interval(self, X, level: float = 0.9):
        """The central `level` predictive interval of y for each row: quantiles of the
        fitted mixture (`FittedMoE.predict_interval`).

        Args:
          X: (n, d) features.
          level: the interval's probability, in (0, 1).

        Returns:
          (lower, upper), each (n,).

        Raises:
          ValueError: for X that does not match the fitted features, or level outside
            (0, 1); NotFittedError before `fit`.

        >>> lower, upper = reg.predict_interval(X[:3], 0.8)
        >>> lower.shape, bool(np.all(lower < upper))
        ((3,), True)
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        lower, upper = self.model_.predict_interval(X, level)
        return np.asarray(lower, np.float64), np.asarray(upper, np.float64)

    def gate_probabilities(self, X):
        """P(expert i | x) for each row (`FittedMoE.gate_probabilities`).

        Args:
          X: (n, d) features.

        Returns:
          (n, k) probabilities, rows summing to 1.

        Raises:
          ValueError: for X that does not match the fitted features; NotFittedError before
            `fit`.

        >>> reg.gate_probabilities(X[:3]).shape
        (3, 2)
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return np.asarray(self.model_.gate_probabilities(X), np.float64)

    def posteriors(self, X, y):
        """P(expert i | x, y) for each row (`FittedMoE.posteriors`).

        Args:
          X: (n, d) features; y: (n,) targets.

        Returns:
          (n, k) probabilities, rows summing to 1.

        Raises:
          ValueError: for X or y that do not match the fitted features or each other;
            NotFittedError before `fit`.

        >>> reg.posteriors(X[:3], y[:3]).sum(axis=1).round(4)
        array([1., 1., 1.])
        """
        check_is_fitted(self)
        X, y = validate_data(self, X, y, reset=False, dtype=np.float64)
        return np.asarray(self.model_.posteriors(X, y), np.float64)


def _fit_model(est, X, y, target_name, **fixed):
    """`moejax.fit` with the estimator's settings (its parameters but `_NOT_SETTINGS`, and
    `fixed` ones) on validated X, y. A k whose free parameters outnumber the distinct rows
    (a small fold of a cross-validation) fits what the rows support, with a warning, rather
    than failing the whole search (moejax.fit refuses instead)."""
    seed = int(check_random_state(est.random_state).randint(np.iinfo(np.int32).max))
    k = est.num_experts
    if isinstance(k, numbers.Integral) and not isinstance(k, bool):
        k = int(k)
        dim = X.shape[1] if est.expert_columns is None else len(est.expert_columns)
        gate_dim = None if est.gate_columns is None else len(est.gate_columns)
        per_expert = getattr(est, "per_expert_noise", True)
        params = selection.num_free_params(k, dim, per_expert, gate_dim=gate_dim)
        distinct = selection.row_groups(X, y)[0] if k > 1 else X.shape[0]
        if k > 1 and dim + 2 <= X.shape[0] and distinct < params:
            supported = selection.supported_experts(distinct, dim, per_expert, gate_dim)
            _validate.warn(f"num_experts={k} has {params} free parameters, more than "
                           f"the {distinct} distinct rows: fitted num_experts={supported} "
                           "instead.")
            k = supported
    names = getattr(est, "feature_names_in_", None)
    settings = {name: getattr(est, name) for name in est._get_param_names()
                if name not in _NOT_SETTINGS}
    if isinstance(est.prior, str) and est.prior == "default":
        settings["prior"] = Prior()
    return estimator.fit(
        jax.random.key(seed), X, y, **{**settings, **fixed, "num_experts": k},
        feature_names=None if names is None else list(names), target_name=target_name,
        expert_columns=est.expert_columns, gate_columns=est.gate_columns)


class MoEClassifier(ClassifierMixin, BaseEstimator):
    """A mixture of logistic experts for a two-class target: `moejax.fit(family="binomial")`
    (random starts, joint-EM refinement, the default prior on gate and expert slopes;
    docs/algorithm.md section 1) with scikit-learn's classifier interface.

    Args:
      num_experts: k >= 1 (1 is logistic regression), or "auto" to choose k in
        1..max_experts by `select_by`.
      num_refine_inits, num_refine_iters, refine_tol: the refinement's random starts, cap
        and tolerance.
      whiten, max_experts, select_by, standard_errors, prior, expert_columns, gate_columns,
        random_state: as `MoERegressor`'s.

    Attributes (after `fit`):
      classes_: the two classes, sorted; the second is the model's "1".
      model_: the `moejax.FittedMoE` of the binomial mixture (its y is 1 for classes_[1]).
      n_features_in_, feature_names_in_: as `MoERegressor`'s.

    Example:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> X = rng.normal(size=(400, 3))
      >>> logit = np.where(X[:, 0] > 0, 3 * X[:, 1], -3 * X[:, 2])
      >>> y = np.where(rng.uniform(size=400) < 1 / (1 + np.exp(-logit)), "yes", "no")
      >>> clf = MoEClassifier(num_experts=2, num_refine_iters=100, random_state=0).fit(X, y)
      >>> clf.classes_.tolist(), clf.predict_proba(X[:2]).shape, bool(clf.score(X, y) > 0.7)
      (['no', 'yes'], (2, 2), True)
    """

    def __init__(self, num_experts=2, *, num_refine_inits=16, num_refine_iters=3000,
                 refine_tol=1e-8, whiten=True, max_experts=4, select_by="bic",
                 standard_errors=False, prior="default", expert_columns=None,
                 gate_columns=None, random_state=None):
        self.num_experts = num_experts
        self.num_refine_inits = num_refine_inits
        self.num_refine_iters = num_refine_iters
        self.refine_tol = refine_tol
        self.whiten = whiten
        self.max_experts = max_experts
        self.select_by = select_by
        self.standard_errors = standard_errors
        self.prior = prior
        self.expert_columns = expert_columns
        self.gate_columns = gate_columns
        self.random_state = random_state

    def __sklearn_tags__(self):
        # A binomial mixture: two classes (scikit-learn's checks then expect its error on more).
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    def fit(self, X, y):
        """Fits the binomial mixture to y == classes_[1].

        Args:
          X: (n, d) features (an array or a DataFrame); y: (n,) labels of two classes.

        Returns:
          self, fitted.

        Raises:
          ValueError: for a y with other than two classes, and as `moejax.fit`.

        >>> clf.fit(X, y).model_.num_experts
        2
        """
        target_name = getattr(y, "name", None) if not isinstance(y, np.ndarray) else None
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, index = np.unique(y, return_inverse=True)
        if len(self.classes_) > 2:
            raise ValueError(f"Only binary classification is supported by MoEClassifier (a "
                             f"binomial mixture): y holds {len(self.classes_)} classes "
                             f"({self.classes_[:5].tolist()}...).")
        if len(self.classes_) < 2:
            raise ValueError(f"y holds one class ({self.classes_.tolist()}): MoEClassifier "
                             "needs two.")
        self.model_ = _fit_model(self, X, index.astype(np.float64), target_name,
                                 family="binomial")
        return self

    def predict_proba(self, X):
        """P(class | x) for each row, the mixture's probability of classes_[1] and its
        complement.

        Args:
          X: (n, d) features.

        Returns:
          (n, 2) probabilities, columns in the order of classes_.

        Raises:
          ValueError: for X that does not match the fitted features; NotFittedError before
            `fit`.

        >>> bool(np.allclose(clf.predict_proba(X[:3]).sum(axis=1), 1.0))
        True
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        p = np.clip(np.asarray(self.model_.predict(X), np.float64), 0.0, 1.0)
        return np.stack([1 - p, p], axis=1)

    def predict_log_proba(self, X):
        """log `predict_proba(X)`.

        Args:
          X: (n, d) features.

        Returns:
          (n, 2) log-probabilities (-inf where a probability is 0).

        Raises:
          ValueError: as `predict_proba`.

        >>> clf.predict_log_proba(X[:2]).shape
        (2, 2)
        """
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def decision_function(self, X):
        """The log-odds of classes_[1] for each row (positive: classes_[1] is predicted).

        Args:
          X: (n, d) features.

        Returns:
          (n,) log-odds.

        Raises:
          ValueError: as `predict_proba`.

        >>> bool(np.all((clf.decision_function(X[:5]) > 0) == (clf.predict(X[:5]) == "yes")))
        True
        """
        p = self.predict_proba(X)[:, 1]
        with np.errstate(divide="ignore"):
            return np.log(p) - np.log1p(-p)

    def predict(self, X):
        """The more probable class of each row (classes_[1] where its probability > 1/2).

        Args:
          X: (n, d) features.

        Returns:
          (n,) labels, elements of classes_.

        Raises:
          ValueError: as `predict_proba`.

        >>> clf.predict(X[:3]).shape
        (3,)
        """
        check_is_fitted(self)
        return self.classes_[(self.predict_proba(X)[:, 1] > 0.5).astype(int)]
