"""Choosing the number of experts k on real data: least squares (k = 1) and `fit` for k = 2 up
to a maximum, scored by BIC and by cross-validated log-likelihood, with the spectrum of the
second moment M2 as a fast first look (docs/algorithm.md section 2: its rank is k when the
model holds)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from moejax import _validate, moments, preprocessing
from moejax.nonlinearities import transform_constants
from moejax.recover import initial_noise_std


class KSelection(NamedTuple):
    """Scores of every candidate k (one entry per k in `num_experts`).

    Attributes:
      num_experts: (m,) the candidates 1, ..., max_experts (1 is least squares).
      num_params: (m,) free parameters: k (d + 1) expert weights and intercepts, (k - 1)(d + 1)
        gating weights and intercepts, and sigma (one, or one per expert).
      log_likelihood: (m,) training mean log-likelihood per row, fitted on all rows, in the
        target's original units.
      bic: (m,) -2 n log_likelihood + num_params log n (smaller is better).
      cv_log_likelihood: (m,) held-out mean log-likelihood per row, averaged over the folds
        (larger is better); NaN where no cross-validation was run.
      cv_std: (m,) its standard deviation over the folds.
      m2_spectrum: (d,) eigenvalues of sign(c2) M2 on the standardised data, largest first.
      best_bic: the k with the smallest BIC.
      best_cv: the smallest k whose cross-validated log-likelihood is within one standard
        error (over the folds, of its paired difference) of the largest; 0 without
        cross-validation.
    """

    num_experts: np.ndarray
    num_params: np.ndarray
    log_likelihood: np.ndarray
    bic: np.ndarray
    cv_log_likelihood: np.ndarray
    cv_std: np.ndarray
    m2_spectrum: np.ndarray
    best_bic: int
    best_cv: int

    def table(self) -> str:
        """The scores as a markdown table."""
        rows = ["| k | parameters | train log-lik | BIC | CV log-lik | CV sd |",
                "|---|---|---|---|---|---|"]
        for i, k in enumerate(self.num_experts):
            marks = "".join(m for m, best in ((" (BIC)", self.best_bic), (" (CV)", self.best_cv))
                            if best == k)
            cv = ("- | -" if np.isnan(self.cv_log_likelihood[i]) else
                  f"{self.cv_log_likelihood[i]:.4f} | {self.cv_std[i]:.4f}")
            rows.append(f"| {k}{marks} | {self.num_params[i]} | {self.log_likelihood[i]:.4f} | "
                        f"{self.bic[i]:.1f} | {cv} |")
        return "\n".join(rows)


def m2_spectrum(x, y, nonlinearity: str = "linear") -> np.ndarray:
    """Eigenvalues of sign(c2) M2 = sign(c2) E[T2(y) S2(x)] on whitened x and standardised y,
    largest first: (d,). When the model holds, k of them stand out (M2 has rank k)."""
    x, y = _validate.data(x, y)
    std = preprocessing.fit_standardizer(x, y)
    xs = preprocessing._transform_features(std, x)
    ys = preprocessing._transform_target(std, y)
    consts = transform_constants(nonlinearity, initial_noise_std(ys, nonlinearity))
    m2 = jnp.sign(consts.c2) * moments.second_moment(xs, ys, moments.t2_transform(consts))
    return np.sort(np.linalg.eigvalsh(np.asarray(m2, np.float64)))[::-1]


def _one_standard_error(ks, cv) -> int:
    """The smallest k whose held-out likelihood is within one standard error of the best k's,
    the error taken over the folds of the paired differences (the same folds score every k):
    a bigger model must beat a smaller one by more than the folds' noise."""
    best = int(np.argmax(cv.mean(axis=1)))
    deficit = cv[best][None, :] - cv
    se = deficit.std(axis=1, ddof=1) / np.sqrt(cv.shape[1])
    return int(ks[np.argmax(deficit.mean(axis=1) <= se)])


def least_squares_model(x, y, **names):
    """Least squares with Gaussian noise as a one-expert FittedMoE (k = 1: the gate is constant),
    on the same standardised scale as `fit`'s models. `names`: feature_names, target_name."""
    from moejax.estimator import FittedMoE, design_matrix
    from moejax.model import MoEParams
    std = preprocessing.fit_standardizer(x, y)
    z = np.asarray(design_matrix(std, x), np.float64)
    ys = np.asarray(preprocessing._transform_target(std, y), np.float64)
    beta = np.linalg.lstsq(z, ys, rcond=None)[0]
    sigma = np.sqrt(np.mean(np.square(ys - z @ beta)))
    dtype = x.dtype
    params = MoEParams(jnp.asarray(beta[None], dtype), jnp.zeros((1, z.shape[1]), dtype),
                       jnp.asarray(sigma, dtype), "linear")
    if names.get("feature_names") is not None:
        names = dict(names, feature_names=tuple(str(v) for v in names["feature_names"]))
    return FittedMoE(params, std, **names)


def select_num_experts(key: jax.Array, x, y, *, max_experts: int = 4,
                       nonlinearity: str = "linear", num_folds: int = 5,
                       **fit_kwargs) -> KSelection:
    """Scores k = 1, ..., max_experts by BIC (fitted on all rows) and by `num_folds`-fold
    cross-validated log-likelihood; k = 1 is least squares, k >= 2 `moejax.fit` (with
    `fit_kwargs`). Every fold holds out n // num_folds rows and trains on the rest, so that all
    folds share one shape (one compilation per k). docs/selection.md has the rules.

    Args:
      key: PRNG key (the folds and every fit).
      x: (n, d) features; y: (n,) target.
      max_experts: the largest k, at most d.
      nonlinearity: the experts' g (a name).
      num_folds: F >= 2 cross-validation folds.
      **fit_kwargs: passed to every `fit` (e.g. refine_iters, per_expert_noise).

    Returns:
      KSelection: every k's parameter count, training log-likelihood, BIC, cross-validated
      log-likelihood and its sd, the M2 spectrum, and the k each criterion picks.

    Raises:
      ValueError: for malformed data, max_experts > d, num_folds < 2, or too few rows for
        the folds; and as `fit`.
    """
    num_folds = _validate.count(num_folds, "num_folds", minimum=2)
    return _select(key, x, y, max_experts, nonlinearity, num_folds, fit_kwargs)[0]


def _select(key, x, y, max_experts, nonlinearity, num_folds, fit_kwargs, names=None):
    """`select_num_experts`, also returning the models fitted on all rows, by k; num_folds = 0
    skips the cross-validation."""
    from moejax.estimator import fit  # estimator imports this module
    x, y = _validate.data(x, y)
    n, d = x.shape
    max_experts = _validate.count(max_experts, "max_experts")
    if max_experts > d:
        raise ValueError(f"max_experts must be at most d = {d}, got {max_experts}.")
    if num_folds and (n // num_folds < 1 or n - n // num_folds < 2 * (d + 2)):
        raise ValueError(f"{n} rows are too few for {num_folds}-fold cross-validation with "
                         f"d = {d} features.")
    key_perm, key_fit = jax.random.split(key)
    perm = np.asarray(jax.random.permutation(key_perm, n))
    size = n // max(num_folds, 1)
    folds = [perm[i * size:(i + 1) * size] for i in range(num_folds)]
    names = names or {}

    def one(k, key, rows):
        if k == 1:
            return least_squares_model(x[rows], y[rows], **names)
        return fit(key, x[rows], y[rows], num_experts=int(k), nonlinearity=nonlinearity,
                   **names, **fit_kwargs)

    ks = np.arange(1, max_experts + 1)
    everything = np.arange(n)
    cv, train_ll, models = [], [], {}
    for k in ks:
        cv.append([float(one(k, jax.random.fold_in(key_fit, 100 * k + i),
                             np.setdiff1d(everything, test)).log_likelihood(x[test], y[test]))
                   for i, test in enumerate(folds)])
        models[int(k)] = one(k, jax.random.fold_in(key_fit, k), everything)
        train_ll.append(float(models[int(k)].log_likelihood(x, y)))
    cv = np.array(cv) if num_folds else np.full((len(ks), 1), np.nan)
    train_ll = np.array(train_ll)
    params = ks * (d + 1) + (ks - 1) * (d + 1) + np.array(
        [np.size(models[int(k)].params.noise_std) for k in ks])
    bic = -2 * n * train_ll + params * np.log(n)
    selection = KSelection(ks, params, train_ll, bic, cv.mean(axis=1), cv.std(axis=1),
                           m2_spectrum(x, y, nonlinearity), int(ks[np.argmin(bic)]),
                           _one_standard_error(ks, cv) if num_folds else 0)
    return selection, models
