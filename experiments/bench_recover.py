r"""Benchmark of `moejax.recover` against the one-pass floor, a NumPy float64 implementation
and a full-tensor approach (tensorly's CP), with compile time, steady-state time and memory.

    python -m experiments.bench_recover                  # the default grid, writes bench_recover.json
    python -m experiments.bench_recover --grid=goal      # n = 1e6, d = 100, k = 5 only

Every configuration runs in a fresh subprocess, so its compile times are cold and its peak
memory is its own. Times are medians over --repeats runs after `block_until_ready`, compile
excluded (compile = first call minus the median). The whole recover is measured directly where
it takes under --max_direct_s, and otherwise reported as expert stage + iterations x
per-iteration cost (column "derived"). Memory: the peak resident set during the measured
calls above the resident set with the data loaded (Linux VmHWM, reset through
/proc/self/clear_refs).
"""

import json
import os
import subprocess
import sys
import time

from absl import app, flags
import numpy as np

_GRID = flags.DEFINE_string(
    "grid", "default", "'default', 'goal', or configurations 'n,d,k;n,d,k;...'.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per measurement (median).")
_CHUNK = flags.DEFINE_integer("chunk_size", 8192, "recover's chunk_size for the main rows.")
_MAX_DIRECT = flags.DEFINE_float("max_direct_s", 12.0, "Measure the whole recover directly "
                                 "when its estimate is below this (seconds).")
_NUMPY_MAX = flags.DEFINE_float("numpy_max_n", 1e5, "Run the NumPy reference when n <= this "
                                 "(and always at the goal configuration).")
_TENSORLY_MAX = flags.DEFINE_float("tensorly_max_nd3", 1e11, "Run tensorly when n d^3 <= this.")
_OUT = flags.DEFINE_string("output_dir", "experiments/results", "Where to write results.")
_CHILD = flags.DEFINE_string("child", None, "Internal: run one configuration 'n,d,k'.")
_MEMORY = flags.DEFINE_string("memory_child", None, "Internal: memory run 'n,d,k,chunk'.")

GOAL = [(1_000_000, 100, 5)]
DEFAULT = [(n, d, k) for d in (10, 100, 1000) for n in (10**4, 10**5, 10**6, 10**7)
           for k in (3, 10) if k < d and n * d <= 10**9] + GOAL
MEMORY = [(n, 100, 5, c) for n in (10**6, 10**7) for c in (0, 8192)]
NUM_EM_ITERS = 50  # recover's default


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _time(fn, repeats):
    """(median seconds, compile seconds) of fn() with block_until_ready."""
    import jax
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    return median, max(first - median, 0.0)


def _data(n, d, k):
    import jax
    import moejax as mj
    key_p, key_x = jax.random.split(jax.random.key(0))
    truth = mj.random_params(key_p, d, k, noise_std=0.1, orthogonal_gating=d > k)
    x, y = jax.jit(mj.sample, static_argnums=(2, 3))(key_x, truth, n, "linear")
    return truth, jax.block_until_ready(x), jax.block_until_ready(y)


def _converged_at(trace, tol=1e-6):
    """First iteration after which every change of the mean log-likelihood is below tol."""
    steps = np.abs(np.diff(np.asarray(trace)))
    late = np.flatnonzero(steps >= tol)
    return int(late[-1] + 2) if late.size else 1


def _tensorly_experts(x, y, k, consts):
    """Full (d, d, d) M3 from the data (in row blocks, BLAS), then tensorly's CP (parafac)."""
    import tensorly as tl
    from tensorly.decomposition import parafac
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    n, d = x.shape
    b, a1, a2, c2, c3 = (float(v) for v in consts)
    t3 = y**3 + a2 * y**2 + a1 * y
    m3 = np.zeros((d, d * d))
    for s in range(0, n, 10_000):
        xb, tb = x[s:s + 10_000], t3[s:s + 10_000]
        m3 += (tb[:, None] * xb).T @ (xb[:, :, None] * xb[:, None, :]).reshape(len(xb), d * d)
    m3 = m3.reshape(d, d, d) / n
    m = t3 @ x / n
    eye = np.eye(d)
    m3 -= (np.einsum("i,jl->ijl", m, eye) + np.einsum("j,il->ijl", m, eye)
           + np.einsum("l,ij->ijl", m, eye))
    cp = parafac(tl.tensor(m3), rank=k, init="random", random_state=0, n_iter_max=200)
    f0, f1, f2 = cp.factors
    f0, f1, f2 = (f / np.linalg.norm(f, axis=0) for f in (f0, f1, f2))
    sign = np.sign(cp.weights * c3) * np.sign(np.sum(f1 * f2, axis=0))
    return (f0 * sign).T


def child(n, d, k):
    import jax
    import moejax as mj
    from experiments import numpy_reference
    row = dict(n=n, d=d, k=k, chunk_size=_CHUNK.value)
    truth, x, y = _data(n, d, k)
    row["input_mb"] = (x.nbytes + y.nbytes) / 2**20
    base_rss = _rss_kb("VmRSS")
    can_reset = _reset_peak()

    floor_fn = jax.jit(lambda x, y: jax.numpy.sum(x * y[:, None]))
    row["floor_s"], _ = _time(lambda: floor_fn(x, y), _REPEATS.value)

    matrix_free = d >= 1000
    sub = 4 if matrix_free else None
    row["mode"] = "matrix-free" if matrix_free else "dense"
    common = dict(num_experts=k, nonlinearity="linear", noise_std=0.1)
    key = jax.random.key(1)
    row["expert_s"], row["expert_compile_s"] = _time(
        lambda: mj.recover_experts(key, x, y, chunk_size=_CHUNK.value, subspace_iters=sub,
                                   **common).experts, _REPEATS.value)
    experts = mj.recover_experts(key, x, y, chunk_size=_CHUNK.value, subspace_iters=sub,
                                 **common).experts
    row["expert_error"] = float(mj.expert_error(experts, truth.experts))

    def gating(iters):
        return lambda: mj.fit_gating(key, x, y, experts, noise_std=0.1, num_iters=iters,
                                     chunk_size=_CHUNK.value, matrix_free=matrix_free)[0]

    t1, c1 = _time(gating(1), 3)
    t6, _ = _time(gating(6), 3)
    row["em_iter_s"] = (t6 - t1) / 5  # all 4 inits, one pass over the data
    row["em_setup_s"] = t1 - row["em_iter_s"]  # C = X^T X (or its bound) and the final pass
    row["gating_compile_s"] = c1
    if n <= 10**6:
        _, info = mj.fit_gating(key, x, y, experts, noise_std=0.1, num_iters=NUM_EM_ITERS,
                                chunk_size=_CHUNK.value, matrix_free=matrix_free)
        row["em_iters_to_converge"] = _converged_at(info.trace)
    derived = row["expert_s"] + row["em_setup_s"] + NUM_EM_ITERS * row["em_iter_s"]
    row["recover_derived_s"] = derived
    if derived < _MAX_DIRECT.value:
        row["recover_s"], row["recover_compile_s"] = _time(
            lambda: mj.recover(key, x, y, chunk_size=_CHUNK.value, subspace_iters=sub,
                               **common).gating, _REPEATS.value)
        if (n, d, k) in GOAL:  # the same in one block, for comparison
            row["recover_one_block_s"], _ = _time(
                lambda: mj.recover(key, x, y, **common).gating, _REPEATS.value)
    row["peak_over_input_mb"] = ((_rss_kb("VmHWM") - base_rss) / 1024) if can_reset else None

    consts = mj.transform_constants("linear", 0.1)
    if n <= _NUMPY_MAX.value or (n, d, k) in GOAL:
        xn, yn = np.asarray(x, np.float64), np.asarray(y, np.float64)
        start = time.perf_counter()
        a_np, _ = numpy_reference.recover_numpy(xn, yn, k, consts, 0.1, lambda z: z)
        row["numpy_s"] = time.perf_counter() - start
        row["numpy_expert_error"] = float(mj.expert_error(a_np, truth.experts))
    if n * d**3 <= _TENSORLY_MAX.value and d <= 100:
        try:
            start = time.perf_counter()
            a_tl = _tensorly_experts(x, y, k, consts)
            row["tensorly_expert_s"] = time.perf_counter() - start
            row["tensorly_expert_error"] = float(mj.expert_error(a_tl, truth.experts))
        except ImportError:
            row["tensorly_expert_s"] = None
    print("RESULT " + json.dumps(row), flush=True)


def memory_child(n, d, k, chunk):
    import jax
    import moejax as mj
    _, x, y = _data(n, d, k)
    base = _rss_kb("VmRSS")
    _reset_peak()
    est = mj.recover(jax.random.key(1), x, y, num_experts=k, noise_std=0.1,
                     chunk_size=chunk or None, num_em_iters=2)
    jax.block_until_ready(est)
    print("RESULT " + json.dumps(dict(n=n, d=d, k=k, chunk_size=chunk or None,
                                      input_mb=(x.nbytes + y.nbytes) / 2**20,
                                      peak_over_input_mb=(_rss_kb("VmHWM") - base) / 1024)),
          flush=True)


def _spawn(flag, value):
    out = subprocess.run([sys.executable, "-m", "experiments.bench_recover", f"--{flag}={value}",
                          f"--repeats={_REPEATS.value}", f"--chunk_size={_CHUNK.value}",
                          f"--max_direct_s={_MAX_DIRECT.value}",
                          f"--numpy_max_n={_NUMPY_MAX.value}",
                          f"--tensorly_max_nd3={_TENSORLY_MAX.value}"],
                         capture_output=True, text=True)
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if out.returncode or not lines:
        raise RuntimeError(f"{flag}={value} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def main(argv):
    del argv
    if _CHILD.value:
        return child(*(int(float(v)) for v in _CHILD.value.split(",")))
    if _MEMORY.value:
        return memory_child(*(int(float(v)) for v in _MEMORY.value.split(",")))
    if _GRID.value == "default":
        grid, memory = DEFAULT, MEMORY
    elif _GRID.value == "goal":
        grid, memory = GOAL, [m for m in MEMORY if m[0] == 10**7]
    else:
        grid = [tuple(int(float(v)) for v in c.split(",")) for c in _GRID.value.split(";")]
        memory = []
    import jax
    rows, mem_rows, start = [], [], time.perf_counter()
    for i, (n, d, k) in enumerate(grid):
        rows.append(_spawn("child", f"{n},{d},{k}"))
        r = rows[-1]
        print(f"[{i + 1}/{len(grid)}] n={n:.0e} d={d} k={k}: floor {r['floor_s']:.4f} s, "
              f"experts {r['expert_s']:.3f} s, EM iteration {r['em_iter_s']:.4f} s "
              f"({time.perf_counter() - start:.0f} s total)", flush=True)
    for n, d, k, c in memory:
        mem_rows.append(_spawn("memory_child", f"{n},{d},{k},{c}"))
        print(f"memory n={n:.0e} chunk={c or None}: peak over input "
              f"{mem_rows[-1]['peak_over_input_mb']:.0f} MB", flush=True)

    device = f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}, {os.cpu_count()} cores"
    os.makedirs(_OUT.value, exist_ok=True)
    path = os.path.join(_OUT.value, "bench_recover.json")
    if _GRID.value != "default":
        path = os.path.join(_OUT.value, f"bench_recover_{_GRID.value if _GRID.value == 'goal' else 'custom'}.json")
    with open(path, "w") as f:
        json.dump(dict(device=device, jax=jax.__version__, repeats=_REPEATS.value,
                       num_em_iters=NUM_EM_ITERS, rows=rows, memory=mem_rows), f, indent=1)

    print(f"\n{device}, jax {jax.__version__}; float32, linear g, sigma = 0.1; chunk_size = "
          f"{_CHUNK.value}; times in seconds, x = multiple of the one-pass floor\n")
    print("| n | d | k | floor | expert stage | EM iteration, 4 inits | per init | EM iters to 1e-6 | "
          "recover | compile | NumPy f64 | NumPy / recover | tensorly expert stage | "
          "peak over input MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        direct = r.get("recover_s")
        total = direct if direct is not None else r["recover_derived_s"]
        compile_s = (r["expert_compile_s"] + r["gating_compile_s"])
        speedup = r["numpy_s"] / total if r.get("numpy_s") else None
        print(f"| {r['n']:.0e} | {r['d']} | {r['k']} | {r['floor_s']:.4f} | "
              f"{r['expert_s']:.3f} ({r['expert_s'] / r['floor_s']:.0f}x) | "
              f"{r['em_iter_s']:.4f} ({r['em_iter_s'] / r['floor_s']:.1f}x) | "
              f"{r['em_iter_s'] / 4 / r['floor_s']:.1f}x | "
              f"{r.get('em_iters_to_converge', '-')} | "
              f"{total:.2f}{'' if direct is not None else ' (derived)'} | {compile_s:.1f} | "
              f"{_fmt(r.get('numpy_s'), '.2f')} | {_fmt(speedup, '.1f')} | "
              f"{_fmt(r.get('tensorly_expert_s'), '.2f')} | "
              f"{_fmt(r.get('peak_over_input_mb'), '.0f')} |")
    if mem_rows:
        print("\n| n | d | chunk_size | input MB | recover's peak over input MB |\n|---|---|---|---|---|")
        for m in mem_rows:
            print(f"| {m['n']:.0e} | {m['d']} | {m['chunk_size'] or 'one block'} | "
                  f"{m['input_mb']:.0f} | {m['peak_over_input_mb']:.0f} |")
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
