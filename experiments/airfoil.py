r"""The real-data check on NASA airfoil self-noise: test MSE and NLL over random 80/20 splits.

    python -m experiments.airfoil

Methods, each on whitened features with a per-expert intercept (`moejax.fit`'s preprocessing),
one sigma shared by the experts and learned (the model of the reference below; `fit`'s
default of one sigma per expert is measured against R's flexmix in experiments/peer_flexmix.py):
  moments: moment method + gating EM (`fit(num_refine_iters=0)`);
  refine:  `fit` with its defaults: joint-EM refinement of the moment start and 16 random
           starts, each to convergence, the best kept;
  em:      random-start joint EM, best of --num_starts starts by training likelihood;
  gd:      random-start joint GD (Adam), best of --num_starts starts by training likelihood;
  ols:     ordinary least squares with an intercept (the floor), Gaussian NLL.
Every iterative method runs until the likelihood rises by at most --tol (1 + |L|) per
iteration (per step for gd) or hits its cap. With --reference_starts > 0, each split and k
also gets the best training likelihood of that many long random-start joint EM runs (tol
1e-10, 5000 iterations): the yardstick for how close each method's training NLL comes to the
maximum likelihood. Writes airfoil.{json,csv,png} to --output_dir and prints markdown tables.
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

METHODS = ("moments", "refine", "em", "gd", "ols")  # labels: common.LABELS

_SPLITS = flags.DEFINE_integer("num_splits", 10, "Random 80/20 splits (seeds 0..num_splits-1).")
_KS = flags.DEFINE_list("ks", ["2", "3", "4"], "Numbers of experts.")
_METHODS = flags.DEFINE_list("methods", list(METHODS), f"Subset of {METHODS}.")
_STARTS = flags.DEFINE_integer("num_starts", 5, "Random starts for em and gd.")
_EM_ITERS = flags.DEFINE_integer("em_iters", 1000, "Cap on joint EM iterations (em).")
_GD_STEPS = flags.DEFINE_integer("gd_steps", 5000, "Cap on Adam steps (gd).")
_TOL = flags.DEFINE_float("tol", 1e-8, "Stopping tolerance of em and gd (fit's default).")
_REF = flags.DEFINE_integer("reference_starts", 40, "Random starts of the long joint-EM "
                            "reference run per split and k (0: none).")
_REF_ITERS = flags.DEFINE_integer("reference_iters", 5000, "Cap on the reference's iterations.")
_GD_LR = flags.DEFINE_float("gd_learning_rate", 0.02, "Adam learning rate (gd).")
_NONLIN = flags.DEFINE_enum("nonlinearity", "linear", list(mj.NONLINEARITIES), "Experts' g.")
_OUT = flags.DEFINE_string("output_dir", "experiments/results", "Where to write results.")


@functools.partial(jax.jit, static_argnames=("method", "k", "g", "iters"))
def _best_random_start(keys, z, y, method, k, g, iters, lr, tol):
    """Best of len(keys) random-start fits (one vmap) by training log-likelihood."""
    def one(key):
        if method == "em":
            return mj.joint_em(key, z, y, num_experts=k, nonlinearity=g, num_iters=iters,
                               tol=tol)
        return mj.joint_gd(key, z, y, num_experts=k, nonlinearity=g, num_iters=iters,
                           learning_rate=lr, tol=tol)

    fits, info = jax.vmap(one)(keys)
    ll = jnp.where(info.finite, info.log_likelihood, -jnp.inf)
    best = jnp.argmax(ll)
    return jax.tree_util.tree_map(lambda a: a[best], fits)


def fit_method(method, key, x, y, k, g):
    """A FittedMoE fitted on the training split."""
    if method in ("moments", "refine"):
        return mj.fit(key, x, y, num_experts=k, nonlinearity=g, per_expert_noise=False,
                      **({} if method == "refine" else dict(num_refine_iters=0)))
    std = mj.fit_standardizer(x, y)
    z = mj.fitted.design_matrix(std, jnp.asarray(x, jnp.float32))
    ys = mj.transform_target(std, jnp.asarray(y, jnp.float32))
    iters = _EM_ITERS.value if method == "em" else _GD_STEPS.value
    params = _best_random_start(jax.random.split(key, _STARTS.value), z, ys, method, k, g,
                                iters, _GD_LR.value, _TOL.value)
    return mj.FittedMoE(params, std)


def reference_train_nll(key, x, y, k, g):
    """Training NLL per row (target units) of the best of --reference_starts long joint EM
    runs from random starts: the maximum-likelihood yardstick."""
    std = mj.fit_standardizer(x, y)
    z = mj.fitted.design_matrix(std, jnp.asarray(x, jnp.float32))
    ys = mj.transform_target(std, jnp.asarray(y, jnp.float32))
    params = _best_random_start(jax.random.split(key, _REF.value), z, ys, "em", k, g,
                                _REF_ITERS.value, 0.0, 1e-10)
    return -float(mj.FittedMoE(params, std).log_likelihood(x, y))


def evaluate(method, key, x_tr, y_tr, x_te, y_te, k, g):
    """Test MSE, test NLL per row and training NLL per row in the target's units (dB,
    log-density per dB), and the fit's wall time in seconds."""
    if method == "ols":
        return (*common.least_squares_scores(x_tr, y_tr, x_te, y_te), 0.0)
    tic = time.perf_counter()
    model = jax.block_until_ready(fit_method(method, key, x_tr, y_tr, k, g))
    seconds = time.perf_counter() - tic
    pred = np.asarray(model.predict(x_te), np.float64)
    return (float(np.mean(np.square(pred - y_te))), -float(model.log_likelihood(x_te, y_te)),
            -float(model.log_likelihood(x_tr, y_tr)), seconds)


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
        key_fit, train, test = common.split(split, n)
        for k in ks:
            ref = (reference_train_nll(jax.random.fold_in(key_fit, 1000 + k), x[train],
                                       y[train], k, _NONLIN.value) if _REF.value else None)
            for method in _METHODS.value:
                if method == "ols" and k != ks[0]:
                    continue  # does not depend on k
                mse, nll, train_nll, seconds = evaluate(method, key_fit, x[train], y[train],
                                                        x[test], y[test], k, _NONLIN.value)
                rows.append(dict(split=split, k=0 if method == "ols" else k, method=method,
                                 test_mse=mse, test_nll=nll, train_nll=train_nll,
                                 reference_train_nll=None if method == "ols" else ref,
                                 seconds=seconds))
        print(f"[split {split + 1}/{_SPLITS.value}] "
              + ", ".join(f"{r['method']}(k={r['k']}) {r['test_mse']:.2f}"
                          for r in rows if r["split"] == split)
              + f" ({time.perf_counter() - start:.0f} s)", flush=True)

    def stats(method, k, field):
        v = np.array([r[field] for r in rows if r["method"] == method and r["k"] == k])
        return float(np.mean(v)), float(np.std(v))

    cells = [(m, 0 if m == "ols" else k) for k in ks for m in _METHODS.value
             if m != "ols" or k == ks[0]]
    def gaps(method, k):
        mine = [r for r in rows if r["method"] == method and r["k"] == k]
        if not mine or mine[0]["reference_train_nll"] is None:
            return None
        return [r["train_nll"] - r["reference_train_nll"] for r in mine]

    def warm_seconds(method, k):
        # The first split compiles; later splits of the same shape run warm.
        mine = [r["seconds"] for r in rows if r["method"] == method and r["k"] == k]
        return float(np.median(mine[1:])) if len(mine) > 1 else None

    summary = [dict(method=m, k=k, mse_mean=stats(m, k, "test_mse")[0],
                    mse_std=stats(m, k, "test_mse")[1], nll_mean=stats(m, k, "test_nll")[0],
                    nll_std=stats(m, k, "test_nll")[1],
                    train_nll_mean=stats(m, k, "train_nll")[0],
                    max_gap_to_reference=None if gaps(m, k) is None else max(gaps(m, k)),
                    splits_within_0_005=None if gaps(m, k) is None else
                    sum(g <= 0.005 for g in gaps(m, k)),
                    warm_seconds=warm_seconds(m, k)) for m, k in cells]
    base = os.path.join(_OUT.value, "airfoil")
    common.write_rows(base, rows, dict(num_splits=_SPLITS.value, ks=ks, nonlinearity=_NONLIN.value,
                                       num_starts=_STARTS.value, em_iters=_EM_ITERS.value,
                                       gd_steps=_GD_STEPS.value, tol=_TOL.value,
                                       reference_starts=_REF.value, summary=summary))

    print(f"\nAirfoil self-noise, {_SPLITS.value} random 80/20 splits (n_train = {n - n_test}), "
          f"g = {_NONLIN.value}: test MSE (dB^2) and test NLL per row, mean +- sd over splits\n")
    print("| method | k | test MSE | test NLL | train NLL | max train-NLL gap to the reference | "
          "splits within 0.005 | warm fit (s) |\n|---|---|---|---|---|---|---|---|")
    for s in summary:
        gap = "-" if s["max_gap_to_reference"] is None else f"{s['max_gap_to_reference']:.4f}"
        within = "-" if s["splits_within_0_005"] is None else (
            f"{s['splits_within_0_005']}/{_SPLITS.value}")
        warm = "-" if s["warm_seconds"] is None else f"{s['warm_seconds']:.3f}"
        print(f"| {common.LABELS[s['method']]} | {s['k'] or '-'} | {s['mse_mean']:.2f} +- "
              f"{s['mse_std']:.2f} | {s['nll_mean']:.3f} +- {s['nll_std']:.3f} | "
              f"{s['train_nll_mean']:.4f} | {gap} | {within} | {warm} |")

    moe = [m for m in _METHODS.value if m != "ols"]
    series = {}
    for m in moe:
        vals = [next(s for s in summary if s["method"] == m and s["k"] == k) for k in ks]
        series[common.LABELS[m]] = ([v["mse_mean"] for v in vals], [v["mse_std"] for v in vals])
    hline = None
    if "ols" in _METHODS.value:
        hline = (next(s for s in summary if s["method"] == "ols")["mse_mean"], common.LABELS["ols"])
    common.plot_grouped_bars(base + ".png", [f"k = {k}" for k in ks], series,
                             ylabel="test MSE (dB$^2$)", figsize=(8, 3.8), hline=hline,
                             title=f"airfoil self-noise, {_SPLITS.value} splits", legend_size=7)
    print(f"wrote {base}.csv, .json, .png")


if __name__ == "__main__":
    app.run(main)
