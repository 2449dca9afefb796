import jax
import jax.numpy as jnp
import numpy as np
import pytest

import moejax as mj

PHI0 = 1.0 / np.sqrt(2.0 * np.pi)


def relu_closed_form(sigma):
    """Exact constants for g = relu from half-normal moments E[Z^q; Z > 0] (derived by hand):
    E[g He1] = 1/2, E[g He2] = phi0, E[g He3] = 0; E[g^2 He1] = 2 phi0, E[g^2 He2] = 1,
    E[g^2 He3] = 2 phi0; E[g^3 He1] = 3/2, E[g^3 He2] = 6 phi0, E[g^3 He3] = 3."""
    b = -4.0 * PHI0
    c2 = 1.0 - 2.0 / np.pi
    system = np.array([[2 * PHI0, 0.5], [1.0, PHI0]])
    rhs = -np.array([1.5 + 1.5 * sigma**2, 6 * PHI0 + 3 * sigma**2 * PHI0])
    a2, a1 = np.linalg.solve(system, rhs)
    c3 = 3.0 + 2.0 * PHI0 * a2
    return b, a1, a2, c2, c3


@pytest.mark.parametrize("sigma", [0.01, 0.1, 0.5, 2.0])
def test_linear_closed_form(sigma):
    c = mj.transform_constants("linear", sigma)
    np.testing.assert_allclose(c, [0.0, -3 * (1 + sigma**2), 0.0, 2.0, 6.0], atol=1e-4)


@pytest.mark.parametrize("sigma", [0.05, 0.1, 1.0])
def test_relu_closed_form(sigma):
    np.testing.assert_allclose(mj.transform_constants("relu", sigma), relu_closed_form(sigma),
                               atol=1e-4)


@pytest.mark.parametrize("name, expected", [
    # docs/algorithm.md section 2, sigma = 0.1: (b, a1, a2, c2, c3).
    ("tanh", (0.0, -0.7299, 0.0, 0.3636, 0.2335)),
    ("sigmoid", (-1.0, 0.6210, -1.5, 0.0624, 0.02277)),
])
def test_reference_values(name, expected):
    np.testing.assert_allclose(mj.transform_constants(name, 0.1), expected, atol=1e-3)


def test_relu_reference_values_are_low_order_quadrature():
    # A commonly quoted relu c2 is 0.3668; the exact value is 1 - 2/pi = 0.36338. 80-node
    # Gauss-Hermite reproduces the quoted number, so ours is checked against the closed form.
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    g = np.maximum(nodes, 0) * weights / np.sqrt(2 * np.pi)
    listed = np.sum(g * np.maximum(nodes, 0) * (nodes**2 - 1)) - 4 * PHI0 * np.sum(g * (nodes**2 - 1))
    assert abs(listed - 0.3668) < 1e-4
    assert abs(float(mj.transform_constants("relu", 0.1).c2) - (1 - 2 / np.pi)) < 1e-6


def test_constants_kill_lower_hermite_components():
    # The defining property: E[h2 He1] = E[h3 He1] = E[h3 He2] = 0, checked by Monte Carlo-free
    # quadrature independent of the implementation (numpy Gauss-Hermite, smooth g).
    nodes, weights = np.polynomial.hermite_e.hermegauss(120)
    weights = weights / np.sqrt(2 * np.pi)
    sigma = 0.3
    b, a1, a2, _, _ = map(float, mj.transform_constants("tanh", sigma))
    g = np.tanh(nodes)
    h2 = g**2 + sigma**2 + b * g
    h3 = g**3 + 3 * sigma**2 * g + a2 * (g**2 + sigma**2) + a1 * g
    assert abs(np.sum(weights * h2 * nodes)) < 1e-5
    assert abs(np.sum(weights * h3 * nodes)) < 1e-5
    assert abs(np.sum(weights * h3 * (nodes**2 - 1))) < 1e-5


def test_callable_matches_name_and_traced_sigma_matches_eager():
    by_name = mj.transform_constants("tanh", 0.2)
    by_fn = mj.transform_constants(jnp.tanh, 0.2)
    traced = jax.jit(lambda s: mj.transform_constants("tanh", s))(0.2)
    np.testing.assert_allclose(by_name, by_fn, atol=1e-6)
    np.testing.assert_allclose(by_name, traced, atol=1e-6)
    batched = jax.vmap(lambda s: mj.transform_constants("linear", s))(jnp.array([0.1, 1.0]))
    np.testing.assert_allclose(batched.a1, [-3.03, -6.0], rtol=1e-6)


def test_even_nonlinearity_is_rejected():
    with pytest.raises(ValueError, match="even g"):
        mj.transform_constants(lambda z: z**2, 0.1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        mj.transform_constants("swish", 0.1)
    with pytest.raises(ValueError, match="noise_std"):
        mj.transform_constants("linear", 0.0)
    with pytest.raises(ValueError, match="noise_std"):
        mj.transform_constants("linear", float("nan"))
    with pytest.raises(ValueError, match="finite values"):
        mj.transform_constants(jnp.log, 0.1)  # NaN for z < 0
    with pytest.raises(ValueError, match="elementwise"):
        mj.transform_constants(jnp.sum, 0.1)


def test_registered_names_stand_for_their_function(monkeypatch):
    monkeypatch.setattr(mj.nonlinearities, "_NAMED", dict(mj.nonlinearities._NAMED))
    mj.register_nonlinearity("my_softsign", jax.nn.soft_sign)
    mj.register_nonlinearity("my_softsign", jax.nn.soft_sign)  # again, same function: no-op
    assert "my_softsign" in mj.nonlinearity_names()
    np.testing.assert_allclose(mj.transform_constants("my_softsign", 0.2),
                               mj.transform_constants(jax.nn.soft_sign, 0.2), rtol=1e-6)
    p = mj.random_params(jax.random.key(0), 4, 2, nonlinearity="my_softsign")
    x = jax.random.normal(jax.random.key(1), (8, 4))
    np.testing.assert_allclose(mj.predict(p, x), mj.predict(p._replace(
        nonlinearity=jax.nn.soft_sign), x), rtol=1e-6)
    with pytest.raises(ValueError, match="already registered"):
        mj.register_nonlinearity("my_softsign", jnp.tanh)
    with pytest.raises(ValueError, match="built-in"):
        mj.register_nonlinearity("tanh", jnp.tanh)
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        mj.register_nonlinearity("", jnp.tanh)
    with pytest.raises(ValueError, match="fn must be"):
        mj.register_nonlinearity("bad", 3.0)
    with pytest.raises(ValueError, match="elementwise"):
        mj.register_nonlinearity("bad", lambda z: z[:1])
    assert "bad" not in mj.nonlinearity_names()


def test_constants_of_a_custom_jvp_function_are_computed_under_vmap():
    # jax.nn.relu is a custom_jvp function; its first use may come inside vmap (a sweep over
    # seeds), where its quadrature must still be evaluated, not traced. A new function object
    # misses the cache, so this is such a first use.
    @jax.custom_jvp
    def my_relu(z):
        return jnp.maximum(z, 0.0)

    my_relu.defjvp(lambda primals, tangents: (my_relu(primals[0]),
                                              tangents[0] * (primals[0] > 0)))
    f = lambda v: v * mj.output_second_moment(my_relu)
    out = jax.jit(jax.vmap(jax.vmap(f)))(jnp.ones((2, 3)))
    np.testing.assert_allclose(out, 0.5, rtol=1e-6)
