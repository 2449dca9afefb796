r"""Check that `recover` gives the same answer on the default accelerator as on the CPU.

    python -m experiments.device_check          # prints one line per configuration

Runs the same data and key through `recover` committed to `jax.devices()[0]` and to
`jax.devices("cpu")[0]`, in one block and in chunks, and prints the relative differences of the
experts and the gating (float32 on both; different summation orders, so about 1e-6 is expected,
and a difference in which gating init wins would show as ~1e-2). Exits 1 above --tolerance.
On a CPU-only machine both sides are the CPU and the check is trivial.
"""

import sys

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

import moejax as mj

_TOL = flags.DEFINE_float("tolerance", 1e-4, "Largest relative difference accepted.")


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main(argv):
    del argv
    accel, cpu = jax.devices()[0], jax.devices("cpu")[0]
    print(f"accelerator: {accel.platform} {accel.device_kind}; jax {jax.__version__}")
    worst = 0.0
    for n, d, k, chunk in [(100_000, 10, 3, None), (100_000, 10, 3, 4096), (200_000, 50, 5, None)]:
        key_p, key_x, key_r = jax.random.split(jax.random.key(n + d + k), 3)
        truth = mj.random_params(key_p, d, k, noise_std=0.1, orthogonal_gating=True)
        x, y = mj.sample(key_x, truth, n)
        x, y = np.asarray(x), np.asarray(y)
        out = {}
        for dev in (accel, cpu):
            with jax.default_device(dev):
                xd, yd = jax.device_put(jnp.asarray(x), dev), jax.device_put(jnp.asarray(y), dev)
                out[dev.platform] = jax.device_get(
                    mj.recover(key_r, xd, yd, num_experts=k, noise_std=0.1, chunk_size=chunk)[0])
        a, c = out[accel.platform], out["cpu"]
        diffs = (_rel(a.experts, c.experts), _rel(a.gating, c.gating))
        worst = max(worst, *diffs)
        print(f"n={n} d={d} k={k} chunk={chunk}: experts {diffs[0]:.1e}, gating {diffs[1]:.1e}, "
              f"expert error {float(mj.expert_error(a.experts, truth.experts)):.3f}", flush=True)
    print(f"worst relative difference {worst:.1e} (tolerance {_TOL.value:.0e})")
    sys.exit(0 if worst <= _TOL.value else 1)


if __name__ == "__main__":
    app.run(main)
