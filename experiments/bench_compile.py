r"""What a user's first fit costs in compilation, and what the row buckets and the cache save.

    python -m experiments.bench_compile

1. The command line as a user runs it, each run a fresh process: a bare
   `python -c "import jax; jax.jit(lambda a: a + 1)(1.0)"` process first (the unit of the
   goals), then `python -m moejax fit` (k = --experts) on the airfoil table with an empty
   compilation cache, again (the cache warm), on tables of 999 and 1250 of its rows, and with
   k = --experts - 1; then the first run again with the cache off, and once more with XLA's
   default compile options instead of moejax's ($MOEJAX_COMPILER_OPTIONS=0).
2. In this process (no persistent cache), counted with `jax.monitoring` (a public listener on
   JAX's compile events): the XLA programs and compile seconds of a first `moejax.fit` on
   airfoil, of the same fit again (warm), of a second fit on 1000 rows (another row bucket),
   of a fit on 1400 rows (the first fit's bucket), of `num_experts="auto"` over k = 1..4, and of
   `recover` on n = 4999 and n = 3000.
3. The warm fit (the airfoil fit of part 2 again, the median of --warm_fits in a process,
   after one fit that compiles), in --warm_rounds fresh processes alternating moejax's
   compile options and XLA's defaults: what the options cost or save once compiled.
4. With --many > 0: that many fits of 900..1299 rows (k = 2, 50 refinement iterations) in
   this process, the programs compiled and the resident memory after each tenth.
5. With --streamed > 0: that many `recover` calls on a 20000 x 5 memmap file, each through
   new `streamed()` wrappers, the programs compiled, resident memory and threads after each
   tenth.

Writes bench_compile.json to --output_dir and prints the tables.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
import time

from absl import app, flags
import jax
import numpy as np

import moejax as mj

_EXPERTS = flags.DEFINE_integer("experts", 3, "Number of experts of the command-line fits.")
_MANY = flags.DEFINE_integer("many", 100, "Fits of 900..1299 rows in one process (0: none).")
_OUT = flags.DEFINE_string("output_dir", "experiments/results", "Where to write results.")
_TAG = flags.DEFINE_string("tag", "", "Suffix of the output file (e.g. 'before').")
_STREAMED = flags.DEFINE_integer("streamed", 50, "Streamed recover calls (0: none).")
_WARM_FITS = flags.DEFINE_integer("warm_fits", 15, "Warm fits timed in each warm process.")
_WARM_ROUNDS = flags.DEFINE_integer("warm_rounds", 3, "Processes per compile-option setting.")

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class _Compiles:
    """Counts XLA compilations and their seconds through jax.monitoring."""

    def __init__(self):
        self.count, self.seconds = 0, 0.0
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, duration, **kwargs):
        if event == _COMPILE_EVENT:
            self.count += 1
            self.seconds += duration

    def measure(self, fn):
        count, seconds, tic = self.count, self.seconds, time.perf_counter()
        jax.block_until_ready(fn())
        return dict(programs=self.count - count, compile_s=self.seconds - seconds,
                    wall_s=time.perf_counter() - tic)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _timed(args, env=None) -> float:
    tic = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return time.perf_counter() - tic


def _command_line(x, y) -> list[dict]:
    names = [f"x{i + 1}" for i in range(x.shape[1])] + ["y"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        def table(n):
            path = os.path.join(tmp, f"t{n}.csv")
            np.savetxt(path, np.c_[x[:n], y[:n]], delimiter=",", header=",".join(names),
                       comments="", fmt="%.10g")
            return path

        def cli(n, k, cache, env=None):
            return _timed([sys.executable, "-m", "moejax", "fit", f"--data={table(n)}",
                           "--target=y", f"--experts={k}", f"--out={tmp}/m.npz",
                           f"--cache_dir={cache}"], env=env)

        bare = _timed([sys.executable, "-c", "import jax; jax.jit(lambda a: a + 1)(1.0)"])
        rows.append(dict(run="bare jax process", seconds=bare))
        cache, k, n = os.path.join(tmp, "cache"), _EXPERTS.value, len(y)
        for label, rows_, k_, cache_ in [
                (f"fit k={k}, {n} rows, empty cache", n, k, cache),
                (f"fit k={k}, {n} rows, warm cache", n, k, cache),
                (f"fit k={k}, 999 rows, warm cache", 999, k, cache),
                (f"fit k={k}, 1250 rows, warm cache", 1250, k, cache),
                (f"fit k={k - 1}, {n} rows, after k={k}", n, k - 1, cache),
                (f"fit k={k}, {n} rows, no cache", n, k, "")]:
            rows.append(dict(run=label, seconds=cli(rows_, k_, cache_)))
        # XLA's default emitters instead of moejax's compiler options (compilation.py).
        rows.append(dict(run=f"fit k={k}, {n} rows, no cache, XLA's default options",
                         seconds=cli(n, k, "", dict(os.environ, MOEJAX_COMPILER_OPTIONS="0"))))
        for r in rows:
            r["ratio_to_bare"] = r["seconds"] / bare
            print(f"command line: {r['run']}: {r['seconds']:.1f} s "
                  f"({r['ratio_to_bare']:.1f}x bare jax)", flush=True)
    return rows


# A process that fits airfoil once (compiling), then times that fit --warm_fits more times.
_WARM_SCRIPT = """
import sys, time
import jax, numpy as np, moejax as mj
data = mj.datasets.load_airfoil()
x, y, key = np.asarray(data.features), np.asarray(data.target), jax.random.key(0)
mj.fit(key, x, y, num_experts=3)
times = []
for _ in range(int(sys.argv[1])):
    tic = time.perf_counter()
    jax.block_until_ready(mj.fit(key, x, y, num_experts=3).params)
    times.append(time.perf_counter() - tic)
print(np.median(times))
"""


def _warm_fits() -> list[dict]:
    """The median warm fit of each process, alternating moejax's options and XLA's."""
    rows = []
    for round_ in range(_WARM_ROUNDS.value):
        for options, env in [("moejax's", None), ("XLA's defaults", "0")]:
            out = subprocess.run(
                [sys.executable, "-c", _WARM_SCRIPT, str(_WARM_FITS.value)],
                capture_output=True, text=True, check=True,
                env=dict(os.environ, **({"MOEJAX_COMPILER_OPTIONS": env} if env else {})))
            rows.append(dict(options=options, round=round_,
                             median_s=float(out.stdout.split()[-1])))
            print(f"warm fit, {options} compile options: median {rows[-1]['median_s']:.3f} s",
                  flush=True)
    return rows


def main(argv):
    del argv
    data = mj.datasets.load_airfoil()
    x, y = np.asarray(data.features), np.asarray(data.target)
    cli_rows = _command_line(x, y)
    warm_rows = _warm_fits()

    compiles = _Compiles()
    key = jax.random.key(0)
    rng = np.random.default_rng(0)
    xr = rng.normal(size=(4999, 6))
    yr = np.tanh(xr[:, 0]) + 0.1 * rng.normal(size=4999)
    steps = [
        ("first fit, airfoil (1503 rows)", lambda: mj.fit(key, x, y, num_experts=3).params),
        ("the same fit again (warm: no compilation)",
         lambda: mj.fit(key, x, y, num_experts=3).params),
        ("second fit, 1000 rows (another bucket)",
         lambda: mj.fit(key, x[:1000], y[:1000], num_experts=3).params),
        ("fit on 1400 rows (the first fit's bucket)",
         lambda: mj.fit(key, x[:1400], y[:1400], num_experts=3).params),
        ("num_experts='auto', k = 1..4, 1503 rows",
         lambda: mj.fit(key, x, y, num_experts="auto").params),
        ("recover, n = 4999, d = 6, k = 2",
         lambda: mj.recover(key, xr, yr, num_experts=2)[0].experts),
        ("recover, n = 3000",
         lambda: mj.recover(key, xr[:3000], yr[:3000], num_experts=2)[0].experts),
    ]
    process_rows = []
    for label, fn in steps:
        process_rows.append(dict(step=label, **compiles.measure(fn)))
        r = process_rows[-1]
        print(f"in one process: {label}: {r['programs']} programs, {r['compile_s']:.1f} s "
              f"compiling, {r['wall_s']:.2f} s", flush=True)

    many_rows = []
    if _MANY.value:
        sizes = 900 + np.random.default_rng(1).permutation(400)[:_MANY.value]
        start = compiles.count
        for i, n in enumerate(sizes):
            mj.fit(jax.random.key(i), x[:n], y[:n], num_experts=2, num_refine_iters=50)
            if (i + 1) % 10 == 0:
                many_rows.append(dict(fits=i + 1, programs=compiles.count - start,
                                      rss_mb=_rss_mb()))
                print(f"{i + 1} fits of 900..1299 rows: {many_rows[-1]['programs']} programs, "
                      f"resident {many_rows[-1]['rss_mb']:.0f} MB", flush=True)

    streamed_rows = []
    if _STREAMED.value:
        xs_ = rng.normal(size=(20000, 5))
        ys_ = np.tanh(xs_[:, 0]) * xs_[:, 1] + 0.1 * rng.normal(size=20000)
        start = compiles.count
        with tempfile.TemporaryDirectory() as tmp:
            for name, a in (("x", xs_), ("y", ys_)):
                np.save(os.path.join(tmp, f"{name}.npy"), a.astype(np.float32))
            for i in range(_STREAMED.value):
                xm, ym = (mj.streamed(np.load(os.path.join(tmp, f"{name}.npy"), mmap_mode="r"))
                          for name in ("x", "y"))
                jax.block_until_ready(mj.recover(jax.random.key(i), xm, ym, num_experts=2,
                                                 chunk_size=4096)[0].experts)
                if (i + 1) % 10 == 0:
                    streamed_rows.append(dict(calls=i + 1, programs=compiles.count - start,
                                              rss_mb=_rss_mb(),
                                              threads=threading.active_count()))
                    r = streamed_rows[-1]
                    print(f"{i + 1} streamed recover calls: {r['programs']} programs, resident "
                          f"{r['rss_mb']:.0f} MB, {r['threads']} threads", flush=True)

    os.makedirs(_OUT.value, exist_ok=True)
    name = "bench_compile" + (f"_{_TAG.value}" if _TAG.value else "") + ".json"
    path = os.path.join(_OUT.value, name)
    with open(path, "w") as f:
        json.dump(dict(experts=_EXPERTS.value, jax=jax.__version__, moejax=mj.__version__,
                       device=str(jax.devices()[0].device_kind), command_line=cli_rows,
                       one_process=process_rows, warm_fits=warm_rows, many_fits=many_rows,
                       streamed=streamed_rows),
                  f, indent=1)
    print("\n| command line | seconds | x bare jax |\n|---|---|---|")
    for r in cli_rows:
        print(f"| {r['run']} | {r['seconds']:.1f} | {r['ratio_to_bare']:.1f} |")
    print("\n| in one process | programs | compiling (s) | wall (s) |\n|---|---|---|---|")
    for r in process_rows:
        print(f"| {r['step']} | {r['programs']} | {r['compile_s']:.1f} | {r['wall_s']:.2f} |")
    print("\n| warm airfoil fit (k = 3), median per process | seconds |\n|---|---|")
    for r in warm_rows:
        print(f"| {r['options']} compile options, process {r['round'] + 1} | "
              f"{r['median_s']:.3f} |")
    if many_rows:
        print("\n| fits of 900..1299 rows | programs | resident MB |\n|---|---|---|")
        for r in many_rows:
            print(f"| {r['fits']} | {r['programs']} | {r['rss_mb']:.0f} |")
    if streamed_rows:
        print("\n| streamed recover calls (new wrappers) | programs | resident MB | threads |\n"
              "|---|---|---|---|")
        for r in streamed_rows:
            print(f"| {r['calls']} | {r['programs']} | {r['rss_mb']:.0f} | {r['threads']} |")
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
