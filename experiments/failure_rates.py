r"""Failure rates: the fraction of seeds whose expert error exceeds --threshold, per method,
in settings chosen to include hard ones. Every (setting, method) is one vmap over seeds.

    python -m experiments.failure_rates --num_seeds=50

Writes failure_rates.{json,csv,png} to --output_dir and prints a markdown table.
"""

import os
import time

from absl import app, flags
import numpy as np

from experiments import common

S = common.Setting
# name -> (setting, n)
SETTINGS = {
    "base": (S(), 20_000),
    "k5-relu": (S(nonlinearity="relu", num_experts=5), 20_000),
    "k8-linear": (S(num_experts=8), 20_000),
    "sharp-sigmoid": (S(nonlinearity="sigmoid", gating_norm=6.0), 20_000),
    "noisy-tanh-k5": (S(nonlinearity="tanh", num_experts=5, noise_std=0.5), 20_000),
    "noisy-linear-k5": (S(num_experts=5, noise_std=1.0), 20_000),
}
# "base" is the synthetic sweep's setting (no failures there); the defaults are the hard ones.
DEFAULT_SETTINGS = ["k5-relu", "k8-linear", "sharp-sigmoid", "noisy-linear-k5"]

_SETTINGS = flags.DEFINE_list("settings", DEFAULT_SETTINGS, f"Subset of {list(SETTINGS)}.")
_SEEDS = flags.DEFINE_integer("num_seeds", 50, "Seeds per setting and method, one vmap.")
_METHODS = flags.DEFINE_list("methods", list(common.METHODS), f"Subset of {common.METHODS}.")
_THRESHOLD = flags.DEFINE_float("threshold", 0.3, "A seed fails above this expert error.")
_N_SCALE = flags.DEFINE_float("n_scale", 1.0, "Multiply every setting's n (tests use less).")
_OUT = flags.DEFINE_string("output_dir", "experiments/results", "Where to write results.")


def describe(s: common.Setting, n: int) -> str:
    return (f"g={s.nonlinearity}, d={s.dim}, k={s.num_experts}, sigma={s.noise_std}, "
            f"gate norm {s.gating_norm}, n={n}")


def main(argv):
    del argv
    unknown = set(_SETTINGS.value) - set(SETTINGS)
    if unknown:
        raise app.UsageError(f"unknown settings {sorted(unknown)}; known: {list(SETTINGS)}")
    rows, start = [], time.perf_counter()
    total = len(_SETTINGS.value) * len(_METHODS.value)
    for name in _SETTINGS.value:
        setting, n = SETTINGS[name]
        n = max(int(n * _N_SCALE.value), setting.dim + 1)
        for method in _METHODS.value:
            tic = time.perf_counter()
            expert, gate, passes, conv = common.run_seeds(method, setting, n, _SEEDS.value)
            rows += [dict(setting=name, method=method, n=n, seed=s, expert_error=float(e),
                          gating_error=float(g), passes=int(p), converged=bool(c))
                     for s, (e, g, p, c) in enumerate(zip(expert, gate, passes, conv))]
            print(f"[{len(rows) // _SEEDS.value}/{total}] {name:14s} {method:8s} failure "
                  f"{np.mean(expert > _THRESHOLD.value):.2f} median {np.median(expert):.3f} "
                  f"passes {np.median(passes):.0f} converged {np.mean(conv):.2f} "
                  f"({time.perf_counter() - tic:.1f} s, {time.perf_counter() - start:.0f} s total)",
                  flush=True)

    def rate(name, method):
        mine = [r for r in rows if r["setting"] == name and r["method"] == method]
        errs = np.array([r["expert_error"] for r in mine])
        return (float(np.mean(errs > _THRESHOLD.value)), float(np.median(errs)),
                float(np.median([r["passes"] for r in mine])),
                float(np.mean([r["converged"] for r in mine])))

    table = {name: {m: rate(name, m) for m in _METHODS.value} for name in _SETTINGS.value}
    base = os.path.join(_OUT.value, "failure_rates")
    settings = {k: {"n": max(int(SETTINGS[k][1] * _N_SCALE.value), SETTINGS[k][0].dim + 1),
                    **vars(SETTINGS[k][0])} for k in _SETTINGS.value}
    common.write_rows(base, rows, {"threshold": _THRESHOLD.value, "num_seeds": _SEEDS.value,
                                   "settings": settings, "failure_rate_and_median": table})

    print(f"\nFailure rate (expert error > {_THRESHOLD.value}) over {_SEEDS.value} seeds, "
          "with the median expert error, the median passes over the data and the fraction of "
          "converged runs in brackets (for moments: the gating EM's):\n")
    print("| setting | " + " | ".join(common.LABELS[m] for m in _METHODS.value) + " |")
    print("|---|" + "---|" * len(_METHODS.value))
    for name in _SETTINGS.value:
        setting, _ = SETTINGS[name]
        n = rows[[r["setting"] for r in rows].index(name)]["n"]
        cells = ["{:.2f} ({:.3f}; {:.0f}; {:.2f})".format(*table[name][m]) for m in _METHODS.value]
        print(f"| {name}: {describe(setting, n)} | " + " | ".join(cells) + " |")

    series = {common.LABELS[m]: ([table[name][m][0] for name in _SETTINGS.value], None)
              for m in _METHODS.value}
    common.plot_grouped_bars(base + ".png", _SETTINGS.value, series, ylim=(0, 1),
                             ylabel=f"fraction of seeds with error > {_THRESHOLD.value}",
                             title=f"failure rates over {_SEEDS.value} seeds")
    print(f"wrote {base}.csv, .json, .png")


if __name__ == "__main__":
    app.run(main)
