r"""Benchmark of `recover` on data larger than it should hold: an np.memmap streamed from disk.

    python -m experiments.bench_stream                     # n = 2.5e7, d = 100: a 10 GB file
    python -m experiments.bench_stream --n=200000 --data_dir=/tmp/s --output_dir=/tmp/o  # small

Writes x.npy (n, d) and y.npy (n,), float32, under --data_dir (kept, and reused when present,
unless --keep_data=false), from a fresh process so that this one's peak memory is its own.
Then, on the files:

- the disk's own read speed: `dd` of x.npy with O_DIRECT (the device), and buffered from a
  cold page cache (what a program reading the file gets);
- one streamed pass (`sums.row_sum` of a trivial sum over `streamed(x)`, `streamed(y)`), from a
  cold cache with and without read-ahead, and from a warm cache;
each --repeats times, interleaved (the speed of a virtual disk drifts), all runs reported;
- `recover` on the streamed files from a cold cache (compilation included): its time, the
  passes its sums made over x (counted from the rows delivered; the input checks make one
  more), its error against the truth, and the process's peak resident memory (ru_maxrss),
  which must stay far below the file's size.

The page cache is emptied with posix_fadvise(DONTNEED) after an fsync, so no root is needed.
When the machine's memory can hold the file, `recover`'s later passes are served by the cache;
`passes x cold pass` is then what it would take on data larger than memory.
Results: <output_dir>/bench_stream.json and bench_stream.png.
"""

import json
import os
import re
import resource
import subprocess
import time

from absl import app, flags, logging
import numpy as np

_N = flags.DEFINE_integer("n", 25_000_000, "Rows.")
_D = flags.DEFINE_integer("d", 100, "Columns of x.")
_K = flags.DEFINE_integer("k", 5, "Experts.")
_CHUNK = flags.DEFINE_integer("chunk_size", 65536, "Rows per block read from disk.")
_NOISE = flags.DEFINE_float("noise_std", 0.1, "The truth's sigma (recover learns it).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of the truth and the data.")
_DATA = flags.DEFINE_string("data_dir", "/tmp/moejax_stream", "Where the .npy files live.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Runs of each read measurement.")
_KEEP = flags.DEFINE_bool("keep_data", True, "Keep the .npy files for the next run.")
_OUT = flags.DEFINE_string("output_dir", "experiments/results", "Where to write results.")
_GEN_BLOCK = 1 << 18  # rows sampled per block when writing the files


def _truth(d, k, noise, seed):
    import jax
    import moejax as mj
    return mj.random_params(jax.random.key(seed), d, k, noise_std=noise)


def _generate(paths, n, d, k, noise, seed):
    """Writes x.npy, y.npy block by block (a child process: its memory is not ours)."""
    import jax
    import moejax as mj
    truth = _truth(d, k, noise, seed)
    x = np.lib.format.open_memmap(paths[0] + ".part", "w+", np.float32, (n, d))
    y = np.lib.format.open_memmap(paths[1] + ".part", "w+", np.float32, (n,))
    key = jax.random.key(seed + 1)
    for i, start in enumerate(range(0, n, _GEN_BLOCK)):
        rows = min(_GEN_BLOCK, n - start)
        xb, yb = mj.sample(jax.random.fold_in(key, i), truth, rows)
        x[start:start + rows], y[start:start + rows] = np.asarray(xb), np.asarray(yb)
        if i % 20 == 0:
            print(f"  wrote {start + rows:,} / {n:,} rows", flush=True)
    x.flush(), y.flush()
    del x, y
    for p in paths:
        os.replace(p + ".part", p)


def _evict(path):
    """Drops the file's pages from the page cache (clean pages only, hence the fsync)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _dd(path, direct):
    """GB/s of dd reading the file (cold cache), or None without dd / O_DIRECT."""
    _evict(path)
    cmd = ["dd", f"if={path}", "of=/dev/null", "bs=16M"] + (["iflag=direct"] if direct else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    except (OSError, subprocess.CalledProcessError) as e:
        logging.warning("dd failed (%s); skipped", e)
        return None
    match = re.search(r"(\d+) bytes .* copied, ([\d.]+) s", out)
    return int(match.group(1)) / float(match.group(2)) / 1e9 if match else None


def main(argv):
    del argv
    n, d, k = _N.value, _D.value, _K.value
    os.makedirs(_DATA.value, exist_ok=True)
    paths = [os.path.join(_DATA.value, f"{name}_{n}_{d}_{k}_{_SEED.value}.npy")
             for name in ("x", "y")]
    if not all(os.path.exists(p) for p in paths):
        print(f"writing {n:,} x {d} float32 rows ({4 * n * d / 1e9:.1f} GB) to {_DATA.value}",
              flush=True)
        start = time.perf_counter()
        import multiprocessing
        child = multiprocessing.get_context("spawn").Process(
            target=_generate, args=(paths, n, d, k, _NOISE.value, _SEED.value))
        child.start()
        child.join()
        if child.exitcode:
            raise SystemExit(f"writing the data failed (exit code {child.exitcode})")
        print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)

    import jax
    import jax.numpy as jnp
    import moejax as mj

    result = dict(n=n, d=d, k=k, chunk_size=_CHUNK.value, noise_std=_NOISE.value,
                  file_gb=os.path.getsize(paths[0]) / 1e9, device=str(jax.devices()[0]),
                  cpu_count=os.cpu_count())
    def open_data(read_ahead=True):
        return [mj.streamed(np.load(p, mmap_mode="r"), read_ahead=read_ahead) for p in paths]

    def one_pass(xs, ys):
        return mj.sums.row_sum(lambda xb, yb, w: jnp.sum(w * yb * jnp.sum(xb, axis=1)),
                               (xs, ys), mj.sums.Layout(_CHUNK.value))

    # The virtual disk here varies from run to run: every cold measurement is repeated,
    # interleaved, and reported in full.
    runs = {name: [] for name in ("dd, O_DIRECT", "dd, buffered", "pass, cold, read-ahead",
                                  "pass, cold, no read-ahead", "pass, warm, read-ahead")}
    streams = {read_ahead: open_data(read_ahead) for read_ahead in (True, False)}
    jitted = {r: jax.jit(lambda xs=xs, ys=ys: one_pass(xs, ys))  # compiled per array
              for r, (xs, ys) in streams.items()}
    for r in jitted:
        jax.block_until_ready(jitted[r]())
    gb = result["file_gb"]
    for _ in range(_REPEATS.value):
        for name in runs:
            if name.startswith("dd"):
                speed = _dd(paths[0], direct="DIRECT" in name)
                if speed is not None:
                    runs[name].append(speed)
                continue
            if "cold" in name:
                _evict(paths[0]), _evict(paths[1])
            start = time.perf_counter()
            jax.block_until_ready(jitted["no read-ahead" not in name]())
            runs[name].append(gb / (time.perf_counter() - start))
            print(f"{name}: {runs[name][-1]:.2f} GB/s", flush=True)
    result["read_gbps"] = runs
    xs, ys = open_data()
    _evict(paths[0]), _evict(paths[1])
    print("recover ...", flush=True)
    start = time.perf_counter()
    params, info = mj.recover(jax.random.key(_SEED.value + 2), xs, ys, num_experts=k,
                              chunk_size=_CHUNK.value)
    jax.block_until_ready(params)
    seconds = time.perf_counter() - start
    truth = _truth(d, k, _NOISE.value, _SEED.value)
    result["recover"] = dict(
        # passes of the sums (rows delivered / n), and the one pass of the input checks
        seconds=seconds, passes_over_x=xs.rows_read / n, check_passes=1,
        gating_em_passes=int(info.num_passes),
        converged=bool(info.converged),
        expert_error=float(mj.expert_error(params.experts, truth.experts)),
        noise_std=float(params.noise_std))
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    cold = gb / float(np.median(runs["pass, cold, read-ahead"]))
    result["recover"]["predicted_s_if_every_pass_cold"] = (
        result["recover"]["passes_over_x"] + 1) * cold
    print(json.dumps(result, indent=1), flush=True)

    os.makedirs(_OUT.value, exist_ok=True)
    with open(os.path.join(_OUT.value, "bench_stream.json"), "w") as f:
        json.dump(result, f, indent=1)
    _figure(result, os.path.join(_OUT.value, "bench_stream.png"))
    if not _KEEP.value:
        for p in paths:
            os.remove(p)


def _figure(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    bars = {name: float(np.median(v)) for name, v in result["read_gbps"].items() if v}
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.barh(list(bars), list(bars.values()), color="tab:blue")
    for i, name in enumerate(bars):
        ax.plot(result["read_gbps"][name], [i] * len(result["read_gbps"][name]), "k.")
    ax.set_xlabel("GB/s reading x (bar: median; dots: runs)")
    ax.set_title(f"streamed from disk: n = {result['n']:.3g}, d = {result['d']} "
                 f"({result['file_gb']:.1f} GB); recover {result['recover']['seconds']:.0f} s, "
                 f"{result['recover']['passes_over_x']:.0f} passes", fontsize=9)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    app.run(main)
