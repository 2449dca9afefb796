"""Expert non-linearities g and the label-transform constants of docs/algorithm.md section 2."""

import functools
from typing import Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from moejax.families import get_family

Nonlinearity = Union[str, Callable[[jax.Array], jax.Array]]

def _identity(z):
    return z


# The built-in g; `register_nonlinearity` adds to this table (the one piece of module state:
# a name must mean one function for the whole process, so that saved models can name it).
_NAMED = {
    "linear": _identity,
    "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "exp": jnp.exp,  # the inverse of the log link (the Poisson family's)
}

NONLINEARITIES = tuple(_NAMED)  # the built-in names


def register_nonlinearity(name: str, fn: Callable[[jax.Array], jax.Array]) -> None:
    """Makes `name` stand for the elementwise function `fn` everywhere a non-linearity is
    named: `recover`, `fit`, `MoEParams.nonlinearity`, `moejax.io.save`/`load`.

    A name compiles once per shape, where a fresh lambda on every call would compile every
    time. Registering a name again with the same function is a no-op.

    Args:
      name: a non-empty string, not one of the built-in `NONLINEARITIES`.
      fn: an elementwise JAX function of one array (checked on a grid: finite, same shape).

    Returns:
      None.

    Raises:
      ValueError: for a built-in name, a name already taken by another function, a name
        that is not a non-empty string, or an fn that is not callable or not elementwise.

    >>> register_nonlinearity("softsign", jax.nn.soft_sign)
    >>> output_second_moment("softsign") == output_second_moment(jax.nn.soft_sign)
    True
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}.")
    if not callable(fn):
        raise ValueError(f"fn must be an elementwise JAX callable, got {fn!r}.")
    if name in NONLINEARITIES:
        raise ValueError(f"{name!r} is a built-in non-linearity and cannot be redefined.")
    if _NAMED.get(name, fn) is not fn:
        raise ValueError(f"non-linearity {name!r} is already registered with another "
                         f"function ({_NAMED[name]!r}).")
    _hermite_moments(fn)  # raises for an fn that is not elementwise or not finite
    _NAMED[name] = fn


def nonlinearity_names() -> tuple[str, ...]:
    """The names usable wherever a non-linearity is named: built-in, then registered ones.

    Returns:
      A tuple of names, the built-in `NONLINEARITIES` first.

    Raises:
      Nothing.

    >>> nonlinearity_names()[:2]
    ('linear', 'relu')
    """
    return tuple(_NAMED)

# Quadrature for E[f(Z)], Z ~ N(0, 1): composite Gauss-Legendre on [-12, 12] (the mass outside
# is below 1e-32) with 2000 panels of 8 nodes, weighted by the normal density. The usual
# 60-100 Gauss-Hermite nodes are spectrally accurate for smooth g but converge
# slowly at a kink: for relu they give c2 = 0.3661 (100 nodes) or 0.3668 (80 nodes) instead of
# the exact 1 - 2/pi = 0.36338, and a1 off by 0.017. Panels make a kink cost O(h^2), and a kink
# at 0 (relu, leaky relu) falls on a panel edge, where the rule is exact.
def _normal_rule(num_panels: int = 2000, order: int = 8, half_width: float = 12.0):
    x, w = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(-half_width, half_width, num_panels + 1)
    h = edges[1] - edges[0]
    nodes = (edges[:-1, None] + 0.5 * h * (x[None, :] + 1.0)).ravel()
    weights = np.tile(0.5 * h * w, num_panels) * np.exp(-0.5 * nodes**2) / np.sqrt(2.0 * np.pi)
    return nodes, weights


_NODES, _WEIGHTS = _normal_rule()
# Relative size below which a coefficient counts as zero.
_SINGULAR_RTOL = 1e-6


class TransformConstants(NamedTuple):
    """Constants of the label transforms T2(y) = y^2 + b y and T3(y) = y^3 + a2 y^2 + a1 y.

    c2 and c3 are the Hermite coefficients E[h2 He2] and E[h3 He3] that scale M2 and M3.
    """

    b: jax.Array
    a1: jax.Array
    a2: jax.Array
    c2: jax.Array
    c3: jax.Array


def get_nonlinearity(nonlinearity: Nonlinearity) -> Callable[[jax.Array], jax.Array]:
    """The elementwise function g for a name (built-in or registered), or a callable unchanged.

    Args:
      nonlinearity: a name in `nonlinearity_names()` ("linear", "relu", "leaky_relu",
        "sigmoid", "tanh" and any registered with `register_nonlinearity`) or a callable.

    Returns:
      A function of one array, applied elementwise.

    Raises:
      ValueError: for any other name or value.

    >>> get_nonlinearity("relu")(jnp.array([-1.0, 2.0]))
    Array([0., 2.], dtype=float32)
    """
    if isinstance(nonlinearity, np.ufunc):
        raise ValueError(f"nonlinearity {nonlinearity.__name__!r} is a NumPy ufunc, which JAX "
                         f"cannot trace: use jnp.{nonlinearity.__name__} or a name in "
                         f"{nonlinearity_names()}.")
    if callable(nonlinearity):
        return nonlinearity
    if isinstance(nonlinearity, str) and nonlinearity in _NAMED:
        return _NAMED[nonlinearity]
    raise ValueError(
        f"nonlinearity must be one of {nonlinearity_names()} (more with "
        f"moejax.register_nonlinearity) or an elementwise JAX callable, got {nonlinearity!r}.")


def _name(nonlinearity: Nonlinearity) -> str:
    return nonlinearity if isinstance(nonlinearity, str) else getattr(
        nonlinearity, "__name__", repr(nonlinearity))


@functools.lru_cache(maxsize=64)
def _hermite_moments(nonlinearity: Nonlinearity) -> np.ndarray:
    """E[g(Z)^p He_m(Z)] for p = 1..4 (rows) and m = 0..4 (columns), float64, by quadrature."""
    g = get_nonlinearity(nonlinearity)
    # jit: a custom_jvp function (jax.nn.relu) called under vmap returns a batch tracer even
    # inside ensure_compile_time_eval; a jitted call on constants is evaluated.
    with jax.ensure_compile_time_eval():
        gz = np.asarray(jax.jit(g)(jnp.asarray(_NODES)), dtype=np.float64)
    if gz.shape != _NODES.shape or not np.all(np.isfinite(gz)):
        raise ValueError(
            f"nonlinearity {_name(nonlinearity)!r} must map a 1-D array elementwise to finite "
            "values of the same shape.")
    z = _NODES
    he = np.stack([np.ones_like(z), z, z**2 - 1, z**3 - 3 * z, z**4 - 6 * z**2 + 3])
    powers = np.stack([gz, gz**2, gz**3, gz**4])  # (4, nodes)
    return np.einsum("pj,mj,j->pm", powers, he, _WEIGHTS)


def output_second_moment(nonlinearity: Nonlinearity) -> float:
    """E[g(Z)^2] for Z ~ N(0, 1): the noiseless E[y^2] of a model with unit-norm experts and
    gating independent of a_i . x (by quadrature, as in `transform_constants`).

    Args:
      nonlinearity: g, a name or an elementwise callable.

    Returns:
      A Python float.

    Raises:
      ValueError: for an unknown name.

    >>> round(output_second_moment("relu"), 6)  # E[max(Z, 0)^2] = 1/2
    0.5
    """
    return float(_hermite_moments(nonlinearity)[1, 0])


def transform_constants(nonlinearity: Nonlinearity, noise_std, *,
                        family: str = "gaussian") -> TransformConstants:
    """Constants b, a1, a2, c2, c3 of docs/algorithm.md section 2 for g = `nonlinearity`.

    The Hermite moments E[g(Z)^p He_m(Z)] come from quadrature (any g works, kinks included;
    see `_normal_rule`), computed once per g; the dependence on sigma is closed-form, so
    `noise_std` may be a traced value (jit, vmap, grad):

        b        = -E[g^2 He1] / E[g He1]
        c2       =  E[g^2 He2] + b E[g He2]
        [a2, a1] solves E[h3 He1] = E[h3 He2] = 0 with h3 = g^3 + 3 s^2 g + a2 (g^2 + s^2) + a1 g
        c3       =  E[h3 He3]

    Args:
      nonlinearity: g, a name or an elementwise callable.
      noise_std: sigma > 0 (may be traced).
      family: the experts' family (`moejax.families`), one with a moment start.

    Returns:
      TransformConstants(b, a1, a2, c2, c3).

    Raises:
      ValueError: if the system is singular or c2 or c3 vanishes, i.e. the second or third
        moment cannot see the experts for this g (for example an even g such as z**2), or if
        a concrete `noise_std` is not a positive finite number, or for a family whose
        moments the transforms cannot use (`Family.moment_start` False).

    >>> c = transform_constants("linear", 0.1)  # linear g: b = 0, c2 = 2, c3 = 6
    >>> [round(float(v), 4) for v in (c.b, c.c2, c.c3)]
    [0.0, 2.0, 6.0]
    """
    name = _name(nonlinearity)
    fam = get_family(family)
    if not fam.moment_start:
        raise ValueError(f"family {fam.name!r} has no moment start: the label transforms assume "
                         "a noise of constant variance around g(a . x).")
    mom = _hermite_moments(nonlinearity)  # mom[p - 1, m] = E[g^p He_m]
    scale = max(1.0, float(np.max(np.abs(mom))))
    eg1, eg2, eg3 = mom[:3]  # each (5,): E[g^p He_m], m = 0..4
    if abs(eg1[1]) < _SINGULAR_RTOL * scale:
        raise ValueError(
            f"nonlinearity {name!r} has E[g(Z) Z] = 0, so the label transform T2 is undefined "
            "(an even g): the moment method cannot recover experts for it.")
    b = -eg2[1] / eg1[1]
    c2 = eg2[2] + b * eg1[2]
    system = np.array([[eg2[1], eg1[1]], [eg2[2], eg1[2]]])
    if abs(c2) < _SINGULAR_RTOL * scale or abs(np.linalg.det(system)) < _SINGULAR_RTOL * scale**2:
        raise ValueError(
            f"nonlinearity {name!r} gives a singular system for the transform constants "
            f"(c2 = {c2:.3g}, det = {np.linalg.det(system):.3g}): the second/third moments cannot "
            "see the experts for this g.")

    # The 2x2 system: system @ [a2, a1] = -(E[g^3 He_m] + 3 s^2 E[g He_m]), m = 1, 2.
    s2 = fam.noise_variance(jnp.asarray(noise_std, dtype=jnp.result_type(float)))
    inv = np.linalg.inv(system)
    rhs1 = -(eg3[1] + 3.0 * s2 * eg1[1])
    rhs2 = -(eg3[2] + 3.0 * s2 * eg1[2])
    a2 = inv[0, 0] * rhs1 + inv[0, 1] * rhs2
    a1 = inv[1, 0] * rhs1 + inv[1, 1] * rhs2
    c3 = eg3[3] + 3.0 * s2 * eg1[3] + a2 * eg2[3] + a1 * eg1[3]

    if not isinstance(c3, jax.core.Tracer):
        sigma = float(noise_std)
        if not (np.isfinite(sigma) and sigma > 0):
            raise ValueError(f"noise_std must be a positive finite number, got {noise_std!r}.")
        if abs(float(c3)) < _SINGULAR_RTOL * scale:
            raise ValueError(
                f"nonlinearity {name!r} with noise_std={sigma:g} has c3 = 0: the third moment "
                "cannot see the experts for this g.")
    dtype = jnp.result_type(float)
    return TransformConstants(*(jnp.asarray(v, dtype) for v in (b, a1, a2, c2, c3)))


class QuarticConstants(NamedTuple):
    """Constants of the fourth-order label transform Q4(y) = y^4 + b3 y^3 + b2 y^2 + b1 y + b0
    of the designed-loss route (docs/algorithm.md section 10): c4 = E[h4 He4] scales its
    moment, as c2 and c3 scale M2 and M3."""

    b0: jax.Array
    b1: jax.Array
    b2: jax.Array
    b3: jax.Array
    c4: jax.Array


def quartic_constants(nonlinearity: Nonlinearity, noise_std) -> QuarticConstants:
    """Constants of Q4 (docs/algorithm.md section 10) for g = `nonlinearity` and a Gaussian
    noise of sd sigma.

    With h4(z) = E[Q4(g(z) + eps)], eps ~ N(0, sigma^2), (b3, b2, b1) solve E[h4 He_m] = 0 for
    m = 1, 2, 3 (a 3 x 3 linear system), so that E[Q4(y) t4(u, v, x)] keeps only the fourth
    Hermite coefficient c4 = E[h4 He4] of each expert; b0 = -E[h4] centres Q4 at a standard
    normal a . x (it changes no expectation, only the estimate's variance). The Hermite
    moments come from the same quadrature as `transform_constants`; sigma may be traced.

    Args:
      nonlinearity: g, a name or an elementwise callable.
      noise_std: sigma > 0 (may be traced).

    Returns:
      QuarticConstants(b0, b1, b2, b3, c4).

    Raises:
      ValueError: if the system is singular or c4 vanishes (the fourth moment cannot see
        the experts through this g).

    >>> c = quartic_constants("linear", 0.5)  # Q4 = y^4 - 6 (1 + s^2) y^2 + 3 (1 + s^2)^2
    >>> [round(float(v), 4) + 0.0 for v in c]  # + 0.0: no -0.0
    [4.6875, 0.0, -7.5, 0.0, 24.0]
    """
    mom = _hermite_moments(nonlinearity)  # mom[p - 1, m] = E[g^p He_m]
    scale = max(1.0, float(np.max(np.abs(mom))))
    s2 = jnp.square(jnp.asarray(noise_std, dtype=jnp.result_type(float)))
    e1, e2, e3, e4 = mom
    # E[(g + eps)^p He_m] for p = 1..4: the noise's moments are 0, s^2, 0, 3 s^4.
    unit = np.eye(5)[0]  # He_0 = 1 is the only He_m with a non-zero mean
    y1, y2 = e1, e2 + s2 * unit
    y3 = e3 + 3 * s2 * e1
    y4 = e4 + 6 * s2 * e2 + 3 * jnp.square(s2) * unit
    # The sigma-free part of the system decides whether it is singular: the columns of y3 and
    # y2 at m = 1..3 differ from e3 and e2 by multiples of e1 and of He_0 (which is 0 there).
    system = np.stack([e3[1:4], e2[1:4], e1[1:4]], axis=1)
    if abs(np.linalg.det(system)) < _SINGULAR_RTOL * scale**3:
        raise ValueError(
            f"nonlinearity {_name(nonlinearity)!r} gives a singular system for the fourth-order "
            f"transform (det = {np.linalg.det(system):.3g}): the fourth moment cannot see the "
            "experts for this g.")
    b3, b2, b1 = jnp.linalg.solve(jnp.stack([y3[1:4], y2[1:4], y1[1:4]], axis=1),
                                  -y4[1:4])
    h4 = y4 + b3 * y3 + b2 * y2 + b1 * y1
    c4 = h4[4]
    if not isinstance(c4, jax.core.Tracer) and abs(float(c4)) < _SINGULAR_RTOL * scale:
        raise ValueError(f"nonlinearity {_name(nonlinearity)!r} has c4 = 0: the fourth moment "
                         "cannot see the experts for this g.")
    dtype = jnp.result_type(float)
    return QuarticConstants(*(jnp.asarray(v, dtype) for v in (-h4[0], b1, b2, b3, c4)))
