r"""`recover` and `refine` across processes on JAX's distributed runtime: each process holds
only its own rows.

One machine, two processes (CPU collectives through gloo):

    python -m experiments.multiprocess_recover --num_processes=2 --process_id=0 --out=r0.json &
    python -m experiments.multiprocess_recover --num_processes=2 --process_id=1 --out=r1.json

On a cluster, start one process per host (or per accelerator) with the same flags and its own
--process_id, --coordinator naming process 0's host (docs/scale.md shows a SLURM script).
Every process builds the same mesh over all processes' devices and wraps its rows as its
shards of one global array (`jax.make_array_from_process_local_data`); `recover` and
`refine` then run unchanged, their sums reduced across processes by `psum`. Shares may be
uneven (--shares): every process pads its rows to the largest share with weight-0 rows.

The data: a synthetic mixture drawn from --seed (every process draws the same table and keeps
its rows), or --data=path.npz with arrays x (n, d) and y (n,), of which each process reads
only its own rows (memory-mapped). Each process writes the result it got to --out (JSON).
"""

import inspect
import json
import os
import sys
import time

from absl import app, flags

_COORD = flags.DEFINE_string("coordinator", "127.0.0.1:12355", "host:port of process 0.")
_NPROC = flags.DEFINE_integer("num_processes", 1, "Number of processes.")
_PID = flags.DEFINE_integer("process_id", 0, "This process's index.")
_DATA = flags.DEFINE_string("data", "", "An .npz with x and y; empty: synthetic data.")
_N = flags.DEFINE_integer("n", 20_000, "Synthetic: rows.")
_DIM = flags.DEFINE_integer("dim", 10, "Synthetic: d.")
_K = flags.DEFINE_integer("num_experts", 3, "k.")
_SIGMA = flags.DEFINE_float("noise_std", 0.1, "Synthetic: sigma (recover learns it).")
_SEED = flags.DEFINE_integer("seed", 0, "Synthetic data's seed; the fit's key is key(1).")
_SHARES = flags.DEFINE_list("shares", [], "Rows per process (default: equal).")
_CHUNK = flags.DEFINE_integer("chunk_size", 0, "Rows per block within a process (0: one).")
_REFINE = flags.DEFINE_integer("num_refine_iters", 20, "Cap on joint-EM iterations after recover.")
_REFINE_TOL = flags.DEFINE_float("refine_tol", 1e-7, "refine's tolerance.")
_ACCELERATE = flags.DEFINE_bool("accelerate", True, "SQUAREM in refine (plain EM: false).")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout_s", 100,
                                  "Seconds without a heartbeat before a process counts as dead.")
_INIT_TIMEOUT = flags.DEFINE_integer("init_timeout_s", 300,
                                     "Seconds to wait for every process to join.")
_OUT = flags.DEFINE_string("out", "", "JSON file for this process's result.")
_EXIT_AFTER_INIT = flags.DEFINE_bool("exit_after_init", False,
                                     "Testing: join the runtime, then exit (a dead process).")


def shares(n: int, num_processes: int, given) -> list[int]:
    """Rows per process: the given shares (which must add up to n), or n split evenly."""
    if given:
        counts = [int(v) for v in given]
        if len(counts) != num_processes or sum(counts) != n or min(counts) < 1:
            raise ValueError(f"--shares must be {num_processes} positive counts adding up to "
                             f"n = {n}, got {counts}.")
        return counts
    return [n // num_processes + (i < n % num_processes) for i in range(num_processes)]


def local_rows(data: str, n: int, dim: int, k: int, sigma: float, seed: int, start: int,
               stop: int):
    """(x, y) rows [start, stop) of the data set as NumPy arrays, and the truth (or None)."""
    import jax
    import numpy as np
    import moejax as mj
    if data:
        with np.load(data, mmap_mode="r") as f:
            return np.asarray(f["x"][start:stop]), np.asarray(f["y"][start:stop]), None
    key_p, key_x = jax.random.split(jax.random.key(seed))
    truth = mj.random_params(key_p, dim, k, noise_std=sigma)
    with jax.default_device(jax.local_devices()[0]):
        x, y = mj.sample(key_x, truth, n)
    return np.asarray(x[start:stop]), np.asarray(y[start:stop]), truth


def data_size(data: str, n: int, dim: int) -> tuple[int, int]:
    import numpy as np
    if not data:
        return n, dim
    with np.load(data, mmap_mode="r") as f:
        return f["x"].shape


def main(argv):
    del argv
    import jax
    # Cross-process collectives on CPU devices (accelerators bring their own).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    start_time = time.perf_counter()
    timeouts = dict(initialization_timeout=_INIT_TIMEOUT.value)
    if "heartbeat_timeout_seconds" in inspect.signature(jax.distributed.initialize).parameters:
        timeouts["heartbeat_timeout_seconds"] = _HEARTBEAT.value  # jax >= 0.4.3x
    jax.distributed.initialize(_COORD.value, _NPROC.value, _PID.value, **timeouts)
    if _EXIT_AFTER_INIT.value:
        os._exit(3)  # no shutdown: the others must notice on their own
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    import moejax as mj

    n, dim = data_size(_DATA.value, _N.value, _DIM.value)
    counts = shares(n, jax.process_count(), _SHARES.value)
    first = sum(counts[:jax.process_index()])
    x, y, truth = local_rows(_DATA.value, n, dim, _K.value, _SIGMA.value, _SEED.value, first,
                             first + counts[jax.process_index()])
    # Equal shards per device: pad every process's rows to the largest share, weight 0.
    per_device = -(-max(counts) // jax.local_device_count())
    rows = per_device * jax.local_device_count()
    weights = np.zeros(rows, x.dtype)
    weights[:x.shape[0]] = 1.0
    x = np.concatenate([x, np.zeros((rows - x.shape[0], dim), x.dtype)])
    y = np.concatenate([y, np.zeros(rows - y.shape[0], y.dtype)])

    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows_sharding = NamedSharding(mesh, PartitionSpec("data"))
    xg, yg, wg = (jax.make_array_from_process_local_data(rows_sharding, a) for a in (x, y, weights))
    chunk = _CHUNK.value or None
    print(f"[process {jax.process_index()}/{jax.process_count()}] {counts[jax.process_index()]} "
          f"of {n} rows, global array {xg.shape} over {len(jax.devices())} devices",
          file=sys.stderr, flush=True)
    params, info = mj.recover(jax.random.key(1), xg, yg, num_experts=_K.value, chunk_size=chunk,
                              weights=wg)
    refined, rinfo = mj.refine(params, xg, yg, num_iters=_REFINE.value, tol=_REFINE_TOL.value,
                               learn_noise_std=True, accelerate=_ACCELERATE.value,
                               chunk_size=chunk, weights=wg)
    local = lambda a: np.asarray(a.addressable_data(0)).tolist()  # noqa: E731 (replicated)
    result = dict(process_id=jax.process_index(), num_processes=jax.process_count(),
                  rows=counts[jax.process_index()], n=n,
                  recover=dict(experts=local(params.experts), gating=local(params.gating),
                               noise_std=local(params.noise_std),
                               log_likelihood=local(info.log_likelihood),
                               num_iters=local(info.num_iters)),
                  refine=dict(experts=local(refined.experts), gating=local(refined.gating),
                              noise_std=local(refined.noise_std),
                              log_likelihood=local(rinfo.log_likelihood),
                              num_iters=local(rinfo.num_iters)),
                  seconds=time.perf_counter() - start_time)
    if truth is not None:
        result["expert_error"] = float(mj.expert_error(np.asarray(result["refine"]["experts"]),
                                                       truth.experts))
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(result, f)
    print(f"[process {jax.process_index()}] done in {result['seconds']:.1f} s, log-likelihood "
          f"{result['refine']['log_likelihood']:.6f}", file=sys.stderr, flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    app.run(main)
