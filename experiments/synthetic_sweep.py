r"""Expert and gating error against n for each method, every n and method one vmap over seeds.

    python -m experiments.synthetic_sweep --nonlinearity=linear --ns=3000,10000,30000,100000

Writes synthetic_sweep.{json,csv,png} to --output_dir.
"""

import os
import time

from absl import app, flags
import numpy as np

from experiments import common

_NONLIN = flags.DEFINE_string("nonlinearity", "linear", "Expert non-linearity g.")
_DIM = flags.DEFINE_integer("dim", 10, "Input dimension d.")
_EXPERTS = flags.DEFINE_integer("num_experts", 3, "Number of experts k.")
_SIGMA = flags.DEFINE_float("noise_std", 0.1, "Noise standard deviation.")
_GATE_NORM = flags.DEFINE_float("gating_norm", 2.0, "Norm of each true gating row.")
_ORTHOGONAL = flags.DEFINE_bool("orthogonal_gating", True, "Gating orthogonal to the experts.")
_NS = flags.DEFINE_list("ns", ["3000", "10000", "30000", "100000"], "Sample sizes.")
_SEEDS = flags.DEFINE_integer("num_seeds", 10, "Seeds per (n, method), one vmap.")
_METHODS = flags.DEFINE_list("methods", list(common.METHODS), f"Subset of {common.METHODS}.")
_EM_ITERS = flags.DEFINE_integer("em_iters", 500, "Cap on joint EM iterations (em, refine).")
_GD_STEPS = flags.DEFINE_integer("gd_steps", 2000, "Cap on Adam steps (gd).")
_TOL = flags.DEFINE_float("tol", 1e-7, "Every method stops when L rises by at most tol(1+|L|).")
_GD_LR = flags.DEFINE_float("gd_learning_rate", 0.02, "Adam learning rate (gd).")
_OUT = flags.DEFINE_string("output_dir", "experiments/results", "Where to write results.")
_NAME = flags.DEFINE_string("name", "synthetic_sweep", "Base name of the output files.")


def main(argv):
    del argv
    setting = common.Setting(nonlinearity=_NONLIN.value, dim=_DIM.value,
                             num_experts=_EXPERTS.value, noise_std=_SIGMA.value,
                             gating_norm=_GATE_NORM.value, orthogonal_gating=_ORTHOGONAL.value,
                             em_iters=_EM_ITERS.value, gd_steps=_GD_STEPS.value,
                             gd_learning_rate=_GD_LR.value, tol=_TOL.value)
    for m in _METHODS.value:
        common.method_fn(m, setting)  # fail on an unknown method before any work
    ns = [int(float(v)) for v in _NS.value]
    rows, total, start = [], len(ns) * len(_METHODS.value), time.perf_counter()
    for n in ns:
        for method in _METHODS.value:
            tic = time.perf_counter()
            expert, gate, passes, conv = common.run_seeds(method, setting, n, _SEEDS.value)
            rows += [dict(method=method, n=n, seed=s, expert_error=float(e), gating_error=float(g),
                          passes=int(p), converged=bool(c))
                     for s, (e, g, p, c) in enumerate(zip(expert, gate, passes, conv))]
            done = len(rows) // _SEEDS.value
            print(f"[{done}/{total}] n={n:>8d} {method:8s} median expert {np.median(expert):.4f} "
                  f"gating {np.median(gate):.4f} passes {np.median(passes):.0f} converged "
                  f"{np.mean(conv):.2f} ({time.perf_counter() - tic:.1f} s, "
                  f"{time.perf_counter() - start:.0f} s total)", flush=True)

    base = os.path.join(_OUT.value, _NAME.value)
    common.write_rows(base, rows, {"setting": vars(setting), "num_seeds": _SEEDS.value})
    common.plot_error_vs_n(
        base + ".png", rows, "method", {m: common.LABELS[m] for m in _METHODS.value},
        f"g={setting.nonlinearity}, d={setting.dim}, k={setting.num_experts}, "
        f"sigma={setting.noise_std}, gate norm {setting.gating_norm}, {_SEEDS.value} seeds")
    print(f"wrote {base}.csv, .json, .png")


if __name__ == "__main__":
    app.run(main)
