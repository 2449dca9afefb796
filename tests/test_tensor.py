import jax
import jax.numpy as jnp
import numpy as np

from moejax import tensor


def odeco(key, k, lam):
    """An orthogonally decomposable sum_i lam_i v_i^{(x)3} with random orthonormal v_i."""
    v, _ = jnp.linalg.qr(jax.random.normal(key, (k, k)))
    return jnp.einsum("r,ri,rj,rl->ijl", lam, v.T, v.T, v.T), v.T


def test_decompose_recovers_exact_components():
    lam = jnp.array([3.0, 2.0, 1.5, 1.0, 0.5])
    t, v = odeco(jax.random.key(0), 5, lam)
    lam_hat, v_hat, _ = tensor.decompose(jax.random.key(1), t, 5)
    order = np.argsort(-np.asarray(lam_hat))
    np.testing.assert_allclose(np.asarray(lam_hat)[order], lam, atol=1e-4)
    # Positive weights fix each component's sign, so v_hat_i = v_i, not just +-v_i.
    np.testing.assert_allclose(np.asarray(v_hat)[order], v, atol=1e-3)


def test_deflation_leaves_zero_residual():
    lam = jnp.array([1.0, 1.0, 1.0])
    t, _ = odeco(jax.random.key(2), 3, lam)
    lam_hat, v_hat, _ = tensor.decompose(jax.random.key(3), t, 3)
    rebuilt = jnp.einsum("r,ri,rj,rl->ijl", lam_hat, v_hat, v_hat, v_hat)
    np.testing.assert_allclose(rebuilt, t, atol=1e-4)


def test_robust_to_small_symmetric_noise():
    # Perturbation theory (Anandkumar et al. 2014, Thm 5.1): error O(||E|| / lam_min).
    lam = jnp.array([2.0, 1.5, 1.0])
    t, v = odeco(jax.random.key(4), 3, lam)
    e = 1e-3 * jax.random.normal(jax.random.key(5), (3, 3, 3))
    e = sum(jnp.transpose(e, p) for p in [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]) / 6
    lam_hat, v_hat, _ = tensor.decompose(jax.random.key(6), t + e, 3)
    order = np.argsort(-np.asarray(lam_hat))
    np.testing.assert_allclose(np.asarray(v_hat)[order], v, atol=2e-2)


def test_vmap_over_keys_matches_loop():
    t, _ = odeco(jax.random.key(7), 4, jnp.array([1.0, 0.9, 0.8, 0.7]))
    keys = jax.random.split(jax.random.key(8), 4)
    lam_b, v_b, info_b = jax.vmap(lambda k: tensor.decompose(k, t, 4))(keys)
    for i, key in enumerate(keys):
        lam, v, info = tensor.decompose(key, t, 4)
        np.testing.assert_allclose(lam_b[i], lam, atol=1e-5)
        np.testing.assert_array_equal(info_b.num_iters[i], info.num_iters)
        np.testing.assert_allclose(v_b[i], v, atol=1e-5)


def test_power_runs_stop_on_the_tolerance_and_say_so():
    # Exact odeco tensor: the power map converges quadratically, so each polishing run (from
    # an already converged start) stops after a step or two, far below the cap.
    lam = jnp.array([3.0, 2.0, 1.5, 1.0])
    t, v = odeco(jax.random.key(9), 4, lam)
    lam_hat, v_hat, info = tensor.decompose(jax.random.key(10), t, 4, num_iters=100, tol=1e-5)
    assert np.all(np.asarray(info.converged)) and np.all(np.asarray(info.finite))
    assert np.all(np.asarray(info.num_iters) <= 5), info.num_iters
    # Stopping early changes the answer by about the tolerance, not more.
    # (tol 1e-30: a run stops only at an exact float32 fixed point, or at the cap.)
    _, v_cap, info_cap = tensor.decompose(jax.random.key(10), t, 4, num_iters=100, tol=1e-30)
    assert np.all(np.asarray(info_cap.num_iters) >= np.asarray(info.num_iters))
    np.testing.assert_allclose(v_hat, v_cap, atol=1e-4)


def test_a_capped_run_reports_not_converged():
    # Nearly equal weights: slow power iterations; 2 steps cannot meet tol 1e-6.
    t, _ = odeco(jax.random.key(11), 5, jnp.array([1.0, 0.99, 0.98, 0.97, 0.96]))
    _, _, info = tensor.decompose(jax.random.key(12), t + 0.01 * jnp.ones((5, 5, 5)), 5,
                                  num_iters=2, tol=1e-6)
    np.testing.assert_array_equal(info.num_iters, 2)
    assert not np.any(np.asarray(info.converged))


def test_a_zero_tensor_is_reported_not_finite():
    _, _, info = tensor.decompose(jax.random.key(13), jnp.zeros((3, 3, 3)), 3)
    assert not np.any(np.asarray(info.finite)) and not np.any(np.asarray(info.converged))
    assert np.all(np.asarray(info.num_iters) == 1)  # the NaN step ends the run
