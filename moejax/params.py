"""The parameters of the mixture-of-experts model (docs/algorithm.md section 1): one pytree
that every estimator returns and every evaluation reads."""

from typing import NamedTuple

import jax

from moejax.families import Family
from moejax.nonlinearities import Nonlinearity


class MoEParams(NamedTuple):
    """Parameters of y = g(a_z . x) + noise_std * eps, P(z = i | x) = softmax(gating @ x)_i
    (the Gaussian family; another family replaces the noise by its distribution around the
    mean g(a_z . x)).

    A pytree whose leaves are the three arrays; `nonlinearity` and `family` are static (part
    of the tree's structure), so params pass through jit, vmap, grad and lax loops, and a
    function of params compiles once per non-linearity and family. Every function that
    evaluates the model reads g and the family from here.

    Attributes:
      experts: (k, d), unit-norm rows a_i.
      gating: (k, d), rows w_i; the last row is zero (the gating is identified only up to
        adding one vector to every row).
      noise_std: sigma > 0: a scalar (one noise level shared by the experts, the model of
        the consistency result) or (k,), one per expert.
      nonlinearity: the experts' g: a name in `moejax.nonlinearity_names()` or an
        elementwise callable (a name is needed to save a fitted model).
      family: the distribution of y given an expert's mean g(a_i . x) (`moejax.families`):
        a name in `moejax.family_names()` or a `Family`. noise_std holds its scale (the
        Gaussian's sigma; 1 for a family without a dispersion).
    """

    experts: jax.Array
    gating: jax.Array
    noise_std: jax.Array
    nonlinearity: Nonlinearity = "linear"
    family: str | Family = "gaussian"


jax.tree_util.register_pytree_with_keys(
    MoEParams,
    lambda p: ((tuple((jax.tree_util.GetAttrKey(f), getattr(p, f))
                      for f in ("experts", "gating", "noise_std"))), tuple(p[3:])),
    lambda static, leaves: MoEParams(*leaves, *static),
    lambda p: (tuple(p[:3]), tuple(p[3:])))
