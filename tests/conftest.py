"""Shared fixtures: the synthetic ground truth of the core issue (d = 10, k = 3, sigma = 0.1,
orthonormal experts, gating rows of norm 2 orthogonal to the experts)."""

import jax
import pytest

import moejax as mj

DIM, NUM_EXPERTS, NOISE_STD = 10, 3, 0.1


def truth_and_data(seed: int, n: int, nonlinearity: str = "linear"):
    """(params, x, y) for one seed; the key tree is fixed so every test sees the same data."""
    key_params, key_data = jax.random.split(jax.random.key(seed))
    params = mj.random_params(key_params, DIM, NUM_EXPERTS, noise_std=NOISE_STD,
                              nonlinearity=nonlinearity)
    x, y = mj.sample(key_data, params, n)
    return params, x, y


@pytest.fixture(scope="session")
def small_problem():
    return truth_and_data(0, 20_000)


def enable_x64(on: bool = True):
    """float64 inside a `with` block: `jax.enable_x64` (newer jax) or its older home in
    jax.experimental (the oldest jax setup.cfg admits)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(on)
    from jax.experimental import enable_x64 as old
    return old(on)
