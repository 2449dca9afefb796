r"""The authors' second route, gradient descent on designed losses (`moejax.recover_by_descent`,
docs/algorithm.md section 10), against the tensor method, joint EM and joint gradient descent.

    python -m experiments.designed_losses --output_dir=experiments/results
    python -m experiments.designed_losses --nonlinearity=tanh --methods=moments,descent \
        --output_dir=experiments/results/designed_losses_tanh   # part 1 only, another g

Part 1, error against n: the error table's setting (--nonlinearity, default linear; d = 10,
k = 3, sigma = 0.1, gating orthogonal to the experts), --num_seeds seeds per n, every method
on the same data (one vmapped, jitted call per method and n, run twice: the second call's
wall time is the warm time). Reports the median expert and gating errors, the slope of
log(median expert error) against log(n), passes over the data and the warm time per pass.

Part 2, the failure map's cells (`experiments.failure_map`: where random-start joint EM gets
stuck): --num_starts single-start descents per seed (`num_starts=1`, different keys). A start
**reaches the truth's basin** when each of its experts is nearest (by |cosine|) to a different
true expert, so that the nearest-neighbour assignment is a permutation; it reports that rate,
the kept (smallest-loss) start's expert error beside the tensor method's on the same data, the
fraction of starts that **collapsed** (a row's T~(b_j, b_j) <= 0, i.e. a non-positive implied
mixing weight: the sample's fourth-order table has a negative direction and the rows fell onto
it, docs/algorithm.md section 10), and the expert descent's steps and time.

Part 3, the gating: at n = 1e5, with the descent's experts fixed, its gating descent (Adam)
against the gating EM (`fit_gating`) on the same objective: final likelihoods and passes.

Writes designed_losses.{csv,json} (part 1), designed_losses_cells.{csv,json} (part 2),
designed_losses_gating.{csv,json} (part 3) and designed_losses.png.
"""

import dataclasses
import os
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
import moejax as mj

_G = flags.DEFINE_string("nonlinearity", "linear", "The experts' g in part 1 (parts 2 and 3: "
                         "linear, as the failure map).")
_NS = flags.DEFINE_list("ns", ["10000", "30000", "100000"], "Sample sizes of part 1.")
_SEEDS = flags.DEFINE_integer("num_seeds", 5, "Seeds per n (part 1) and per cell (part 2).")
_STARTS = flags.DEFINE_integer("num_starts", 8, "Single-start descents per seed in part 2.")
_CELLS = flags.DEFINE_list("cells", None, "Only these failure-map cells (default: all of the "
                           "default map's; 'none': parts 1 and 3 only).")
_METHODS = flags.DEFINE_list("methods", ["moments", "descent", "em", "gd"],
                             "Methods of part 1 (labels: experiments.common.LABELS).")
_LARGE_N = flags.DEFINE_list("large_n", [], "Part 2 also on the base cell at these n.")
_OUT = flags.DEFINE_string("output_dir", "experiments/results", "Where to write results.")

def error_against_n(setting: common.Setting) -> list[dict]:
    """Part 1: one row per (method, n, seed)."""
    rows = []
    for n in [int(float(v)) for v in _NS.value]:
        for method in _METHODS.value:
            common.run_seeds(method, setting, n, _SEEDS.value)  # compiles
            start = time.perf_counter()
            expert, gate, passes, converged = common.run_seeds(method, setting, n, _SEEDS.value)
            seconds = (time.perf_counter() - start) / _SEEDS.value
            print(f"n={n} {method}: median expert error {np.median(expert):.4f}, "
                  f"{np.median(passes):.0f} passes, {seconds:.2f} s per seed warm", flush=True)
            rows += [dict(method=method, n=n, seed=s, expert_error=float(expert[s]),
                          gating_error=float(gate[s]), passes=int(passes[s]),
                          converged=bool(converged[s]), seconds=seconds)
                     for s in range(_SEEDS.value)]
    return rows


def gating_comparison(setting: common.Setting, n: int) -> list[dict]:
    """Part 3: the gating descent against the gating EM on the same objective: for each seed,
    the descent's experts and sigma fixed, `fit_gating` (accelerated EM, the tolerance and
    cap of part 1) from its default start; one row per seed."""
    rows = []
    for seed in range(_SEEDS.value):
        key_p, key_x, key_fit = jax.random.split(jax.random.fold_in(jax.random.key(1), seed), 3)
        truth = mj.random_params(key_p, setting.dim, setting.num_experts,
                                 noise_std=setting.noise_std)
        x, y = mj.sample(key_x, truth, n)
        params, info = mj.recover_by_descent(key_fit, x, y, num_experts=setting.num_experts,
                                             noise_std=setting.noise_std, tol=setting.tol)
        _, em = mj.fit_gating(key_fit, x, y, params.experts, noise_std=setting.noise_std,
                              num_iters=setting.em_iters, tol=setting.tol)
        rows.append(dict(seed=seed, n=n, descent_log_likelihood=float(info.log_likelihood),
                         descent_passes=int(info.num_passes),
                         descent_converged=bool(info.converged),
                         em_log_likelihood=float(em.log_likelihood),
                         em_passes=int(em.num_passes), em_converged=bool(em.converged)))
        print(f"gating, seed {seed}: descent L = {rows[-1]['descent_log_likelihood']:.5f} in "
              f"{rows[-1]['descent_passes']} passes, EM L = {rows[-1]['em_log_likelihood']:.5f} "
              f"in {rows[-1]['em_passes']}", flush=True)
    return rows


def _reached(estimate: np.ndarray, truth: np.ndarray) -> bool:
    """Whether each estimated expert is nearest (|cosine|) to a different true expert."""
    cos = np.abs(estimate @ truth.T) / np.outer(np.linalg.norm(estimate, axis=1),
                                               np.linalg.norm(truth, axis=1))
    return len(set(np.argmax(cos, axis=1).tolist())) == truth.shape[0]


def _sign_free_error(estimate: np.ndarray, truth: np.ndarray) -> float:
    """`expert_error` with each estimated expert's sign set to agree with its match (the even
    loss cannot see signs; the third moment sets them)."""
    from scipy.optimize import linear_sum_assignment
    rows, cols = linear_sum_assignment(-np.abs(estimate @ truth.T))
    signs = np.sign(np.sum(estimate[rows] * truth[cols], axis=1))
    return float(np.linalg.norm(estimate[rows] * signs[:, None] - truth[cols]))


def basin_rates(cells) -> list[dict]:
    """Part 2: one row per (cell, seed)."""
    rows = []
    for cell in cells:
        def one_seed(key):
            key_truth, key_data, key_starts, key_tensor = jax.random.split(key, 4)
            truth = common.make_truth(key_truth, cell)
            x, y = mj.sample(key_data, truth, cell.n)
            sigma = mj.initial_noise_std(y, cell.nonlinearity)
            starts = jax.vmap(lambda k: mj.recover_by_descent(
                k, x, y, num_experts=cell.k, nonlinearity=cell.nonlinearity, noise_std=sigma,
                num_starts=1, num_gating_steps=1))(jax.random.split(key_starts, _STARTS.value))
            tensor, _ = mj.recover_experts(key_tensor, x, y, num_experts=cell.k,
                                           nonlinearity=cell.nonlinearity, noise_std=sigma)
            params, info = starts
            return (truth.experts, params.experts, -info.experts.log_likelihood[:, 0],
                    info.experts.num_iters[:, 0], tensor.experts,
                    jnp.min(info.mixing_weights, axis=1))

        run = jax.jit(one_seed)
        for seed in range(_SEEDS.value):
            key = jax.random.fold_in(jax.random.key(0), seed)
            start = time.perf_counter()
            truth, experts, losses, steps, tensor, smallest = jax.device_get(run(key))
            seconds = time.perf_counter() - start
            best = int(np.argmin(np.where(np.isfinite(losses), losses, np.inf)))
            rows.append(dict(
                cell=cell.name, k=cell.k, d=cell.d, c=cell.c, sigma=cell.sigma,
                orthogonal=cell.orthogonal, seed=seed,
                reached=float(np.mean([_reached(e, truth) for e in experts])),
                collapsed=float(np.mean(smallest <= 0)),
                kept_error=float(mj.expert_error(experts[best], truth)),
                kept_error_up_to_signs=_sign_free_error(experts[best], truth),
                tensor_error=float(mj.expert_error(tensor, truth)),
                median_steps=float(np.median(steps)), seconds=seconds))
            print(f"{cell.name} seed {seed}: {rows[-1]['reached']:.2f} of the starts reached "
                  f"the basin; kept error {rows[-1]['kept_error']:.3f} (tensor "
                  f"{rows[-1]['tensor_error']:.3f}); {seconds:.1f} s"
                  + (" (compiling)" if seed == 0 else ""), flush=True)
    return rows


def summary(rows: list[dict], cell_rows: list[dict], gate_rows: list[dict]) -> dict:
    """Medians per (method, n), slopes per method, and rates per cell."""
    ns = sorted({r["n"] for r in rows})
    per = {}
    for m in dict.fromkeys(r["method"] for r in rows):
        med = [float(np.median([r["expert_error"] for r in rows
                                if r["method"] == m and r["n"] == n])) for n in ns]
        per[m] = dict(
            median_expert_error=dict(zip(map(str, ns), med)),
            median_gating_error={str(n): float(np.median(
                [r["gating_error"] for r in rows if r["method"] == m and r["n"] == n]))
                for n in ns},
            slope=float(np.polyfit(np.log(ns), np.log(med), 1)[0]),
            seconds_per_pass={str(n): float(np.median(
                [r["seconds"] / r["passes"] for r in rows if r["method"] == m and r["n"] == n]))
                for n in ns},
            median_passes={str(n): float(np.median(
                [r["passes"] for r in rows if r["method"] == m and r["n"] == n])) for n in ns})
    cells = {}
    for name in dict.fromkeys(r["cell"] for r in cell_rows):
        sel = [r for r in cell_rows if r["cell"] == name]
        cells[name] = dict(reached=float(np.mean([r["reached"] for r in sel])),
                           collapsed=float(np.mean([r["collapsed"] for r in sel])),
                           median_kept_error=float(np.median([r["kept_error"] for r in sel])),
                           median_kept_error_up_to_signs=float(np.median(
                               [r["kept_error_up_to_signs"] for r in sel])),
                           median_tensor_error=float(np.median([r["tensor_error"]
                                                                for r in sel])),
                           median_steps=float(np.median([r["median_steps"] for r in sel])))
    gating = {} if not gate_rows else dict(
        median_likelihood_gap=float(np.median([r["em_log_likelihood"]
                                               - r["descent_log_likelihood"]
                                               for r in gate_rows])),
        median_descent_passes=float(np.median([r["descent_passes"] for r in gate_rows])),
        median_em_passes=float(np.median([r["em_passes"] for r in gate_rows])))
    return dict(methods=per, cells=cells, gating=gating)


def main(argv):
    del argv
    unknown = set(_METHODS.value) - set(common.METHODS)
    if unknown:
        raise app.UsageError(f"unknown methods {sorted(unknown)}; known: {common.METHODS}")
    setting = common.Setting(nonlinearity=_G.value, dim=10, num_experts=3, noise_std=0.1)
    rows = error_against_n(setting)
    named = [c for c in common.cells(False) if (_CELLS.value is None and _G.value == "linear")
             or c.name in (_CELLS.value or ())]
    cells = named + [dataclasses.replace(common.Cell(), n=int(float(n)))
                     for n in _LARGE_N.value]
    cell_rows = basin_rates(cells)
    # Parts 2 and 3 are of linear experts; with another g, part 1 alone.
    gate_rows = gating_comparison(common.Setting(), 100_000) if _G.value == "linear" else []
    out = summary(rows, cell_rows, gate_rows)
    base = os.path.join(_OUT.value, "designed_losses")
    meta = dict(setting=setting.__dict__, num_seeds=_SEEDS.value, num_starts=_STARTS.value,
                device=str(jax.devices()[0]), summary=out)
    common.write_rows(base, rows, meta)
    if cell_rows:
        common.write_rows(base + "_cells", cell_rows, meta)
    if gate_rows:
        common.write_rows(base + "_gating", gate_rows, meta)
    common.plot_error_vs_n(base + ".png", rows, "method",
                           {m: common.LABELS[m] for m in _METHODS.value},
                           "Designed losses against the tensor method, EM and GD "
                           f"({_G.value} g, d = 10, k = 3, sigma = 0.1)")
    for m, v in out["methods"].items():
        print(f"{common.LABELS[m]}: slope {v['slope']:.2f}, median errors "
              f"{v['median_expert_error']}, s per pass {v['seconds_per_pass']}")
    for name, v in out["cells"].items():
        print(f"{name}: {v['reached']:.2f} of starts reached the basin; kept error "
              f"{v['median_kept_error']:.3f} ({v['median_kept_error_up_to_signs']:.3f} up to "
              f"signs), tensor {v['median_tensor_error']:.3f}")
    print(f"wrote {base}.{{csv,json,png}}")


if __name__ == "__main__":
    app.run(main)
