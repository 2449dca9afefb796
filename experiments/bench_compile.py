r"""How much of a one-off fit is compilation, and what the row buckets and the cache save.

    python -m experiments.bench_compile

Times `python -m moejax fit` (k = --experts, defaults otherwise) as a user runs it, each a
fresh process with a fresh compilation cache directory shared by the runs: the airfoil table
(1503 rows), the same table again (the persistent cache), then tables of its first --rows_same
rows (same row bucket: no new program) and of --rows_other rows (another bucket), and the
same four with the cache off. Then, in one process, `moejax.fit` on the same tables: the
first fit compiles, the later ones reuse what their bucket compiled. Writes
bench_compile.json to --output_dir and prints a table.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags
import jax
import numpy as np

import moejax as mj

_EXPERTS = flags.DEFINE_integer("experts", 2, "Number of experts.")
_SAME = flags.DEFINE_integer("rows_same", 1400, "Rows of a table in the full table's bucket.")
_OTHER = flags.DEFINE_integer("rows_other", 1000, "Rows of a table in another bucket.")
_OUT = flags.DEFINE_string("output_dir", "experiments/results", "Where to write results.")


def _write_table(path, x, y, names):
    np.savetxt(path, np.c_[x, y], delimiter=",", header=",".join(names), comments="",
               fmt="%.10g")


def _cli_fit(table, model, cache):
    tic = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "moejax", "fit", f"--data={table}",
                          "--target=y", f"--experts={_EXPERTS.value}", f"--out={model}",
                          f"--cache_dir={cache}"], capture_output=True, text=True)
    seconds = time.perf_counter() - tic
    if out.returncode:
        raise RuntimeError(out.stderr)
    return seconds


def main(argv):
    del argv
    data = mj.datasets.load_airfoil()
    x, y = np.asarray(data.features), np.asarray(data.target)
    names = [f"x{i + 1}" for i in range(x.shape[1])] + ["y"]
    sizes = [("airfoil", len(y)), ("airfoil again", len(y)),
             (f"first {_SAME.value} rows", _SAME.value),
             (f"first {_OTHER.value} rows", _OTHER.value)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cached in (True, False):
            cache = os.path.join(tmp, "cache") if cached else ""
            for label, n in sizes:
                table = os.path.join(tmp, f"t{n}.csv")
                _write_table(table, x[:n], y[:n], names)
                seconds = _cli_fit(table, os.path.join(tmp, "m.npz"), cache)
                rows.append(dict(how="command line, cache " + ("on" if cached else "off"),
                                 table=label, n=n, bucket=mj.sums.bucket_size(n),
                                 seconds=seconds))
                print(f"{rows[-1]['how']}: {label} ({n} rows) {seconds:.1f} s", flush=True)
    for label, n in sizes:
        tic = time.perf_counter()
        jax.block_until_ready(mj.fit(jax.random.key(0), x[:n], y[:n],
                                     num_experts=_EXPERTS.value))
        rows.append(dict(how="moejax.fit in one process", table=label, n=n,
                         bucket=mj.sums.bucket_size(n), seconds=time.perf_counter() - tic))
        print(f"{rows[-1]['how']}: {label} ({n} rows) {rows[-1]['seconds']:.2f} s", flush=True)
    os.makedirs(_OUT.value, exist_ok=True)
    path = os.path.join(_OUT.value, "bench_compile.json")
    with open(path, "w") as f:
        json.dump(dict(experts=_EXPERTS.value, jax=jax.__version__,
                       device=str(jax.devices()[0].device_kind), rows=rows), f, indent=1)
    print("\n| run | table | rows (bucket) | seconds |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['how']} | {r['table']} | {r['n']} ({r['bucket']}) | {r['seconds']:.2f} |")
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
