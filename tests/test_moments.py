import jax
import jax.numpy as jnp
import numpy as np
import pytest

import moejax as mj
from moejax import moments
from conftest import enable_x64


@pytest.fixture
def data64():
    """Small float64 inputs: d = 5, k = 2, n = 400 (arbitrary values; the identities are exact)."""
    rng = np.random.default_rng(0)
    return rng.standard_normal((400, 5)), rng.standard_normal(400)


def third_moment_tensor(x, t):
    """(1/n) sum_n t_n S3(x_n) as a full (d, d, d) float64 tensor, one sample at a time."""
    d = x.shape[1]
    eye = np.eye(d)
    out = np.zeros((d, d, d))
    for row, tn in zip(x, t):
        s3 = (np.einsum("i,j,l->ijl", row, row, row) - np.einsum("i,jl->ijl", row, eye)
              - np.einsum("j,il->ijl", row, eye) - np.einsum("l,ij->ijl", row, eye))
        out += tn * s3
    return out / len(t)


def test_label_transforms(data64):
    _, y = data64
    c = mj.transform_constants("relu", 0.1)
    t2, t3 = moments.label_transforms(jnp.asarray(y), c)
    b, a1, a2 = float(c.b), float(c.a1), float(c.a2)
    np.testing.assert_allclose(t2, y**2 + b * y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t3, y**3 + a2 * y**2 + a1 * y, rtol=1e-5, atol=1e-5)


def test_second_moment_matches_numpy(data64):
    x, t = data64
    expected = sum(ti * (np.outer(xi, xi) - np.eye(5)) for xi, ti in zip(x, t)) / len(t)
    got = moments.second_moment(jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_whitening_whitens():
    rng = np.random.default_rng(1)
    u, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    m2 = u @ np.diag([3.0, 2.0, 0.5, -0.1, 0.01]) @ u.T
    white = moments.whitening(jnp.asarray(m2, jnp.float32), 2)
    np.testing.assert_allclose(white.eigvals, [3.0, 2.0], rtol=1e-5)
    np.testing.assert_allclose(white.matrix.T @ m2 @ white.matrix, np.eye(2), atol=1e-5)


def test_whitening_keeps_output_finite_for_nonpositive_eigenvalues():
    white = moments.whitening(-jnp.eye(4), 2)
    assert np.all(np.isfinite(white.matrix)) and np.all(white.eigvals > 0)


def test_whitened_third_moment_equals_full_tensor_contraction(data64):
    x, t = data64
    rng = np.random.default_rng(2)
    wh = rng.standard_normal((5, 2))
    expected = np.einsum("abc,ai,bj,cl->ijl", third_moment_tensor(x, t), wh, wh, wh)
    got = moments.whitened_third_moment(jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32),
                                        jnp.asarray(wh, jnp.float32))
    assert got.shape == (2, 2, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_population_moments_match_algorithm_formula():
    # M2 = sum_i c2 pi_i a_i a_i^T (docs/algorithm.md section 2) at n = 1e6, tanh: the sampling error
    # of each entry is about sqrt(Var(T2 x_j x_l) / n) ~ 3e-3, so 0.02 leaves a wide margin.
    key_p, key_x = jax.random.split(jax.random.key(3))
    params = mj.random_params(key_p, 6, 2, noise_std=0.1, nonlinearity="tanh")
    x, y = mj.sample(key_x, params, 1_000_000)
    c = mj.transform_constants("tanh", 0.1)
    t2, _ = moments.label_transforms(y, c)
    pi = jnp.mean(jax.nn.softmax(x @ params.gating.T, axis=-1), axis=0)
    expected = float(c.c2) * (params.experts.T * pi) @ params.experts
    np.testing.assert_allclose(moments.second_moment(x, t2), expected, atol=0.02)


def test_float64(data64):
    x, t = data64
    with enable_x64(True):
        got = moments.second_moment(jnp.asarray(x), jnp.asarray(t))
        assert got.dtype == jnp.float64
        expected = (x.T * t) @ x / len(t) - np.mean(t) * np.eye(5)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
