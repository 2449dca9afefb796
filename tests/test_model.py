import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp, softmax

import moejax as mj


def test_random_params_structure():
    p = mj.random_params(jax.random.key(0), 10, 3, noise_std=0.2, gating_norm=2.0)
    np.testing.assert_allclose(p.experts @ p.experts.T, np.eye(3), atol=1e-5)
    np.testing.assert_allclose(p.gating @ p.experts.T, 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(p.gating[:-1], axis=1), 2.0, rtol=1e-5)
    assert np.all(p.gating[-1] == 0) and float(p.noise_std) == pytest.approx(0.2)
    q = mj.random_params(jax.random.key(0), 10, 3, orthogonal_gating=False)
    assert np.max(np.abs(q.gating @ q.experts.T)) > 0.1
    with pytest.raises(ValueError, match="orthogonal_gating"):
        mj.random_params(jax.random.key(0), 3, 3)


def test_sample_shapes_and_conditional_moments(small_problem):
    params, x, y = small_problem
    assert x.shape == (20_000, 10) and y.shape == (20_000,)
    # E[y | x] = predict(x): residuals have mean 0 (std err ~ 0.7 / sqrt(n) = 0.005).
    resid = y - mj.predict(params, x)
    assert abs(float(jnp.mean(resid))) < 0.03
    # x ~ N(0, I): sample covariance within ~5 std errs (1 / sqrt(n) = 0.007) of I.
    np.testing.assert_allclose(x.T @ x / x.shape[0], np.eye(10), atol=0.04)


def test_sampled_labels_follow_the_gate():
    params = mj.random_params(jax.random.key(1), 4, 2, noise_std=0.01)
    x, y = mj.sample(jax.random.key(2), params, 50_000)
    # With tiny noise the expert that produced y is the one whose output is closest.
    out = np.asarray(x @ params.experts.T)
    z = np.argmin(np.abs(out - np.asarray(y)[:, None]), axis=1)
    gate = softmax(np.asarray(x @ params.gating.T), axis=1)
    np.testing.assert_allclose(np.mean(z == 0), np.mean(gate[:, 0]), atol=0.01)


def reference_log_lik(params, x, y, g):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    a, w, s = (np.asarray(v, np.float64) for v in params[:3])
    log_gate = np.asarray(x @ w.T) - logsumexp(x @ w.T, axis=1, keepdims=True)
    dens = -0.5 * ((y[:, None] - g(x @ a.T)) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)
    return np.mean(logsumexp(log_gate + dens, axis=1)), softmax(log_gate + dens, axis=1)


@pytest.mark.parametrize("noise_std", [0.3, (0.2, 0.5)])
@pytest.mark.parametrize("name, g", [("linear", lambda z: z), ("tanh", np.tanh)])
def test_log_likelihood_and_posteriors_match_numpy(name, g, noise_std):
    params = mj.random_params(jax.random.key(3), 5, 2, noise_std=noise_std, nonlinearity=name)
    x, y = mj.sample(jax.random.key(4), params, 200)
    ll, post = reference_log_lik(params, x, y, g)
    assert float(mj.log_likelihood(params, x, y)) == pytest.approx(ll, rel=1e-5)
    np.testing.assert_allclose(mj.posteriors(params, x, y), post, atol=1e-5)


def test_predict_matches_numpy_and_is_jittable():
    params = mj.random_params(jax.random.key(5), 5, 3, nonlinearity="relu")
    x = jax.random.normal(jax.random.key(6), (50, 5))
    gate = softmax(np.asarray(x @ params.gating.T, np.float64), axis=1)
    expected = np.sum(gate * np.maximum(np.asarray(x @ params.experts.T), 0), axis=1)
    np.testing.assert_allclose(mj.predict(params, x), expected, atol=1e-5)
    np.testing.assert_allclose(jax.jit(mj.predict)(params, x), expected, atol=1e-5)


def test_params_carry_their_nonlinearity_through_transformations():
    params = mj.random_params(jax.random.key(5), 5, 3, nonlinearity="tanh")
    assert jax.tree.leaves(params) == list(params[:3])  # g is structure, not a leaf
    assert jax.tree.map(lambda v: v + 0, params).nonlinearity == "tanh"
    assert jax.jit(lambda p: p)(params).nonlinearity == "tanh"
    batched = jax.vmap(lambda k: mj.random_params(k, 5, 3, nonlinearity="relu"))(
        jax.random.split(jax.random.key(0), 4))
    assert batched.experts.shape == (4, 3, 5) and batched.nonlinearity == "relu"
    # The prediction follows the params' g, and a jitted function compiles once per g.
    x = jax.random.normal(jax.random.key(6), (50, 5))
    # Two traces at most (chex counts them): one per g, none for new values.
    predict = jax.jit(chex.assert_max_traces(lambda p, x: mj.predict(p, x), n=2))
    tanh_pred = predict(params, x)
    predict(params._replace(gating=params.gating + 1.0), x)
    linear = params._replace(nonlinearity="linear")
    assert not np.allclose(predict(linear, x), tanh_pred)
    with pytest.raises(AssertionError):  # a third g is a third trace
        predict(params._replace(nonlinearity="relu"), x)
    np.testing.assert_allclose(tanh_pred, mj.predict(params, x), atol=1e-6)


def test_posteriors_give_the_nearest_expert_where_every_density_underflows():
    params = mj.random_params(jax.random.key(3), 4, 3, noise_std=0.1)
    x = jax.random.normal(jax.random.key(4), (6, 4))
    # y^2 / sigma^2 overflows float32 in the first three rows: every joint density is 0.
    post = np.asarray(mj.posteriors(params, x, jnp.asarray([1e20, -1e20, 1e30, 3.0, -3.0, 0.0])))
    assert np.all(np.isfinite(post)) and np.allclose(post.sum(axis=1), 1.0)
    # Far out (equal sigmas) the limit puts all weight on the expert whose mean is nearest y
    # (at 1e3, where the means still differ in float32 and each density underflows).
    y = jnp.asarray([1e3, -1e3, 1e4])
    post = np.asarray(mj.posteriors(params, x[:3], y))
    means = np.asarray(x @ params.experts.T)
    nearest = np.where(np.asarray(y)[:3, None] > 0, means[:3].argmax(1)[:, None],
                       means[:3].argmin(1)[:, None])[:, 0]
    np.testing.assert_array_equal(post[:3].argmax(axis=1), nearest)
    np.testing.assert_allclose(post[:3].max(axis=1), 1.0)


def test_params_carry_their_family_as_structure():
    params = mj.random_params(jax.random.key(5), 5, 3)
    assert params.family == "gaussian" and jax.tree.leaves(params) == list(params[:3])
    assert jax.jit(lambda p: p)(params)._replace(nonlinearity="tanh")[3:] == ("tanh", "gaussian")


def test_params_are_pytrees():
    params = mj.random_params(jax.random.key(7), 5, 2)
    doubled = jax.tree_util.tree_map(lambda v: 2 * v, params)
    assert isinstance(doubled, mj.MoEParams)
    grad = jax.grad(lambda p, x, y: mj.log_likelihood(p, x, y))(params, *mj.sample(
        jax.random.key(8), params, 100))
    assert grad.experts.shape == (2, 5) and np.all(np.isfinite(grad.experts))


def test_bad_inputs():
    params = mj.random_params(jax.random.key(9), 5, 2)
    x = np.zeros((10, 5), np.float32)
    with pytest.raises(ValueError, match="x must have d = 5"):
        mj.predict(params, np.zeros((10, 4)))
    with pytest.raises(ValueError, match="x must be 2-D"):
        mj.predict(params, np.zeros(5))
    with pytest.raises(ValueError, match="y must have one entry per row"):
        mj.log_likelihood(params, x, np.zeros(9))
    with pytest.raises(ValueError, match="NaN"):
        mj.log_likelihood(params, x, np.full(10, np.nan))


def test_samples_carry_each_experts_own_noise():
    # A near-hard gate on x_3's sign: rows with x_3 > 0.5 come from expert 0, x_3 < -0.5 from
    # expert 1, so the residuals there have sd 0.05 and 0.5 (std errors ~0.5%).
    eye = jnp.eye(4)
    params = mj.MoEParams(eye[:2], jnp.stack([20 * eye[2], jnp.zeros(4)]), jnp.array([0.05, 0.5]))
    x, y = mj.sample(jax.random.key(10), params, 50_000)
    x, y = np.asarray(x), np.asarray(y)
    top, bottom = x[:, 2] > 0.5, x[:, 2] < -0.5
    assert np.std(y[top] - x[top, 0]) == pytest.approx(0.05, rel=0.03)
    assert np.std(y[bottom] - x[bottom, 1]) == pytest.approx(0.5, rel=0.03)
    with pytest.raises(ValueError, match=r"noise_std must be a scalar or have shape \(k,\)"):
        mj.predict(params._replace(noise_std=jnp.ones(3)), x)
    with pytest.raises(ValueError, match="noise_std must be a positive"):
        mj.log_likelihood(params._replace(noise_std=jnp.array([0.1, 0.0])), x, y)
    with pytest.raises(ValueError, match=r"shape \(num_experts,\)"):
        mj.random_params(jax.random.key(0), 5, 2, noise_std=(0.1, 0.2, 0.3))


class PerExpertNoiseVariants(chex.TestCase):
    """The likelihood, posteriors and predictions with one sigma per expert, eager and jitted,
    against the float64 NumPy reference."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy(self):
        params = mj.random_params(jax.random.key(11), 6, 3, noise_std=(0.1, 0.4, 0.9),
                                  nonlinearity="tanh")
        x, y = mj.sample(jax.random.key(12), params, 300)
        ll_ref, post_ref = reference_log_lik(params, x, y, np.tanh)
        ll = self.variant(mj.log_likelihood)(params, x, y)
        post = self.variant(mj.posteriors)(params, x, y)
        pred = self.variant(mj.predict)(params, x)
        chex.assert_shape([post, pred], [(300, 3), (300,)])
        chex.assert_trees_all_close(float(ll), ll_ref, rtol=1e-5)
        chex.assert_trees_all_close(post, post_ref.astype(np.float32), atol=1e-5)
