r"""How long must `fit`'s refinement starts run together before the best few can be picked?

    python -m experiments.refine_screening

On the airfoil data (the 80/20 training splits of `experiments.airfoil`), for k = 2, 3, 4,
`fit`'s starts (the moment start and --num_refine_inits random ones) are each refined by
joint EM to a tight tolerance (--tol, cap --max_iters). Screening after S iterations and
keeping the K starts with the highest likelihood then, would lose the best final likelihood
minus the best final likelihood among the K kept: the table gives its largest value over
splits and k, for each S and K. This measurement sets `moejax.refinement.REFINE_SCREEN_ITERS`
and `REFINE_KEEP` (docs/solvers.md). Writes refine_screening.{json,png} to --output_dir.
"""

import json
import os
import time

from absl import app, flags
import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import moejax as mj  # noqa: E402
from experiments import common  # noqa: E402

_SPLITS = flags.DEFINE_integer("num_splits", 10, "Training splits (seeds 0..num_splits-1).")
_KS = flags.DEFINE_list("ks", ["2", "3", "4"], "Numbers of experts.")
_STARTS = flags.DEFINE_integer("num_refine_inits", 16, "Random starts besides the moment one.")
_TOL = flags.DEFINE_float("tol", 1e-9, "Tolerance of the full runs.")
_MAX = flags.DEFINE_integer("max_iters", 3000, "Cap of the full runs.")
_OUT = flags.DEFINE_string("output_dir", "experiments/results", "Where to write results.")

SCREENS = (10, 25, 50, 100, 200)
KEEPS = (1, 2, 3, 4)


def main(argv):
    del argv
    data = mj.datasets.load_airfoil()
    x_all, y_all = data.features, data.target
    n = len(y_all)
    rows, start = [], time.perf_counter()
    for split in range(_SPLITS.value):
        key_fit, train, _ = common.split(split, n)  # as experiments.airfoil
        x, y = x_all[train], y_all[train]
        for k in (int(v) for v in _KS.value):
            moment = mj.fit(key_fit, x, y, num_experts=k, num_refine_iters=0)
            z = moment.design(x)
            ys = mj.transform_target(moment.standardizer, y)
            key_starts = jax.random.split(key_fit, 3)[2]
            starts = [moment.params] + [
                mj.random_init(kk, z.shape[1], k, moment.params.noise_std, z.dtype)
                for kk in jax.random.split(key_starts, _STARTS.value)]
            traces, finals = [], []
            for s in starts:
                # Newton gating steps, as fit's refinement takes for gatings this small.
                _, info = mj.refine(s, z, ys, learn_noise_std=True, num_iters=_MAX.value,
                                    tol=_TOL.value, gating_step="newton")
                traces.append(np.asarray(info.trace))
                finals.append(float(info.log_likelihood))
            traces, finals = np.stack(traces), np.array(finals)
            row = dict(split=split, k=k, best=float(finals.max()),
                       iters_of_best=int(np.sum(np.diff(traces[finals.argmax()]) != 0)) + 1)
            for screen in SCREENS:
                order = np.argsort(-traces[:, screen])
                row[f"loss_S{screen}"] = [float(finals.max() - finals[order[:keep]].max())
                                          for keep in KEEPS]
            rows.append(row)
            print(f"[split {split + 1}/{_SPLITS.value} k={k}] best L {row['best']:.4f}, loss "
                  f"at S=100: {row['loss_S100']} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    worst = {s: [max(r[f"loss_S{s}"][i] for r in rows) for i in range(len(KEEPS))]
             for s in SCREENS}
    os.makedirs(_OUT.value, exist_ok=True)
    with open(os.path.join(_OUT.value, "refine_screening.json"), "w") as f:
        json.dump(dict(num_refine_inits=_STARTS.value, tol=_TOL.value,
                       max_iters=_MAX.value, worst=worst, rows=rows), f, indent=1)
    print("\nlargest loss of the best final L per row (standardised scale), over "
          f"{len(rows)} splits x k:\n")
    print("| screening iterations | " + " | ".join(f"keep {q}" for q in KEEPS) + " |")
    print("|---" * (len(KEEPS) + 1) + "|")
    for s in SCREENS:
        print(f"| {s} | " + " | ".join(f"{v:.4f}" for v in worst[s]) + " |")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, keep in enumerate(KEEPS):
        ax.plot(SCREENS, [max(worst[s][i], 1e-6) for s in SCREENS], marker="o",
                label=f"keep {keep}")
    ax.set(xscale="log", yscale="log", xlabel="screening iterations",
           ylabel="largest loss in best L per row")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(_OUT.value, "refine_screening.png"), dpi=120)


if __name__ == "__main__":
    app.run(main)
