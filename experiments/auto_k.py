r"""Does `fit(num_experts="auto")` predict as well as the best fixed k, least squares included?

    python -m experiments.auto_k

Data sets: airfoil self-noise (1503 rows, d = 5), and two synthetic tables of the same size
and width in arbitrary units (x = 3 z + 1, y = 10 y_model + 5): a plain linear regression
(k = 1 is right) and a three-expert mixture (k = 3 is right). Each is split --num_splits times
80/20 at random; on every split: least squares, `fit` for every fixed k in 2..--max_experts,
and `fit(num_experts="auto")` (BIC over k = 1..max_experts). The verdict compares the mean
test MSE of auto with that of the best fixed choice (least squares or one k for all splits,
picked with hindsight by its mean test MSE). Writes auto_k.{json,csv} to --output_dir and
prints a table.
"""

import os
import time

from absl import app, flags
import jax
import numpy as np

import moejax as mj
from experiments import common

_SPLITS = flags.DEFINE_integer("num_splits", 10, "Random 80/20 splits per data set.")
_MAX = flags.DEFINE_integer("max_experts", 4, "Largest k.")
_DATA = flags.DEFINE_list("datasets", ["airfoil", "linear", "mixture3"], "Data sets.")
_OUT = flags.DEFINE_string("output_dir", "experiments/results", "Where to write results.")

DATASETS = ("airfoil", "linear", "mixture3")


def load(name):
    """(x, y) as float32 NumPy arrays: airfoil, or a synthetic table of its size and width."""
    if name == "airfoil":
        data = mj.datasets.load_airfoil()
        return np.asarray(data.features), np.asarray(data.target)
    key_p, key_x, key_e = jax.random.split(jax.random.key(7), 3)
    n, d = 1503, 5
    if name == "linear":
        x = np.asarray(jax.random.normal(key_x, (n, d)))
        y = x @ np.array([1.0, -2.0, 0.5, 0.0, 1.5]) + 0.5 * np.asarray(
            jax.random.normal(key_e, (n,)))
    else:
        truth = mj.random_params(key_p, d, 3, noise_std=0.2, gating_norm=3.0)
        x, y = (np.asarray(v) for v in mj.sample(key_x, truth, n))
    return 3 * x + 1, 10 * y + 5


def main(argv):
    del argv
    unknown = set(_DATA.value) - set(DATASETS)
    if unknown:
        raise app.UsageError(f"unknown data sets {sorted(unknown)}; known: {list(DATASETS)}")
    rows, start = [], time.perf_counter()
    ks = list(range(2, _MAX.value + 1))
    for name in _DATA.value:
        x, y = load(name)
        n = len(y)
        for split in range(_SPLITS.value):
            key_fit, tr, te = common.split(split, n)
            rows.append(dict(dataset=name, split=split, method="ols", chosen_k=1,
                             test_mse=common.least_squares_scores(x[tr], y[tr], x[te], y[te])[0]))
            for k in ks + ["auto"]:
                model = mj.fit(key_fit, x[tr], y[tr], num_experts=k, max_experts=_MAX.value)
                pred = np.asarray(model.predict(x[te]), np.float64)
                rows.append(dict(dataset=name, split=split,
                                 method="auto" if k == "auto" else f"k={k}",
                                 chosen_k=model.num_experts,
                                 test_mse=float(np.mean(np.square(pred - y[te])))))
            print(f"[{name} split {split + 1}/{_SPLITS.value}] " + ", ".join(
                f"{r['method']} {r['test_mse']:.3g}" for r in rows
                if r["dataset"] == name and r["split"] == split)
                + f" ({time.perf_counter() - start:.0f} s)", flush=True)

    summary = []
    for name in _DATA.value:
        mean = {m: float(np.mean([r["test_mse"] for r in rows
                                  if r["dataset"] == name and r["method"] == m]))
                for m in ["ols"] + [f"k={k}" for k in ks] + ["auto"]}
        fixed = {m: v for m, v in mean.items() if m != "auto"}
        best = min(fixed, key=fixed.get)
        chosen = [r["chosen_k"] for r in rows if r["dataset"] == name and r["method"] == "auto"]
        summary.append(dict(dataset=name, mean_test_mse=mean, best_fixed=best,
                            auto_over_best=mean["auto"] / fixed[best],
                            auto_chose={int(k): chosen.count(k) for k in sorted(set(chosen))}))
    base = os.path.join(_OUT.value, "auto_k")
    common.write_rows(base, rows, dict(num_splits=_SPLITS.value, max_experts=_MAX.value,
                                       summary=summary))
    methods = ["ols"] + [f"k={k}" for k in ks] + ["auto"]
    print("\n| data | " + " | ".join(methods) + " | auto chose k (splits) | auto / best fixed |")
    print("|---" * (len(methods) + 3) + "|")
    for s in summary:
        chose = ", ".join(f"{k}: {c}" for k, c in s["auto_chose"].items())
        print(f"| {s['dataset']} | " + " | ".join(f"{s['mean_test_mse'][m]:.4g}" for m in methods)
              + f" | {chose} | {s['auto_over_best']:.3f} ({s['best_fixed']}) |")
    print(f"wrote {base}.csv, .json")


if __name__ == "__main__":
    app.run(main)
