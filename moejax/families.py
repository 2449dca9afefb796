"""Expert families: the distribution of y given an expert's mean (docs/algorithm.md section 1,
"Families"). A family is one registry entry, as a non-linearity is (`moejax.nonlinearities`):
a static record of pure functions that every density, E-step, M-step, predictive quantity and
draw reads, so that the normal distribution is written here and nowhere else.

An expert i maps a row to its mean mu_i = g(a_i . x) (g the non-linearity, for a GLM family
its inverse link) and a scale s_i, stored in `MoEParams.noise_std` (the Gaussian's sigma). A
family whose variance is fixed by its mean (binomial, Poisson) has no dispersion: its scale is
held at 1 and not learned (`has_dispersion`), as statsmodels fixes their scale at 1.

Shapes: every function broadcasts y, mean and scale elementwise (expert-major (k, n) or
row-major (n, k) arrays, the caller's choice), except `relative_log_density`, whose last axis
is the experts.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaincc, gammaln, xlogy
from jax.scipy.stats import norm


class Family(NamedTuple):
    """The distribution of y given an expert's mean mu and scale s.

    Attributes:
      name: the registry name, stored with saved models.
      log_density: (y, mu, s) -> log p(y | mu, s).
      relative_log_density: (y (...,), mu (..., k), s (..., k)) -> (..., k), log p(y | mu_i,
        s_i) up to a constant per row, finite where every density underflows (y far from all
        experts): the posterior's form (softmax over the experts), which gives their limit.
      variance: (mu, s) -> Var[y | mu, s]; with unit scale, the variance function V(mu).
      has_dispersion: whether s is a free parameter (the Gaussian's sigma) or fixed at 1.
      irls_weights: (mu, slope) -> (w, f), slope = d mu / d eta at eta = a . x: the experts'
        M-step is the weighted least-squares (IRLS, Gauss-Newton) step with normal equations
        sum_n q_ni w_ni x_n x_n^T delta = sum_n q_ni f_ni (y_n - mu_ni) x_n, i.e. w =
        slope^2 / V(mu), f = slope / V(mu) (docs/solvers.md).
      scale_statistic: (y, mu) -> r^2, the squared Pearson residual (y - mu)^2 / V(mu) whose
        responsibility-weighted sums the scale's M-step reads (`scale_update`).
      scale_update: (S (k,), N (k,), s () or (k,), floor, prior_sq, prior_count) -> the
        scale's M-step from S_i = sum_n q_ni r_ni^2 and N_i = sum_n q_ni.
      cdf: (y, mu, s) -> P(Y <= y | mu, s).
      bracket: (mu, s) -> (lo, hi) with cdf 0 and 1 there to float precision (quantiles
        bisect between them).
      sample: (key, mu, s) -> one draw per entry of mu.
      noise_variance: s -> the variance of y around g(a . x) that the moment stage's label
        transforms assume constant (docs/algorithm.md section 2).
      moment_start: whether the moment stage (`recover`) applies: its transforms assume
        y = g(a_z . x) + noise of a variance independent of x and a zero third moment.
      nonlinearities: the g (inverse links) the family takes, the default first; None: any
        (the Gaussian's default is linear).
      link: the link's name as statsmodels and R name it ("identity", "logit", "log"), for a
        family with fixed g; the Gaussian's is "identity" with linear g.
      target: what y must be, in words, or "" for any finite number; `check_target` tests it.
      check_target: host (NumPy) y (n,) -> the indices of the rows whose y the family cannot
        hold (empty: none).
      start_intercept: host mean of y -> the expert intercept eta = g^(-1)(mean) that random
        starts begin from (the one-expert model without slopes).
      max_step: None (the experts' M-step is the exact weighted least-squares step), or the
        cap on each IRLS step's change of an expert's linear predictor, in root mean square
        over the rows (Newton's step on a GLM can overshoot far from the optimum).
      discrete: whether y takes integer values (quantiles are then integers).
      saturated_log_density: None, or y -> log p(y | mu = y), the saturated model's log
        density per row, which the deviance 2 sum_n [log p(y_n | y_n) - log p(y_n | x_n)]
        is measured from (families without dispersion; a Gaussian mixture has none).
    """

    name: str
    log_density: Callable
    relative_log_density: Callable
    variance: Callable
    has_dispersion: bool
    irls_weights: Callable
    scale_statistic: Callable
    scale_update: Callable
    cdf: Callable
    bracket: Callable
    sample: Callable
    noise_variance: Callable | None
    moment_start: bool
    nonlinearities: tuple[str, ...] | None = None
    link: str = "identity"
    target: str = ""
    check_target: Callable = lambda y: np.zeros((0,), int)
    start_intercept: Callable = lambda mean: 0.0
    max_step: float | None = None
    discrete: bool = False
    saturated_log_density: Callable | None = None

    @property
    def default_nonlinearity(self) -> str:
        """The g that `fit` uses unless told otherwise: linear for the Gaussian, else the
        inverse of the family's canonical link."""
        return "linear" if self.nonlinearities is None else self.nonlinearities[0]


def _normal_log_density(y, mean, scale):
    """log N(y | mean, scale^2)."""
    return (-0.5 * jnp.square(y - mean) / jnp.square(scale) - jnp.log(scale)
            - 0.5 * jnp.log(2 * jnp.pi))


def _normal_relative_log_density(y, mean, scale):
    """log N(y | mean_i, scale_i^2) + c(row), last axis the experts, finite for any y."""
    t = (y[..., None] - mean) / scale
    # -log s_i - t_i^2 / 2 with the t_i^2 compared as m^2 ((t_i / m)^2 - min_j (t_j / m)^2),
    # m = max_j |t_j|, and the smallest term set to exactly 0: the row keeps a finite entry
    # where m^2 overflows.
    m = jnp.maximum(jnp.max(jnp.abs(t), axis=-1, keepdims=True), 1.0)
    root = jnp.sqrt(m)  # t / m in two steps: 1 / m can be subnormal, which XLA flushes to 0
    u = jnp.square(t / root / root)
    excess = jnp.maximum(u - jnp.min(u, axis=-1, keepdims=True), 0.0)
    nearest = jax.nn.one_hot(jnp.argmin(u, axis=-1), u.shape[-1], dtype=bool)
    gap = jnp.where(nearest, 0.0, -0.5 * (m * excess) * m)
    return gap - jnp.log(scale)


def _normal_scale_update(weighted_sq, weights, noise_std, floor, prior_sq=0.0, prior_count=0.0):
    """sigma's M-step from S_i = sum_n q_ni r_ni^2 and N_i = sum_n q_ni: (k,) each, r_ni =
    y_n - g(a_i . x_n) (docs/algorithm.md section 4).

    Shared (noise_std a scalar): sigma^2 = sum_i S_i / sum_i N_i; per expert (noise_std (k,)):
    sigma_i^2 = S_i / N_i. With a prior on sigma^2 (`moejax.prior`), prior_sq = nu s^2 and
    prior_count = nu + 2 are added to the numerator and the denominator: the MAP update.
    Either is clipped below at `floor`, the exact maximiser over sigma >= floor, in every
    method that learns sigma (`fit`, `refine`, `joint_em`, `fit_gating`, `recover`): on data
    the experts fit exactly the likelihood has no maximum. An expert with no responsibility
    (and no prior) keeps its sigma.
    """
    if jnp.ndim(noise_std) == 0:
        return jnp.maximum(jnp.sqrt((jnp.sum(weighted_sq) + prior_sq)
                                    / (jnp.sum(weights) + prior_count)), floor)
    tiny = jnp.finfo(weighted_sq.dtype).tiny
    count = weights + prior_count
    var = jnp.where(count > tiny, (weighted_sq + prior_sq) / jnp.maximum(count, tiny),
                    jnp.square(noise_std))
    return jnp.maximum(jnp.sqrt(var), floor)


# Beyond 12 sds the normal CDF is 0 or 1 to float64 precision (Phi(-12) ~ 2e-33).
_NORMAL_TAIL = 12


GAUSSIAN = Family(
    name="gaussian",
    log_density=_normal_log_density,
    relative_log_density=_normal_relative_log_density,
    variance=lambda mean, scale: jnp.square(scale),
    has_dispersion=True,
    irls_weights=lambda mean, slope: (jnp.square(slope), slope),
    scale_statistic=lambda y, mean: jnp.square(y - mean),
    scale_update=_normal_scale_update,
    cdf=lambda y, mean, scale: norm.cdf((y - mean) / scale),
    bracket=lambda mean, scale: (mean - _NORMAL_TAIL * scale, mean + _NORMAL_TAIL * scale),
    sample=lambda key, mean, scale: mean + scale * jax.random.normal(key, mean.shape,
                                                                     mean.dtype),
    noise_variance=jnp.square,
    moment_start=True,
)

# binomial and Poisson: canonical links only, so the IRLS weights are w = V(mu), f = 1 (the
# slope d mu / d eta equals V(mu)), exact where mu saturates and V underflows. Their log
# densities clip mu to [eps, 1 - eps] (binomial) or [tiny, ...] (Poisson): a row whose mean
# rounds to 0 or 1 costs at most -log(eps) (16 nats in float32) instead of an infinite loss,
# so posteriors and the likelihood stay finite.

def _clip_probability(mean):
    eps = jnp.finfo(jnp.result_type(mean)).eps
    return jnp.clip(mean, eps, 1 - eps)


def _binomial_log_density(y, mean, scale):
    """log P(y | mu) of a 0/1 y: y log mu + (1 - y) log(1 - mu)."""
    mu = _clip_probability(mean)
    return y * jnp.log(mu) + (1 - y) * jnp.log1p(-mu)


def _poisson_log_density(y, mean, scale):
    """log P(y | mu) of a count y: y log mu - mu - log y!."""
    mu = jnp.maximum(mean, jnp.finfo(jnp.result_type(mean)).tiny)
    return y * jnp.log(mu) - mu - gammaln(y + 1)


def _bad_rows(y, ok) -> np.ndarray:
    return np.flatnonzero(~ok(np.asarray(y, np.float64)))


def _keep_scale(weighted_sq, weights, noise_std, floor, prior_sq=0.0, prior_count=0.0):
    """The scale of a family without a dispersion: fixed (never learned)."""
    return noise_std


def _pearson(y, mean, variance):
    """(y - mu)^2 / V(mu), with a V that underflows read as the smallest normal number."""
    return jnp.square(y - mean) / jnp.maximum(variance, jnp.finfo(jnp.result_type(mean)).tiny)


# A GLM family's IRLS step moves each expert's linear predictor by at most this much (rms over
# rows) per EM iteration: e-fold changes of a Poisson mean, odds ratios of e^3 per step.
_GLM_MAX_STEP = 3.0


def _canonical_glm(name, log_density, variance, **rest) -> Family:
    """A family without dispersion and with its canonical link: the posterior's form is its
    density (finite by the clipping above), the IRLS weights are (V(mu), 1), the scale
    statistic the squared Pearson residual, no moment start, and capped Newton steps."""
    return Family(
        name=name, log_density=log_density,
        relative_log_density=lambda y, mean, scale: log_density(y[..., None], mean, scale),
        variance=lambda mean, scale: variance(mean), has_dispersion=False,
        irls_weights=lambda mean, slope: (variance(mean), jnp.ones_like(mean)),
        scale_statistic=lambda y, mean: _pearson(y, mean, variance(mean)),
        scale_update=_keep_scale, noise_variance=None, moment_start=False,
        max_step=_GLM_MAX_STEP, **rest)


BINOMIAL = _canonical_glm(
    "binomial", _binomial_log_density, lambda mean: mean * (1 - mean),
    cdf=None,  # intervals of a 0/1 outcome say nothing: predict_interval refuses them
    bracket=None,
    sample=lambda key, mean, scale: jax.random.bernoulli(key, mean).astype(mean.dtype),
    nonlinearities=("sigmoid",),
    link="logit",
    target="0 or 1",
    check_target=lambda y: _bad_rows(y, lambda v: (v == 0) | (v == 1)),
    start_intercept=lambda mean: float(np.log(mean / (1 - mean))),
    saturated_log_density=jnp.zeros_like,  # a 0/1 outcome predicted exactly
)

# Beyond mu + 12 sqrt(mu) + 12 the Poisson CDF is 1 to float64 precision for any mu.
POISSON = _canonical_glm(
    "poisson", _poisson_log_density, lambda mean: mean,
    # P(Y <= t) = Q(floor(t) + 1, mu), the regularised upper incomplete gamma function.
    cdf=lambda y, mean, scale: jnp.where(
        y < 0, 0.0, gammaincc(jnp.floor(jnp.maximum(y, 0.0)) + 1, mean)),
    bracket=lambda mean, scale: (jnp.full_like(mean, -1.0),
                                 mean + _NORMAL_TAIL * jnp.sqrt(mean) + _NORMAL_TAIL),
    sample=lambda key, mean, scale: jax.random.poisson(key, mean).astype(mean.dtype),
    nonlinearities=("exp",),
    link="log",
    target="a non-negative integer count",
    check_target=lambda y: _bad_rows(y, lambda v: (v >= 0) & (v == np.round(v))),
    start_intercept=lambda mean: float(np.log(mean)),
    discrete=True,
    saturated_log_density=lambda y: xlogy(y, y) - y - gammaln(y + 1),
)

# The registry (the one piece of module state, as for non-linearities: a name must mean one
# family for the whole process, so that saved models can name theirs).
_FAMILIES = {f.name: f for f in (GAUSSIAN, BINOMIAL, POISSON)}

FAMILIES = tuple(_FAMILIES)  # the built-in names


def family_names() -> tuple[str, ...]:
    """The names `get_family` accepts: the built-in ones and those registered since.

    Returns:
      A tuple of names, the built-in `FAMILIES` first.

    Raises:
      Nothing.

    >>> family_names()[0]
    'gaussian'
    """
    return tuple(_FAMILIES)


def get_family(family: "str | Family") -> Family:
    """The `Family` of a registered name (a Family is returned as it is).

    Args:
      family: a name in `family_names()`, or a `Family`.

    Returns:
      The `Family` record.

    Raises:
      ValueError: for an unknown name.

    >>> get_family("gaussian").has_dispersion
    True
    """
    if isinstance(family, Family):
        return family
    try:
        return _FAMILIES[family]
    except (KeyError, TypeError):
        raise ValueError(f"family must be one of {family_names()}, got {family!r}.") from None


def register_family(family: Family) -> None:
    """Makes `family.name` stand for `family` wherever a family is named (`MoEParams.family`,
    saved models). Registering the same record again is a no-op.

    Args:
      family: a `Family` whose functions follow the shapes in the module's docstring.

    Returns:
      None.

    Raises:
      ValueError: for a record that is not a `Family`, or a name already taken by another.

    >>> register_family(get_family("gaussian"))  # the same record again: a no-op
    """
    if not isinstance(family, Family) or not isinstance(family.name, str) or not family.name:
        raise ValueError(f"family must be a Family with a non-empty name, got {family!r}.")
    if _FAMILIES.get(family.name, family) is not family:
        raise ValueError(f"family {family.name!r} is already registered with another record.")
    _FAMILIES[family.name] = family
