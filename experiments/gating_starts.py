r"""Do the gating EM's random starts ever end at different optima? For several settings and
seeds, the experts fixed at the moment estimate (as inside `recover`), `fit_gating` runs from
--num_inits single starts, each to convergence; a seed counts as split when the final mean
log-likelihoods of its starts differ by more than --gap.

    python -m experiments.gating_starts

Writes gating_starts.json to --output_dir and prints a table. This measurement is why
`recover` screens a few starts and then runs only the best (docs/solvers.md).
"""

import json
import os
import time

from absl import app, flags
import jax
import numpy as np

import moejax as mj

_SEEDS = flags.DEFINE_integer("num_seeds", 20, "Seeds per setting.")
_INITS = flags.DEFINE_integer("num_inits", 8, "Single starts per seed.")
_GAP = flags.DEFINE_float("gap", 1e-4, "Likelihood spread that counts as different optima.")
_OUT = flags.DEFINE_string("output_dir", "experiments/results", "Where to write results.")

# (name, d, k, gating norm, sigma, nonlinearity, n)
SETTINGS = [
    ("d10-k3", 10, 3, 2.0, 0.1, "linear", 20_000),
    ("d10-k3-sharp", 10, 3, 6.0, 0.1, "linear", 20_000),
    ("d20-k8-norm4", 20, 8, 4.0, 0.5, "linear", 20_000),
    ("d100-k5", 100, 5, 2.0, 0.1, "linear", 100_000),
    ("d10-k5-relu", 10, 5, 2.0, 0.1, "relu", 20_000),
]


def main(argv):
    del argv
    rows, start = [], time.perf_counter()
    for name, d, k, norm, sigma, g, n in SETTINGS:
        for seed in range(_SEEDS.value):
            key_p, key_x, key_fit = jax.random.split(jax.random.key(seed), 3)
            truth = mj.random_params(key_p, d, k, noise_std=sigma, gating_norm=norm,
                                     nonlinearity=g)
            x, y = mj.sample(key_x, truth, n)
            est, _ = mj.recover_experts(key_fit, x, y, num_experts=k, nonlinearity=g,
                                        noise_std=sigma)
            experts = est.experts
            lls, errs, passes = [], [], []
            for i in range(_INITS.value):
                w, info = mj.fit_gating(jax.random.fold_in(key_fit, i), x, y, experts,
                                        noise_std=sigma, nonlinearity=g, num_inits=1,
                                        num_iters=500, tol=1e-8)
                lls.append(float(info.log_likelihood))
                passes.append(int(info.num_passes))
                errs.append(float(mj.gating_error(truth._replace(experts=experts, gating=w),
                                                  truth)))
            rows.append(dict(setting=name, seed=seed, spread=max(lls) - min(lls),
                             error_spread=max(errs) - min(errs), median_passes=np.median(passes)))
        mine = [r for r in rows if r["setting"] == name]
        print(f"{name}: split in {sum(r['spread'] > _GAP.value for r in mine)}/{len(mine)} seeds, "
              f"max spread {max(r['spread'] for r in mine):.2e}, max error spread "
              f"{max(r['error_spread'] for r in mine):.2e} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    os.makedirs(_OUT.value, exist_ok=True)
    with open(os.path.join(_OUT.value, "gating_starts.json"), "w") as f:
        json.dump(dict(num_inits=_INITS.value, gap=_GAP.value, rows=rows), f, indent=1)
    print("\n| setting | seeds with split starts | max L spread | max gating-error spread |")
    print("|---|---|---|---|")
    for name, *_ in SETTINGS:
        mine = [r for r in rows if r["setting"] == name]
        print(f"| {name} | {sum(r['spread'] > _GAP.value for r in mine)}/{len(mine)} | "
              f"{max(r['spread'] for r in mine):.1e} | "
              f"{max(r['error_spread'] for r in mine):.1e} |")


if __name__ == "__main__":
    app.run(main)
