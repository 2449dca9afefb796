r"""Where the prior starts to matter: synthetic mixtures with few rows per coefficient.

    python -m experiments.prior_small_n

A known truth (`moejax.random_params`: d = --dim, k = --num_experts, linear experts, one sigma
--noise_std, gating rows of norm 2), n training rows drawn from it for n in --ns, and 5000
test rows. Per seed and n: `fit` with its default prior, `fit(prior=None)` (maximum
likelihood) and least squares, each scored by test NLL per row, its excess over the truth's
own test NLL, the expert error after matching (`moejax.expert_error`, mixtures only), and
whether the fit is degenerate (an expert with fewer posterior rows than its d + 2
parameters, or a sigma below 0.01 sd(y)). The x axis of the plot is rows per free parameter,
n / ((2k - 1)(d + 1) + k). Writes prior_small_n.{json,csv,png} to --output_dir.
"""

import os
import time
import warnings

from absl import app, flags
import jax
import numpy as np

import moejax as mj
from experiments import common

_NS = flags.DEFINE_list("ns", ["60", "100", "200", "400", "1000", "3000"], "Training rows.")
_SEEDS = flags.DEFINE_integer("num_seeds", 10, "Seeds (truth and data) per n.")
_DIM = flags.DEFINE_integer("dim", 4, "d, features.")
_K = flags.DEFINE_integer("num_experts", 2, "k of the truth and of the fits.")
_NOISE = flags.DEFINE_float("noise_std", 0.3, "The truth's sigma.")
_OUT = flags.DEFINE_string("output_dir", "experiments/results", "Where to write results.")

METHODS = {"moejax": mj.Prior(), "moejax_ml": None}
_TEST_ROWS = 5000


def main(argv):
    del argv
    d, k = _DIM.value, _K.value
    params = (2 * k - 1) * (d + 1) + k
    rows, start = [], time.perf_counter()
    for n in map(int, _NS.value):
        for seed in range(_SEEDS.value):
            key_truth, key_train, key_test, key_fit = jax.random.split(
                jax.random.key(seed), 4)
            truth = mj.random_params(key_truth, d, k, noise_std=_NOISE.value, gating_norm=2.0)
            x, y = (np.asarray(v, np.float64) for v in mj.sample(key_train, truth, n))
            x_te, y_te = (np.asarray(v, np.float64) for v in mj.sample(key_test, truth,
                                                                        _TEST_ROWS))
            best = -float(mj.log_likelihood(truth, x_te, y_te))
            base = dict(n=n, seed=seed, rows_per_parameter=n / params, truth_test_nll=best)
            ols = mj.fit(key_fit, x, y, num_experts=1)
            rows.append(dict(base, method="ols", test_nll=-float(ols.log_likelihood(x_te, y_te)),
                             expert_error=np.nan, experts=1, degenerate=False, warned=False))
            for method, prior in METHODS.items():
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    model = mj.fit(key_fit, x, y, num_experts=k, prior=prior,
                                   standard_errors=False)
                error = np.nan
                if model.num_experts == k:  # the experts' slopes, on the data's scale
                    error = float(mj.expert_error(_data_experts(model), truth.experts))
                rows.append(dict(base, method=method,
                                 test_nll=-float(model.log_likelihood(x_te, y_te)),
                                 expert_error=error, experts=model.num_experts,
                                 degenerate=bool(model.degeneracy()),
                                 warned=any("dropped" in str(w.message) for w in caught)))
            print(f"[n = {n}, seed {seed + 1}/{_SEEDS.value}] " + ", ".join(
                f"{r['method']} {r['test_nll'] - best:+.3f}" for r in rows[-3:])
                + f" ({time.perf_counter() - start:.0f} s)", flush=True)
    summary = summarise(rows)
    base = os.path.join(_OUT.value, "prior_small_n")
    common.write_rows(base, rows, dict(dim=d, num_experts=k, noise_std=_NOISE.value,
                                       num_params=params, num_seeds=_SEEDS.value,
                                       summary=summary))
    print(common.prior_small_n_table(summary))
    plot(base + ".png", summary, d, k)
    print(f"wrote {base}.csv, .json, .png")


def _data_experts(model):
    """The fitted experts' slopes on x's own scale (k, d), to compare with the truth's."""
    x_map = np.asarray(model.standardizer.x_map, np.float64)
    slopes = np.asarray(model.params.experts, np.float64)[:, :-1] @ x_map.T
    return slopes * float(model.standardizer.y_scale)


def summarise(rows):
    out = []
    for n in dict.fromkeys(r["n"] for r in rows):
        for method in ("ols", *METHODS):
            cell = [r for r in rows if r["n"] == n and r["method"] == method]
            excess = np.array([r["test_nll"] - r["truth_test_nll"] for r in cell])
            out.append(dict(n=n, method=method, rows_per_parameter=cell[0]["rows_per_parameter"],
                            excess_nll=float(np.mean(excess)),
                            excess_nll_median=float(np.median(excess)),
                            excess_nll_max=float(np.max(excess)),
                            expert_error=float(np.nanmedian([r["expert_error"] for r in cell]))
                            if method != "ols" and any(np.isfinite(r["expert_error"])
                                                       for r in cell) else None,
                            degenerate=sum(r["degenerate"] for r in cell),
                            fewer_experts=sum(r["experts"] < _K.value for r in cell)
                            if method != "ols" else 0, seeds=len(cell)))
    return out


def plot(path, summary, d, k) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    labels = {"ols": common.LABELS["ols"], "moejax": "moejax fit (default prior)",
              "moejax_ml": common.LABELS["moejax_ml"]}
    for method, label in labels.items():
        cells = [s for s in summary if s["method"] == method]
        ax.plot([s["rows_per_parameter"] for s in cells], [s["excess_nll"] for s in cells],
                marker="o", label=label)
    ax.set(xscale="log", yscale="symlog", xlabel="training rows per free parameter",
           ylabel="test NLL - the truth's (mean)",
           title=f"synthetic truth, d = {d}, k = {k}: where the prior matters")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    app.run(main)
