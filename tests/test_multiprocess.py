"""recover and refine across local processes on JAX's distributed runtime (CPU devices, gloo
collectives): every process holds its own rows and must get the single-process result."""

import inspect
import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import moejax as mj

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, DIM, K, REFINE_ITERS = 8000, 8, 3, 8
# refine runs plain EM for a fixed number of iterations (tol far below float32's resolution),
# so every run takes the same steps and the comparison is of sums, not of stopping decisions.
COMMON = [f"--n={N}", f"--dim={DIM}", f"--num_experts={K}", f"--num_refine_iters={REFINE_ITERS}",
          "--refine_tol=1e-30", "--noaccelerate"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path, num_processes, *flags, deadline=300, special=None):
    """Starts the processes, waits for all (killing any left at the deadline); returns
    [(returncode, stderr, result or None)] by process id. special: {process_id: extra flags}."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device each
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    procs = []
    for i in range(num_processes):
        cmd = [sys.executable, "-m", "experiments.multiprocess_recover",
               f"--coordinator=127.0.0.1:{port}", f"--num_processes={num_processes}",
               f"--process_id={i}", f"--out={tmp_path}/r{i}.json", *COMMON, *flags,
               *(special or {}).get(i, [])]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    end = time.monotonic() + deadline
    out = []
    for i, p in enumerate(procs):
        try:
            _, err = p.communicate(timeout=max(end - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"process {i} still running after {deadline} s: a hang")
        path = tmp_path / f"r{i}.json"
        out.append((p.returncode, err, json.loads(path.read_text()) if path.exists() else None))
    return out


@pytest.fixture(scope="module")
def reference():
    """The same data set and settings in this one process, without weights or padding."""
    key_p, key_x = jax.random.split(jax.random.key(0))
    truth = mj.random_params(key_p, DIM, K, noise_std=0.1)
    x, y = mj.sample(key_x, truth, N)
    params, _ = mj.recover(jax.random.key(1), x, y, num_experts=K)
    refined, _ = mj.refine(params, x, y, num_iters=REFINE_ITERS, tol=1e-30,
                           learn_noise_std=True, accelerate=False)
    return dict(recover=params, refine=refined)


def _assert_same(result, reference):
    for stage in ("recover", "refine"):
        for field in ("experts", "gating", "noise_std"):
            got = np.asarray(result[stage][field])
            want = np.asarray(getattr(reference[stage], field))
            rel = np.linalg.norm(got - want) / np.linalg.norm(want)
            assert rel < 1e-5, (stage, field, rel)


@pytest.mark.slow  # four processes, about 50 s; the dead-process test keeps the multi-process path in the default suite
def test_two_processes_with_uneven_shares_get_the_single_process_result(tmp_path, reference):
    # 1/4 and 3/4 of the rows: the smaller share is padded with weight-0 rows.
    runs = launch(tmp_path, 2, f"--shares={N // 4},{N - N // 4}", "--chunk_size=1000")
    for rc, err, result in runs:
        assert rc == 0, err[-3000:]
        _assert_same(result, reference)
    assert [r["rows"] for _, _, r in runs] == [N // 4, N - N // 4]


@pytest.mark.slow  # make test-all: four processes on two cores take about a minute
def test_four_processes_get_the_single_process_result(tmp_path, reference):
    runs = launch(tmp_path, 4)
    for rc, err, result in runs:
        assert rc == 0, err[-3000:]
        _assert_same(result, reference)


@pytest.mark.skipif(
    "heartbeat_timeout_seconds" not in inspect.signature(jax.distributed.initialize).parameters,
    reason="this jax cannot shorten the heartbeat timeout (its default is minutes)")
def test_a_dead_process_makes_the_others_fail_with_a_clear_error_not_hang(tmp_path):
    # Process 1 joins the runtime and exits. Process 0 must stop within the heartbeat timeout
    # (10 s here) plus start-up, with JAX's message naming the cause, instead of waiting forever.
    start = time.monotonic()
    runs = launch(tmp_path, 2, "--heartbeat_timeout_s=10", deadline=120,
                  special={1: ["--exit_after_init"]})
    assert runs[1][0] == 3
    rc, err, result = runs[0]
    assert rc != 0 and result is None
    assert "another task died" in err or "stopped sending heartbeats" in err, err[-3000:]
    assert time.monotonic() - start < 120
