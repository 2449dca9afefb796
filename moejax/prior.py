"""The prior behind `fit`'s regularised estimate (docs/algorithm.md section 9): `fit` maximises
the log-likelihood plus the log of this prior (a MAP estimate), so that no expert's sigma can
collapse onto a few rows and no gate can saturate on separable training rows.

On the standardised scale `fit` works on (x whitened, y with sd 1):

- each learned sigma_i^2 has a scaled inverse-chi^2 prior with `noise_dof` = nu degrees of
  freedom and scale s^2 = 1 / k^2, the rule model-based clustering uses for a component's
  variance (Fraley and Raftery 2007: the data's variance divided by k^(2/dim), dim = 1 here).
  sigma's M-step becomes sigma_i^2 = (S_i + nu s^2) / (N_i + nu + 2) with S_i = sum_n q_ni r_ni^2
  and N_i = sum_n q_ni: nu + 2 pseudo-rows at variance nu s^2 / (nu + 2);
- each gate slope (not the intercepts) has a N(0, gate_scale^2) prior, a ridge
  (1 / gate_scale^2) / 2 ||W||^2 on the logits' slopes per sd of the (whitened) inputs: the
  weakly informative scale of logistic regressions (Gelman et al. 2008);
- for a family without a dispersion (binomial, Poisson), each expert slope likewise has a
  N(0, expert_scale^2) prior on the link scale, so that a logistic expert stays finite on
  rows it separates (a Gaussian expert's slopes have none: its sigma's prior does that job).

Both terms are O(1) while the log-likelihood grows with n: they decide only where the data do
not (a component of a few rows, a direction in which the gate could grow without bound).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from moejax.families import get_family


class Prior(NamedTuple):
    """The strength of `fit`'s prior (module doc); `fit(prior=None)` is plain maximum likelihood.

    Attributes:
      gate_scale: the prior sd of every gate slope, in logits per sd of the whitened input.
      noise_dof: nu, the prior's pseudo-rows for each sigma^2 (nu + 2 in its M-step).
      expert_scale: the prior sd of every expert slope of a family without a dispersion, on
        its link scale per sd of the whitened input.
    """

    gate_scale: float = 2.5
    noise_dof: float = 3.0
    expert_scale: float = 2.5


class Penalty(NamedTuple):
    """A `Prior` on the standardised scale of one fit, as arrays (a pytree: a new strength
    compiles nothing). gate_ridge: (d_gate + 1,) the ridge on each column of the gate's
    design (0 for the intercept column); noise_dof: nu; noise_scale: s^2; expert_ridge: None
    (a family with a dispersion), or (d + 1,) the ridge on each column of the experts'
    coefficients."""

    gate_ridge: jax.Array
    noise_dof: jax.Array
    noise_scale: jax.Array
    expert_ridge: jax.Array | None = None


def _slope_ridge(scale: float, dim: int, dtype) -> np.ndarray:
    """(dim + 1,): 1 / scale^2 on each slope, 0 on the intercept (the design's last column)."""
    return np.concatenate([np.full((dim,), 1.0 / scale ** 2), [0.0]]).astype(dtype)


def penalty(prior: Prior, num_experts: int, dim: int, dtype, family="gaussian",
            gate_dim: int | None = None) -> Penalty:
    """The `Penalty` of `prior` for k experts of `family` on the design [x_std, 1] of d = dim
    features (and a gate on gate_dim features of its own, or on the experts' when None), as
    host (NumPy) arrays: built on the host, it compiles nothing."""
    dtype = np.dtype(dtype)
    experts = (None if get_family(family).has_dispersion else
               _slope_ridge(prior.expert_scale, dim, dtype))
    gate_dim = dim if gate_dim is None else gate_dim
    return Penalty(_slope_ridge(prior.gate_scale, gate_dim, dtype),
                   np.asarray(prior.noise_dof, dtype), np.asarray(1.0 / num_experts ** 2, dtype),
                   experts)


def log_prior(pen: Penalty, params, learn_noise_std: bool) -> jax.Array:
    """log p(theta) up to a constant: -1/2 sum_ij ridge_j W_ij^2, the same over the experts'
    coefficients with their ridge (if any), plus, when sigma is learned,
    sum_i -(nu / 2 + 1) log sigma_i^2 - nu s^2 / (2 sigma_i^2). params: `MoEParams` (or any
    record with experts, gating (k, d + 1) and noise_std)."""
    out = -0.5 * jnp.sum(pen.gate_ridge * jnp.square(params.gating))
    if pen.expert_ridge is not None:
        out = out - 0.5 * jnp.sum(pen.expert_ridge * jnp.square(params.experts))
    noise_std = params.noise_std
    if learn_noise_std:
        var = jnp.square(jnp.atleast_1d(noise_std))
        out = out + jnp.sum(-(pen.noise_dof / 2 + 1) * jnp.log(var)
                            - pen.noise_dof * pen.noise_scale / (2 * var))
    return out


def check(prior) -> Prior | None:
    """`prior` as a Prior of Python floats, or None; ValueError naming the bad field."""
    if prior is None:
        return None
    if not isinstance(prior, Prior):
        raise ValueError(f"prior must be a moejax.Prior or None (maximum likelihood), got "
                         f"{type(prior).__name__}.")
    values = {}
    for name, value in prior._asdict().items():
        try:
            value = float(value)
        except (TypeError, ValueError):
            value = float("nan")
        if not value > 0 or value == float("inf"):
            raise ValueError(f"prior.{name} must be a positive finite number, got "
                             f"{getattr(prior, name)!r}.")
        values[name] = value
    return Prior(**values)
