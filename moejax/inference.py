"""Standard errors of a fitted MoE (docs/algorithm.md section 7): the observed information at
the fitted optimum by exact autodiff, its robust (sandwich) variant, and the delta method that
carries both to coefficients in the units of the data.

The parameters are packed into one unconstrained vector theta = (experts (k, d + 1), the free
gating rows (k - 1, d + 1), log sigma (one, or one per expert; absent when sigma was given)),
all on the standardised scale `fit` works on. With L(theta) = sum_n log p(y_n | x_n) over the
training rows:

    I = -d^2 L / d theta^2              (observed information)
    Cov(theta) = I^(-1)                 (model-based)
    Cov_robust(theta) = I^(-1) B I^(-1),  B = sum_n s_n s_n^T,  s_n = d log p(y_n | x_n) / d theta

and a coefficient c = f(theta) in data units has Cov(c) = J Cov(theta) J^T, J = df/dtheta.
Everything here runs in float64 (JAX's x64 mode inside a context), because I is inverted and
float32 sums lose the digits that a condition number of 1e4 needs.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from moejax.compilation import jit
from moejax.program_cache import cached_call
from moejax import predictive
from moejax.params import MoEParams
from moejax.preprocessing import Standardizer
from moejax.families import get_family
from moejax.prior import Prior, log_prior
from moejax.prior import penalty as penalty_of
from moejax.sums import Layout, row_sum

# theta is more than this many information-weighted units from the maximum (its Newton
# decrement g^T I^(-1) g, the squared distance to the optimum in standard errors) => the fit did
# not reach the maximum, and standard errors there would describe another point.
MAX_NEWTON_DECREMENT = 0.25
# The information's smallest eigenvalue at or below this fraction of its largest => singular.
SINGULAR_RATIO = 1e-12


class Inference(NamedTuple):
    """What `fit` keeps of its training data for standard errors and information criteria
    (float64, the standardised scale; p = the length of theta, see the module doc).

    Attributes:
      num_rows: the number of training rows n.
      log_likelihood: sum_n log p(y_n | x_n) over the training rows, in the target's units.
      entropy: -sum_n sum_i q_ni log q_ni, the posteriors' entropy (for ICL).
      mixing_weights: (k,) mean gate probabilities over the training rows.
      score: (p,) the gradient of L at the fitted theta (0 at an exact maximum).
      information: (p, p) the observed information I.
      outer: (p, p) B = sum_n s_n s_n^T, the sandwich's middle.
      saturated_log_likelihood: sum_n log p(y_n | mu = y_n), the saturated model's, for a
        family with a deviance (`Family.saturated_log_density`), else None.
      null_log_likelihood: sum_n log p(y_n | mu = mean(y)), the null (intercept-only)
        model's, for the same families, else None.
    """

    num_rows: jax.Array
    log_likelihood: jax.Array
    entropy: jax.Array
    mixing_weights: jax.Array
    score: jax.Array
    information: jax.Array
    outer: jax.Array
    saturated_log_likelihood: jax.Array | None = None
    null_log_likelihood: jax.Array | None = None


def x64():
    """A context in which JAX computes in float64 (`jax.enable_x64`, or its older home)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64
    return enable_x64(True)


def free_parts(params: MoEParams, learn_sigma: bool) -> tuple:
    """The free parameters as arrays: (experts (k, d), the gating's k - 1 free rows, and
    log sigma if learned), the one parameterisation that `pack` flattens and the
    gradient-descent baseline optimises."""
    parts = (params.experts, params.gating[:-1])
    return parts + (jnp.log(params.noise_std),) if learn_sigma else parts


def from_parts(parts: tuple, like: MoEParams) -> MoEParams:
    """The MoEParams of `free_parts`, shaped like `like` (whose sigma is kept if not
    learned)."""
    experts, free_gating, *log_sigma = parts
    gating = jnp.concatenate([free_gating, jnp.zeros((1,) + free_gating.shape[1:],
                                                     free_gating.dtype)])
    sigma = (jnp.exp(log_sigma[0]) if log_sigma
             else jnp.asarray(like.noise_std, experts.dtype))
    return like._replace(experts=experts, gating=gating, noise_std=sigma)


def pack(params: MoEParams, learn_sigma: bool) -> jax.Array:
    """theta: (p,), `free_parts` flattened (see the module doc)."""
    return jnp.concatenate([jnp.ravel(v) for v in free_parts(params, learn_sigma)])


def unpack(theta: jax.Array, like: MoEParams, learn_sigma: bool) -> MoEParams:
    """The MoEParams of theta, shaped like `like` (whose sigma is kept if not learned)."""
    shapes = [jnp.shape(v) for v in free_parts(like, learn_sigma)]
    ends = np.cumsum([math.prod(s) for s in shapes])[:-1]
    return from_parts(tuple(v.reshape(s) for v, s in zip(jnp.split(theta, ends), shapes)),
                      like)


def parameter_count(num_experts: int, dim: int, num_sigmas: int,
                    gate_dim: int | None = None) -> int:
    """Free parameters of a k-expert model on d features: k (d + 1) expert and
    (k - 1)(d_gate + 1) gate coefficients (intercepts included; the last gate is 0; d_gate = d
    unless the gate has columns of its own), and the learned sigmas. The one count behind
    `num_params`, BIC, k selection and the rules on rows."""
    gate_dim = dim if gate_dim is None else gate_dim
    return num_experts * (dim + 1) + (num_experts - 1) * (gate_dim + 1) + num_sigmas


def num_params(params: MoEParams, learn_sigma: bool) -> int:
    """The length of theta: `parameter_count` of params (design widths d + 1, d_gate + 1)."""
    k, d1 = params.experts.shape
    return parameter_count(k, d1 - 1, int(np.size(params.noise_std)) if learn_sigma else 0,
                           params.gating.shape[1] - 1)


# Rows per block of the sums below: the Hessian's forward-over-reverse pass holds p tangents of
# a block's intermediates, so memory stays p * _BLOCK_ROWS * (k d) whatever n is. Tables up to
# this size run as one block, which compiled in 2.3 s against 3.6 s for a scan over blocks of
# 1024 (airfoil, k = 3).
_BLOCK_ROWS = 4096


@jit(static_argnames="learn_sigma", kind="fast_compile")
def _statistics(params: MoEParams, z, y, weights, y_scale, penalty, learn_sigma):
    theta = pack(params, learn_sigma)

    def rows(theta, zb, yb):  # log p(y | x) of a block's rows
        return predictive.log_density(unpack(theta, params, learn_sigma), zb, yb)

    def block(zb, yb, w):
        total = lambda theta: jnp.sum(w * rows(theta, zb, yb))
        per_row = jax.vmap(jax.grad(lambda t, zr, yr: rows(t, zr[None], yr[None])[0]),
                           in_axes=(None, 0, 0))(theta, zb, yb) * w[:, None]
        q = predictive.posteriors(params, zb, yb)
        gates = predictive.gate_probabilities(params, zb)
        return dict(
            log_likelihood=total(theta), score=jax.grad(total)(theta),
            information=-jax.hessian(total)(theta), outer=per_row.T @ per_row,
            entropy=-jnp.sum(w[:, None] * q * jnp.log(jnp.maximum(q, jnp.finfo(q.dtype).tiny))),
            gates=jnp.sum(w[:, None] * gates, axis=0), count=jnp.sum(w))

    sums = row_sum(block, (z, y), Layout(_BLOCK_ROWS), weights)
    information = sums["information"]
    if penalty is not None:  # the MAP fit's objective: its curvature and gradient
        def prior(theta):
            p = unpack(theta, params, learn_sigma)
            return log_prior(penalty, p, learn_sigma)

        sums["score"] = sums["score"] + jax.grad(prior)(theta)
        information = information - jax.hessian(prior)(theta)
    return Inference(
        num_rows=sums["count"],
        log_likelihood=sums["log_likelihood"] - sums["count"] * jnp.log(y_scale),
        entropy=sums["entropy"], mixing_weights=sums["gates"] / sums["count"],
        score=sums["score"], information=0.5 * (information + information.T),
        outer=sums["outer"])


def statistics(params: MoEParams, z, y, weights, y_scale, learn_sigma: bool,
               prior: Prior | None = None) -> Inference:
    """The `Inference` of params on the design z (n, d + 1) and standardised y (n,) with row
    weights (n,) (0 on padding rows), computed in float64; host (NumPy) arrays. With the
    `prior` of a MAP fit, score and information are those of the penalised objective
    (log-likelihood + log prior), whose maximum the fit is; log_likelihood is not penalised."""
    with x64():
        k, d1 = params.experts.shape
        penalty = (None if prior is None else
                   penalty_of(prior, k, d1 - 1, jnp.float64, params.family,
                              params.gating.shape[1] - 1))
        out = cached_call(_statistics, (_float64(params), *_float64((z, y, weights, y_scale)),
                                        penalty), learn_sigma=learn_sigma)
        return jax.tree.map(lambda v: np.asarray(v, np.float64), out)  # None stays None


def problem(inference: Inference | None) -> str | None:
    """Why the standard errors are not available, or None when they are."""
    if inference is None:
        return ("no standard errors: the model was fitted with standard_errors=False, or saved "
                "by a moejax that did not compute them")
    info = np.asarray(inference.information)
    if not np.all(np.isfinite(info)):
        return "no standard errors: the observed information is not finite"
    eigvals = np.linalg.eigvalsh(info)
    tiny = SINGULAR_RATIO * max(eigvals[-1], 0.0)
    if eigvals[0] < -tiny:
        return (f"no standard errors: the fit is not at a maximum of the likelihood (the "
                f"observed information has a negative eigenvalue, {eigvals[0]:.3g}: raise "
                "num_refine_iters, or num_refine_iters=0 was used)")
    if eigvals[0] <= tiny or eigvals[-1] <= 0:
        return (f"no standard errors: the observed information is singular (eigenvalues "
                f"{eigvals[0]:.3g} .. {eigvals[-1]:.3g}; a gate is saturated, or an expert has "
                "almost no rows, so some coefficients are not identified)")
    decrement = float(inference.score @ np.linalg.solve(info, inference.score))
    if decrement > MAX_NEWTON_DECREMENT:
        return (f"no standard errors: the fit is not at a maximum of the likelihood (Newton "
                f"decrement {decrement:.3g}: raise num_refine_iters, or num_refine_iters=0 was "
                "used)")
    return None


def covariance(inference: Inference, robust: bool = False) -> np.ndarray:
    """Cov(theta): I^(-1), or with `robust` I^(-1) B I^(-1); call only when `problem` is None."""
    inverse = np.linalg.inv(np.asarray(inference.information))
    inverse = 0.5 * (inverse + inverse.T)
    if not robust:
        return inverse
    return inverse @ np.asarray(inference.outer) @ inverse


def data_units(theta, like: MoEParams, std: Standardizer, learn_sigma: bool):
    """f(theta): every coefficient in the data's units, in the order of `coefficient_labels`.

    Expert i: intercept and d slopes of a_i . z written in x's units, b_i + sum_j c_ij x_j;
    for linear g multiplied by y_scale with y_mean added to the intercept, so that they are
    the expert's regression of y on x. Gate i < k: the same for its logit relative to expert
    k's. sigma: in y's units."""
    p = unpack(theta, like, learn_sigma)
    m, x_map = std.x_mean, std.x_map

    def affine(rows):  # rows (r, d + 1) on [x_std, 1] -> (r, d + 1): [intercept, slopes]
        slopes = rows[:, :-1] @ x_map.T
        return jnp.concatenate([(rows[:, -1] - slopes @ m)[:, None], slopes], axis=1)

    experts = affine(p.experts)
    if p.nonlinearity == "linear":
        experts = (experts * std.y_scale).at[:, 0].add(std.y_mean)
    if std.gate_map is not None:  # the gate's own columns, standardised on their own
        m, x_map = std.gate_mean, std.gate_map
    gates = affine(p.gating[:-1])
    sigma = jnp.atleast_1d(p.noise_std) * std.y_scale
    if not get_family(p.family).has_dispersion:  # its scale is 1 by definition: not listed
        sigma = sigma[:0]
    return jnp.concatenate([experts.ravel(), gates.ravel(), sigma])


def coefficient_labels(num_experts: int, feature_names, num_sigmas: int, gate_names=None):
    """(block, component (1-based), term) for every entry of `data_units`; gate_names: the
    gate's columns when it has its own (default: feature_names)."""
    terms = ["(intercept)", *feature_names]
    gate_terms = terms if gate_names is None else ["(intercept)", *gate_names]
    labels = [("expert", i + 1, t) for i in range(num_experts) for t in terms]
    labels += [("gate", i + 1, t) for i in range(num_experts - 1) for t in gate_terms]
    labels += [("sigma", i + 1 if num_sigmas > 1 else 0, "sigma") for i in range(num_sigmas)]
    return labels


class Coefficients(NamedTuple):
    """Every coefficient of a fitted MoE in the data's units, one row each (see
    `FittedMoE.coefficients`).

    Attributes:
      block: (m,) "expert", "gate" (logit relative to the last expert) or "sigma".
      component: (m,) the expert or gate, 1-based (0 for one sigma shared by the experts).
      term: (m,) "(intercept)", a feature name, or "sigma".
      estimate: (m,) the value.
      std_error: (m,) from the observed information (NaN, with `problem` saying why, when it
        is not available; 0 for a sigma that was given, not fitted).
      robust_std_error: (m,) from the sandwich.
      z: (m,) estimate / std_error (NaN for sigma, which is positive by construction).
      p_value: (m,) two-sided, from the normal distribution of z.
      problem: None, or why there are no standard errors.
    """

    block: np.ndarray
    component: np.ndarray
    term: np.ndarray
    estimate: np.ndarray
    std_error: np.ndarray
    robust_std_error: np.ndarray
    z: np.ndarray
    p_value: np.ndarray
    problem: str | None

    def to_dict(self) -> dict:
        """The coefficients as columns of plain Python values (JSON-ready): block, component,
        term, estimate, std_error, robust_std_error, z, p_value (NaN where undefined)."""
        return {name: np.asarray(getattr(self, name)).tolist()
                for name in self._fields if name != "problem"}

    def to_frame(self):
        """The coefficients as a pandas DataFrame, one row per coefficient (the columns of
        `to_dict`); ImportError without pandas."""
        try:
            import pandas as pd
        except ImportError as e:
            raise ImportError("Coefficients.to_frame needs pandas (pip install pandas); "
                              "to_dict gives the same columns without it.") from e
        return pd.DataFrame(self.to_dict())

    def table(self) -> str:
        """The coefficients as a fixed-width text table, one block after another."""
        width = max(12, max(len(str(t)) for t in self.term) + 2)
        lines = []
        for i, (block, comp, term) in enumerate(zip(self.block, self.component, self.term)):
            if i == 0 or (block, comp) != (self.block[i - 1], self.component[i - 1]):
                title = {"expert": f"expert {comp}", "gate": f"gate {comp} (logit vs expert "
                         f"{max(self.component[self.block == 'expert'])})",
                         "sigma": "noise sd"}[block]
                if block != "sigma" or i == 0 or self.block[i - 1] != "sigma":
                    lines += ["", title, f"{'':{width}}{'coef':>12}{'std err':>12}{'z':>9}"
                              f"{'P>|z|':>9}{'robust se':>12}"]
                if block == "sigma":
                    term = "sigma" if comp == 0 else f"sigma {comp}"
            z = "" if np.isnan(self.z[i]) else f"{self.z[i]:9.2f}"
            pv = "" if np.isnan(self.p_value[i]) else f"{self.p_value[i]:9.3f}"
            lines.append(f"{str(term):{width}}{self.estimate[i]:12.5g}{self.std_error[i]:12.4g}"
                         f"{z:>9}{pv:>9}{self.robust_std_error[i]:12.4g}")
        if self.problem:
            lines += ["", self.problem + "."]
        return "\n".join(lines[1:])


def _float64(tree):
    """Every leaf of a pytree as a float64 NumPy array, for a jitted function inside `x64` (a
    cast by jnp.asarray would compile a program per shape)."""
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def _data_units_and_jacobian(params: MoEParams, std: Standardizer, learn_sigma: bool):
    """(f(theta), df/dtheta) in float64: the coefficients in data units and the delta
    method's Jacobian J."""
    with x64():
        return jax.device_get(_units_jacobian(_float64(params), _float64(std), learn_sigma))


@functools.partial(jax.jit, static_argnames="learn_sigma")
def _units_jacobian(like: MoEParams, std: Standardizer, learn_sigma: bool):
    # One compiled program: run eagerly, jacfwd's small operations compiled ~100 programs.
    f = lambda t: data_units(t, like, std, learn_sigma)
    theta = pack(like, learn_sigma)
    return f(theta), jax.jacfwd(f)(theta)


def data_covariance(params: MoEParams, std: Standardizer, inference: Inference,
                    learn_sigma: bool, robust: bool = False) -> np.ndarray:
    """J Cov(theta) J^T: the covariance of every coefficient in data units, in the order of
    `coefficient_labels` (call only when `problem` is None)."""
    jac = _data_units_and_jacobian(params, std, learn_sigma)[1]
    return jac @ covariance(inference, robust) @ jac.T


def coefficients(params: MoEParams, std: Standardizer, inference: Inference | None,
                 feature_names, learn_sigma: bool, gate_names=None) -> Coefficients:
    """The `Coefficients` table of a fitted model (see `data_units` for what each one is);
    feature_names: the experts' columns, gate_names: the gate's when it has its own."""
    estimate, jac = _data_units_and_jacobian(params, std, learn_sigma)
    why = problem(inference)
    if why is None:
        se = [np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", jac, covariance(inference, robust),
                                           jac), 0.0)) for robust in (False, True)]
    else:
        se = [np.full(estimate.shape, np.nan)] * 2
    k = params.experts.shape[0]
    labels = coefficient_labels(k, feature_names, int(np.size(params.noise_std))
                                if get_family(params.family).has_dispersion else 0, gate_names)
    block = np.array([b for b, _, _ in labels])
    if not learn_sigma:  # a given sigma has no sampling error
        se = [np.where(block == "sigma", 0.0, s) for s in se]
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(block == "sigma", np.nan, estimate / se[0])
    return Coefficients(block, np.array([c for _, c, _ in labels]),
                        np.array([t for _, _, t in labels], dtype=object), estimate, se[0], se[1],
                        z, _two_sided_p(z), why)


# P(|N(0, 1)| > |z|) = erfc(|z| / sqrt(2)), from the standard library: scipy.stats alone
# would add about a second to every process's start (the command line's included).
_two_sided_p = np.vectorize(lambda z: math.erfc(abs(z) / math.sqrt(2)), otypes=[float])
