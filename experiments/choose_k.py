r"""Choosing k on the airfoil data: BIC and 5-fold cross-validated log-likelihood for k = 1
(least squares) to --max_experts, and the M2 spectrum (`moejax.select_num_experts`).

    python -m experiments.choose_k

Writes choose_k.{json,png} to --output_dir and prints the table.
"""

import json
import os

from absl import app, flags
import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import moejax as mj  # noqa: E402

_MAX = flags.DEFINE_integer("max_experts", 5, "Largest k tried.")
_FOLDS = flags.DEFINE_integer("num_folds", 5, "Cross-validation folds.")
_OUT = flags.DEFINE_string("output_dir", "experiments/results", "Where to write results.")


def main(argv):
    del argv
    data = mj.datasets.load_airfoil()
    print(f"airfoil: {len(data.target)} rows, k = 1..{_MAX.value}, {_FOLDS.value} folds",
          flush=True)
    sel = mj.select_num_experts(jax.random.key(0), data.features, data.target,
                                max_experts=_MAX.value, num_folds=_FOLDS.value)
    print(sel.table())
    print("M2 spectrum (standardised):", " ".join(f"{v:.3f}" for v in sel.m2_spectrum))
    os.makedirs(_OUT.value, exist_ok=True)
    with open(os.path.join(_OUT.value, "choose_k.json"), "w") as f:
        json.dump({name: (value.tolist() if hasattr(value, "tolist") else value)
                   for name, value in sel._asdict().items()}, f, indent=1)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    mj.plot.selection(sel, axes=axes)
    fig.tight_layout()
    fig.savefig(os.path.join(_OUT.value, "choose_k.png"), dpi=120)


if __name__ == "__main__":
    app.run(main)
