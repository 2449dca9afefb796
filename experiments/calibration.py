r"""Are `FittedMoE.coefficients()`'s standard errors calibrated? Synthetic truths in the data's
own units, many seeds, z-scores against the truth.

    python -m experiments.calibration                 # 4 settings x 200 seeds, about 15 minutes
    python -m experiments.calibration --num_seeds=20  # a quick look
    python -m experiments.calibration --settings=binomial_k2_n4000,poisson_k2_n2000 \
        --output_dir=experiments/results/calibration_families

Each setting draws x = mu + u L (shifted, scaled, correlated; u ~ N(0, I)), a gate with logits
e_i + f_i . x (the last 0) and experts y = b_i + c_i . x + sigma_i eps (linear g), or
y = m + s g(b_i + c_i . x) + sigma_i eps for a non-linear g. For every seed: fresh data, `fit`
with its defaults, the fitted experts matched to the true ones (Hungarian, on the expert
coefficients), the gates re-referenced to the expert matched to the true last one (with the
covariance carried along), then z = (estimate - truth) / SE per coefficient. Reported per
setting and coefficient: the sd of z over seeds (1 when calibrated) and the coverage of the 95%
Wald interval, for the model-based and the robust (sandwich) SEs; seeds whose fit has no SEs
(`coefficients().problem`) are counted and left out.

Settings named binomial_... or poisson_... draw y from the family around the experts' linear
predictor on the same x and gate (y ~ Bernoulli(sigmoid(b_i + c_i . x)) or
Poisson(exp(b_i + c_i . x))) and fit `fit(family=...)`: the model is then well specified, the
coefficients are on the link scale and there is no sigma.

For non-linear g, `fit`'s model is y = ybar + sd(y) g(a . x + b) + noise, with y's sample mean
and sd taken as known, so the truth above is not in its class for any coefficients; the
yardstick is the pseudo-true value instead, the fit on --reference_factor times n rows of the
same truth. The SEs are conditional on ybar and sd(y), whose own sampling error
(O(1 / sqrt(n))) they leave out; that setting measures what this costs.

Writes calibration.{json,csv,png} to --output_dir and prints markdown tables.
"""

import os
import time
import warnings

from absl import app, flags
import jax
import numpy as np
from scipy.optimize import linear_sum_assignment

import moejax as mj
from experiments import common

_SEEDS = flags.DEFINE_integer("num_seeds", 200, "Seeds per setting.")
_SETTINGS = flags.DEFINE_list("settings", ["linear_k2_n2000", "linear_k2_n500",
                                           "linear_k3_n4000", "tanh_k2_n2000"],
                              "Settings: <g>_k<k>_n<n>, g a non-linearity or a family "
                              "(binomial, poisson).")
_REF = flags.DEFINE_integer("reference_factor", 100, "Non-linear g: the pseudo-true value is "
                            "the fit on this many times n rows.")
_OUT = flags.DEFINE_string("output_dir", "experiments/results", "Where to write results.")

# x: 3 features in the data's units (k <= d for the moment start).
MU = np.array([10.0, -4.0, 2.0])
L = np.array([[3.0, 1.0, 0.0], [0.0, 0.5, 0.2], [0.0, 0.0, 0.05]])  # correlated columns
# Truths in standardised terms (intercept, then per unit of u), turned into data units below.
EXPERTS_U = {2: np.array([[1.0, 1.5, -1.0, 0.5], [-1.0, -1.0, 0.5, 0.0]]),
             3: np.array([[1.5, 1.5, -1.0, 0.5], [-1.5, -1.0, 0.5, 0.0],
                          [0.0, 0.0, 2.0, -1.0]])}
GATES_U = {2: np.array([[0.3, 0.5, 2.0, 0.0]]),
           3: np.array([[0.3, 0.5, 2.5, 0.0], [0.2, -2.5, -1.0, 0.5]])}
SIGMAS = {2: np.array([0.3, 0.5]), 3: np.array([0.3, 0.5, 0.4])}
M, S = 20.0, 5.0  # the target's offset and scale


def parse(setting: str):
    g, k, n = setting.split("_")
    return g, int(k[1:]), int(n[1:])


def data_units(rows_u):
    """[b, c] on u -> [intercept, slopes] on x = MU + u L: c_x = L^(-1) c_u, b_x = b - MU . c_x."""
    slopes = rows_u[:, 1:] @ np.linalg.inv(L).T
    return np.c_[rows_u[:, 0] - slopes @ MU, slopes]


FAMILIES = ("binomial", "poisson")  # settings named after a family: a GLM mixture


def truth(g, k):
    """The true coefficients in the order of `coefficients()`: experts, gates, sigmas (none
    for a family without one)."""
    experts = data_units(EXPERTS_U[k])
    if g in FAMILIES:
        return experts, data_units(GATES_U[k]), np.zeros((0,))
    if g == "linear":
        experts = S * experts
        experts[:, 0] += M
    return experts, data_units(GATES_U[k]), S * SIGMAS[k]


def fit(key, x, y, g, k):
    """`fit` with its defaults for the setting's g or family."""
    if g in FAMILIES:
        return mj.fit(key, x, y, num_experts=k, family=g)
    return mj.fit(key, x, y, num_experts=k, nonlinearity=g)


def draw(key, g, k, n):
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key))[-1])
    u = rng.normal(size=(n, MU.size))
    x = MU + u @ L
    logits = np.c_[GATES_U[k][:, 0] + u @ GATES_U[k][:, 1:].T, np.zeros(n)]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    z = (rng.uniform(size=(n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    pre = (EXPERTS_U[k][:, 0] + u @ EXPERTS_U[k][:, 1:].T)[np.arange(n), z]
    if g == "binomial":
        return x, (rng.uniform(size=n) < 1 / (1 + np.exp(-pre))).astype(float)
    if g == "poisson":
        return x, rng.poisson(np.exp(pre)).astype(float)
    out = pre if g == "linear" else np.asarray(mj.get_nonlinearity(g)(pre))
    y = M + S * (out + SIGMAS[k][z] * rng.normal(size=n))
    return x, y


def aligned(model, experts_t):
    """(R, estimate, covariance, robust covariance): R maps the fitted coefficients to the
    truth's order (experts matched to `experts_t` (k, d + 1) by the Hungarian method on their
    coefficients; gates re-referenced to the expert matched to the truth's last); None when the
    fit has no standard errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coef = model.coefficients()
    if coef.problem:
        return None
    k, d1 = experts_t.shape
    est, m = coef.estimate, coef.estimate.size
    experts = est[:k * d1].reshape(k, d1)
    scale = np.std(experts_t, axis=0) + 1e-9
    cost = np.sum(np.square((experts[:, None] - experts_t[None]) / scale), axis=2)
    fitted, true = linear_sum_assignment(cost)
    perm = fitted[np.argsort(true)]  # perm[j]: the fitted expert matched to true expert j
    eye = np.eye(m)
    gate = lambda i, t: np.zeros(m) if i == k - 1 else eye[k * d1 + i * d1 + t]
    sigmas = m - (2 * k - 1) * d1  # k, or 0 for a family without one
    R = np.array([eye[perm[j] * d1 + t] for j in range(k) for t in range(d1)]
                 + [gate(perm[j], t) - gate(perm[k - 1], t) for j in range(k - 1)
                    for t in range(d1)]
                 + [eye[(2 * k - 1) * d1 + perm[j]] for j in range(sigmas)])
    return R, est, model.coefficient_covariance(), model.coefficient_covariance(robust=True)


def reference(g, k, n):
    """The yardstick in truth order: the exact truth for linear g, else the pseudo-true value
    (a fit on reference_factor * n rows)."""
    experts_t, gates_t, sigmas_t = truth(g, k)
    if g == "linear" or g in FAMILIES:
        return np.r_[experts_t.ravel(), gates_t.ravel(), sigmas_t]
    x, y = draw(jax.random.key(10**6), g, k, _REF.value * n)
    model = fit(jax.random.key(10**6), x, y, g, k)
    out = aligned(model, experts_t)
    if out is None:
        raise RuntimeError("the reference fit has no standard errors")
    return out[0] @ out[1]


def z_scores(model, g, k, true):
    """(z model-based, z robust) per coefficient, truth order; None if no SEs."""
    d1 = MU.size + 1
    out = aligned(model, true[:k * d1].reshape(k, d1))
    if out is None:
        return None
    R, est, cov, robust = out
    return [(R @ est - true) / np.sqrt(np.diag(R @ c @ R.T)) for c in (cov, robust)]


def labels(g, k):
    terms = ["(intercept)"] + [f"x{j + 1}" for j in range(MU.size)]
    return ([f"expert {i + 1} {t}" for i in range(k) for t in terms]
            + [f"gate {i + 1} {t}" for i in range(k - 1) for t in terms]
            + [f"sigma {i + 1}" for i in range(0 if g in FAMILIES else k)])


def main(argv):
    del argv
    rows, summary, start = [], {}, time.perf_counter()
    for setting in _SETTINGS.value:
        g, k, n = parse(setting)
        true = reference(g, k, n)
        zs, no_se = [], 0
        for seed in range(_SEEDS.value):
            key_data, key_fit = jax.random.split(jax.random.key(seed))
            x, y = draw(key_data, g, k, n)
            model = fit(key_fit, x, y, g, k)
            z = z_scores(model, g, k, true)
            if z is None:
                no_se += 1
                continue
            zs.append(z)
            for name, zm, zr in zip(labels(g, k), *z):
                rows.append(dict(setting=setting, seed=seed, coefficient=name, z=float(zm),
                                 z_robust=float(zr)))
            if (seed + 1) % 20 == 0:
                print(f"[{setting}] {seed + 1}/{_SEEDS.value} seeds "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
        z = np.array(zs)  # (seeds, 2, m)
        summary[setting] = dict(
            g=g, k=k, n=n, seeds=_SEEDS.value, without_se=no_se, coefficients=labels(g, k),
            reference=true.tolist(),
            z_sd=np.std(z[:, 0], axis=0).tolist(), z_sd_robust=np.std(z[:, 1], axis=0).tolist(),
            z_mean=np.mean(z[:, 0], axis=0).tolist(),
            coverage=np.mean(np.abs(z[:, 0]) <= 1.96, axis=0).tolist(),
            coverage_robust=np.mean(np.abs(z[:, 1]) <= 1.96, axis=0).tolist())
    base = os.path.join(_OUT.value, "calibration")
    common.write_rows(base, rows, dict(settings=summary))
    plot(base + ".png", summary)
    for setting, s in summary.items():
        print(f"\n{setting}: {s['seeds']} seeds, {s['without_se']} without standard errors")
        print("| coefficient | z sd | coverage 95% | z sd (robust) | coverage (robust) | z mean |")
        print("|---|---|---|---|---|---|")
        for i, name in enumerate(s["coefficients"]):
            print(f"| {name} | {s['z_sd'][i]:.2f} | {s['coverage'][i]:.3f} | "
                  f"{s['z_sd_robust'][i]:.2f} | {s['coverage_robust'][i]:.3f} | "
                  f"{s['z_mean'][i]:+.2f} |")
    print(f"\nwrote {base}.json, .csv, .png ({time.perf_counter() - start:.0f} s)")


def plot(path, summary):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for j, (setting, s) in enumerate(summary.items()):
        idx = np.arange(len(s["coefficients"]))
        axes[0].plot(idx, s["z_sd"], "o-", label=setting, color=f"C{j}")
        axes[0].plot(idx, s["z_sd_robust"], "x:", color=f"C{j}")
        axes[1].plot(idx, s["coverage"], "o-", label=setting, color=f"C{j}")
        axes[1].plot(idx, s["coverage_robust"], "x:", color=f"C{j}")
    axes[0].axhspan(0.9, 1.1, color="0.9")
    axes[0].set(xlabel="coefficient (experts, gates, sigmas)", ylabel="sd of z over seeds",
                title="z-score sd (o model-based, x robust)")
    axes[1].axhspan(0.93, 0.97, color="0.9")
    axes[1].set(xlabel="coefficient", ylabel="coverage", title="95% Wald interval coverage",
                ylim=(0.5, 1.0))
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    app.run(main)
