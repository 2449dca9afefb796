r"""Sweep benchmark: S seeds of `moejax.recover` as one vmapped jit call vs a Python loop of
one jitted call per seed. Prints a table and writes bench_sweep.json to --output_dir.

    python -m experiments.bench_sweep --num_seeds=64
"""

import json
import os
import time

from absl import app, flags
import jax
import numpy as np

import moejax as mj

_SEEDS = flags.DEFINE_integer("num_seeds", 64, "Seeds in the sweep.")
_N = flags.DEFINE_integer("n", 20_000, "Samples per seed.")
_DIM = flags.DEFINE_integer("dim", 10, "Input dimension d.")
_EXPERTS = flags.DEFINE_integer("num_experts", 3, "Number of experts k.")
_NONLIN = flags.DEFINE_string("nonlinearity", "linear", "Expert non-linearity g.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats after compilation (median).")
_OUT = flags.DEFINE_string("output_dir", "experiments/results", "Where to write results.")


def _timed(fn, *args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def main(argv):
    del argv
    truth = mj.random_params(jax.random.key(0), _DIM.value, _EXPERTS.value, noise_std=0.1,
                             nonlinearity=_NONLIN.value)
    keys = jax.random.split(jax.random.key(1), _SEEDS.value)
    xs, ys = jax.vmap(lambda k: mj.sample(k, truth, _N.value))(keys)
    jax.block_until_ready((xs, ys))

    def one(key, x, y):
        return mj.recover(key, x, y, num_experts=_EXPERTS.value, nonlinearity=_NONLIN.value,
                          noise_std=0.1)

    # Fresh jit objects so that the first call of each includes its compilation.
    vmapped = jax.jit(jax.vmap(one))
    single = jax.jit(one)

    def loop(keys, xs, ys):
        return [single(k, x, y) for k, x, y in zip(keys, xs, ys)]

    first = {"vmap": _timed(vmapped, keys, xs, ys), "loop": _timed(loop, keys, xs, ys)}
    steady = {"vmap": np.median([_timed(vmapped, keys, xs, ys) for _ in range(_REPEATS.value)]),
              "loop": np.median([_timed(loop, keys, xs, ys) for _ in range(_REPEATS.value)])}
    results = {
        "config": dict(num_seeds=_SEEDS.value, n=_N.value, dim=_DIM.value,
                       num_experts=_EXPERTS.value, nonlinearity=_NONLIN.value,
                       device=str(jax.devices()[0]), repeats=_REPEATS.value),
        "compile_included_s": first,
        "compile_excluded_s": steady,
        "speedup_compile_included": first["loop"] / first["vmap"],
        "speedup_compile_excluded": steady["loop"] / steady["vmap"],
    }
    print(f"{_SEEDS.value} seeds of recover, n={_N.value}, d={_DIM.value}, k={_EXPERTS.value}, "
          f"g={_NONLIN.value}, on {jax.devices()[0].platform}")
    print("| | vmap (one call) | Python loop | speed-up |")
    print("|---|---|---|---|")
    for label, t in (("compile included", first), ("compile excluded", steady)):
        print(f"| {label} | {t['vmap']:.2f} s | {t['loop']:.2f} s | "
              f"{t['loop'] / t['vmap']:.1f}x |")
    os.makedirs(_OUT.value, exist_ok=True)
    with open(os.path.join(_OUT.value, "bench_sweep.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
