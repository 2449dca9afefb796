"""The parameters of the mixture-of-experts model (docs/algorithm.md section 1): one pytree
that every estimator returns and every evaluation reads."""

from typing import NamedTuple

import jax

from moejax.nonlinearities import Nonlinearity


class MoEParams(NamedTuple):
    """Parameters of y = g(a_z . x) + noise_std * eps, P(z = i | x) = softmax(gating @ x)_i.

    A pytree whose leaves are the three arrays; `nonlinearity` is static (part of the tree's
    structure), so params pass through jit, vmap, grad and lax loops, and a function of params
    compiles once per non-linearity. Every function that evaluates the model reads g from here.

    Attributes:
      experts: (k, d), unit-norm rows a_i.
      gating: (k, d), rows w_i; the last row is zero (the gating is identified only up to
        adding one vector to every row).
      noise_std: sigma > 0: a scalar (one noise level shared by the experts, the model of
        the consistency result) or (k,), one per expert.
      nonlinearity: the experts' g: a name in `moejax.nonlinearity_names()` or an
        elementwise callable (a name is needed to save a fitted model).
    """

    experts: jax.Array
    gating: jax.Array
    noise_std: jax.Array
    nonlinearity: Nonlinearity = "linear"


jax.tree_util.register_pytree_with_keys(
    MoEParams,
    lambda p: ((tuple((jax.tree_util.GetAttrKey(f), getattr(p, f))
                      for f in ("experts", "gating", "noise_std"))), p.nonlinearity),
    lambda nonlinearity, leaves: MoEParams(*leaves, nonlinearity),
    lambda p: (tuple(p[:3]), p.nonlinearity))
