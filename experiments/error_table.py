r"""Recovery error against n for each non-linearity (the core issue's error table).

For every (non-linearity, n) all seeds run as one vmapped `moejax.recover` over keys and
datasets. Writes error_table.json, error_table.csv and error_table.png to --output_dir and
prints a markdown table of medians.

    python -m experiments.error_table --output_dir=experiments/results
"""

import os
import time

from absl import app, flags
import jax
import numpy as np

from experiments import common
import moejax as mj

_NONLINS = flags.DEFINE_list("nonlinearities", ["linear", "tanh", "relu", "sigmoid"],
                             "Expert non-linearities.")
_NS = flags.DEFINE_list("ns", ["10000", "100000", "1000000"], "Sample sizes.")
_SEEDS = flags.DEFINE_integer("num_seeds", 5, "Seeds per setting (one vmap).")
_DIM = flags.DEFINE_integer("dim", 10, "Input dimension d.")
_EXPERTS = flags.DEFINE_integer("num_experts", 3, "Number of experts k.")
_SIGMA = flags.DEFINE_float("noise_std", 0.1, "Noise standard deviation.")
_ORTH = flags.DEFINE_bool("orthogonal_gating", True, "Gating rows orthogonal to the experts "
                          "(the method's assumption), or drawn freely.")
_INITS = flags.DEFINE_integer("num_gating_inits", 4, "Random starts of the gating EM.")
_EM_ITERS = flags.DEFINE_integer("num_gating_iters", 50, "Gating EM iterations.")
_OUT = flags.DEFINE_string("output_dir", "experiments/results", "Where to write results.")


def run_setting(g: str, n: int, seeds: int):
    """Expert and gating errors of every seed for one (g, n): two arrays of shape (seeds,)."""
    keys = jax.random.split(jax.random.key(0), seeds)

    def one(key):
        key_p, key_x, key_fit = jax.random.split(key, 3)
        truth = mj.random_params(key_p, _DIM.value, _EXPERTS.value, noise_std=_SIGMA.value,
                                 nonlinearity=g, orthogonal_gating=_ORTH.value)
        x, y = mj.sample(key_x, truth, n)
        est, _ = mj.recover(key_fit, x, y, num_experts=_EXPERTS.value, nonlinearity=g,
                         noise_std=_SIGMA.value, num_gating_inits=_INITS.value,
                         num_gating_iters=_EM_ITERS.value)
        return truth, est

    truth, est = jax.jit(jax.vmap(one))(keys)
    return mj.expert_error(est.experts, truth.experts), mj.gating_error(est, truth)


def main(argv):
    del argv
    ns = [int(float(v)) for v in _NS.value]
    rows = []
    total = len(_NONLINS.value) * len(ns)
    for g in _NONLINS.value:
        for n in ns:
            start = time.perf_counter()
            expert, gate = run_setting(g, n, _SEEDS.value)
            rows += [dict(nonlinearity=g, n=n, seed=s, expert_error=float(e), gating_error=float(w))
                     for s, (e, w) in enumerate(zip(expert, gate))]
            print(f"[{len(rows) // _SEEDS.value}/{total}] {g:8s} n={n:>8d}  median expert "
                  f"{np.median(expert):.4f}  gating {np.median(gate):.4f}  "
                  f"({time.perf_counter() - start:.1f} s)", flush=True)

    base = os.path.join(_OUT.value, "error_table")
    config = dict(dim=_DIM.value, num_experts=_EXPERTS.value, noise_std=_SIGMA.value,
                  num_seeds=_SEEDS.value, num_gating_inits=_INITS.value,
                  orthogonal_gating=_ORTH.value,
                  num_gating_iters=_EM_ITERS.value)
    common.write_rows(base, rows, {"config": config})

    def medians(g, key):
        return [np.median([r[key] for r in rows if r["nonlinearity"] == g and r["n"] == n])
                for n in ns]

    print("\n| g | " + " | ".join(f"n = {n:.0e}" for n in ns) + " |")
    print("|---|" + "---|" * len(ns))
    for g in _NONLINS.value:
        cells = [f"{e:.3f} / {w:.3f}" for e, w in zip(medians(g, "expert_error"),
                                                      medians(g, "gating_error"))]
        print(f"| {g} | " + " | ".join(cells) + " |")
    print("(median expert error / median gating error over seeds)")

    common.plot_error_vs_n(
        base + ".png", rows, "nonlinearity", {g: g for g in _NONLINS.value},
        f"moejax.recover, d={_DIM.value}, k={_EXPERTS.value}, sigma={_SIGMA.value}, "
        f"{_SEEDS.value} seeds")
    print(f"wrote {base}.csv, .json, .png")


if __name__ == "__main__":
    app.run(main)
