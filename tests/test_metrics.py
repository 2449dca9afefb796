import jax
import numpy as np
import pytest

import moejax as mj


def test_permutation_is_undone():
    truth = mj.random_params(jax.random.key(0), 6, 4)
    perm = np.array([2, 0, 3, 1])
    noisy = np.asarray(truth.experts)[perm] + 0.01
    found = mj.match_experts(noisy, truth.experts)
    np.testing.assert_array_equal(noisy[found], np.asarray(truth.experts) + 0.01)
    assert mj.expert_error(noisy, truth.experts) == pytest.approx(0.01 * np.sqrt(24), rel=1e-5)


def test_expert_error_is_min_over_all_permutations():
    import itertools
    rng = np.random.default_rng(1)
    for _ in range(20):
        a, b = rng.standard_normal((2, 4, 3))
        brute = min(np.linalg.norm(a[list(p)] - b) for p in itertools.permutations(range(4)))
        assert mj.expert_error(a, b) == pytest.approx(brute)


def test_gating_error_ignores_common_shift_and_uses_expert_permutation():
    truth = mj.random_params(jax.random.key(2), 6, 3)
    perm = np.array([1, 2, 0])
    shift = np.arange(6.0)
    est = mj.MoEParams(np.asarray(truth.experts)[perm], np.asarray(truth.gating)[perm] + shift,
                       truth.noise_std)
    assert mj.gating_error(est, truth) == pytest.approx(0.0, abs=1e-5)
    wrong = est._replace(gating=np.asarray(truth.gating) + shift)
    assert mj.gating_error(wrong, truth) > 1.0


def test_batched_inputs_broadcast():
    truth = mj.random_params(jax.random.key(3), 6, 3)
    batch = np.stack([np.asarray(truth.experts) + e for e in (0.0, 0.01, 0.02)])
    np.testing.assert_allclose(mj.expert_error(batch, truth.experts),
                               [0.0, 0.01 * np.sqrt(18), 0.02 * np.sqrt(18)], atol=1e-6)
    assert mj.match_experts(batch, truth.experts).shape == (3, 3)


def test_one_argument_convention_and_a_clear_error_under_jit():
    # expert_error and match_experts take MoEParams as gating_error does (or expert arrays);
    # under jit or vmap all three refuse with the documented ValueError, not JAX's tracer error.
    truth = mj.random_params(jax.random.key(4), 5, 3)
    est = truth._replace(experts=np.asarray(truth.experts)[[2, 0, 1]] + 0.01)
    assert float(mj.expert_error(est, truth)) == float(mj.expert_error(est.experts,
                                                                       truth.experts))
    np.testing.assert_array_equal(mj.match_experts(est, truth), [1, 2, 0])
    for metric in (mj.expert_error, mj.match_experts, mj.gating_error):
        with pytest.raises(ValueError, match="runs on the host and cannot be traced"):
            jax.jit(metric)(est, truth)
    with pytest.raises(ValueError, match="call it on the results"):
        jax.vmap(mj.expert_error, in_axes=(0, None))(np.stack([est.experts] * 2), truth)
