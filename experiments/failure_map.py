r"""The gridlock, mapped: where random-start joint EM gets stuck, and whether the moment start
(the consistent method) frees it.

    python -m experiments.failure_map            # 7 cells x 10 seeds, about 27 min on 2 cores
    python -m experiments.failure_map --full     # 20 cells x 30 seeds (many hours on a CPU)

A run is **stuck** when its converged mean log-likelihood is below the oracle's, joint EM
started at the true parameters, by more than --stuck_tol per row (the table reports 1e-4,
1e-3 and 1e-2 too); the oracle's expert error is the statistical floor. Every method runs to
the same tolerance (--tol on the likelihood's rise per iteration, cap --max_iters) and learns
sigma. Methods, per seed:
  random_1 / random_5 / random_R: joint EM from 1, 5, R random starts (`joint_em`), the best
      by likelihood (the first 1 and 5 of the same R starts);
  gd_1:     joint gradient ascent (Adam, `joint_gd`) from one random start;
  moments:  the moment stage + gating EM (`recover_experts`, `fit_gating`);
  refine:   `refine` from the moment start;
  refine+4: the best of `refine` and the first 4 random starts.
Compute is counted in passes over the data (EM map or gradient evaluations, all restarts
included; the moment stage counts 2).

Cells vary one axis at a time around a base cell (experts with pairwise cosine c through a
shared direction, gating rows of norm `gating_norm`, orthogonal to the experts or not). The
run is resumable: cells already in --output_dir's failure_map.csv are skipped (--resume).
Writes failure_map.{csv,json} and failure_map.png (stuck rates per cell and method).
"""

import csv
import json
import os
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import Cell, cells, make_truth
import moejax as mj

_FULL = flags.DEFINE_bool("full", False, "The full grid and seed count (hours on a CPU).")
_SEEDS = flags.DEFINE_integer("num_seeds", None, "Seeds per cell (default 10; 30 with --full).")
_STARTS = flags.DEFINE_integer("num_starts", 20, "Random starts R per seed.")
_TOL = flags.DEFINE_float("tol", 1e-7, "Stopping tolerance of every method.")
_ITERS = flags.DEFINE_integer("max_iters", 2000, "Cap on iterations (GD: 5x as many steps).")
_STUCK = flags.DEFINE_float("stuck_tol", 1e-3, "Per-row likelihood shortfall that counts as stuck.")
_CELLS = flags.DEFINE_list("cells", None, "Only these cell names (see --helpfull output).")
_LARGE_N = flags.DEFINE_list(
    "large_n", [], "Also run the k = 12 and c = 0.8 cells (where the moment start was stuck at "
    "n = 1e4) at these n, e.g. 30000,100000.")
_BATCH_ROWS = flags.DEFINE_integer(
    "batch_rows", 0, "Run seeds together (vmapped) up to this many data rows per call; 0: one "
    "seed at a time (CPU). On a GPU, e.g. 3000000: a cell is then one or a few calls.")
_SHARD = flags.DEFINE_string(
    "shard", None, "'i/N': run only every N-th cell from the i-th (0-based), for N parallel "
    "workers, each with its own --output_dir.")
_RESUME = flags.DEFINE_bool("resume", True, "Skip cells already in the CSV.")
_OUT = flags.DEFINE_string("output_dir", "experiments/results", "Where to write results.")

METHODS = ("oracle", "random_1", "random_5", "random_R", "gd_1", "moments", "refine",
           "refine+4")
TOLS = (1e-4, 1e-3, 1e-2)


def run_cell(cell: Cell, num_seeds: int, num_starts: int, tol: float, max_iters: int,
             batch_rows: int = 0):
    """Per seed and method: (log-likelihood, expert error, passes, converged), as arrays of
    shape (num_seeds,) (random starts: (num_seeds, num_starts)). Seed s uses
    fold_in(key(0), s); with batch_rows > 0, up to batch_rows // n seeds run as one vmapped
    call (the same computation per seed, batched: equal up to rounding)."""
    g = cell.nonlinearity

    def one_seed(key):
        key_truth, key_data, key_starts, key_gd, key_m1, key_m2 = jax.random.split(key, 6)
        truth = make_truth(key_truth, cell)
        x, y = mj.sample(key_data, truth, cell.n)
        ll = lambda p: mj.log_likelihood(p, x, y)
        err = lambda p: p.experts  # the error needs a matching on the host (below)
        out = {"truth": (truth.experts,)}
        oracle, info = mj.refine(truth, x, y, num_iters=max_iters, tol=tol,
                                 learn_noise_std=True)
        out["oracle"] = (ll(oracle), err(oracle), info.num_passes, info.converged)
        fits, infos = jax.vmap(lambda k: mj.joint_em(k, x, y, num_experts=cell.k,
                                                     nonlinearity=g, num_iters=max_iters,
                                                     tol=tol))(
            jax.random.split(key_starts, num_starts))
        out["starts"] = (jax.vmap(ll)(fits), jax.vmap(err)(fits), infos.num_passes,
                         infos.converged)
        gd, info = mj.joint_gd(key_gd, x, y, num_experts=cell.k, nonlinearity=g,
                               num_iters=5 * max_iters, tol=tol, learning_rate=0.01)
        out["gd_1"] = (ll(gd), err(gd), info.num_passes, info.converged)
        sigma0 = mj.initial_noise_std(y, g)
        est, _ = mj.recover_experts(key_m1, x, y, num_experts=cell.k, nonlinearity=g,
                                 noise_std=sigma0)
        w, ginfo = mj.fit_gating(key_m2, x, y, est.experts, noise_std=sigma0, nonlinearity=g,
                                 num_iters=max_iters, tol=tol, learn_noise_std=True)
        moments = mj.MoEParams(est.experts, w, ginfo.noise_std, g)
        out["moments"] = (ll(moments), err(moments), 2 + ginfo.num_passes, ginfo.converged)
        refined, info = mj.refine(moments, x, y, num_iters=max_iters, tol=tol,
                                  learn_noise_std=True)
        out["refine"] = (ll(refined), err(refined), 2 + ginfo.num_passes + info.num_passes,
                         info.converged)
        return out

    per_call = max(1, min(num_seeds, batch_rows // cell.n)) if batch_rows else 1
    # One seed at a time stays unbatched, so CPU runs reproduce the committed tables.
    run = jax.jit(jax.vmap(one_seed) if per_call > 1 else lambda keys: jax.tree.map(
        lambda v: v[None], one_seed(keys[0])))
    results, start = [], time.perf_counter()
    for s0 in range(0, num_seeds, per_call):
        seeds = jnp.arange(s0, min(s0 + per_call, num_seeds))
        keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(0), s))(seeds)
        batch = jax.device_get(run(keys))
        print(f"  {cell.name}: seeds {s0 + 1}-{s0 + len(seeds)} of {num_seeds} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
        for b in range(len(seeds)):
            r = jax.tree.map(lambda v: v[b], batch)
            truth = r.pop("truth")[0]
            for m, (ll, experts, passes, conv) in r.items():
                error = (np.array([float(mj.expert_error(e, truth)) for e in experts])
                         if m == "starts" else float(mj.expert_error(experts, truth)))
                r[m] = (ll, error, passes, conv)
            results.append(r)
    return {m: tuple(np.stack([r[m][i] for r in results]) for i in range(4))
            for m in results[0]}


def summarise(cell: Cell, res: dict, num_starts: int) -> list[dict]:
    """One row per seed and method: likelihood shortfall to the oracle, error, passes."""
    rows = []
    oracle_ll, oracle_err = res["oracle"][0], res["oracle"][1]
    s_ll, s_err, s_passes, s_conv = res["starts"]
    for seed in range(len(oracle_ll)):
        def best_of(r):
            i = int(np.argmax(np.where(np.isfinite(s_ll[seed, :r]), s_ll[seed, :r], -np.inf)))
            return (s_ll[seed, i], s_err[seed, i], int(np.sum(s_passes[seed, :r])),
                    bool(np.all(s_conv[seed, :r])))

        per = {"oracle": tuple(v[seed] for v in res["oracle"]),
               "random_1": best_of(1), "random_5": best_of(min(5, num_starts)),
               "random_R": best_of(num_starts),
               "gd_1": tuple(v[seed] for v in res["gd_1"]),
               "moments": tuple(v[seed] for v in res["moments"]),
               "refine": tuple(v[seed] for v in res["refine"])}
        ref, rand4 = per["refine"], best_of(min(4, num_starts))
        better = rand4 if rand4[0] > ref[0] else ref
        per["refine+4"] = (better[0], better[1], int(ref[2]) + rand4[2], bool(ref[3] and rand4[3]))
        for method in METHODS:
            ll, err, passes, conv = per[method]
            rows.append(dict(cell=cell.name, k=cell.k, d=cell.d, c=cell.c, sigma=cell.sigma,
                             gating_norm=cell.gating_norm, nonlinearity=cell.nonlinearity,
                             n=cell.n, orthogonal=cell.orthogonal, seed=seed, method=method,
                             shortfall=float(oracle_ll[seed] - ll), expert_error=float(err),
                             oracle_error=float(oracle_err[seed]), passes=int(passes),
                             converged=bool(conv)))
    return rows


def table(rows: list[dict], stuck_tol: float) -> tuple[str, list[dict]]:
    """Per cell and method: stuck rate at stuck_tol (and at TOLS), median error, passes."""
    summary, lines = [], []
    header = ("| cell | method | stuck (" + ", ".join(f"{t:g}" for t in TOLS)
              + ") | median error (oracle) | median passes | converged |")
    lines += [header, "|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["cell"] for r in rows):
        for method in METHODS[1:]:
            mine = [r for r in rows if r["cell"] == name and r["method"] == method]
            short = np.array([r["shortfall"] for r in mine])
            rates = {t: float(np.mean(short > t)) for t in TOLS + (stuck_tol,)}
            cell = dict(cell=name, method=method, seeds=len(mine),
                        stuck=rates[stuck_tol], stuck_by_tol={str(t): rates[t] for t in TOLS},
                        median_error=float(np.median([r["expert_error"] for r in mine])),
                        oracle_error=float(np.median([r["oracle_error"] for r in mine])),
                        median_passes=float(np.median([r["passes"] for r in mine])),
                        converged=float(np.mean([r["converged"] for r in mine])))
            summary.append(cell)
            lines.append(f"| {name} | {method} | " + " / ".join(f"{rates[t]:.2f}" for t in TOLS)
                         + f" | {cell['median_error']:.3f} ({cell['oracle_error']:.3f}) | "
                         f"{cell['median_passes']:.0f} | {cell['converged']:.2f} |")
    return "\n".join(lines), summary


def plot(path: str, summary: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(dict.fromkeys(s["cell"] for s in summary))
    methods = list(METHODS[1:])
    grid = np.array([[next(s["stuck"] for s in summary if s["cell"] == n and s["method"] == m)
                      for m in methods] for n in names])
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.5))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="Reds", aspect="auto")
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    for i in range(len(names)):
        for j in range(len(methods)):
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, label="fraction of seeds stuck")
    ax.set_title("stuck: converged log-likelihood below the oracle's by more than the tolerance",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    del argv
    num_seeds = _SEEDS.value or (30 if _FULL.value else 10)
    todo = cells(_FULL.value, _LARGE_N.value)
    if _CELLS.value:
        known = {c.name: c for c in todo}
        unknown = set(_CELLS.value) - set(known)
        if unknown:
            raise app.UsageError(f"unknown cells {sorted(unknown)}; known: {sorted(known)}")
        todo = [known[n] for n in _CELLS.value]
    if _SHARD.value:
        i, num = map(int, _SHARD.value.split("/"))
        todo = todo[i::num]
    os.makedirs(_OUT.value, exist_ok=True)
    base = os.path.join(_OUT.value, "failure_map")
    rows = []
    if _RESUME.value and os.path.exists(base + ".csv"):
        with open(base + ".csv") as f:
            rows = [dict(r, **{key: type_(r[key]) for key, type_ in _TYPES.items()})
                    for r in csv.DictReader(f)]
    done = {r["cell"] for r in rows}
    start = time.perf_counter()
    for i, cell in enumerate(todo):
        if cell.name in done:
            print(f"[{i + 1}/{len(todo)}] {cell.name}: done before, skipped", flush=True)
            continue
        tic = time.perf_counter()
        res = run_cell(cell, num_seeds, _STARTS.value, _TOL.value, _ITERS.value,
                       _BATCH_ROWS.value)
        device = jax.devices()[0].device_kind
        rows += [dict(r, device=device) for r in summarise(cell, res, _STARTS.value)]
        _write_csv(base + ".csv", rows)  # after every cell: a killed run resumes here
        stuck = {m: np.mean([r["shortfall"] > _STUCK.value for r in rows
                             if r["cell"] == cell.name and r["method"] == m])
                 for m in ("random_1", "random_5", "refine")}
        print(f"[{i + 1}/{len(todo)}] {cell.name}: stuck " + ", ".join(
            f"{m} {v:.2f}" for m, v in stuck.items())
            + f" ({time.perf_counter() - tic:.0f} s, {time.perf_counter() - start:.0f} s in all)",
            flush=True)
    if not rows:  # e.g. a shard with no cells of its own
        print("no cells to run and none in the CSV: nothing written")
        return
    text, summary = table(rows, _STUCK.value)
    with open(base + ".json", "w") as f:
        json.dump(dict(num_seeds=num_seeds, num_starts=_STARTS.value, tol=_TOL.value,
                       max_iters=_ITERS.value, stuck_tol=_STUCK.value, full=_FULL.value,
                       devices=sorted({r.get("device") or "unrecorded" for r in rows}),
                       summary=summary), f, indent=1)
    plot(base + ".png", summary)
    print(text)
    print(f"wrote {base}.csv, .json, .png")


_TYPES = dict(k=int, d=int, c=float, sigma=float, gating_norm=float, n=int,
              orthogonal=lambda v: v == "True", seed=int, shortfall=float, expert_error=float,
              oracle_error=float, passes=int, converged=lambda v: v == "True")


def _write_csv(path, rows):
    with open(path + ".tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    app.run(main)
