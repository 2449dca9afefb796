r"""Benchmark of `moejax.recover` against the one-pass floor, a NumPy float64 implementation
and a full-tensor approach (tensorly's CP), with compile time, steady-state time and memory.

    python -m experiments.bench_recover                  # the default grid -> bench_recover.json
    python -m experiments.bench_recover --grid=goal      # n = 1e6, d = 100, k = 5 + memory runs
    python -m experiments.bench_recover --grid="1e7,100,3;1e6,1000,10" --chunk_size=-1 \
        --numpy=false --tag=gpu                          # e.g. on a GPU, in one block
    python -m experiments.bench_recover --show=experiments/results/bench_recover.json

Every configuration runs in a fresh subprocess, so its compile times are cold and its peak
memory is its own; results are written after each one. Times are medians over --repeats runs
after `block_until_ready`, compile excluded (compile = first call minus the median). The EM
pass is one evaluation of the gating EM's fused sums for recover's one start; the gating EM's
iterations and passes are those `fit_gating` reports for recover's own settings, and the
reference gating error is that of plain EM run to convergence (400 iterations). The whole
recover is timed directly where the estimate (expert stage + setup + passes x EM pass) is under
--max_direct_s or at the goal point, and otherwise reported as that estimate ("derived").
Memory: on the CPU, the peak resident set (Linux VmHWM, reset through /proc/self/clear_refs)
of a compiled recover above the resident set with the data loaded, after gc and malloc_trim;
on an accelerator, the device's peak bytes in use (which cannot be reset, so it includes the
data generation's own peak).
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
_CHUNK = flags.DEFINE_integer(
    "chunk_size", 0, "recover's chunk_size for the main rows: 0 picks blocks of about 1 MB "
    "(2^18 / d rows, rounded down to a power of 2: 2048 at d = 100), -1 sums in one block.")
_MEMORY_GRID = flags.DEFINE_string(
    "memory_grid", None, "Memory runs 'n,d,k,chunk;...' (chunk 0: one block); default: the grid's.")
_MAX_DIRECT = flags.DEFINE_float("max_direct_s", 12.0, "Measure the whole recover directly "
                                 "when its estimate is below this (seconds).")
_NUMPY_MAX = flags.DEFINE_float("numpy_max_n", 1e5, "Run the NumPy reference when n <= this "
                                 "(and always at the goal configuration).")
_TENSORLY_MAX = flags.DEFINE_float("tensorly_max_nd3", 1e11, "Run tensorly when n d^3 <= this.")
_NUMPY = flags.DEFINE_bool("numpy", True, "Run the NumPy reference at all.")
_TAG = flags.DEFINE_string("tag", None, "Results file name: bench_recover_<tag>.json "
                           "(default: the grid's name).")
_OUT = flags.DEFINE_string("output_dir", "experiments/results", "Where to write results.")
_SHOW = flags.DEFINE_string("show", None, "Print the tables of a results JSON and exit.")
_CHILD = flags.DEFINE_string("child", None, "Internal: run one configuration 'n,d,k'.")
_MEMORY = flags.DEFINE_string("memory_child", None, "Internal: memory run 'n,d,k,chunk'.")

GOAL = [(1_000_000, 100, 5)]
DEFAULT = [(n, d, k) for d in (10, 100, 1000) for n in (10**4, 10**5, 10**6, 10**7)
           for k in (3, 10) if k < d and n * d <= 10**9] + GOAL
MEMORY = [(n, 100, 5, c) for n in (10**6, 10**7) for c in (0, 2048)]
REF_EM_ITERS = 400  # the converged reference for the gating error


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
    """(median seconds, compile seconds, last output) of fn() with block_until_ready."""
    import jax
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    return median, max(first - median, 0.0), out


def _data(n, d, k):
    import jax
    import moejax as mj
    key_p, key_x = jax.random.split(jax.random.key(0))
    truth = mj.random_params(key_p, d, k, noise_std=0.1, orthogonal_gating=d > k)
    x, y = jax.jit(mj.sample, static_argnums=2)(key_x, truth, n)
    return truth, jax.block_until_ready(x), jax.block_until_ready(y)


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


def _chunk(d):
    """The chunk_size for dimension d from --chunk_size (None: one block)."""
    if _CHUNK.value == 0:
        return 2 ** int(np.log2(2**18 / d))
    return None if _CHUNK.value < 0 else _CHUNK.value


def _device_peak_mb():
    """Peak bytes in use on the first accelerator so far (MB), or None on CPU."""
    import jax
    stats = jax.devices()[0].memory_stats() if jax.devices()[0].platform != "cpu" else None
    return stats["peak_bytes_in_use"] / 2**20 if stats else None


def child(n, d, k):
    import jax
    import moejax as mj
    from moejax import em_steps, gating
    from moejax.sums import Layout
    from experiments import numpy_reference
    chunk = _chunk(d)
    row = dict(n=n, d=d, k=k, chunk_size=chunk)
    truth, x, y = _data(n, d, k)
    row["input_mb"] = (x.nbytes + y.nbytes) / 2**20
    row["data_peak_device_mb"] = _device_peak_mb()
    base_rss = _settle()
    can_reset = _reset_peak()

    floor_fn = jax.jit(lambda x, y: jax.numpy.sum(x * y[:, None]))
    row["floor_s"], _, _ = _time(lambda: floor_fn(x, y), _REPEATS.value)

    matrix_free = d >= 1000
    sub = 4 if matrix_free else None
    row["mode"] = "matrix-free" if matrix_free else "dense"
    common = dict(num_experts=k, nonlinearity="linear", noise_std=0.1)
    key = jax.random.key(1)
    row["expert_s"], row["expert_compile_s"], experts = _time(
        lambda: mj.recover_experts(key, x, y, chunk_size=chunk, num_subspace_iters=sub,
                                   **common)[0].experts, _REPEATS.value)
    row["expert_error"] = float(mj.expert_error(experts, truth.experts))

    # One EM pass is one evaluation of the fused sums for the one start recover runs (the
    # Bohning update after it is O(k d^2)); the setup is C = X^T X and its pseudo-inverse, or
    # the power-iteration bound in the matrix-free mode, computed once per fit. recover's
    # gating EM is replayed through the public fit_gating with recover's own key split, for
    # its iterations and passes; the reference is plain EM run to convergence (400 iterations).
    layout = Layout(chunk)
    inits = 0.1 * jax.random.normal(key, (1, k, d), x.dtype)
    sigmas = jax.numpy.full((1,), 0.1, x.dtype)
    sums = jax.jit(lambda *a: gating.em_sums(*a, "linear", layout))
    row["em_pass_s"], row["em_pass_compile_s"], _ = _time(
        lambda: sums(inits, sigmas, x, y, experts), _REPEATS.value)
    setup = jax.jit(lambda x, e: em_steps.gating_solver(x, layout, matrix_free)(e.T))
    row["em_setup_s"], _, _ = _time(lambda: setup(x, experts), min(_REPEATS.value, 3))
    _, key_gating = jax.random.split(key)
    gate_kw = dict(noise_std=0.1, chunk_size=chunk, matrix_free=matrix_free)
    w, info = mj.fit_gating(key_gating, x, y, experts, **gate_kw)
    row.update(em_iters=int(info.num_iters), em_passes=int(info.num_passes),
               em_converged=bool(info.converged),
               gating_error=float(mj.gating_error(truth._replace(experts=experts, gating=w),
                                                  truth)))
    w_ref, ref = mj.fit_gating(key_gating, x, y, experts, num_iters=REF_EM_ITERS, tol=1e-12,
                               accelerate=False, **gate_kw)
    row.update(ref_em_iters=int(ref.num_iters), ref_log_likelihood=float(ref.log_likelihood),
               log_likelihood=float(info.log_likelihood),
               ref_gating_error=float(mj.gating_error(
                   truth._replace(experts=experts, gating=w_ref), truth)))
    derived = row["expert_s"] + row["em_setup_s"] + row["em_passes"] * row["em_pass_s"]
    row["recover_derived_s"] = derived
    if derived < _MAX_DIRECT.value or (n, d, k) in GOAL:
        row["recover_s"], row["recover_compile_s"], _ = _time(
            lambda: mj.recover(key, x, y, chunk_size=chunk, num_subspace_iters=sub,
                               **common)[0].gating, _REPEATS.value)
        if (n, d, k) in GOAL:  # the same in one block, for comparison
            row["recover_one_block_s"], _, _ = _time(
                lambda: mj.recover(key, x, y, **common)[0].gating, _REPEATS.value)
    row["peak_over_input_mb"] = ((_rss_kb("VmHWM") - base_rss) / 1024) if can_reset else None
    row["peak_device_mb"] = _device_peak_mb()

    consts = mj.transform_constants("linear", 0.1)
    if _NUMPY.value and (n <= _NUMPY_MAX.value or (n, d, k) in GOAL):
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


def _settle() -> int:
    """Free what can be freed (Python garbage, malloc's cached pages); the resident set in KB."""
    import ctypes
    import gc
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return _rss_kb("VmRSS")


def memory_child(n, d, k, chunk):
    """Peak resident memory of a steady-state recover (compiled by a first call) above the
    resident set with the data loaded; on an accelerator, the device's peak bytes in use."""
    import resource
    import jax
    import moejax as mj
    _, x, y = _data(n, d, k)
    data_peak = _device_peak_mb()
    run = lambda: jax.block_until_ready(mj.recover(
        jax.random.key(1), x, y, num_experts=k, noise_std=0.1, chunk_size=chunk or None,
        num_gating_iters=1))
    run()
    base = _settle()
    _reset_peak()
    run()
    row = dict(n=n, d=d, k=k, chunk_size=chunk or None, input_mb=(x.nbytes + y.nbytes) / 2**20,
               rss_with_data_mb=base / 1024,
               peak_over_input_mb=(_rss_kb("VmHWM") - base) / 1024,
               process_peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               data_peak_device_mb=data_peak, peak_device_mb=_device_peak_mb())
    print("RESULT " + json.dumps(row), flush=True)


def _spawn(flag, value):
    out = subprocess.run([sys.executable, "-m", "experiments.bench_recover", f"--{flag}={value}",
                          f"--repeats={_REPEATS.value}", f"--chunk_size={_CHUNK.value}",
                          f"--max_direct_s={_MAX_DIRECT.value}",
                          f"--numpy_max_n={_NUMPY_MAX.value}", f"--numpy={_NUMPY.value}",
                          f"--tensorly_max_nd3={_TENSORLY_MAX.value}"],
                         capture_output=True, text=True)
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if out.returncode or not lines:
        raise RuntimeError(f"{flag}={value} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def _table(meta, rows, mem_rows):
    lines = [f"{meta['device']}, jax {meta['jax']}; float32, linear g, sigma = 0.1; chunk_size "
             f"= {meta['chunk_size']}; median of {meta['repeats']}; times in seconds, "
             "x = multiple of the one-pass floor", "",
             "| n | d | k | floor | expert stage | expert error | EM pass | EM iterations / passes "
             "| gating error (plain EM converged) | recover | compile | NumPy f64 | "
             "NumPy / recover | tensorly expert stage | peak over input MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "em_pass_s" not in r:  # written before the converging solver: expert stage only
            lines.append(f"| {r['n']:.0e} | {r['d']} | {r['k']} | {r['floor_s']:.4f} | "
                         f"{r['expert_s']:.3f} ({r['expert_s'] / r['floor_s']:.0f}x) | "
                         f"{r['expert_error']:.3f} | (v0.1 row: EM columns not comparable) |")
            continue
        direct = r.get("recover_s")
        total = direct if direct is not None else r["recover_derived_s"]
        compile_s = r["expert_compile_s"] + r["em_pass_compile_s"]
        speedup = r["numpy_s"] / total if r.get("numpy_s") else None
        peak = r.get("peak_over_input_mb")
        if r.get("peak_device_mb") is not None:
            peak = r["peak_device_mb"] - r["input_mb"]
        conv = "" if r["em_converged"] else ", not converged"
        lines.append(
            f"| {r['n']:.0e} | {r['d']} | {r['k']} | {r['floor_s']:.4f} | "
            f"{r['expert_s']:.3f} ({r['expert_s'] / r['floor_s']:.0f}x) | "
            f"{r['expert_error']:.3f} | "
            f"{r['em_pass_s']:.4f} ({r['em_pass_s'] / r['floor_s']:.1f}x) | "
            f"{r['em_iters']} / {r['em_passes']}{conv} | "
            f"{r['gating_error']:.4f} ({r['ref_gating_error']:.4f}) | "
            f"{total:.2f} ({total / r['floor_s']:.0f}x)"
            f"{'' if direct is not None else ' derived'} | "
            f"{compile_s:.1f} | "
            f"{_fmt(r.get('numpy_s'), '.2f')} | {_fmt(speedup, '.1f')} | "
            f"{_fmt(r.get('tensorly_expert_s'), '.2f')} | {_fmt(peak, '.0f')} |")
    if mem_rows:
        lines += ["", "| n | d | chunk_size | input MB | resident with data MB | recover's peak "
                  "over that MB | process peak RSS MB | device peak MB |",
                  "|---|---|---|---|---|---|---|---|"]
        for m in mem_rows:
            lines.append(f"| {m['n']:.0e} | {m['d']} | {m['chunk_size'] or 'one block'} | "
                         f"{m['input_mb']:.0f} | {m['rss_with_data_mb']:.0f} | "
                         f"{m['peak_over_input_mb']:.0f} | {m['process_peak_rss_mb']:.0f} | "
                         f"{_fmt(m.get('peak_device_mb'), '.0f')} |")
    return "\n".join(lines)


def main(argv):
    del argv
    if _SHOW.value:
        with open(_SHOW.value) as f:
            saved = json.load(f)
        return print(_table(saved, saved["rows"], saved["memory"]))
    if _CHILD.value:
        return child(*(int(float(v)) for v in _CHILD.value.split(",")))
    if _MEMORY.value:
        return memory_child(*(int(float(v)) for v in _MEMORY.value.split(",")))
    if _GRID.value == "default":
        grid, memory = DEFAULT, MEMORY
    elif _GRID.value == "goal":
        grid, memory = GOAL, MEMORY
    else:
        grid = [tuple(int(float(v)) for v in c.split(",")) for c in _GRID.value.split(";") if c]
        memory = []
    if _MEMORY_GRID.value is not None:
        memory = [tuple(int(float(v)) for v in c.split(",")) for c in _MEMORY_GRID.value.split(";")
                  if c]
    import jax
    tag = _TAG.value or ("" if _GRID.value == "default" else
                         "goal" if _GRID.value == "goal" else "custom")
    os.makedirs(_OUT.value, exist_ok=True)
    path = os.path.join(_OUT.value, f"bench_recover{'_' + tag if tag else ''}.json")
    dev = jax.devices()[0]
    meta = dict(device=f"{dev.platform}: {dev.device_kind}, {os.cpu_count()} cores",
                jax=jax.__version__, repeats=_REPEATS.value,
                chunk_size={0: "2^18 / d", -1: "one block"}.get(_CHUNK.value, _CHUNK.value),
                ref_em_iters=REF_EM_ITERS)
    rows, mem_rows, start = [], [], time.perf_counter()

    def save():  # after every configuration, so a stopped run keeps what it measured
        with open(path, "w") as f:
            json.dump(dict(meta, rows=rows, memory=mem_rows), f, indent=1)

    for i, (n, d, k) in enumerate(grid):
        try:
            rows.append(_spawn("child", f"{n},{d},{k}"))
        except RuntimeError as e:
            print(f"[{i + 1}/{len(grid)}] n={n:.0e} d={d} k={k} FAILED: {e}", flush=True)
            continue
        r = rows[-1]
        save()
        print(f"[{i + 1}/{len(grid)}] n={n:.0e} d={d} k={k}: floor {r['floor_s']:.4f} s, "
              f"experts {r['expert_s']:.3f} s, EM pass {r['em_pass_s']:.4f} s x "
              f"{r['em_passes']} passes "
              f"({time.perf_counter() - start:.0f} s total)", flush=True)
    for n, d, k, c in memory:
        try:
            mem_rows.append(_spawn("memory_child", f"{n},{d},{k},{c}"))
        except RuntimeError as e:
            print(f"memory n={n:.0e} chunk={c or None} FAILED: {e}", flush=True)
            continue
        save()
        print(f"memory n={n:.0e} chunk={c or None}: peak over input "
              f"{mem_rows[-1]['peak_over_input_mb']:.0f} MB", flush=True)
    save()
    print("\n" + _table(meta, rows, mem_rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
