"""Scoring the number of experts k on real data: a fit for each k = 1, ..., max_experts (passed
in by the caller: least squares for k = 1 and `moejax.fit` above, see
`moejax.select_num_experts`), scored by BIC and by cross-validated log-likelihood, with the
spectrum of the second moment M2 as a fast first look (docs/algorithm.md section 2: its rank is
k when the model holds). Knows nothing of how a model is fitted."""

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from moejax import _validate, inference, moments, preprocessing, sums
from moejax.moments import _initial_noise_std
from moejax.nonlinearities import transform_constants


class KSelection(NamedTuple):
    """Scores of every candidate k (one entry per k in `num_experts`).

    Attributes:
      num_experts: (m,) the candidates 1, ..., max_experts (1 is least squares, or the
        family's GLM).
      num_params: (m,) free parameters: k (d + 1) expert weights and intercepts,
        (k - 1)(d_gate + 1) gating weights and intercepts, and sigma (one, or one per expert;
        none for a family without one).
      log_likelihood: (m,) training mean log-likelihood per row, fitted on all rows, in the
        target's original units.
      bic: (m,) -2 n log_likelihood + num_params log n (smaller is better).
      cv_log_likelihood: (m,) held-out mean log-likelihood per row, averaged over the folds
        (larger is better); NaN where no cross-validation was run.
      cv_std: (m,) its standard deviation over the folds.
      m2_spectrum: (d,) eigenvalues of sign(c2) M2 on the standardised data, largest first
        (empty for a family without a moment start).
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
        if self.at_largest():
            rows.append("\n" + self.at_largest())
        return "\n".join(rows)

    def at_largest(self) -> str | None:
        """A warning when a criterion chose the largest k tried (k > 1; k may exceed d, fitted
        from random starts): a larger k might score better still. Else None."""
        largest = int(self.num_experts[-1])
        chosen = [name for name, best in (("BIC", self.best_bic), ("cross-validation",
                                                                   self.best_cv))
                  if best == largest and 1 < largest]
        if not chosen:
            return None
        return (f"{' and '.join(chosen)} chose k = {largest}, the largest k tried: a larger k "
                "may score better still (raise max_experts; 'auto' also stops at the k the "
                "rows support).")


def m2_spectrum(x, y, nonlinearity: str = "linear") -> np.ndarray:
    """Eigenvalues of sign(c2) M2 = sign(c2) E[T2(y) S2(x)] on whitened x and standardised y,
    largest first: (d,). When the model holds, k of them stand out (M2 has rank k).

    Raises:
      ValueError: for malformed data, as `moejax.fit_standardizer`.
    """
    x, y = _validate.data(x, y)
    return _m2_spectrum(x, y, nonlinearity)


def _m2_spectrum(x, y, nonlinearity):
    """`m2_spectrum` on checked data; host rows are padded to their row bucket (one compiled
    program per bucket)."""
    std = preprocessing._fit_standardizer(x, y)
    if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
        x, y, weights = sums.pad_rows(sums.bucket_size(x.shape[0]), x, y)
    else:
        weights = None
    m2 = _m2(std, x, y, weights, nonlinearity)
    return np.sort(np.linalg.eigvalsh(np.asarray(m2, np.float64)))[::-1]


@functools.partial(jax.jit, static_argnames="nonlinearity")
def _m2(std, x, y, weights, nonlinearity):
    """sign(c2) M2 on the standardised data; weights: None, or (n,) with 0 on padding rows."""
    # Padding rows carry weight 0 in every sum below, whatever their values.
    xs = preprocessing._transform_features(std, x)
    ys = preprocessing._transform_target(std, y)
    consts = transform_constants(nonlinearity, _initial_noise_std(ys, nonlinearity, weights))
    return jnp.sign(consts.c2) * moments.second_moment(xs, ys, moments.t2_transform(consts),
                                                        weights=weights)


def _one_standard_error(ks, cv) -> int:
    """The smallest k whose held-out likelihood is within one standard error of the best k's,
    the error taken over the folds of the paired differences (the same folds score every k):
    a bigger model must beat a smaller one by more than the folds' noise."""
    best = int(np.argmax(cv.mean(axis=1)))
    deficit = cv[best][None, :] - cv
    se = deficit.std(axis=1, ddof=1) / np.sqrt(cv.shape[1])
    return int(ks[np.argmax(deficit.mean(axis=1) <= se)])


def score(key: jax.Array, x, y, rows: tuple[int, np.ndarray], *, max_experts: int,
          num_folds: int, nonlinearity: str,
          fit_k: Callable, log_likelihood: Callable, num_params: Callable):
    """Every k = 1, ..., max_experts scored by BIC (fitted on all rows) and, with num_folds >= 2,
    by cross-validated log-likelihood (num_folds = 0 skips it). Every fold holds out
    n // num_folds rows and trains on the rest, so that all folds share one shape (one
    compilation per k).

    Args:
      key: PRNG key (the folds and every fit).
      x: (n, d) features; y: (n,) target, both already checked by the caller.
      rows: `row_groups(x, y)`, which the caller has for its rows rule.
      max_experts: the largest k (checked by the caller: at most d).
      num_folds: 0, or F >= 2 folds.
      nonlinearity: for the M2 spectrum; None: none (a family without a moment start).
      fit_k: (key, x, y, k) -> a fitted model with `params.noise_std`; x and y are rows of
        the checked data.
      log_likelihood: (model, x, y) -> its mean log-likelihood on rows of the checked data.
      num_params: k -> the free parameters of a k-expert fit, BIC's penalty: k's count also
        when the fit dropped an expert, so that such a k scores as k - 1 with k's penalty
        and is not chosen over k - 1 (docs/selection.md).

    Returns:
      (KSelection, {k: the model fitted on all rows}).

    Raises:
      ValueError: for too few rows for the folds, and whatever `fit_k` raises.
    """
    n, d = x.shape
    num_groups, groups = rows
    if num_folds and (num_groups // num_folds < 1 or
                      num_groups - num_groups // num_folds < 2 * (d + 2)):
        raise ValueError(f"{_rows(num_groups, n)} are too few for {num_folds}-fold "
                         f"cross-validation with d = {d} features.")
    key_perm, key_fit = jax.random.split(key)
    # Uniform draws for the row bucket, so that a new row count compiles nothing.
    perm = np.argsort(np.asarray(jax.random.uniform(key_perm, (sums.bucket_size(n),)))[:n],
                      kind="stable")
    folds = _folds(perm, groups, num_folds)
    ks = np.arange(1, max_experts + 1)
    everything = np.arange(n)
    cv, train_ll, models = [], [], {}
    for k in ks:
        cv.append([])
        for i, test in enumerate(folds):
            rows = np.setdiff1d(everything, test)
            model = fit_k(jax.random.fold_in(key_fit, 100 * k + i), x[rows], y[rows], int(k))
            cv[-1].append(float(log_likelihood(model, x[test], y[test])))
        models[int(k)] = fit_k(jax.random.fold_in(key_fit, k), x, y, int(k))
        train_ll.append(float(log_likelihood(models[int(k)], x, y)))
    cv = np.array(cv) if num_folds else np.full((len(ks), 1), np.nan)
    train_ll = np.array(train_ll)
    params = np.array([num_params(int(k)) for k in ks])
    bic = -2 * n * train_ll + params * np.log(n)
    selection = KSelection(ks, params, train_ll, bic, cv.mean(axis=1), cv.std(axis=1),
                           np.zeros((0,)) if nonlinearity is None else
                           _m2_spectrum(x, y, nonlinearity), int(ks[np.argmin(bic)]),
                           _one_standard_error(ks, cv) if num_folds else 0)
    return selection, models


def _folds(perm: np.ndarray, groups: np.ndarray, num_folds: int) -> list[np.ndarray]:
    """`num_folds` held-out sets of rows: the groups (distinct rows with their copies) in the
    order their first row takes in `perm`, cut into runs of n // num_folds rows or the nearest
    group boundary, so that a row and its copies are never on both sides of a fold. Without
    copies, perm's consecutive runs of n // num_folds rows (equal shapes)."""
    n = perm.size
    if not num_folds:
        return []
    _, first = np.unique(groups[perm], return_index=True)
    if first.size == n:  # no copies
        rows = perm
    else:  # each group's rows together, the groups in the order perm meets them
        rank = np.empty(int(groups.max()) + 1, np.int64)
        rank[groups[perm][np.sort(first)]] = np.arange(first.size)
        rows = np.argsort(rank[groups], kind="stable")
    size = n // num_folds
    # Fold i ends at the group boundary nearest to (i + 1) * size.
    starts = np.r_[0, np.flatnonzero(np.diff(groups[rows]) != 0) + 1, n]
    cuts = [0] + [int(starts[np.argmin(np.abs(starts - (i + 1) * size))])
                  for i in range(num_folds)]
    if any(b <= a for a, b in zip(cuts[:-1], cuts[1:])):
        raise ValueError(f"the rows cannot be cut into {num_folds} folds of about {size} rows "
                         "that keep each row with its copies: a few rows repeat too often.")
    return [rows[a:b] for a, b in zip(cuts[:-1], cuts[1:])]


# `num_experts="auto"` considers k only when the rows number at least this many per free
# parameter (`supported_experts`); an explicit k gets a warning below it.
ROWS_PER_PARAMETER = 5


# A regularised fit drops an expert with fewer posterior rows than this many per parameter of
# its own (d + 2: slopes, intercept, sigma): measured on six public tables
# (experiments/generalisation.py, docs/results.md), fits whose smallest expert had under 1.5
# rows per parameter lost to least squares on held-out likelihood in 18 of 24 cases.
MIN_ROWS_PER_EXPERT_PARAMETER = 2


def num_free_params(num_experts: int, dim: int, per_expert_noise: bool,
                    learn_sigma: bool = True, gate_dim: int | None = None) -> int:
    """`inference.parameter_count` of a fit that learns sigma (one per expert, or shared), or
    of one given sigma (`learn_sigma=False`: none counted); gate_dim: the gate's own columns'
    count (None: the experts' d)."""
    k = num_experts
    sigmas = (k if per_expert_noise and k > 1 else 1) if learn_sigma else 0
    return inference.parameter_count(k, dim, sigmas, gate_dim)


def supported_experts(num_rows: int, dim: int, per_expert_noise: bool = True,
                      gate_dim: int | None = None) -> int:
    """The largest k (at least 1) whose free parameters the rows support, at least
    `ROWS_PER_PARAMETER` rows per parameter: the largest k `num_experts="auto"` considers."""
    k = 1
    while ROWS_PER_PARAMETER * num_free_params(k + 1, dim, per_expert_noise,
                                               gate_dim=gate_dim) <= num_rows:
        k += 1
    return k


def row_groups(x: np.ndarray, y: np.ndarray) -> tuple[int, np.ndarray]:
    """(the number of distinct rows of (x, y), each row's group: rows that repeat another
    share its group). Copies of a row add no information, so the rows rules count groups and
    cross-validation keeps each group in one fold."""
    table = np.ascontiguousarray(np.c_[x, y])
    if not table.shape[0]:
        return 0, np.zeros(0, np.int64)
    # Rows sorted by a hash of their bits (a few times faster than np.unique(axis=0) on a
    # large table), then told apart exactly: equal rows share a hash, so they are adjacent.
    bits = table.view(np.uint64 if table.dtype.itemsize == 8 else np.uint32).astype(np.uint64)
    # Odd 64-bit multipliers from a fixed seed: the same rows give the same groups.
    hashes = bits @ (np.random.default_rng(0).integers(1, 2**63, size=table.shape[1],
                                                       dtype=np.uint64) | 1)
    order = np.argsort(hashes, kind="stable")
    ordered = table[order]
    new = np.r_[True, (np.diff(hashes[order]) != 0)
                | np.any(ordered[1:] != ordered[:-1], axis=1)]
    groups = np.empty(table.shape[0], np.int64)
    groups[order] = np.cumsum(new) - 1
    return int(groups.max()) + 1, groups


def _rows(num_rows: int, num_given: int | None) -> str:
    """'the 40 rows', or 'the 14 distinct rows (of 700)' when rows repeat."""
    if num_given is None or num_given == num_rows:
        return f"the {num_rows} rows"
    return f"the {num_rows} distinct rows (of {num_given}: copies of a row count once)"


def check_rows(num_rows: int, d: int, num_experts: int, per_expert_noise: bool,
               num_given: int | None = None, gate_dim: int | None = None) -> None:
    """ValueError when an explicit k has more free parameters than there are distinct rows
    (`num_rows`, of `num_given` rows); a warning when it has more than a
    `ROWS_PER_PARAMETER`-th of them (the fit will overfit). d: the experts' columns;
    gate_dim: the gate's own, if any."""
    k = num_experts
    params = num_free_params(k, d, per_expert_noise, gate_dim=gate_dim)
    if num_rows < params:
        raise ValueError(f"num_experts={k} has {params} free parameters on d = {d} features, "
                         f"more than {_rows(num_rows, num_given)}: the fit would interpolate "
                         "them. "
                         f"Use fewer experts (the rows support k = "
                         f"{supported_experts(num_rows, d, per_expert_noise, gate_dim)}) or "
                         "num_experts='auto'.")
    if num_rows < ROWS_PER_PARAMETER * params:
        _validate.warn(f"num_experts={k} has {params} free parameters for "
                       f"{_rows(num_rows, num_given).removeprefix('the ')}, "
                       f"fewer than {ROWS_PER_PARAMETER} rows per parameter: expect the fit "
                       "to overfit (num_experts='auto' considers k up to "
                       f"{supported_experts(num_rows, d, per_expert_noise, gate_dim)}).")
