"""Checks shared by the public entry points. Values are checked only when concrete; under
jit/vmap tracing only shapes and dtypes are checked (a traced value cannot raise)."""

import functools
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from moejax.families import get_family
from moejax.nonlinearities import get_nonlinearity
from moejax.params import MoEParams
from moejax.streams import Streamed, compute_dtype

# The entry points that read data in blocks from the host (`moejax.streamed`).
STREAMING = "recover, recover_experts, fit_gating, refine, joint_em and log_likelihood"


def warn(message: str, category=UserWarning) -> None:
    """warnings.warn attributed to the first caller outside moejax (the user's line), however
    deep inside the library it is issued."""
    frame, level = sys._getframe(1), 2  # stacklevel 2: warn's caller
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "moejax":
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


class DataError(ValueError):
    """A `ValueError` about cells, rows or columns of the data, which it names: the first few
    at fault (`cells`: (row, column, value shown) with None for "every row" or "no column")
    and how many there are (`count`). `named` renders the same error with the columns named
    and the rows labelled as the caller knows them (a model's feature names, a table's
    lines). Unnamed, a cell reads as NumPy indexes it (x[4, 1], counting from 0)."""

    def __init__(self, argument: str, problem: str, cells=(), count: int = 0,
                 advice: str = "", *, subject: str | None = None, columns=None,
                 target: str | None = None, row_label=None):
        self.argument, self.problem, self.cells = argument, problem, tuple(cells)
        self.count, self.advice = max(count, len(self.cells)), advice
        self.subject, self.columns, self.target, self.row_label = (subject, columns, target,
                                                                   row_label)
        super().__init__(self._message())

    def named(self, *, subject: str | None = None, columns=None, target: str | None = None,
              row_label=None) -> "DataError":
        """This error with `subject` in place of x or y, `columns` (d names) naming x's
        columns, `target` y's, and `row_label(i)` labelling row i (e.g. "line 7")."""
        return DataError(self.argument, self.problem, self.cells, self.count, self.advice,
                         subject=subject or self.subject, columns=columns or self.columns,
                         target=target or self.target, row_label=row_label or self.row_label)

    def __reduce__(self):
        # Picklable (a joblib worker of a grid search sends its errors back): the message as
        # rendered, since a row labeller need not pickle.
        return _restore_data_error, (self.argument, self.problem, self.cells, self.count,
                                     self.advice, self.subject, self.columns, self.target,
                                     str(self))

    def _message(self) -> str:
        subject = self.subject or (f"y ({self.target!r})" if self.argument == "y" and
                                   self.target else self.argument)
        places = "; ".join(self._place(*cell) for cell in self.cells[:SHOWN_CELLS])
        more = self.count - min(len(self.cells), SHOWN_CELLS)
        return (f"{subject} {self.problem}" + (f": {places}" if places else "")
                + (f"; and {more} more" if more > 0 else "")
                + (f". {self.advice}." if self.advice else "."))

    def _place(self, row, column, value) -> str:
        named = self.columns is not None or self.row_label is not None or (
            self.argument == "y" and self.target is not None)
        if not named:
            index = [":" if row is None else str(row)] + (
                [] if column is None else [str(column)])
            place = f"{self.argument}[{', '.join(index)}]"
        else:
            name = (self.target if self.argument == "y" else
                    None if column is None else
                    self.columns[column] if self.columns is not None
                    and column < len(self.columns) else column)
            parts = ([] if row is None else
                     [self.row_label(row) if self.row_label else f"row {row} (from 0)"])
            parts += [] if name is None else [f"column {name!r}"]
            place = ", ".join(parts)
        return place if value is None else f"{place} = {value}"


def _restore_data_error(argument, problem, cells, count, advice, subject, columns, target,
                        message) -> DataError:
    error = DataError(argument, problem, cells, count, advice, subject=subject, columns=columns,
                      target=target)
    error.args = (message,)
    return error


# How many cells a DataError shows.
SHOWN_CELLS = 5


def _concrete(a) -> bool:
    return not isinstance(a, jax.core.Tracer)


# What to do instead of tracing a function that runs on the host.
_HOST_ADVICE = ("call it outside the transformation (its compiled parts are jitted inside it), "
                "or jit the solvers it uses (moejax.refine, recover)")


def host_side(what: str, *values, advice: str = _HOST_ADVICE) -> None:
    """Raises ValueError if any of `values` (pytrees) is traced: `what` runs on the host (it
    reads concrete values, pads rows, writes files) and cannot be jitted or vmapped."""
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(values)):
        raise ValueError(f"{what} runs on the host and cannot be traced (jax.jit, jax.vmap): "
                         f"{advice}.")


def _eagerly(fn):
    """fn run now, also while an outer function is traced (jit, vmap): a check of concrete
    values that the traced function closes over would otherwise return a tracer, which Python
    cannot test."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with jax.ensure_compile_time_eval():
            return fn(*args, **kwargs)
    return run


@_eagerly
def _as_float(a, name: str, streams: bool = False) -> jax.Array:
    """a as a float JAX array. Integers and booleans are cast to the default float type, and
    float16 / bfloat16 to float32 (their 3 significant digits cannot hold the moments). With
    `streams`, a `Streamed` host array passes through (its blocks arrive in such a type)."""
    if isinstance(a, Streamed):
        if streams:
            return a
        raise ValueError(f"{name} is a streamed host array (moejax.streamed); only {STREAMING} "
                         f"read data in blocks from the host. Load it with np.asarray({name}.array)"
                         " to use it here.")
    if isinstance(a, (str, bytes)):
        raise ValueError(f"{name} must be an array of real numbers, got a string {a!r:.40}.")
    host = not isinstance(a, jax.Array)
    if host:
        try:
            a = np.asarray(a)
        except ValueError as e:  # ragged nested lists
            raise ValueError(f"{name} must be a rectangular array of real numbers: {e}") from None
    if host and a.dtype.kind in "OUS":  # a DataFrame with a text column; numbers as objects
        a = _numbers(a, name)
    target = compute_dtype(a.dtype)
    if target is None:
        raise ValueError(f"{name} must hold real numbers (float or integer), got dtype {a.dtype}.")
    if host:
        # Host data stay NumPy until a compiled program takes them, in the float type JAX
        # would use: checking and padding a table of a new size then compiles nothing.
        with np.errstate(over="ignore"):  # a value beyond float32 is named by _overflowed
            return np.asarray(a, jax.dtypes.canonicalize_dtype(target))
    if target != a.dtype:  # integers (counts, codes) and half precision: see compute_dtype
        return jnp.asarray(a, target)
    return a


def _numbers(a: np.ndarray, name: str) -> np.ndarray:
    """An array of objects or strings as float64 if every entry is a number, else DataError
    naming the columns (of a 2-D a) or rows that are not, with the first such cell of each."""
    try:
        return np.asarray(a, np.float64) if a.dtype.kind == "O" else _not_numbers(a, name)
    except (TypeError, ValueError):
        return _not_numbers(a, name)


def _not_numbers(a: np.ndarray, name: str):
    columns = a.reshape(a.shape[0], -1) if a.ndim else a.reshape(1, 1)
    cells = []
    for j in range(columns.shape[1]):
        for i, value in enumerate(columns[:, j]):
            if not isinstance(value, (int, float, np.number)) or isinstance(value, np.bool_):
                shown = value.item() if isinstance(value, np.generic) else value
                cells.append((i, j if a.ndim == 2 else None, repr(shown)[:40]))
                break
    advice = ("Drop those columns, or encode them as numbers (one 0/1 column per category)"
              if a.ndim == 2 else "")
    raise DataError(name, f"must hold real numbers, got dtype {a.dtype} with text or other "
                    "non-numbers", cells, len(cells), advice)


@jax.jit
def _all_finite(a: jax.Array) -> jax.Array:
    # sum(a * 0) is NaN exactly when a holds a NaN or an infinity, and XLA fuses it into one
    # float reduction. all(isfinite(a)), even jitted, materialises an (n, d) boolean array on
    # the CPU (measured: 950 MB at n = 1e7, d = 100, against 0 for this).
    return jnp.isfinite(jnp.sum(a * 0))


def _host_nonfinite(a: np.ndarray) -> int:
    """The number of NaN and infinite entries of a host array, counted in blocks of rows (no
    temporary the size of a large table)."""
    rows = a.reshape(a.shape[0] if a.ndim else 1, -1)
    step = max(1, 2**20 // max(rows.shape[1], 1))
    return sum(int(block.size - np.count_nonzero(np.isfinite(block)))
               for block in (rows[i:i + step] for i in range(0, rows.shape[0], step)))


def _overflowed(given, a: np.ndarray, name: str) -> None:
    """Raises ValueError if casting the host values `given` to a's float type made finite
    values infinite (a 1e39 in float32), naming the first such entry."""
    if isinstance(given, (jax.Array, Streamed)):
        return
    given = np.asarray(given)
    if given.dtype.kind != "f" or given.dtype.itemsize <= a.dtype.itemsize:
        return
    lost = np.isinf(a) & np.isfinite(given)
    if np.any(lost):
        raise DataError(name, f"has values beyond the range of {a.dtype}, JAX's default float "
                        f"type (largest {float(np.finfo(a.dtype).max):.3g})",
                        _cells(lost, given), int(np.sum(lost)),
                        f"Rescale {name}, or enable float64 (docs/scale.md)")


def _cells(bad: np.ndarray, values: np.ndarray) -> list:
    """The first SHOWN_CELLS (row, column, value) where `bad` (a boolean array shaped like
    values, 1-D or 2-D) holds."""
    where = np.argwhere(bad)[:SHOWN_CELLS]
    return [(int(w[0]), int(w[1]) if bad.ndim == 2 else None, f"{float(values[tuple(w)]):.6g}")
            for w in where]


@_eagerly
def _finite(a: jax.Array, name: str, given=None) -> None:
    # No host copy or (n, d) temporary, and it works on sharded arrays.
    if isinstance(a, (Streamed, np.ndarray)):
        bad = a.stats().nonfinite if isinstance(a, Streamed) else _host_nonfinite(a)
        if bad and isinstance(a, Streamed):
            raise ValueError(f"{name} contains {bad} NaN or infinite value(s).")
        if bad:
            if given is not None:
                _overflowed(given, a, name)
            raise DataError(name, f"contains {bad} NaN or infinite value(s)",
                            _cells(~np.isfinite(a), a) if a.ndim <= 2 else (), bad)
    elif _concrete(a) and not bool(_all_finite(a)):
        bad = int(jnp.size(a) - jnp.count_nonzero(jnp.isfinite(a)))
        if bad:
            raise ValueError(f"{name} contains {bad} NaN or infinite value(s).")


def features(x, *, dim: int | None = None, streams: bool = False) -> jax.Array:
    """x as a float (n, d) array; raises ValueError if it is not 2-D, real or finite.
    `streams`: the caller reads rows through `row_sum`, so a `Streamed` x is accepted."""
    given, x = x, _as_float(x, "x", streams)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D with shape (n, d), got shape {x.shape}.")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"x must have d = {dim} columns to match the parameters, got "
                         f"{x.shape[1]}.")
    if x.shape[0] == 0:  # as scikit-learn: no rows is a mistake upstream, not an empty answer
        raise ValueError(f"x has no rows (shape {x.shape}); give at least one.")
    _finite(x, "x", given)
    return x


def vector(a, name: str) -> jax.Array:
    """a as a finite float (n,) array; ValueError naming `name` otherwise."""
    a = _as_float(a, name)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D with shape (n,), got shape {a.shape}.")
    _finite(a, name)
    return a


def data(x, y, *, dim: int | None = None,
         streams: bool = False) -> tuple[jax.Array, jax.Array]:
    """(x, y) as float arrays of shapes (n, d) and (n,), checked as in `features`."""
    given_x, x = x, features(x, dim=dim, streams=streams)
    _columns_kept(given_x, x)
    given, y = y, _as_float(y, "y", streams)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D with shape (n,), got shape {y.shape}.")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y must have one entry per row of x (n = {x.shape[0]}), got "
                         f"{y.shape[0]}.")
    _finite(y, "y", given)
    _digits_kept(given, y)
    dtype = jnp.promote_types(x.dtype, y.dtype)
    return x.astype(dtype), y.astype(dtype)


def _columns_kept(given, x) -> None:
    """Raises DataError naming the columns of a float64 host x that vary but became constant
    when cast to float32 (JAX's default float type): x + 1e12 is not a constant column."""
    if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.size) or isinstance(
            given, (jax.Array, Streamed)):
        return
    given = np.asarray(given)
    if given.dtype != np.float64:
        return
    constant = np.flatnonzero(np.ptp(x, axis=0) == 0)  # the float64 pass only if needed
    lost = constant[np.ptp(given[:, constant], axis=0) > 0] if constant.size else constant
    if lost.size:
        raise DataError("x", "has column(s) that vary in float64 but are constant in "
                        "float32, JAX's default float type (their spread is below float32's "
                        "resolution at their magnitude)", [(None, int(j), None) for j in lost],
                        advice="Subtract a constant (e.g. the column's mean) first, or enable "
                        "float64 (docs/scale.md)")


def _digits_kept(given, y) -> None:
    """Raises ValueError if a float64 host y that varies became constant when cast to float32
    (JAX's default float type): its spread is below float32's resolution at its magnitude."""
    if isinstance(given, (jax.Array, Streamed)) or not (
            isinstance(y, np.ndarray) and y.dtype == np.float32 and y.size):
        return
    given = np.asarray(given)
    if given.dtype != np.float64:
        return
    if np.max(y) == np.min(y) and np.max(given) != np.min(given):
        raise ValueError(
            f"y varies (from {np.min(given):.10g} to {np.max(given):.10g}) but is constant in "
            "float32, JAX's default float type: its spread is below float32's resolution at "
            "its magnitude. Subtract a constant (e.g. its mean) first, or enable float64 "
            "(docs/scale.md).")


def _number(value, name: str):
    """A concrete scalar as a NumPy float; ValueError for strings, booleans, arrays."""
    if isinstance(value, (str, bytes, bool, np.bool_)):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    try:
        v = np.asarray(value)
    except (TypeError, ValueError):
        v = np.asarray(None)
    if v.ndim != 0 or v.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be a real number (a scalar), got {value!r}.")
    return v.astype(np.float64)


def positive(value, name: str):
    """Raises ValueError unless a concrete `value` is a positive finite number."""
    if _concrete(value):
        v = _number(value, name)
        if not np.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
    return value


def nonnegative(value, name: str):
    """Raises ValueError unless a concrete `value` is a finite number >= 0."""
    if _concrete(value):
        v = _number(value, name)
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    return value


def flag(value, name: str) -> bool:
    """value as a Python bool (NumPy booleans accepted); ValueError otherwise."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}.")
    return bool(value)


def params(p, *, dim: int | None = None, gate_dim: int | None = None, name: str = "params",
           design: int | None = None):
    """p as MoEParams (a plain 3-tuple is read as a linear model) with experts (k, d), k >= 1
    (one expert: least squares), and gating (k, d_gate), d_gate = gate_dim (the width of the
    gate's design) or by default d, noise_std positive, a scalar or one per expert (k,), and a
    known non-linearity and family; values checked finite where concrete. design: the width
    of the x the params are evaluated on, d (the gate shares the experts' design) or
    d + d_gate (x = [z_experts, z_gate], a gate on columns of its own)."""
    if not isinstance(p, MoEParams):
        if not isinstance(p, tuple) or len(p) != 3:
            raise ValueError(f"{name} must be MoEParams(experts, gating, noise_std, "
                             f"nonlinearity), got {type(p).__name__}.")
        p = MoEParams(*p)
    get_nonlinearity(p.nonlinearity)
    get_family(p.family)
    experts = _as_float(p[0], f"{name}.experts")
    gating = _as_float(p[1], f"{name}.gating")
    sigma = _as_float(p[2], f"{name}.noise_std")
    gate_width = experts.shape[-1] if gate_dim is None else gate_dim
    if design is not None and experts.ndim == 2 and gating.ndim == 2:
        if design not in (experts.shape[1], experts.shape[1] + gating.shape[1]):
            if gating.shape == experts.shape:  # the usual model: one design for both
                raise ValueError(f"x must have d = {experts.shape[1]} columns to match the "
                                 f"parameters, got {design}.")
            raise ValueError(
                f"x has {design} columns: {name}.experts (k, d) and {name}.gating (k, d_gate) "
                f"must have d = {design} (a gate on the experts' design) or d + d_gate = "
                f"{design} (x = [experts' design, gate's design]), got {experts.shape} and "
                f"{gating.shape}.")
        if design != experts.shape[1]:
            gate_width = gating.shape[1]
    if (experts.ndim != 2 or experts.shape[0] < 1 or gating.ndim != 2
            or gating.shape != (experts.shape[0], gate_width)):
        raise ValueError(f"{name}.experts and {name}.gating must have shapes (k, d) and (k, "
                         f"d_gate) with k >= 1 and d_gate = {gate_width} (the gate's design; "
                         f"d unless the gate has its own), got {experts.shape} and "
                         f"{gating.shape}.")
    if dim is not None and experts.shape[1] != dim:
        raise ValueError(f"{name} must have d = {dim} columns to match x, got "
                         f"{experts.shape[1]}.")
    if sigma.shape not in ((), (experts.shape[0],)):
        raise ValueError(f"{name}.noise_std must be a scalar or have shape (k,) = "
                         f"({experts.shape[0]},), got shape {sigma.shape}.")
    _finite(experts, f"{name}.experts")
    _finite(gating, f"{name}.gating")
    _positive_array(sigma, f"{name}.noise_std")
    dtype = jnp.promote_types(experts.dtype, gating.dtype)
    return p._replace(experts=experts.astype(dtype), gating=gating.astype(dtype),
                      noise_std=sigma.astype(dtype))


def _positive_array(a: jax.Array, name: str) -> None:
    if _concrete(a):
        v = np.asarray(a)
        if not (np.all(np.isfinite(v)) and np.all(v > 0)):
            raise ValueError(f"{name} must be a positive finite number (or one per expert), "
                             f"got {v}.")


def noise_levels(noise_std, num_experts: int, name: str = "noise_std") -> jax.Array:
    """noise_std as a positive float array of shape () or (num_experts,); ValueError otherwise."""
    if isinstance(noise_std, (str, bytes, bool, np.bool_)):
        raise ValueError(f"{name} must be a positive number or one per expert, got "
                         f"{noise_std!r}.")
    sigma = _as_float(noise_std, name)
    if sigma.shape not in ((), (num_experts,)):
        raise ValueError(f"{name} must be a scalar or have shape (num_experts,) = "
                         f"({num_experts},), got shape {sigma.shape}.")
    _positive_array(sigma, name)
    return sigma


def row_weights(weights, n: int):
    """None, or weights as a finite float (n,) array of values >= 0 with a positive sum."""
    if weights is None:
        return None
    weights = vector(weights, "weights")
    if weights.shape[0] != n:
        raise ValueError(f"weights must have one entry per row of x (n = {n}), got "
                         f"{weights.shape[0]}.")
    if _concrete(weights) and not _valid_weights(weights):
        raise ValueError("weights must be >= 0 with a positive sum.")
    return weights


@_eagerly
def _valid_weights(weights: jax.Array) -> bool:
    ops = np if isinstance(weights, np.ndarray) else jnp
    return bool(ops.all(weights >= 0)) and float(ops.sum(weights)) > 0


def min_samples(dim: int) -> int:
    """Fewest samples the estimators accept: more than d, so that M2 and X^T X are estimable.

    Args:
      dim: d, the number of features.

    Returns:
      d + 1.

    Raises:
      Nothing.

    >>> min_samples(10)
    11
    """
    return dim + 1


def fit_inputs(x, y, num_experts, nonlinearity, noise_std=None, *, streams: bool = False,
               power: int | None = None, beyond_dim: bool = False):
    """Checks the arguments shared by every estimator; returns (x, y, noise_std) as arrays
    (noise_std None, to be learned or read from params, stays None).
    `streams`: the estimator reads rows only through `row_sum` (`Streamed` data accepted);
    `power`: the highest power of the data the estimator sums (see `scales`), checked too;
    `beyond_dim`: k may exceed d (an estimator that does not need the moment method's k <= d,
    as `fit` with random starts)."""
    x, y = data(x, y, streams=streams)
    n, d = x.shape
    if isinstance(num_experts, (bool, np.bool_)) or not isinstance(
            num_experts, (int, np.integer)) or not 2 <= num_experts <= (n if beyond_dim else d):
        raise ValueError(f"num_experts must be an integer in [2, "
                         f"{f'n={n}' if beyond_dim else f'd={d}'}], got "
                         f"{num_experts!r}{_static_hint(num_experts)}.")
    if n < min_samples(d):
        raise ValueError(
            f"x has n = {n} samples; the moment method needs at least n = d + 1 = {min_samples(d)}"
            " (and far more for accuracy: the expert error falls like 1/sqrt(n)).")
    get_nonlinearity(nonlinearity)
    if noise_std is not None:
        positive(noise_std, "noise_std")
    if _concrete(y) and bool(_constant(y)):
        constant_target(y.stats().min if isinstance(y, Streamed) else float(y[0]))
    if power is not None:
        scales(x, y, power=power)
    if noise_std is None:
        return x, y, None
    if not _concrete(noise_std):
        return x, y, jnp.asarray(noise_std, x.dtype)
    # A concrete sigma stays on the host: jnp.asarray would compile a program per shape.
    return x, y, np.asarray(noise_std, x.dtype)


def family_target(y: np.ndarray, family) -> None:
    """Raises the DataError of the rows of checked host y that `family` (a `Family`) cannot
    hold (a 0/1 column with other values, a count that is negative or not whole)."""
    bad = family.check_target(y)
    if bad.size:
        raise DataError("y", f"must be {family.target} for family {family.name!r}",
                        [(int(i), None, f"{float(y[i]):.6g}") for i in bad[:SHOWN_CELLS]],
                        count=int(bad.size))


def constant_target(value: float):
    """Raises the DataError of a constant y (every entry `value`)."""
    raise DataError("y", f"is constant (every entry is {value:.6g}): there is nothing to fit")


def _constant(y) -> jax.Array:
    if isinstance(y, Streamed):
        return y.stats().min == y.stats().max
    if isinstance(y, np.ndarray):
        return np.max(y) == np.min(y)
    return _same(y)


@_eagerly
@jax.jit
def _same(y: jax.Array) -> jax.Array:
    return jnp.max(y) == jnp.min(y)


def _static_hint(value) -> str:
    """What to do when a traced value reached a static argument."""
    if isinstance(value, jax.core.Tracer):
        return (" (configuration must be static: under jax.jit, bind it with functools.partial "
                "or list it in static_argnames)")
    return ""


def count(value, name: str, minimum: int = 1) -> int:
    """value as a Python int >= minimum (NumPy integers accepted); ValueError otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got "
                         f"{value!r}{_static_hint(value)}.")
    return int(value)


def matrix(a, name: str, *, cols: int, rows: int | None = None) -> jax.Array:
    """a as a finite float (rows, cols) array; ValueError naming `name` otherwise."""
    a = _as_float(a, name)
    if a.ndim != 2 or a.shape[1] != cols or (rows is not None and a.shape[0] != rows):
        shape = f"({'k' if rows is None else rows}, {cols})"
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}.")
    _finite(a, name)
    return a


def _max_abs(a) -> float:
    if isinstance(a, Streamed):
        return a.stats().max_abs
    if isinstance(a, np.ndarray):  # no |a| temporary
        return float(max(np.max(a), -np.min(a))) if a.size else 0.0
    return float(_max_abs_jit(a))


@_eagerly
@jax.jit
def _max_abs_jit(a: jax.Array) -> jax.Array:
    return jnp.max(jnp.abs(a))


def scale_limit(n: int, dtype, *, power: int) -> float:
    """The largest |value| whose `power`-th powers, summed over n rows, stay finite in dtype."""
    return float(jnp.finfo(dtype).max) ** (1.0 / power) / max(n, 1) ** (1.0 / power)


def scales(x, y, *, power: int) -> None:
    """Raises ValueError if x or y is too large for the float type: the estimators form sums
    of `power`-th powers of the data (2 for the likelihood, 3 for the third moment), which
    must stay below the type's largest value."""
    if not (_concrete(x) and _concrete(y)):
        return
    info = jnp.finfo(x.dtype)
    limit = scale_limit(x.shape[0], x.dtype, power=power)
    for a, name in ((x, "x"), (y, "y")):
        top = float(_max_abs(a)) * (np.sqrt(a.shape[1]) if a.ndim == 2 else 1.0)
        if top > limit:
            what = ("the likelihood's squared residuals" if power == 2
                    else "the moments' cubes (T3(y) ~ y^3, (a . x)^3)")
            raise ValueError(
                f"{name} has values up to {float(_max_abs(a)):.3g}: {what} over n = "
                f"{x.shape[0]} rows overflow {x.dtype} (largest {float(info.max):.3g}). "
                f"Rescale {name} (e.g. standardise it) or use float64.")


def noise_scale(noise_std, dtype, *, estimated: bool = False) -> None:
    """Raises ValueError if sigma^2 under- or overflows `dtype` (a concrete sigma only).
    `estimated`: sigma came from the data, not from the caller, and the message says so."""
    if not _concrete(noise_std):
        return
    levels = np.asarray(noise_std, np.float64).ravel()
    info = jnp.finfo(dtype)
    outside = levels[~((float(info.tiny) <= levels ** 2) & (levels ** 2 <= float(info.max)))]
    if outside.size:
        sigma = float(outside[0])
        if estimated:
            raise ValueError(
                f"y's scale is too small or too large for {np.dtype(dtype).name}: the noise level "
                f"estimated from it, {sigma:.3g}, has a square outside "
                f"[{float(info.tiny):.3g}, {float(info.max):.3g}]. Rescale y or use float64.")
        raise ValueError(
            f"noise_std = {sigma:.3g} is outside what {np.dtype(dtype).name} can hold in the "
            f"likelihood: sigma^2 must lie in [{float(info.tiny):.3g}, {float(info.max):.3g}]. "
            "Rescale y (and sigma with it) or use float64.")


def stream_errors(*arrays) -> None:
    """Raises ValueError with the first read error of the streamed arrays among `arrays`
    (a block that could not be read, or that changed after the check), clearing them."""
    errors = [a.take_error() for a in arrays if isinstance(a, Streamed)]
    errors = [e for e in errors if e]
    if errors:
        raise ValueError(errors[0] + ".")


def finite_result(finite, x, y, *, noise_std=None, what: str = "the fit",
                  step: tuple[str, float] | None = None, nonlinearity=None) -> None:
    """After a run on concrete inputs: raises ValueError naming the likely cause if the run
    produced non-finite numbers (`finite` False). Under jit the flag is all the caller gets.

    The causes that are cheap to check come first: constant (e.g. all-zero) columns of x, a
    `nonlinearity` that is not finite somewhere on the range of pre-activations the data
    reach, and, for a method with a step size `step` = (its argument's name, value), a
    diverging step when the data's scale is unremarkable; only then the float type's range."""
    stream_errors(x, y)
    if not _concrete(finite) or bool(np.all(np.asarray(finite))):
        return
    if not isinstance(x, Streamed) and _concrete(x) and x.ndim == 2 and x.shape[0] > 1:
        host = np.asarray(x)
        constant = np.flatnonzero(np.all(host == host[:1], axis=0))
        if constant.size:
            raise ValueError(
                f"{what} produced non-finite numbers: x has constant column(s) "
                f"{constant.tolist()}" + (" (all zero)" if not np.any(host[:, constant]) else "")
                + ", which carry no information and make the moments and the Gram matrix "
                "singular; drop them.")
    if nonlinearity is not None and not isinstance(x, Streamed) and _concrete(x):
        _nonlinearity_finite(nonlinearity, x, what)
    top = max(float(_max_abs(x)), float(_max_abs(y)))
    if step is not None and top < 1e6:
        raise ValueError(f"{what} produced non-finite numbers in {x.dtype} with data of "
                         f"ordinary scale (max |value| {top:.3g}): the steps diverged; lower "
                         f"{step[0]} (got {step[1]!r}).")
    parts = [f"max |x| = {float(_max_abs(x)):.3g}", f"max |y| = {float(_max_abs(y)):.3g}"]
    if noise_std is not None:
        parts.append(f"noise_std = {np.array2string(np.asarray(noise_std), precision=3)}")
    raise ValueError(
        f"{what} produced non-finite numbers in {x.dtype} ({', '.join(parts)}): the data or "
        "sigma are at a scale the float type cannot hold in the likelihood. Standardise x and "
        "y, or use float64.")


def _nonlinearity_finite(nonlinearity, x, what: str) -> None:
    """ValueError if g is not finite somewhere on [-R, R], R = max(10, max_n ||x_n||): the
    pre-activations a . x of unit-norm experts on these rows (checked on a grid)."""
    reach = max(10.0, float(np.sqrt(np.max(np.sum(np.square(np.asarray(x, np.float64)),
                                                         axis=1)))))
    grid = np.linspace(-reach, reach, 2001).astype(np.asarray(x).dtype)
    values = np.asarray(get_nonlinearity(nonlinearity)(jnp.asarray(grid)))
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        name = repr(nonlinearity if isinstance(nonlinearity, str)
                    else getattr(nonlinearity, "__name__", "function"))
        raise ValueError(f"{what} produced non-finite numbers: the non-linearity {name} is not "
                         f"finite at u = {float(grid[bad[0]]):.4g} (and {bad.size - 1} more of "
                         f"2001 points in [-{reach:.3g}, {reach:.3g}], the range of a . x on "
                         "these data); it must be finite on the whole line.")
