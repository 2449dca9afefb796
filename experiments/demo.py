r"""End-to-end demo: draw a synthetic MoE, recover it with `moejax.recover`, report the errors.

    python -m experiments.demo --nonlinearity=tanh --n=1000000

Exits with status 1 if the expert or gating error is above its --max_* flag.
"""

import functools
import json
import logging
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

import moejax as mj

_DIM = flags.DEFINE_integer("dim", 10, "Input dimension d.")
_EXPERTS = flags.DEFINE_integer("num_experts", 3, "Number of experts k.")
_NONLIN = flags.DEFINE_string("nonlinearity", "linear", f"One of {mj.NONLINEARITIES}.")
_N = flags.DEFINE_integer("n", 100_000, "Training samples.")
_N_TEST = flags.DEFINE_integer("n_test", 100_000, "Held-out samples for MSE and NLL.")
_SIGMA = flags.DEFINE_float("noise_std", 0.1, "Noise standard deviation sigma.")
_GATE_NORM = flags.DEFINE_float("gating_norm", 2.0, "Norm of each true gating row.")
_ORTHOGONAL = flags.DEFINE_bool("orthogonal_gating", True,
                                "Draw gating rows orthogonal to the experts (the theory's case).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")
_RESTARTS = flags.DEFINE_integer("num_power_inits", 10, "Tensor power method restarts.")
_POWER_ITERS = flags.DEFINE_integer("num_power_iters", 100, "Power steps per restart.")
_INITS = flags.DEFINE_integer("num_gating_inits", 4, "Random starts of the gating EM.")
_EM_ITERS = flags.DEFINE_integer("num_gating_iters", 50, "Gating EM iterations.")
_MAX_EXPERT = flags.DEFINE_float("max_expert_error", 0.2, "Fail above this expert error.")
_MAX_GATING = flags.DEFINE_float("max_gating_error", 0.3, "Fail above this gating error.")
_OUT = flags.DEFINE_string("output_json", None, "Optional path for the results as JSON.")

def main(argv):
    del argv
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU found" noise
    g = _NONLIN.value
    key_truth, key_train, key_test, key_fit = jax.random.split(jax.random.key(_SEED.value), 4)
    truth = mj.random_params(key_truth, _DIM.value, _EXPERTS.value, noise_std=_SIGMA.value,
                             gating_norm=_GATE_NORM.value,
                             orthogonal_gating=_ORTHOGONAL.value, nonlinearity=g)
    x, y = mj.sample(key_train, truth, _N.value)
    x_test, y_test = mj.sample(key_test, truth, _N_TEST.value)
    config = dict(num_experts=_EXPERTS.value, nonlinearity=g, num_power_inits=_RESTARTS.value,
                  num_power_iters=_POWER_ITERS.value, num_gating_inits=_INITS.value,
                  num_gating_iters=_EM_ITERS.value)
    print(f"moejax demo: d={_DIM.value} k={_EXPERTS.value} g={g} n={_N.value} "
          f"sigma={_SIGMA.value} on {jax.devices()[0].platform}", flush=True)

    # Compilation and the compiled run, timed separately. The configuration is bound with
    # functools.partial, so it is static; noise_std stays an argument (it may be traced).
    start = time.perf_counter()
    compiled = jax.jit(functools.partial(mj.recover, **config)).lower(
        key_fit, x, y, noise_std=_SIGMA.value).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    est, info = jax.block_until_ready(compiled(key_fit, x, y, noise_std=_SIGMA.value))
    run_s = time.perf_counter() - start

    perm = mj.match_experts(est.experts, truth.experts)
    true_pi = np.asarray(jnp.mean(jax.nn.softmax(x @ truth.gating.T, axis=-1), axis=0))
    moment_pi = np.asarray(info.mixing_weights)[perm]
    gate_pi = np.asarray(jnp.mean(jax.nn.softmax(x @ est.gating.T, axis=-1), axis=0))[perm]
    results = {
        "expert_error": float(mj.expert_error(est.experts, truth.experts)),
        "gating_error": float(mj.gating_error(est, truth)),
        "test_mse_recovered": float(jnp.mean((mj.predict(est, x_test) - y_test) ** 2)),
        "test_mse_truth": float(jnp.mean((mj.predict(truth, x_test) - y_test) ** 2)),
        "test_nll_recovered": -float(mj.log_likelihood(est, x_test, y_test)),
        "test_nll_truth": -float(mj.log_likelihood(truth, x_test, y_test)),
        "gating_em_iters": int(info.num_iters),
        "gating_em_converged": bool(info.converged),
        "mixing_true": true_pi.tolist(),
        "mixing_moments": moment_pi.tolist(),
        "mixing_gating": gate_pi.tolist(),
        "compile_s": compile_s,
        "run_s": run_s,
    }

    fmt = lambda v: " ".join(f"{p:.3f}" for p in v)  # noqa: E731
    rows = [
        ("expert error  ||P A_hat - A||_F", f"{results['expert_error']:.4f}"),
        ("gating error  (rows rel. to last)", f"{results['gating_error']:.4f}"),
        ("test MSE      recovered | truth",
         f"{results['test_mse_recovered']:.4f} | {results['test_mse_truth']:.4f}"),
        ("test NLL      recovered | truth",
         f"{results['test_nll_recovered']:.4f} | {results['test_nll_truth']:.4f}"),
        ("mixing weights  true", fmt(true_pi)),
        ("                moments", fmt(moment_pi)),
        ("                gating EM", fmt(gate_pi)),
        ("gating EM       iterations | converged",
         f"{results['gating_em_iters']} | {results['gating_em_converged']}"),
        ("wall time       compile | run", f"{compile_s:.2f} s | {run_s:.2f} s"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump({"flags": {**config, "dim": _DIM.value, "n": _N.value,
                                 "noise_std": _SIGMA.value, "seed": _SEED.value}, **results},
                      f, indent=2)
    ok = (results["expert_error"] <= _MAX_EXPERT.value
          and results["gating_error"] <= _MAX_GATING.value)
    print("recovery OK" if ok else
          f"recovery FAILED (limits: expert {_MAX_EXPERT.value}, gating {_MAX_GATING.value})")
    return 0 if ok else 1


if __name__ == "__main__":
    app.run(main)
