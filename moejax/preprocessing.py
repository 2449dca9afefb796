"""Standardisation for real data, where x is not N(0, I): the transform is stored so that a
fitted model takes and returns original units."""

from typing import NamedTuple

import jax
import numpy as np

from moejax import _validate


class Standardizer(NamedTuple):
    """x_std = (x - x_mean) @ x_map, y_std = (y - y_mean) / y_scale.

    Attributes:
      x_mean: (d,) feature means.
      x_map: (d, d) the whitening map diag(1 / sd) R^(-1/2), R the correlation matrix
        ("ZCA-cor": unaffected by the columns' units, and each whitened feature stays as
        close as possible to its standardised column), or diag(1 / sd) when only
        standardising.
      y_mean, y_scale: scalars, the target's mean and standard deviation.
      gate_mean, gate_map: None when the gate reads the experts' standardised features; else
        the same for the gate's own columns, (d_gate,) and (d_gate, d_gate), standardised on
        their own (`moejax.fit`'s gate_columns).
    """

    x_mean: jax.Array
    x_map: jax.Array
    y_mean: jax.Array
    y_scale: jax.Array
    gate_mean: jax.Array | None = None
    gate_map: jax.Array | None = None


class Columns(NamedTuple):
    """Which of x's columns feed the experts and the gate, when they are not all of them to
    both (`moejax.fit`'s expert_columns and gate_columns): static metadata of a model.

    Attributes:
      num_features: d, the number of x's columns.
      experts: the experts' columns, indices into x.
      gate: the gate's own columns (an empty tuple: a gate of intercepts only), or None when
        the gate reads the experts' design.
    """

    num_features: int
    experts: tuple[int, ...]
    gate: tuple[int, ...] | None = None

    def gather(self, x):
        """x's columns in the order the model's design reads them: the experts', then the
        gate's own (if any): (n, d_e [+ d_gate])."""
        return x[:, list(self.experts) + list(self.gate or ())]


def fit_standardizer(x, y, *, whiten: bool = True, rcond: float = 1e-10) -> Standardizer:
    """The standardisation of (x, y), computed on the host in float64.

    Args:
      x: (n, d) features; y: (n,) target.
      whiten: map x to mean 0 and identity covariance (the moment method assumes
        x ~ N(0, I)), or (False) only centre and scale each column.
      rcond: the smallest eigenvalue of the correlation matrix, relative to the largest,
        that counts as not collinear.

    Returns:
      Standardizer, in x's float type.

    Raises:
      ValueError: for malformed inputs, a constant feature or target, or (whiten=True) features
        whose covariance is singular to `rcond` (collinear columns).

    >>> x = np.array([[1.0, 10.0], [2.0, 30.0], [3.0, 20.0], [4.0, 60.0]])
    >>> s = fit_standardizer(x, np.array([1.0, 2.0, 3.0, 5.0]))
    >>> xs = transform_features(s, x)
    >>> np.round(np.asarray(xs.T @ xs / 4), 5)  # whitened: identity covariance
    array([[1., 0.],
           [0., 1.]], dtype=float32)
    """
    x, y = _validate.data(x, y)
    whiten = _validate.flag(whiten, "whiten")
    _validate.positive(rcond, "rcond")
    return _fit_standardizer(x, y, whiten=whiten, rcond=rcond)


def constant_columns(x: np.ndarray, dtype, rcond: float = 1e-10) -> np.ndarray:
    """Indices of the columns of x (n, m) that are constant, or whose spread the float type
    `dtype` cannot resolve (below max(rcond, its eps) times the column's largest magnitude):
    they carry no information and cannot be standardised. The one test of a constant column
    (also applied to the target, as a one-column table, and by the command line)."""
    x = np.asarray(x, np.float64)
    top = np.max(np.abs(x), axis=0)
    unit = np.where(top > 0, top, 1.0)
    sd = np.std(x / unit, axis=0) * unit
    resolution = np.finfo(dtype).eps if np.finfo(dtype).bits < 64 else 0.0
    return np.flatnonzero(np.all(x == x[:1], axis=0) | (sd <= max(rcond, resolution) * unit))


def _fit_standardizer(x, y, *, whiten: bool = True, rcond: float = 1e-10,
                      scale_target: bool = True, columns=None) -> Standardizer:
    """`fit_standardizer` on checked (x, y); scale_target=False keeps y as it is (mean 0,
    scale 1: a binomial or Poisson y is modelled in its own units). columns: None (every
    column of x feeds the experts and the gate), or (expert columns, gate columns), tuples of
    x's column indices: each part standardised on its own (`Standardizer.gate_map`), and the
    errors name x's columns."""
    if x.shape[0] < 2:
        raise ValueError(f"x needs at least 2 rows to standardise, got {x.shape[0]}.")
    dtype = x.dtype
    # On the host in float64: a few passes over a table, with no compilation per table shape
    # (eager JAX would compile each operation anew for every row count).
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    experts, gate = (None, None) if columns is None else columns
    parts = _feature_map(x, experts, dtype, whiten, rcond)
    if gate is not None:
        parts += _feature_map(x, gate, dtype, whiten, rcond)
    if np.all(y == y[0]):
        _validate.constant_target(y[0])
    resolution = np.finfo(dtype).eps if np.finfo(dtype).bits < 64 else 0.0
    y_unit = np.max(np.abs(y))
    y_mean = np.mean(y / y_unit) * y_unit
    y_scale = np.std((y - y_mean) / y_unit) * y_unit
    if not scale_target:
        y_mean, y_scale = 0.0, 1.0
    elif not y_scale > max(resolution * y_unit, 0.0) or not np.isfinite(y_scale):
        raise ValueError(f"y's spread (max |y| = {y_unit:.3g}) is below what {dtype} "
                         "resolves: rescale y or use float64.")
    # Cast on the host and device_put: a cast on the device (or jnp.asarray) would compile a
    # program per shape.
    x_mean, x_map, *gate_parts = (jax.device_put(np.asarray(v, dtype)) for v in parts)
    y_mean, y_scale = (jax.device_put(np.asarray(v, dtype)) for v in (y_mean, y_scale))
    return Standardizer(x_mean, x_map, y_mean, y_scale, *gate_parts)


def _feature_map(x: np.ndarray, columns, dtype, whiten: bool, rcond: float):
    """(mean (m,), map (m, m)) of x's `columns` (None: all) in float64, the standardisation
    of `fit_standardizer`; DataError naming x's constant or collinear columns."""
    index = np.arange(x.shape[1]) if columns is None else np.asarray(columns, int)
    x = x[:, index]
    constant = constant_columns(x, dtype, rcond)
    if constant.size:
        raise _validate.DataError(
            "x", "has constant column(s), which carry no information and cannot be "
            "standardised", [(None, int(index[j]), None) for j in constant], advice="Drop them")
    if not x.shape[1]:  # a gate without columns: its intercept alone
        return np.zeros((0,)), np.zeros((0, 0))
    # Statistics of each column divided by its largest magnitude, scaled back: data in very
    # small or very large units neither underflow nor overflow the variance.
    x_top = np.max(np.abs(x), axis=0)
    x_unit = np.where(x_top > 0, x_top, 1.0)
    x_mean = np.mean(x / x_unit, axis=0) * x_unit
    xc = x - x_mean
    sd = np.std(xc / x_unit, axis=0) * x_unit
    if whiten:
        # Scale first so that the eigenvalue test is about correlation, not units.
        corr = (xc / sd).T @ (xc / sd) / x.shape[0]
        eigvals, eigvecs = np.linalg.eigh(corr)
        if eigvals[0] <= rcond * eigvals[-1]:
            # The columns of the near-dependency: their weights in its eigenvector.
            involved = np.flatnonzero(np.abs(eigvecs[:, 0]) > 0.1)
            raise _validate.DataError(
                "x", "has collinear columns (the feature covariance is singular: smallest "
                f"eigenvalue {eigvals[0]:.3g} of the correlation matrix), among them",
                [(None, int(index[j]), None) for j in involved],
                advice="Drop redundant columns, or use whiten=False")
        return x_mean, (eigvecs / np.sqrt(eigvals)) @ eigvecs.T / sd[:, None]
    return x_mean, np.diag(1.0 / sd)


def transform_features(s: Standardizer, x: jax.Array) -> jax.Array:
    """The standardised features (x - x_mean) @ x_map (see `fit_standardizer`).

    Args:
      s: the Standardizer; x: (n, d) features in the data's units.

    Returns:
      (n, d): mean 0 and identity covariance on the rows s was fitted on (if whitened).

    Raises:
      ValueError: for malformed or non-finite x, or d not matching.

    >>> x = np.random.default_rng(0).normal(size=(100, 2)) * [1.0, 10.0]
    >>> s = fit_standardizer(x, np.arange(100.0))
    >>> z = np.asarray(transform_features(s, x), np.float64)
    >>> bool(np.allclose(np.cov(z.T, bias=True), np.eye(2), atol=1e-4))
    True
    """
    return _transform_features(s, _validate.features(x, dim=s.x_mean.shape[0]))


def _transform_features(s: Standardizer, x: jax.Array) -> jax.Array:
    """`transform_features` on x already checked by the caller."""
    return (x - s.x_mean) @ s.x_map


def transform_target(s: Standardizer, y: jax.Array) -> jax.Array:
    """The standardised target (y - y_mean) / y_scale.

    Args:
      s: the Standardizer; y: (n,) targets in the data's units.

    Returns:
      (n,) standardised targets.

    Raises:
      ValueError: for malformed or non-finite y.

    >>> s = fit_standardizer(np.eye(3), np.array([1.0, 2.0, 3.0]), whiten=False)
    >>> inverse_target(s, transform_target(s, np.array([4.0])))
    Array([4.], dtype=float32)
    """
    return _transform_target(s, _validate.vector(y, "y"))


def _transform_target(s: Standardizer, y: jax.Array) -> jax.Array:
    """`transform_target` on y already checked by the caller."""
    return (y - s.y_mean) / s.y_scale


def inverse_target(s: Standardizer, y_std: jax.Array) -> jax.Array:
    """y_mean + y_scale * y_std: standardised targets back in the data's units
    (`transform_target`'s inverse).

    Args:
      s: the Standardizer; y_std: standardised values, any shape.

    Returns:
      An array of y_std's shape.

    Raises:
      Nothing (values are not checked: this runs inside compiled code too).

    >>> s = fit_standardizer(np.eye(3), np.array([1.0, 2.0, 3.0]), whiten=False)
    >>> inverse_target(s, jax.numpy.zeros(2))
    Array([2., 2.], dtype=float32)
    """
    return s.y_mean + s.y_scale * y_std
