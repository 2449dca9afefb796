import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import moejax as mj
from moejax import inference, predictive
from conftest import NOISE_STD, NUM_EXPERTS, enable_x64, truth_and_data


@pytest.mark.parametrize("nonlinearity", ["linear", "tanh"])
def test_joint_em_likelihood_never_decreases(nonlinearity):
    _, x, y = truth_and_data(1, 20_000, nonlinearity)
    _, info = mj.joint_em(jax.random.key(0), x, y, num_experts=NUM_EXPERTS,
                          nonlinearity=nonlinearity, noise_std=NOISE_STD, num_iters=100)
    # Exact M-step (linear) or Adam steps on the expert objective (not guaranteed monotone in
    # general; small steps near convergence are): allow float32 noise only.
    assert np.all(np.diff(np.asarray(info.trace)) > -1e-4)


def test_joint_gd_improves_likelihood_and_vmaps_over_keys():
    truth, x, y = truth_and_data(2, 20_000, "tanh")
    keys = jax.random.split(jax.random.key(1), 4)
    fit = jax.vmap(lambda k: mj.joint_gd(k, x, y, num_experts=NUM_EXPERTS, nonlinearity="tanh",
                                         noise_std=NOISE_STD, num_iters=300))
    params, info = fit(keys)
    assert params.experts.shape == (4, NUM_EXPERTS, 10) and np.all(params.gating[:, -1] == 0)
    assert np.all(info.trace[:, -1] > info.trace[:, 0] + 0.5)
    single, _ = mj.joint_gd(keys[3], x, y, num_experts=NUM_EXPERTS, nonlinearity="tanh",
                            noise_std=NOISE_STD, num_iters=300)
    np.testing.assert_allclose(params.experts[3], single.experts, atol=1e-4)


def test_random_init_structure():
    p = mj.random_init(jax.random.key(0), 7, 3, 0.2)
    np.testing.assert_allclose(jnp.linalg.norm(p.experts, axis=1), 1.0, rtol=1e-6)
    assert np.all(p.gating[-1] == 0) and float(p.noise_std) == pytest.approx(0.2)


def test_bad_inputs():
    x, y = np.ones((100, 5)), np.ones(100)
    with pytest.raises(ValueError, match="num_experts"):
        mj.joint_em(jax.random.key(0), x, y, num_experts=6, noise_std=0.1)
    with pytest.raises(ValueError, match="y must have one entry"):
        mj.joint_gd(jax.random.key(0), x, y[:50], num_experts=2, noise_std=0.1)
    with pytest.raises(ValueError, match="x contains"):
        mj.refine(mj.random_init(jax.random.key(0), 5, 2, 0.1), np.full((100, 5), np.nan), y)


def test_joint_gd_and_em_learn_unknown_noise_std(small_problem):
    truth, x, y = small_problem
    for fn, kw in ((mj.joint_gd, dict(num_iters=500, learning_rate=0.02)),
                   (mj.joint_em, dict(num_iters=100))):
        est, _ = fn(jax.random.key(0), x, y, num_experts=NUM_EXPERTS, **kw)
        assert abs(float(est.noise_std) / NOISE_STD - 1) < 0.1, fn.__name__


@pytest.mark.parametrize("case", ["duplicate column", "y in units of 1e15", "constant y",
                                  "noise_std 1e-30", "x entry 3e38"])
@pytest.mark.parametrize("method", ["joint_em", "joint_gd"])
def test_degenerate_data_give_finite_results_or_a_named_cause(case, method):
    from test_recover import DEGENERATE, _degenerate
    x, y, kw = _degenerate(case)
    fn = getattr(mj, method)
    run = lambda: fn(jax.random.key(0), x, y, num_experts=2, **kw)
    # The likelihood methods square, never cube, the data: y in units of 1e15 is fine.
    expected = None if case == "y in units of 1e15" else DEGENERATE[case]
    if case == "x entry 3e38":
        expected = "x has values up to 3e\\+38.*squared residuals"
    if expected is None:
        params, info = run()
        assert bool(info.finite)
        assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(params))
    else:
        with pytest.raises(ValueError, match=expected):
            run()


def test_em_and_gd_report_iterations_and_convergence(small_problem):
    truth, x, y = small_problem
    _, em = mj.joint_em(jax.random.key(0), x, y, num_experts=NUM_EXPERTS, noise_std=NOISE_STD)
    assert bool(em.converged) and 0 < int(em.num_iters) < 200
    assert int(em.num_passes) == 1 + 2 * int(em.num_iters)
    _, capped = mj.joint_em(jax.random.key(0), x, y, num_experts=NUM_EXPERTS,
                            noise_std=NOISE_STD, num_iters=2)
    assert not bool(capped.converged) and int(capped.num_iters) == 2
    _, gd = mj.joint_gd(jax.random.key(0), x, y, num_experts=NUM_EXPERTS, noise_std=NOISE_STD,
                        num_iters=20)
    assert not bool(gd.converged) and int(gd.num_iters) == 20


def test_joint_em_keeps_the_sigma_floor_on_noise_free_data():
    # Experts that fit the rows exactly: the likelihood has no maximum; the shared sigma
    # stops at NOISE_FLOOR sd(y), as fit's and refine's per-expert sigmas do.
    truth = mj.random_params(jax.random.key(0), 4, 2, noise_std=0.1)
    x = jax.random.normal(jax.random.key(1), (2000, 4))
    y = x @ truth.experts[0]  # one noise-free linear expert
    params, info = mj.joint_em(jax.random.key(2), x, y, num_experts=2, num_iters=300)
    floor = mj.em_steps.NOISE_FLOOR * float(np.std(np.asarray(y)))
    assert float(params.noise_std) >= floor * (1 - 1e-5)
    assert bool(info.finite)


def test_joint_gd_is_adam_on_inferences_parameters_stopped_by_the_solver(small_problem):
    # The same run written out: Adam on inference.free_parts, stopped when |L| changed by at
    # most tol (1 + |L|) in a step.
    # In float64, so that the loop here and the compiled one round alike.
    with enable_x64():
        _check_joint_gd_against_adam(small_problem)


def _check_joint_gd_against_adam(small_problem):
    _, x, y = small_problem
    x, y = (jnp.asarray(v[:2000], jnp.float64) for v in (x, y))
    params, info = mj.joint_gd(jax.random.key(2), x, y, num_experts=3, noise_std=0.1,
                               num_iters=300, learning_rate=0.02, tol=1e-6)
    init = mj.random_init(jax.random.key(2), x.shape[1], 3, 0.1, x.dtype)
    loss = jax.jit(lambda free: -jnp.mean(predictive.log_density(
        inference.from_parts(free, init), x, y)))
    free = inference.free_parts(init, False)
    adam = optax.adam(0.02)
    state, value, steps = adam.init(free), float(loss(free)), 0
    gradient = jax.jit(jax.grad(loss))
    for steps in range(1, 301):
        grad = gradient(free)
        updates, state = adam.update(grad, state)
        free = optax.apply_updates(free, updates)
        new = float(loss(free))
        done = abs(new - value) <= 1e-6 * (1 + abs(value))
        value = new
        if done:
            break
    assert int(info.num_iters) == steps and bool(info.converged) == done
    np.testing.assert_allclose(params.experts, free[0], atol=1e-10)
    assert float(info.log_likelihood) == pytest.approx(-value, rel=1e-12)
