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
    lam_hat, v_hat = tensor.decompose(jax.random.key(1), t, 5)
    order = np.argsort(-np.asarray(lam_hat))
    np.testing.assert_allclose(np.asarray(lam_hat)[order], lam, atol=1e-4)
    # Positive weights fix each component's sign, so v_hat_i = v_i, not just +-v_i.
    np.testing.assert_allclose(np.asarray(v_hat)[order], v, atol=1e-3)


def test_deflation_leaves_zero_residual():
    lam = jnp.array([1.0, 1.0, 1.0])
    t, _ = odeco(jax.random.key(2), 3, lam)
    lam_hat, v_hat = tensor.decompose(jax.random.key(3), t, 3)
    rebuilt = jnp.einsum("r,ri,rj,rl->ijl", lam_hat, v_hat, v_hat, v_hat)
    np.testing.assert_allclose(rebuilt, t, atol=1e-4)


def test_robust_to_small_symmetric_noise():
    # Perturbation theory (Anandkumar et al. 2014, Thm 5.1): error O(||E|| / lam_min).
    lam = jnp.array([2.0, 1.5, 1.0])
    t, v = odeco(jax.random.key(4), 3, lam)
    e = 1e-3 * jax.random.normal(jax.random.key(5), (3, 3, 3))
    e = sum(jnp.transpose(e, p) for p in [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]) / 6
    lam_hat, v_hat = tensor.decompose(jax.random.key(6), t + e, 3)
    order = np.argsort(-np.asarray(lam_hat))
    np.testing.assert_allclose(np.asarray(v_hat)[order], v, atol=2e-2)


def test_vmap_over_keys_matches_loop():
    t, _ = odeco(jax.random.key(7), 4, jnp.array([1.0, 0.9, 0.8, 0.7]))
    keys = jax.random.split(jax.random.key(8), 4)
    lam_b, v_b = jax.vmap(lambda k: tensor.decompose(k, t, 4))(keys)
    for i, key in enumerate(keys):
        lam, v = tensor.decompose(key, t, 4)
        np.testing.assert_allclose(lam_b[i], lam, atol=1e-5)
        np.testing.assert_allclose(v_b[i], v, atol=1e-5)
