"""The designed-loss route (moejax.landscape, docs/algorithm.md section 10): the fourth-order
transform's constants against closed forms and Monte Carlo, the pair table against its
per-row definition and its population value, the loss's gradient against finite differences
in float64, recovery, and jit/vmap/chunk invariance."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import moejax as mj
from moejax import landscape, moments
from conftest import DIM, NOISE_STD, NUM_EXPERTS, enable_x64, truth_and_data


@pytest.mark.parametrize("sigma", [0.1, 0.5])
def test_quartic_constants_of_linear_g_are_the_closed_form(sigma):
    # Q4(y) = y^4 - 6 (1 + s^2) y^2 + 3 (1 + s^2)^2 and c4 = E[He4^2] = 24.
    v = 1 + sigma**2
    np.testing.assert_allclose(mj.quartic_constants("linear", sigma),
                               [3 * v**2, 0.0, -6 * v, 0.0, 24.0], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("g", ["tanh", "relu", "sigmoid"])
def test_quartic_transform_leaves_only_the_fourth_hermite_coefficient(g):
    # Monte Carlo, independent of the quadrature: with z ~ N(0, 1) and y = g(z) + eps,
    # E[Q4(y) He_m(z)] = 0 for m = 1, 2, 3 and = c4 for m = 4; each mean within 4.5 standard
    # errors (about 1 in 1e5 per check by chance).
    sigma, n = 0.1, 2_000_000
    kz, ke = jax.random.split(jax.random.key(7))
    z = np.asarray(jax.random.normal(kz, (n,)), np.float64)
    y = np.asarray(mj.get_nonlinearity(g)(jnp.asarray(z)), np.float64) + sigma * np.asarray(
        jax.random.normal(ke, (n,)), np.float64)
    c = [float(v) for v in mj.quartic_constants(g, sigma)]
    q = y**4 + c[3] * y**3 + c[2] * y**2 + c[1] * y + c[0]
    he = [z, z**2 - 1, z**3 - 3 * z, z**4 - 6 * z**2 + 3]
    for m, h in enumerate(he, start=1):
        terms = q * h
        se = terms.std() / np.sqrt(n)
        target = c[4] if m == 4 else 0.0
        assert abs(terms.mean() - target) < 4.5 * se, (g, m, terms.mean(), target, se)
    assert abs(np.mean(q)) < 4.5 * q.std() / np.sqrt(n)  # b0 centres Q4


def test_an_even_g_is_refused():
    with pytest.raises(ValueError, match="fourth moment cannot see"):
        mj.quartic_constants(jnp.abs, 0.1)


def _t4(u, v, x):
    """t4(u, v, x) per row, written out as in docs/algorithm.md section 10."""
    ux, vx = x @ u, x @ v
    uu, vv, uv = u @ u, v @ v, u @ v
    return (ux**2 * vx**2 - uu * vx**2 - vv * ux**2 - 4 * uv * ux * vx + uu * vv
            + 2 * uv**2)


def test_pair_moments_match_the_per_row_definition_in_float64():
    with enable_x64():
        kx, ky, ku = jax.random.split(jax.random.key(3), 3)
        x = jax.random.normal(kx, (500, 5), jnp.float64)
        y = jax.random.normal(ky, (500,), jnp.float64)
        u = jax.random.normal(ku, (3, 5), jnp.float64)
        q = lambda v: v**2 - 0.5 * v
        got = landscape.pair_moments(x, y, u, q)
        want = np.array([[np.mean(q(y) * _t4(u[j], u[l], x)) for l in range(3)]
                         for j in range(3)])
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_pair_moments_estimate_their_population_value():
    # E[Q4(y) t4(u, v, x)] = sum_i c4 pi_i (a_i.u)^2 (a_i.v)^2 for the paper's model (gating
    # orthogonal to the experts), pi_i = E[p_i(x)]; every entry within 4.5 standard errors of
    # its per-row terms (the gate probabilities averaged over a separate sample).
    n = 400_000
    truth, x, y = truth_and_data(0, n)
    u = jax.random.normal(jax.random.key(9), (2, DIM))
    consts = mj.quartic_constants("linear", NOISE_STD)
    q = np.asarray(landscape.q4_transform(consts)(y), np.float64)
    x64 = np.asarray(x, np.float64)
    x_other = jax.random.normal(jax.random.key(11), (n, DIM))
    pi = np.mean(np.asarray(jax.nn.softmax(x_other @ truth.gating.T, axis=-1)), axis=0)
    a = np.asarray(truth.experts, np.float64)
    u64 = np.asarray(u, np.float64)
    table = np.asarray(landscape.pair_moments(x, y, u, landscape.q4_transform(consts)))
    for j in range(2):
        for l in range(2):
            terms = q * _t4(u64[j], u64[l], x64)
            population = float(consts.c4) * np.sum(pi * (a @ u64[j])**2 * (a @ u64[l])**2)
            se = terms.std() / np.sqrt(n)
            assert abs(terms.mean() - population) < 4.5 * se, (j, l, terms.mean(), population)
            assert abs(table[j, l] - terms.mean()) < 1e-3 * (1 + abs(population))


def test_expert_loss_gradient_matches_finite_differences_in_float64():
    with enable_x64():
        truth, x, y = truth_and_data(0, 2000)
        x, y = x.astype(jnp.float64), y.astype(jnp.float64)
        consts = mj.transform_constants("linear", NOISE_STD)
        m2 = moments.second_moment(x, y, moments.t2_transform(consts))
        white = moments.whitening(m2, NUM_EXPERTS)
        q4 = landscape.q4_transform(mj.quartic_constants("linear", NOISE_STD))
        loss = lambda b: landscape.expert_loss(b, x, y, white.matrix, q4, 1 / 6.0)[0]
        b = jax.random.normal(jax.random.key(1), (NUM_EXPERTS, NUM_EXPERTS), jnp.float64)
        grad = jax.grad(loss)(b)
        eps = 1e-6
        for idx in [(0, 0), (1, 2), (2, 1)]:
            e = jnp.zeros_like(b).at[idx].set(eps)
            fd = (loss(b + e) - loss(b - e)) / (2 * eps)
            np.testing.assert_allclose(grad[idx], fd, rtol=1e-6, atol=1e-8)


def test_recover_by_descent_recovers_the_experts_and_gating():
    # n = 1e5, d = 10, k = 3, 3 seeds: expert errors measured 0.091-0.126 (the tensor method's
    # 0.078-0.089 on the same data); the bound sits 40% above the largest.
    errors, gate_errors = [], []
    for seed in range(3):
        truth, x, y = truth_and_data(seed, 100_000)
        est, info = mj.recover_by_descent(jax.random.key(2), x, y, num_experts=NUM_EXPERTS,
                                          noise_std=NOISE_STD)
        assert bool(info.converged) and bool(jnp.all(info.experts.converged))
        errors.append(float(mj.expert_error(est.experts, truth.experts)))
        gate_errors.append(float(mj.gating_error(est, truth)))
    assert max(errors) < 0.18, errors
    assert max(gate_errors) < 1.0, gate_errors


def test_jit_vmap_and_chunks_change_nothing():
    truth, x, y = truth_and_data(0, 4000)
    run = lambda key, x, y, chunk=None: mj.recover_by_descent(
        key, x, y, num_experts=NUM_EXPERTS, noise_std=NOISE_STD, num_expert_steps=30,
        num_gating_steps=20, chunk_size=chunk)[0]
    keys = jax.random.split(jax.random.key(5), 2)
    one = [run(k, x, y) for k in keys]
    batched = jax.vmap(lambda k: run(k, x, y))(keys)
    jitted = jax.jit(lambda k: run(k, x, y))(keys[0])
    chunked = run(keys[0], x, y, chunk=1000)
    for i in range(2):
        chex.assert_trees_all_close(jax.tree.map(lambda v: v[i], batched.experts),
                                    one[i].experts, atol=2e-4)
    chex.assert_trees_all_close(jitted.experts, one[0].experts, atol=2e-4)
    chex.assert_trees_all_close(chunked.experts, one[0].experts, atol=2e-4)
    chex.assert_trees_all_close(chunked.gating, one[0].gating, atol=2e-3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_starts=0), "num_starts"),
    (dict(num_expert_steps=1.5), "num_expert_steps"),
    (dict(learning_rate=-0.1), "learning_rate"),
    (dict(gating_learning_rate=0.0), "gating_learning_rate"),
    (dict(nonlinearity=jnp.abs), "cannot see"),
])
def test_bad_settings_are_named(kwargs, match, small_problem):
    _, x, y = small_problem
    with pytest.raises(ValueError, match=match):
        mj.recover_by_descent(jax.random.key(0), x, y, num_experts=2, **kwargs)
