"""Checks shared by the public entry points. Values are checked only when concrete; under
jit/vmap tracing only shapes and dtypes are checked (a traced value cannot raise)."""

import jax
import jax.numpy as jnp
import numpy as np


def _concrete(a) -> bool:
    return not isinstance(a, jax.core.Tracer)


def _as_float(a, name: str) -> jax.Array:
    dtype = jnp.asarray(a).dtype if hasattr(a, "dtype") else np.asarray(a).dtype
    if jnp.issubdtype(dtype, jnp.complexfloating) or not (
            jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
            or dtype == jnp.bool_):
        raise ValueError(f"{name} must hold real numbers (float or integer), got dtype {dtype}.")
    if not jnp.issubdtype(dtype, jnp.floating):
        # Integer data (counts, codes) are valid inputs; compute in the default float type.
        return jnp.asarray(a, jnp.result_type(float))
    return jnp.asarray(a)


def _finite(a: jax.Array, name: str) -> None:
    if _concrete(a):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(np.asarray(a))))
        if bad:
            raise ValueError(f"{name} contains {bad} NaN or infinite value(s).")


def features(x, *, dim: int | None = None) -> jax.Array:
    """x as a float (n, d) array; raises ValueError if it is not 2-D, real or finite."""
    x = _as_float(x, "x")
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D with shape (n, d), got shape {x.shape}.")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"x must have d = {dim} columns to match the parameters, got {x.shape[1]}.")
    _finite(x, "x")
    return x


def data(x, y, *, dim: int | None = None) -> tuple[jax.Array, jax.Array]:
    """(x, y) as float arrays of shapes (n, d) and (n,), checked as in `features`."""
    x = features(x, dim=dim)
    y = _as_float(y, "y")
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D with shape (n,), got shape {y.shape}.")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y must have one entry per row of x (n = {x.shape[0]}), got {y.shape[0]}.")
    _finite(y, "y")
    dtype = jnp.promote_types(x.dtype, y.dtype)
    return x.astype(dtype), y.astype(dtype)


def positive(value, name: str):
    """Raises ValueError unless a concrete `value` is a positive finite number."""
    if _concrete(value):
        v = np.asarray(value)
        if v.ndim != 0 or not np.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
    return value
