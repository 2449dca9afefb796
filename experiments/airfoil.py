r"""The real-data check on NASA airfoil self-noise: test MSE and NLL over random 80/20 splits.

    python -m experiments.airfoil

Methods, each on whitened features with a per-expert intercept (`moejax.fit`'s preprocessing),
sigma learned:
  moments: moment method + gating EM (`fit(refine_iters=0)`);
  refine:  the same + joint-EM refinement (`fit`);
  em:      random-start joint EM, best of --num_starts starts by training likelihood;
  gd:      random-start joint GD (Adam), best of --num_starts starts by training likelihood;
  ols:     ordinary least squares with an intercept (the floor), Gaussian NLL.
Writes airfoil.{json,csv,png} to --output_dir and prints a markdown table.
"""

import functools
import os
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

import moejax as mj
from experiments import common

METHODS = ("moments", "refine", "em", "gd", "ols")
LABELS = {
    "moments": "moments + gating EM",
    "refine": "moments + gating EM + joint EM",
    "em": "joint EM, best of random starts",
    "gd": "joint GD (Adam), best of random starts",
    "ols": "least squares",
}

_SPLITS = flags.DEFINE_integer("num_splits", 10, "Random 80/20 splits (seeds 0..num_splits-1).")
_KS = flags.DEFINE_list("ks", ["2", "3", "4"], "Numbers of experts.")
_METHODS = flags.DEFINE_list("methods", list(METHODS), f"Subset of {METHODS}.")
_STARTS = flags.DEFINE_integer("num_starts", 5, "Random starts for em and gd.")
_EM_ITERS = flags.DEFINE_integer("em_iters", 200, "Joint EM iterations (refine, em).")
_GD_STEPS = flags.DEFINE_integer("gd_steps", 1000, "Adam steps (gd).")
_GD_LR = flags.DEFINE_float("gd_learning_rate", 0.02, "Adam learning rate (gd).")
_NONLIN = flags.DEFINE_enum("nonlinearity", "linear", list(mj.NONLINEARITIES), "Experts' g.")
_OUT = flags.DEFINE_string("output_dir", "experiments/results", "Where to write results.")


@functools.partial(jax.jit, static_argnames=("method", "k", "g", "iters", "lr"))
def _best_random_start(keys, z, y, method, k, g, iters, lr):
    """Best of len(keys) random-start fits (one vmap) by training log-likelihood."""
    def one(key):
        if method == "em":
            return mj.joint_em(key, z, y, num_experts=k, nonlinearity=g, num_iters=iters)[0]
        return mj.joint_gd(key, z, y, num_experts=k, nonlinearity=g, num_steps=iters,
                           learning_rate=lr)[0]

    fits = jax.vmap(one)(keys)
    ll = jax.vmap(lambda p: mj.model._mean_log_likelihood(p, z, y, g))(fits)
    best = jnp.argmax(jnp.where(jnp.isfinite(ll), ll, -jnp.inf))
    return jax.tree_util.tree_map(lambda a: a[best], fits)


def fit_method(method, key, x, y, k, g):
    """A FittedMoE (or, for ols, a (predict, nll) pair) fitted on the training split."""
    if method in ("moments", "refine"):
        return mj.fit(key, x, y, num_experts=k, nonlinearity=g,
                      refine_iters=_EM_ITERS.value if method == "refine" else 0)
    std = mj.fit_standardizer(x, y)
    z = mj.estimator.design_matrix(std, jnp.asarray(x, jnp.float32))
    ys = mj.transform_target(std, jnp.asarray(y, jnp.float32))
    iters = _EM_ITERS.value if method == "em" else _GD_STEPS.value
    params = _best_random_start(jax.random.split(key, _STARTS.value), z, ys, method, k, g,
                                iters, _GD_LR.value)
    return mj.FittedMoE(params, std, g)


def evaluate(method, key, x_tr, y_tr, x_te, y_te, k, g):
    """(test MSE, test NLL per row) in the target's units (dB, log-density per dB)."""
    if method == "ols":
        design = np.c_[x_tr, np.ones(len(x_tr))]
        coef = np.linalg.lstsq(design, y_tr, rcond=None)[0]
        var = np.mean(np.square(design @ coef - y_tr))  # the Gaussian MLE of sigma^2
        resid = np.c_[x_te, np.ones(len(x_te))] @ coef - y_te
        return float(np.mean(resid**2)), float(0.5 * np.log(2 * np.pi * var)
                                                + np.mean(resid**2) / (2 * var))
    model = fit_method(method, key, x_tr, y_tr, k, g)
    pred = np.asarray(model.predict(x_te), np.float64)
    return float(np.mean(np.square(pred - y_te))), -float(model.log_likelihood(x_te, y_te))


def main(argv):
    del argv
    unknown = set(_METHODS.value) - set(METHODS)
    if unknown:
        raise app.UsageError(f"unknown methods {sorted(unknown)}; known: {list(METHODS)}")
    data = mj.datasets.load_airfoil()
    x, y = data.features, data.target
    n = len(y)
    n_test = n // 5
    ks = [int(v) for v in _KS.value]
    rows, start = [], time.perf_counter()
    for split in range(_SPLITS.value):
        key_split, key_fit = jax.random.split(jax.random.key(split))
        perm = np.asarray(jax.random.permutation(key_split, n))
        test, train = perm[:n_test], perm[n_test:]
        for k in ks:
            for method in _METHODS.value:
                if method == "ols" and k != ks[0]:
                    continue  # does not depend on k
                mse, nll = evaluate(method, key_fit, x[train], y[train], x[test], y[test], k,
                                    _NONLIN.value)
                rows.append(dict(split=split, k=0 if method == "ols" else k, method=method,
                                 test_mse=mse, test_nll=nll))
        print(f"[split {split + 1}/{_SPLITS.value}] "
              + ", ".join(f"{r['method']}(k={r['k']}) {r['test_mse']:.2f}"
                          for r in rows if r["split"] == split)
              + f" ({time.perf_counter() - start:.0f} s)", flush=True)

    def stats(method, k, field):
        v = np.array([r[field] for r in rows if r["method"] == method and r["k"] == k])
        return float(np.mean(v)), float(np.std(v))

    cells = [(m, 0 if m == "ols" else k) for k in ks for m in _METHODS.value
             if m != "ols" or k == ks[0]]
    summary = [dict(method=m, k=k, mse_mean=stats(m, k, "test_mse")[0],
                    mse_std=stats(m, k, "test_mse")[1], nll_mean=stats(m, k, "test_nll")[0],
                    nll_std=stats(m, k, "test_nll")[1]) for m, k in cells]
    base = os.path.join(_OUT.value, "airfoil")
    common.write_rows(base, rows, dict(num_splits=_SPLITS.value, ks=ks, nonlinearity=_NONLIN.value,
                                       num_starts=_STARTS.value, em_iters=_EM_ITERS.value,
                                       gd_steps=_GD_STEPS.value, summary=summary))

    print(f"\nAirfoil self-noise, {_SPLITS.value} random 80/20 splits (n_train = {n - n_test}), "
          f"g = {_NONLIN.value}: test MSE (dB^2) and test NLL per row, mean +- sd over splits\n")
    print("| method | k | test MSE | test NLL |\n|---|---|---|---|")
    for s in summary:
        print(f"| {LABELS[s['method']]} | {s['k'] or '-'} | {s['mse_mean']:.2f} +- "
              f"{s['mse_std']:.2f} | {s['nll_mean']:.3f} +- {s['nll_std']:.3f} |")

    moe = [m for m in _METHODS.value if m != "ols"]
    series = {}
    for m in moe:
        vals = [next(s for s in summary if s["method"] == m and s["k"] == k) for k in ks]
        series[LABELS[m]] = ([v["mse_mean"] for v in vals], [v["mse_std"] for v in vals])
    hline = None
    if "ols" in _METHODS.value:
        hline = (next(s for s in summary if s["method"] == "ols")["mse_mean"], LABELS["ols"])
    common.plot_grouped_bars(base + ".png", [f"k = {k}" for k in ks], series,
                             ylabel="test MSE (dB$^2$)", figsize=(8, 3.8), hline=hline,
                             title=f"airfoil self-noise, {_SPLITS.value} splits", legend_size=7)
    print(f"wrote {base}.csv, .json, .png")


if __name__ == "__main__":
    app.run(main)
