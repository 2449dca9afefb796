import jax
import jax.numpy as jnp
import numpy as np
import pytest

import moejax as mj
from moejax import em_steps, gating, solver
from moejax.sums import Layout
from conftest import NOISE_STD
from test_em_steps import numpy_em_step


def test_fused_em_sums_match_numpy_em_step(small_problem):
    # The path fit_gating runs: all inits in one pass (here 2 inits), chunked, Bohning step.
    params, x, y = small_problem
    x, y = x[:2000], y[:2000]
    w0 = 0.3 * jax.random.normal(jax.random.key(0), (2,) + params.gating.shape)
    w0 = w0.at[:, -1].set(0.0)
    chol = jnp.linalg.cholesky(x.T @ x / x.shape[0])
    grad, ll, _, _ = gating.em_sums(w0, jnp.full((2,), 0.1), x, y, params.experts, "linear",
                                  Layout(512))
    for j in range(2):
        new = em_steps.bohning_step(w0[j], grad[j] / 2000,
                                  lambda v: jax.scipy.linalg.cho_solve((chol, True), v))
        new_ref, ll_ref = numpy_em_step(w0[j], x, y, params.experts, 0.1)
        np.testing.assert_allclose(new, new_ref, atol=1e-4)
        assert float(ll[j]) / 2000 == pytest.approx(ll_ref, rel=1e-5)


@pytest.mark.parametrize("nonlinearity", ["linear", "sigmoid"])
def test_likelihood_never_decreases(nonlinearity):
    key_p, key_x, key_w = jax.random.split(jax.random.key(1), 3)
    params = mj.random_params(key_p, 8, 4, noise_std=0.3, orthogonal_gating=False,
                              nonlinearity=nonlinearity)
    x, y = mj.sample(key_x, params, 5000)
    _, info = mj.fit_gating(key_w, x, y, params.experts, noise_std=0.3,
                            nonlinearity=nonlinearity, num_inits=4, num_iters=60)
    # Generalised EM is monotone; float32 rounding of a mean of 5000 terms is ~1e-6.
    assert np.all(np.diff(np.asarray(info.trace)) > -1e-5)
    starts = np.asarray(info.start_log_likelihood)
    assert starts[int(info.best)] >= starts.max() - 1e-6
    assert float(info.log_likelihood) >= starts.max() - 1e-6


def test_true_experts_give_true_gating():
    # With the true experts, EM converges to the MLE of W, within O(sqrt(d k / n)) of the truth:
    # at n = 1e5 the measured error is ~0.05; 0.1 is the bound asserted over 3 seeds.
    errors = []
    for seed in range(3):
        key_p, key_x, key_w = jax.random.split(jax.random.key(10 + seed), 3)
        params = mj.random_params(key_p, 10, 3, noise_std=0.1)
        x, y = mj.sample(key_x, params, 100_000)
        w, _ = mj.fit_gating(key_w, x, y, params.experts, noise_std=0.1, num_inits=4)
        errors.append(float(mj.gating_error(params._replace(gating=w), params)))
    assert max(errors) < 0.1, errors


def test_bad_inputs(small_problem):
    params, x, y = small_problem
    with pytest.raises(ValueError, match="experts must have shape"):
        mj.fit_gating(jax.random.key(0), x, y, params.experts[:, :5], noise_std=0.1)
    with pytest.raises(ValueError, match="noise_std"):
        mj.fit_gating(jax.random.key(0), x, y, params.experts, noise_std=-1.0)
    with pytest.raises(ValueError, match="num_inits"):
        mj.fit_gating(jax.random.key(0), x, y, params.experts, noise_std=0.1, num_inits=0)


def test_learned_noise_std_keeps_em_monotone_and_finds_sigma(small_problem):
    # With the true experts, sigma's M-step converges to the residual sd of the true assignment.
    truth, x, y = small_problem
    w, info = mj.fit_gating(jax.random.key(0), x, y, truth.experts, noise_std=0.5,
                            learn_noise_std=True, num_iters=100)
    assert np.all(np.diff(np.asarray(info.trace)) > -1e-5)
    assert abs(float(info.noise_std) / float(truth.noise_std) - 1) < 0.05
    assert float(mj.gating_error(mj.MoEParams(truth.experts, w, info.noise_std), truth)) < 0.3


def test_per_expert_noise_is_learned_with_em_still_monotone():
    # Three experts with sigma = 0.1, 0.3, 0.6 and the true experts: each sigma_i's M-step
    # converges to its own expert's noise (3 seeds; measured within 2%, bound 6%).
    sigma = np.array([0.1, 0.3, 0.6])
    for seed in range(3):
        key_p, key_x = jax.random.split(jax.random.key(seed))
        truth = mj.random_params(key_p, 10, 3, noise_std=sigma)
        x, y = mj.sample(key_x, truth, 20_000)
        w, info = mj.fit_gating(jax.random.key(0), x, y, truth.experts,
                                noise_std=jnp.full(3, 0.3), learn_noise_std=True, num_iters=200)
        assert info.noise_std.shape == (3,)
        assert np.all(np.diff(np.asarray(info.trace)) > -1e-5)
        np.testing.assert_allclose(info.noise_std, sigma, rtol=0.06)
        assert float(mj.gating_error(mj.MoEParams(truth.experts, w, info.noise_std), truth)) < 0.3


def test_matrix_free_m_step_is_monotone_and_agrees(small_problem):
    # The scalar bound 1.1 lambda_max(C) I >= C: still an ascent method, same optimum.
    truth, x, y = small_problem
    kw = dict(noise_std=NOISE_STD, num_iters=200)
    dense, _ = mj.fit_gating(jax.random.key(0), x, y, truth.experts, **kw)
    free, info = mj.fit_gating(jax.random.key(0), x, y, truth.experts, matrix_free=True, **kw)
    assert np.all(np.diff(np.asarray(info.trace)) > -1e-5)
    np.testing.assert_allclose(free, dense, atol=2e-3 * float(jnp.abs(dense).max()))


def test_first_best_prefers_the_first_of_tied_runs():
    ll = jnp.array([0.5, 0.7, 0.7 + 1e-8, jnp.nan, 0.2], jnp.float32)
    assert int(solver.first_best(ll)) == 1
    assert int(solver.first_best(jnp.array([jnp.nan, -1.0]))) == 1


def _problem(seed, n=20_000, dim=10, k=3, noise_std=NOISE_STD, gating_norm=2.0):
    key_p, key_x = jax.random.split(jax.random.key(seed))
    truth = mj.random_params(key_p, dim, k, noise_std=noise_std, gating_norm=gating_norm)
    return (truth, *mj.sample(key_x, truth, n))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_accelerated_em_reaches_the_plain_em_optimum(seed):
    # Plain EM run far past convergence (tol 1e-10, 3000 iterations) is the reference optimum.
    # SQUAREM at its default tol must reach the same L to 1e-5 and the same gating, in far
    # fewer passes, with a trace that never goes down (float32 rounding of a mean: ~1e-6).
    truth, x, y = _problem(seed, gating_norm=3.0)
    kw = dict(noise_std=NOISE_STD, num_inits=1)
    w_ref, ref = mj.fit_gating(jax.random.key(seed), x, y, truth.experts, num_iters=3000,
                               tol=1e-10, accelerate=False, **kw)
    w, info = mj.fit_gating(jax.random.key(seed), x, y, truth.experts, **kw)
    assert bool(info.converged) and bool(info.finite)
    assert abs(float(info.log_likelihood) - float(ref.log_likelihood)) <= 1e-5
    np.testing.assert_allclose(w, w_ref, atol=2e-3 * float(jnp.abs(w_ref).max()))
    assert int(info.num_passes) * 3 < int(ref.num_passes)
    trace = np.asarray(info.trace)
    assert np.all(np.diff(trace) > -1e-6)
    assert np.all(trace[int(info.num_iters):] == trace[-1])


def test_converged_is_false_when_the_cap_is_too_small(small_problem):
    truth, x, y = small_problem
    _, capped = mj.fit_gating(jax.random.key(0), x, y, truth.experts, noise_std=NOISE_STD,
                              num_iters=2, accelerate=False)
    assert not bool(capped.converged) and int(capped.num_iters) == 2
    _, done = mj.fit_gating(jax.random.key(0), x, y, truth.experts, noise_std=NOISE_STD)
    assert bool(done.converged) and int(done.num_iters) < 50


def test_vmap_gives_each_problem_its_own_iterations():
    # Two problems that need different iteration counts (a sharp and a soft gating), run under
    # one vmap, give what each gives alone: a member that stops first is frozen, not dragged.
    problems = [_problem(3, gating_norm=1.0), _problem(4, gating_norm=5.0)]
    experts = jnp.stack([p[0].experts for p in problems])
    xs, ys = jnp.stack([p[1] for p in problems]), jnp.stack([p[2] for p in problems])
    fit = lambda e, x, y: gating._fit_gating(jax.random.key(0), x, y, e, jnp.float32(0.1),
                                             "linear", 2, 50, 1.0, accelerate=False)
    w_batch, info_batch = jax.vmap(fit)(experts, xs, ys)
    iters = [int(i) for i in info_batch.num_iters]
    assert iters[0] != iters[1]
    for j in range(2):
        w, info = fit(experts[j], xs[j], ys[j])
        assert int(info.num_iters) == iters[j]
        np.testing.assert_allclose(w_batch[j], w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("column", ["duplicate", "zero"])
def test_degenerate_columns_give_a_finite_gating(small_problem, column):
    # X^T X is singular: the pseudo-inverse Bohning step must stay finite and monotone, and
    # the gating along the other columns must match the fit without the extra column.
    truth, x, y = small_problem
    x = x[:5000]
    y = y[:5000]
    extra = x[:, :1] if column == "duplicate" else jnp.zeros_like(x[:, :1])
    x2 = jnp.concatenate([x, extra], axis=1)
    experts2 = jnp.concatenate([truth.experts, jnp.zeros((3, 1))], axis=1)
    w2, info = mj.fit_gating(jax.random.key(0), x2, y, experts2, noise_std=NOISE_STD)
    assert bool(info.finite) and np.all(np.isfinite(w2))
    assert np.all(np.diff(np.asarray(info.trace)) > -1e-5)
    w, ref = mj.fit_gating(jax.random.key(0), x, y, truth.experts, noise_std=NOISE_STD)
    assert abs(float(info.log_likelihood) - float(ref.log_likelihood)) < 1e-4
    # The steps never touch the null direction: a duplicated column's weights add up to the
    # weight of the single column; a zero column's weight is just its start.
    folded = w2[:, :-1].at[:, 0].add(w2[:, -1]) if column == "duplicate" else w2[:, :-1]
    np.testing.assert_allclose(folded, w, atol=0.02)
