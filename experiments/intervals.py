r"""Predictive intervals on real data: airfoil self-noise, the 10 splits of experiments.airfoil.

    python -m experiments.intervals

For each split and k, `fit` (its defaults) on the training rows, then on the test rows the
central predictive intervals at --levels from `FittedMoE.predict_interval` (quantiles of the
mixture's predictive distribution): the share of test targets inside and the mean width. The
yardstick is least squares with normal intervals, mean +- z sigma (sigma by maximum
likelihood, parameter uncertainty left out as in the mixture's). Writes intervals.{json,csv}
and a PNG: coverage against level, and for split 0 the test rows' intervals coloured by
cluster.
"""

import os
import time

from absl import app, flags
import numpy as np
from scipy.stats import norm

import moejax as mj
from experiments import common

_SPLITS = flags.DEFINE_integer("num_splits", 10, "Random 80/20 splits (seeds 0..num_splits-1).")
_KS = flags.DEFINE_list("ks", ["2", "3"], "Numbers of experts.")
_LEVELS = flags.DEFINE_list("levels", ["0.5", "0.8", "0.9", "0.95"], "Interval levels.")
_OUT = flags.DEFINE_string("output_dir", "experiments/results", "Where to write results.")


def ols_intervals(x_tr, y_tr, x_te, level):
    design = np.c_[x_tr, np.ones(len(x_tr))]
    coef = np.linalg.lstsq(design, y_tr, rcond=None)[0]
    sigma = np.sqrt(np.mean(np.square(design @ coef - y_tr)))
    mean = np.c_[x_te, np.ones(len(x_te))] @ coef
    half = norm.ppf(0.5 + level / 2) * sigma
    return mean - half, mean + half


def main(argv):
    del argv
    data = mj.datasets.load_airfoil()
    x, y = np.asarray(data.features, np.float64), np.asarray(data.target, np.float64)
    levels = [float(v) for v in _LEVELS.value]
    ks = [int(v) for v in _KS.value]
    rows, example, start = [], None, time.perf_counter()
    for split in range(_SPLITS.value):
        key_fit, tr, te = common.split(split, len(y))
        for level in levels:
            lo, hi = ols_intervals(x[tr], y[tr], x[te], level)
            rows.append(dict(split=split, method="ols", k=1, level=level,
                             coverage=float(np.mean((lo <= y[te]) & (y[te] <= hi))),
                             width=float(np.mean(hi - lo))))
        for k in ks:
            model = mj.fit(key_fit, x[tr], y[tr], num_experts=k)
            for level in levels:
                lo, hi = (np.asarray(v, np.float64) for v in model.predict_interval(x[te], level))
                rows.append(dict(split=split, method="moejax", k=k, level=level,
                                 coverage=float(np.mean((lo <= y[te]) & (y[te] <= hi))),
                                 width=float(np.mean(hi - lo))))
            if split == 0 and k == ks[-1]:
                lo, hi = (np.asarray(v) for v in model.predict_interval(x[te], 0.9))
                example = dict(k=k, y=y[te].tolist(), predicted=np.asarray(
                    model.predict(x[te])).tolist(), lower=lo.tolist(), upper=hi.tolist(),
                    cluster=np.asarray(model.clusters(x[te], y[te])).tolist())
        print(f"[split {split + 1}/{_SPLITS.value}] ({time.perf_counter() - start:.0f} s)",
              flush=True)
    summary = []
    for method, k in [("ols", 1)] + [("moejax", k) for k in ks]:
        for level in levels:
            mine = [r for r in rows if r["method"] == method and r["k"] == k
                    and r["level"] == level]
            summary.append(dict(method=method, k=k, level=level,
                                coverage=float(np.mean([r["coverage"] for r in mine])),
                                coverage_sd=float(np.std([r["coverage"] for r in mine])),
                                width=float(np.mean([r["width"] for r in mine]))))
    base = os.path.join(_OUT.value, "intervals")
    common.write_rows(base, rows, dict(dataset="airfoil", num_splits=_SPLITS.value,
                                       summary=summary, example_split0=example))
    plot(base + ".png", summary, example, levels)
    print("\n| method | k | level | coverage (sd over splits) | mean width (dB) |")
    print("|---|---|---|---|---|")
    for s in summary:
        print(f"| {s['method']} | {s['k']} | {s['level']:g} | {s['coverage']:.3f} "
              f"({s['coverage_sd']:.3f}) | {s['width']:.2f} |")
    print(f"\nwrote {base}.json, .csv, .png ({time.perf_counter() - start:.0f} s)")


def plot(path, summary, example, levels):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for j, key in enumerate(dict.fromkeys((s["method"], s["k"]) for s in summary)):
        mine = [s for s in summary if (s["method"], s["k"]) == key]
        label = common.LABELS["ols"] if key[0] == "ols" else f"moejax fit, k = {key[1]}"
        axes[0].plot([s["level"] for s in mine], [s["coverage"] for s in mine], "o-",
                     label=label, color=f"C{j}")
    axes[0].plot(levels, levels, "k--", lw=1, label="nominal")
    axes[0].set(xlabel="nominal level", ylabel="share of test rows inside",
                title="airfoil, 10 splits: interval coverage")
    axes[0].legend(fontsize=8)
    order = np.argsort(example["predicted"])
    for c in sorted(set(example["cluster"])):
        idx = [i for i in order if example["cluster"][i] == c]
        pos = np.searchsorted(np.asarray(example["predicted"])[order],
                              np.asarray(example["predicted"])[idx])
        axes[1].vlines(pos, np.asarray(example["lower"])[idx], np.asarray(example["upper"])[idx],
                       color=f"C{c}", alpha=0.35, lw=1)
        axes[1].scatter(pos, np.asarray(example["y"])[idx], s=5, color=f"C{c}",
                        label=f"cluster {c}")
    axes[1].set(xlabel="test rows, by prediction", ylabel="scaled sound pressure (dB)",
                title=f"split 0, k = {example['k']}: 90% intervals, targets by cluster")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    app.run(main)
