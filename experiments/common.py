"""Pieces shared by the experiment binaries: the methods compared and a vmapped runner."""

import csv
import dataclasses
import functools
import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

import moejax as mj

# The one registry of the methods the experiments compare: name -> label in tables and plots.
# The synthetic binaries run the first four through `method_fn` (one start each); the real-data
# binaries (airfoil, peer_flexmix) run them through `fit`'s preprocessing (random-start methods:
# the best of several starts) and add the rest.
LABELS = {
    "moments": "moments + gating EM",
    "refine": "moments + gating EM + joint EM",
    "em": "joint EM, random start(s)",
    "gd": "joint GD (Adam), random start(s)",
    "descent": "designed losses + gating GD (Adam)",
    "ols": "least squares",
    "moejax": "moejax fit (sigma per expert)",
    "moejax_shared": "moejax fit (one sigma)",
    "moejax_ml": "moejax fit, prior=None (maximum likelihood)",
    "flexmix": "R flexmix, best of 5",
}
METHODS = ("moments", "refine", "em", "gd", "descent")  # the synthetic ones (`method_fn`)


@dataclasses.dataclass(frozen=True)
class Setting:
    """A synthetic ground truth and the iteration budgets of the methods."""

    nonlinearity: str = "linear"
    dim: int = 10
    num_experts: int = 3
    noise_std: float = 0.1
    gating_norm: float = 2.0
    orthogonal_gating: bool = True
    # Every likelihood method runs until L rises by at most tol * (1 + |L|) per iteration
    # (per step for GD); the iteration counts are caps, reported when hit.
    tol: float = 1e-7
    em_iters: int = 500
    gd_steps: int = 2000
    gd_learning_rate: float = 0.02


@dataclasses.dataclass(frozen=True)
class Cell:
    k: int = 8
    c: float = 0.5
    sigma: float = 0.3
    gating_norm: float = 2.0
    nonlinearity: str = "linear"
    n: int = 10_000
    orthogonal: bool = True
    extra_dims: int = 8

    @property
    def d(self) -> int:
        return self.k + self.extra_dims

    @property
    def name(self) -> str:
        return (f"k{self.k}_d{self.d}_c{self.c}_s{self.sigma}_w{self.gating_norm}_"
                f"{self.nonlinearity}_n{self.n}" + ("" if self.orthogonal else "_nonorth"))


def cells(full: bool, large_n=()) -> list[Cell]:
    """The failure map's cells (`experiments.failure_map`): the base cell and one-axis
    variations around it; the hard cells again at each n in large_n."""
    base = Cell()
    # The default keeps to about 27 minutes on 2 cores; noisier data (sigma = 1) alone took
    # over 12 minutes there (EM converges slowly when the experts overlap), so it is --full's.
    axes = dict(k=[4, 12], c=[0.0, 0.8], sigma=[0.1], orthogonal=[False])
    if full:
        axes = dict(k=[3, 4, 12, 16], c=[0.0, 0.8], sigma=[0.1, 0.5, 1.0],
                    gating_norm=[1.0, 4.0, 6.0], nonlinearity=["relu", "tanh"],
                    n=[3_000, 30_000, 100_000, 300_000], orthogonal=[False])
    out = [base]
    for axis, values in axes.items():
        out += [dataclasses.replace(base, **{axis: v}) for v in values]
    for n in large_n:
        out += [dataclasses.replace(base, k=12, n=int(float(n))),
                dataclasses.replace(base, c=0.8, n=int(float(n)))]
    return out


def make_truth(key, cell: Cell) -> mj.MoEParams:
    """Unit-norm experts a_i = sqrt(c) u_0 + sqrt(1 - c) u_i (pairwise cosine c) for
    orthonormal u_0..u_k, and gating rows of norm gating_norm (last row 0), orthogonal to every
    expert or drawn freely."""
    key_u, key_w = jax.random.split(key)
    q, _ = jnp.linalg.qr(jax.random.normal(key_u, (cell.d, cell.d)))
    u = q.T
    experts = jnp.sqrt(cell.c) * u[0] + jnp.sqrt(1 - cell.c) * u[1:cell.k + 1]
    w = jax.random.normal(key_w, (cell.k - 1, cell.d))
    if cell.orthogonal:
        w = w - w @ u[:cell.k + 1].T @ u[:cell.k + 1]  # also drop u_0: span(A) is inside
    w = cell.gating_norm * w / jnp.linalg.norm(w, axis=1, keepdims=True)
    gating = jnp.concatenate([w, jnp.zeros((1, cell.d))])
    return mj.MoEParams(experts, gating, jnp.asarray(cell.sigma), cell.nonlinearity)


def method_fn(method: str, s: Setting) -> Callable:
    """(key, x, y) -> (MoEParams, passes over the data, converged) for one method; pure, so it
    vmaps over seeds. For "moments" the passes and convergence are those of the gating EM
    inside `recover`; for "refine", those of the refinement; for "descent", both descents'
    passes and whether the gating's and the kept start's expert descent converged."""
    common = dict(num_experts=s.num_experts, nonlinearity=s.nonlinearity, noise_std=s.noise_std)

    def report(out):
        params, info = out
        return params, info.num_passes, info.converged

    if method == "moments":
        return lambda key, x, y: report(mj.recover(key, x, y, gating_tol=s.tol, **common))
    if method == "refine":
        return lambda key, x, y: report(mj.refine(
            mj.recover(key, x, y, gating_tol=s.tol, **common)[0], x, y, num_iters=s.em_iters,
            tol=s.tol))
    if method == "em":
        return lambda key, x, y: report(mj.joint_em(key, x, y, num_iters=s.em_iters, tol=s.tol,
                                                    **common))
    if method == "gd":
        return lambda key, x, y: report(mj.joint_gd(key, x, y, num_iters=s.gd_steps, tol=s.tol,
                                                    learning_rate=s.gd_learning_rate, **common))
    if method == "descent":
        def descent(key, x, y):
            params, info = mj.recover_by_descent(key, x, y, tol=s.tol, **common)
            return (params, info.num_passes + info.experts.num_passes,
                    info.converged & info.experts.converged[info.best_start])
        return descent
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")


@functools.partial(jax.jit, static_argnames=("method", "setting", "n"))
def _run(keys, method: str, setting: Setting, n: int):
    def one(key):
        key_p, key_x, key_fit = jax.random.split(key, 3)
        truth = mj.random_params(key_p, setting.dim, setting.num_experts,
                                 noise_std=setting.noise_std, gating_norm=setting.gating_norm,
                                 orthogonal_gating=setting.orthogonal_gating,
                                 nonlinearity=setting.nonlinearity)
        x, y = mj.sample(key_x, truth, n)
        return truth, method_fn(method, setting)(key_fit, x, y)

    return jax.vmap(one)(keys)


def run_seeds(method: str, setting: Setting, n: int, num_seeds: int, seed: int = 0):
    """Expert and gating errors, passes over the data and convergence flags, each
    (num_seeds,), of `method` on fresh data per seed.

    All seeds run as one vmapped, jitted call. Seed i's truth and data depend only on
    (seed, i), not on the method, so methods are compared on the same problems.
    """
    keys = jax.random.split(jax.random.key(seed), num_seeds)
    truth, (est, passes, converged) = _run(keys, method, setting, n)
    passes = np.broadcast_to(np.asarray(passes), (num_seeds,))
    converged = np.broadcast_to(np.asarray(converged), (num_seeds,))
    return (np.asarray(mj.expert_error(est.experts, truth.experts)),
            np.asarray(mj.gating_error(est, truth)), passes, converged)


def write_rows(base: str, rows: list[dict], meta: dict) -> None:
    """Writes per-seed rows to base.csv and {**meta, "rows": rows} to base.json."""
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    with open(base + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(base + ".json", "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=1)


def plot_error_vs_n(path: str, rows: list[dict], group: str, labels: dict, title: str) -> None:
    """Expert and gating error against n, log-log, median line and interquartile band per group.

    rows: dicts with keys `group`, "n", "expert_error", "gating_error"; labels: group value ->
    legend label, in plotting order.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted({r["n"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for ax, key, name in zip(axes, ("expert_error", "gating_error"), ("experts", "gating")):
        for value, label in labels.items():
            vals = np.array([[r[key] for r in rows if r[group] == value and r["n"] == n]
                             for n in ns])
            q25, q50, q75 = np.percentile(vals, [25, 50, 75], axis=1)
            ax.plot(ns, q50, marker="o", label=label)
            ax.fill_between(ns, q25, q75, alpha=0.2)
        ax.set(xscale="log", yscale="log", xlabel="n", title=f"{name} error: median, IQR")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_grouped_bars(path: str, groups: list[str], series: dict, *, ylabel: str, title: str,
                      figsize=(9, 3.8), ylim=None, hline=None, legend_size=8) -> None:
    """One bar per series in each group. series: label -> (heights, error bars or None), each
    of len(groups); hline: optional (y, label) drawn as a dashed reference line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=figsize)
    width = 0.8 / max(len(series), 1)
    for j, (label, (heights, errors)) in enumerate(series.items()):
        ax.bar(np.arange(len(groups)) + j * width, heights, width, yerr=errors, label=label,
               capsize=2 if errors is not None else 0)
    if hline is not None:
        ax.axhline(hline[0], color="k", ls="--", lw=1, label=hline[1])
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups)
    ax.set(ylabel=ylabel, title=title, ylim=ylim)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def least_squares_scores(x_tr, y_tr, x_te, y_te):
    """Least squares with an intercept and the Gaussian MLE of sigma, the floor of every
    real-data comparison: (test MSE, test NLL per row, train NLL per row), in float64."""
    design = np.c_[x_tr, np.ones(len(x_tr))]
    coef = np.linalg.lstsq(design, y_tr, rcond=None)[0]
    var = np.mean(np.square(design @ coef - y_tr))
    resid = np.c_[x_te, np.ones(len(x_te))] @ coef - y_te
    nll = lambda r: float(0.5 * np.log(2 * np.pi * var) + np.mean(r**2) / (2 * var))
    return float(np.mean(resid**2)), nll(resid), nll(design @ coef - y_tr)


def split(seed: int, n: int):
    """The one train/test protocol of the real-data experiments (airfoil, peer_flexmix, auto_k,
    refine_screening): split `seed` holds out the first n // 5 rows of a permutation drawn
    from key(seed), so every binary scores the same rows. Returns (key for the fits, train
    rows, test rows)."""
    key_split, key_fit = jax.random.split(jax.random.key(seed))
    perm = np.asarray(jax.random.permutation(key_split, n))
    return key_fit, perm[n // 5:], perm[:n // 5]


def generalisation_table(summary) -> str:
    """experiments.generalisation's summary as a markdown table."""
    lines = ["| table | method | k | test NLL | test MSE | 90% coverage | train NLL | "
             "NLL - flexmix | MSE / flexmix | degenerate | MSE > 3x OLS | warm s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        gap, ratio = s.get("test_nll_minus_flexmix"), s.get("test_mse_over_flexmix")
        se = s.get("test_nll_minus_flexmix_se")
        lines.append(
            f"| {s['table']} | {s['method']} | {s['k']} | {s['test_nll']:.4f} | "
            f"{s['test_mse']:.4g} | {s['coverage']:.3f} | {s['train_nll']:.4f} | "
            f"{'-' if gap is None else f'{gap:+.4f}'}{'' if se is None else f' ± {se:.4f}'} | "
            f"{'-' if ratio is None else f'{ratio:.3f}'} | {s['degenerate']}/{s['fits']} | "
            f"{s['above_3x_ols']} | "
            + ("-" if s.get("warm_seconds") is None or s["method"] == "ols"
               else f"{s['warm_seconds']:.2f}") + " |")
    return "\n".join(lines)


def prior_small_n_table(summary) -> str:
    """experiments.prior_small_n's summary as a markdown table."""
    lines = ["| n | rows / parameter | method | test NLL - truth's (mean / median / max) | "
             "expert error (median) | degenerate | fewer experts |",
             "|---|---|---|---|---|---|---|"]
    for s in summary:
        err = "-" if s["expert_error"] is None else f"{s['expert_error']:.3f}"
        lines.append(f"| {s['n']} | {s['rows_per_parameter']:.1f} | {s['method']} | "
                     f"{s['excess_nll']:.3f} / {s['excess_nll_median']:.3f} / "
                     f"{s['excess_nll_max']:.3f} | {err} | {s['degenerate']}/{s['seeds']} | "
                     f"{s['fewer_experts']} |")
    return "\n".join(lines)


PEER_FAMILIES_METHODS = ("moejax", "moejax_ml", "glm", "flexmix")


def peer_families_table(summary) -> str:
    """experiments.peer_families' summary: per (table, k), the test NLL of every method and the
    paired differences the goals read (mean ± se over the splits)."""
    lines = ["| table | k | test NLL: moejax / ML / GLM / flexmix | moejax - GLM | "
             "moejax - flexmix | train NLL, ML - flexmix | warm s: moejax / flexmix | "
             "degenerate: moejax / flexmix |", "|---|---|---|---|---|---|---|---|"]
    fmt = lambda d: f"{d['mean']:+.4f} ± {d['se']:.4f}" if d else "–"
    for e in summary:
        nll = " / ".join(f"{e[m]['test_nll']:.4f}" if m in e else "–"
                         for m in PEER_FAMILIES_METHODS)
        warm = " / ".join(f"{e[m]['warm_seconds']:.2f}" if m in e else "–"
                          for m in ("moejax", "flexmix"))
        degenerate = " / ".join(str(e[m]["degenerate"]) if m in e else "–"
                                for m in ("moejax", "flexmix"))
        lines.append(f"| {e['table']} | {e['k']} | {nll} | {fmt(e['default_minus_glm'])} | "
                     f"{fmt(e.get('default_minus_flexmix'))} | "
                     f"{fmt(e.get('ml_train_minus_flexmix'))} | {warm} | {degenerate} |")
    return "\n".join(lines)
