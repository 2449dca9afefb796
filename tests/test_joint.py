import jax
import jax.numpy as jnp
import numpy as np
import pytest

import moejax as mj
from moejax import joint
from conftest import NOISE_STD, NUM_EXPERTS, enable_x64, truth_and_data


def weighted_least_squares(resp, x, y):
    """argmin_a sum_n q_ni (y_n - a . x_n)^2 for every expert i: (k, d); resp: (k, n). The
    experts' M-step for linear g from zero: one `expert_step` is exact."""
    experts = jnp.zeros((resp.shape[0], x.shape[1]), x.dtype)
    gram, rhs, _ = joint.expert_sums(experts, resp, x, y, lambda z: z, mj.families.GAUSSIAN)
    return experts + joint.expert_step(gram, rhs, x.shape[0])


def test_weighted_least_squares_matches_numpy():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((300, 4)), rng.standard_normal(300)
    resp = rng.uniform(size=(2, 300))
    got = weighted_least_squares(jnp.asarray(resp), jnp.asarray(x), jnp.asarray(y))
    for i in range(2):
        sw = np.sqrt(resp[i])
        expected = np.linalg.lstsq(x * sw[:, None], y * sw, rcond=None)[0]
        np.testing.assert_allclose(got[i], expected, atol=1e-4)


def test_refine_reaches_likelihood_accuracy():
    # The spectral start + joint EM (docs/algorithm.md section 5) was measured at about 0.003
    # at n = 1e5, against about 0.07 for the moment method alone; 3 seeds, bound 0.01 and 5x
    # improvement.
    for seed in range(3):
        truth, x, y = truth_and_data(seed, 100_000)
        start, _ = mj.recover(jax.random.key(seed), x, y, num_experts=NUM_EXPERTS,
                              noise_std=NOISE_STD)
        refined, info = mj.refine(start, x, y, num_iters=50)
        before = mj.expert_error(start.experts, truth.experts)
        after = mj.expert_error(refined.experts, truth.experts)
        assert after < 0.01 and after < before / 5, (before, after)
        assert float(info.trace[-1]) >= float(info.trace[0])


def test_refine_learns_one_noise_std_per_expert():
    # refine from the truth with every sigma_i started at 0.3: the per-expert M-step finds
    # sigma = (0.1, 0.3, 0.6) and the likelihood rises above the shared-sigma fit's.
    sigma = np.array([0.1, 0.3, 0.6])
    key_p, key_x = jax.random.split(jax.random.key(4))
    truth = mj.random_params(key_p, 10, 3, noise_std=sigma)
    x, y = mj.sample(key_x, truth, 20_000)
    start = truth._replace(noise_std=jnp.full(3, 0.3))
    per, info = mj.refine(start, x, y, num_iters=300, learn_noise_std=True)
    shared, shared_info = mj.refine(start._replace(noise_std=jnp.asarray(0.3)), x, y,
                                    num_iters=300, learn_noise_std=True)
    assert per.noise_std.shape == (3,) and shared.noise_std.shape == ()
    np.testing.assert_allclose(per.noise_std, sigma, rtol=0.06)
    assert np.all(np.diff(np.asarray(info.trace)) > -1e-5)
    assert float(info.log_likelihood) > float(shared_info.log_likelihood) + 0.1


@pytest.mark.parametrize("gating_step", ["bohning", "newton"])
def test_refine_in_chunks_equals_one_block(small_problem, gating_step):
    # Every pass of the joint EM goes through sums.row_sum: blocks of rows (the last one
    # clamped and partly masked) give the same iterates to float32 rounding. The run stops on
    # a tolerance, so another summation order may stop it one iteration apart (seen: 5 vs 4),
    # where the likelihood has settled to within a few tolerances (1e-7 (1 + |L|)).
    truth, x, y = small_problem
    start = truth._replace(noise_std=jnp.full(3, 0.3))
    kw = dict(num_iters=40, learn_noise_std=True, gating_step=gating_step)
    ref, ref_info = mj.refine(start, x, y, **kw)
    got, info = mj.refine(start, x, y, chunk_size=7001, **kw)
    assert abs(int(info.num_iters) - int(ref_info.num_iters)) <= 1
    assert float(info.log_likelihood) == pytest.approx(float(ref_info.log_likelihood), abs=1e-5)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) < 1e-3
    # The first iterations, before any stopping decision, agree to rounding (the Newton
    # step's Hessian solve amplifies the summation order's rounding: seen 1.5e-6).
    np.testing.assert_allclose(info.trace[:4], ref_info.trace[:4],
                               rtol=1e-6 if gating_step == "bohning" else 1e-5)
    with pytest.raises(ValueError, match="chunk_size"):
        mj.refine(start, x, y, chunk_size=0)


def test_newton_gating_steps_reach_the_optimum_that_bohning_steps_stop_short_of():
    # Airfoil, k = 2, from fit's moment start (docs/solvers.md), in float64: EM with Bohning
    # gating steps stops on the tolerance after 1377 iterations, 4.1e-4 per row below the
    # optimum that the capped Newton steps reach in 127; both never lower the likelihood. (In
    # float32, tol = 1e-8 is below the resolution of L ~ 0.84, so where a run stops on a
    # plateau is decided by rounding: the comparison is made where the tolerance means it.)
    data = mj.datasets.load_airfoil()
    with enable_x64(True):
        x = np.asarray(data.features[:1200], np.float64)
        y = np.asarray(data.target[:1200], np.float64)
        start = mj.fit(jax.random.key(0), x, y, num_experts=2, num_refine_iters=0)
        z, ys = start.design(x), mj.transform_target(start.standardizer, y)
        params = start.params._replace(noise_std=jnp.broadcast_to(start.params.noise_std,
                                                                  (2,)))
        out = {step: mj.refine(params, z, ys, num_iters=3000, tol=1e-8, learn_noise_std=True,
                               gating_step=step)[1] for step in ("bohning", "newton")}
        out = jax.tree.map(np.asarray, out)
    for info in out.values():
        trace = info.trace[:int(info.num_iters)]
        assert bool(info.converged)
        assert np.all(np.diff(trace) >= -1e-9 * (1 + np.abs(trace[:-1])))
    assert 4 * int(out["newton"].num_iters) < int(out["bohning"].num_iters)
    assert float(out["newton"].log_likelihood) > float(out["bohning"].log_likelihood) + 2e-4
    with enable_x64(True), pytest.raises(ValueError, match="gating_step must be"):
        mj.refine(params, z, ys, gating_step="irls")
