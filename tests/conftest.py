"""Shared fixtures: the synthetic ground truth of the core issue (d = 10, k = 3, sigma = 0.1,
orthonormal experts, gating rows of norm 2 orthogonal to the experts)."""

import os
import shutil
import tempfile

import jax
import pytest

import moejax as mj

# One persistent compilation cache for the whole run: the two test workers and the experiment
# and command-line subprocesses (which inherit the environment) compile many of the same
# programs (fit on the airfoil shape, recover on the demo's), and most of the suite's time is
# XLA compilation. The controller creates it before the workers start and removes it at the end.
_CACHE_VAR = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
    if not os.environ.get(_CACHE_VAR) and not hasattr(config, "workerinput"):
        os.environ[_CACHE_VAR] = tempfile.mkdtemp(prefix="moejax-test-xla-cache-")
        os.environ["MOEJAX_TEST_OWNS_CACHE"] = "1"
    if os.environ.get(_CACHE_VAR):
        jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_VAR])


def pytest_unconfigure(config):
    if os.environ.get("MOEJAX_TEST_OWNS_CACHE") and not hasattr(config, "workerinput"):
        shutil.rmtree(os.environ.pop(_CACHE_VAR), ignore_errors=True)

DIM, NUM_EXPERTS, NOISE_STD = 10, 3, 0.1


def truth_and_data(seed: int, n: int, nonlinearity: str = "linear"):
    """(params, x, y) for one seed; the key tree is fixed so every test sees the same data."""
    key_params, key_data = jax.random.split(jax.random.key(seed))
    params = mj.random_params(key_params, DIM, NUM_EXPERTS, noise_std=NOISE_STD)
    x, y = mj.sample(key_data, params, n, nonlinearity)
    return params, x, y


@pytest.fixture(scope="session")
def small_problem():
    return truth_and_data(0, 20_000)
