"""The regularised (MAP) fit of moejax.prior (docs/algorithm.md section 9): its M-steps, their
monotonicity in the penalised objective, the stationarity of the fit, and what it prevents
(sigma collapsing onto a few rows, gates saturating on separable rows)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import moejax as mj
from moejax import families, inference, io, joint, prior
from conftest import enable_x64


def test_sigma_map_update_matches_its_closed_form():
    sq, rows = np.array([3.0, 0.2, 50.0]), np.array([10.0, 1.0, 400.0])
    nu, s2 = 3.0, 1 / 9
    got = families.GAUSSIAN.scale_update(jnp.asarray(sq), jnp.asarray(rows), jnp.ones(3),
                                         1e-3, nu * s2, nu + 2)
    np.testing.assert_allclose(got, np.sqrt((sq + nu * s2) / (rows + nu + 2)), rtol=1e-6)
    shared = families.GAUSSIAN.scale_update(jnp.asarray(sq), jnp.asarray(rows),
                                            jnp.asarray(1.0), 1e-3, nu * s2, nu + 2)
    np.testing.assert_allclose(shared, np.sqrt((sq.sum() + nu * s2) / (rows.sum() + nu + 2)),
                               rtol=1e-6)
    # The MAP update maximises -(N/2 + nu/2 + 1) log s2 - (S + nu s^2) / (2 s2) over s2.
    grid = np.linspace(0.01, 2.0, 20001)
    objective = -(rows[0] / 2 + nu / 2 + 1) * np.log(grid) - (sq[0] + nu * s2) / (2 * grid)
    assert np.sqrt(grid[np.argmax(objective)]) == pytest.approx(float(got[0]), rel=1e-3)


def _problem(seed, n=400, d=3, k=3):
    rng = np.random.default_rng(seed)
    z = np.c_[rng.normal(size=(n, d)), np.ones(n)]
    y = np.where(z[:, 0] > 0, z[:, 1], -z[:, 2]) + 0.2 * rng.normal(size=n)
    theta = (rng.normal(size=(k, d + 1)), np.r_[rng.normal(size=(k - 1, d + 1)),
                                               np.zeros((1, d + 1))], np.log(np.full(k, 0.5)))
    return z, y, theta


@pytest.mark.parametrize("newton", [False, True])
def test_penalised_em_never_lowers_the_penalised_objective(newton):
    with enable_x64():
        for seed in range(3):
            z, y, theta = _problem(seed)
            pen = prior.penalty(mj.Prior(), 3, z.shape[1] - 1, jnp.float64)
            em_map = jax.jit(joint.joint_em_map(jnp.asarray(z), jnp.asarray(y), "linear", True,
                                                newton_gating=newton, penalty=pen))
            theta = jax.tree.map(jnp.asarray, theta)
            values = []
            for _ in range(60):
                theta, value = em_map(theta)
                values.append(float(value))
            rises = np.diff(values)
            assert rises.min() > -1e-10, (seed, rises.min())
            assert values[-1] > values[0] + 0.01  # it moved


def test_the_fit_is_a_stationary_point_of_the_penalised_objective():
    # The observed information and score of a prior fit include the prior: the Newton
    # decrement of the penalised objective is small (standard errors available), while the
    # plain log-likelihood's gradient at the same point is not 0.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    y = np.where(x[:, 0] > 0, 2 * x[:, 1], -x[:, 2]) + 0.3 * rng.normal(size=300)
    model = mj.fit(jax.random.key(0), x, y, num_experts=2)
    assert model.prior == mj.Prior()
    assert model.coefficients().problem is None
    s = model.inference
    penalised = float(s.score @ np.linalg.solve(s.information, s.score))
    assert penalised < 1e-3
    xs = np.asarray(model.design(x), np.float64)
    ys = (y - float(model.standardizer.y_mean)) / float(model.standardizer.y_scale)
    plain = inference.statistics(model.params, xs, ys, np.ones(len(y)),
                                 model.standardizer.y_scale, True)
    assert np.linalg.norm(plain.score) > 100 * np.linalg.norm(s.score)


def _one_regime(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, 3))
    return x, x @ [1.0, -2.0, 0.5] + 0.3 * rng.normal(size=300)


def test_the_prior_keeps_a_spurious_expert_from_collapsing():
    # One linear regime fitted with k = 2 (measured on seeds 0-4): by maximum likelihood one
    # expert takes 6-9 rows with sigma 0.001-0.05 sd(y); with the prior that expert is left
    # with fewer than 2 rows per parameter and is dropped (least squares), on every seed.
    for seed in range(3):
        x, y = _one_regime(seed)
        with pytest.warns(UserWarning, match="dropped and 1 expert"):
            model = mj.fit(jax.random.key(seed), x, y, num_experts=2, standard_errors=False)
        assert model.num_experts == 1
        plain = mj.fit(jax.random.key(seed), x, y, num_experts=2, prior=None,
                       standard_errors=False)
        # Maximum likelihood keeps the spurious expert (6-9 rows with jax 0.10.2; one seed
        # 23.5 with jax 0.4.30, the oldest supported).
        assert plain.num_experts == 2 and min(plain.report.effective_rows) < 50


def test_the_prior_keeps_gates_from_saturating_on_separable_rows():
    # The sign of x1 separates two regimes exactly. Measured on seeds 0-4: maximum
    # likelihood's gate slopes reach 860-8600 (every row decided by the gate alone); the
    # prior's stay at 11.5-11.9 (about half the rows).
    for seed in range(3):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(400, 2))
        y = np.where(x[:, 0] > 0, 2 * x[:, 1], -2 * x[:, 1]) + 0.05 * rng.normal(size=400)
        slopes = {}
        for name, p in (("map", mj.Prior()), ("ml", None)):
            model = mj.fit(jax.random.key(seed), x, y, num_experts=2, prior=p,
                           standard_errors=False)
            slopes[name] = float(np.abs(np.asarray(model.params.gating)[:, :-1]).max())
        assert slopes["map"] < 20 and slopes["ml"] > 200, slopes


def test_rows_bound_the_number_of_experts():
    x, y = _one_regime(0)
    with pytest.raises(ValueError, match="14 free parameters on d = 3 features, more than the "
                                         "8 rows"):
        mj.fit(jax.random.key(0), x[:8], y[:8], num_experts=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mj.fit(jax.random.key(0), x[:40], y[:40], num_experts=2, num_refine_iters=20,
               standard_errors=False)
    assert any("fewer than 5 rows per parameter" in str(w.message) for w in caught)
    assert mj.selection.supported_experts(69, 3) == 1
    assert mj.selection.supported_experts(70, 3) == 2  # 5 x 14 parameters
    for seed in range(3):  # 30 rows support k = 1 only: "auto" does not interpolate them
        x, y = _one_regime(seed)
        model = mj.fit(jax.random.key(seed), x[:30], y[:30], num_experts="auto")
        assert model.num_experts == 1 and list(model.selection.num_experts) == [1]


@pytest.mark.parametrize("bad, match", [
    ("strong", "prior must be a moejax.Prior or None"),
    (mj.Prior(gate_scale=0.0), "prior.gate_scale must be a positive finite number"),
    (mj.Prior(noise_dof=float("inf")), "prior.noise_dof must be a positive finite number"),
    (mj.Prior(noise_dof="3"), None),  # a numeric string is a number
])
def test_a_bad_prior_is_named(bad, match):
    if match is None:
        assert prior.check(bad) == mj.Prior(noise_dof=3.0)
        return
    x, y = _one_regime(0)
    with pytest.raises(ValueError, match=match):
        mj.fit(jax.random.key(0), x, y, num_experts=2, prior=bad)


def test_the_prior_is_saved_and_old_reports_load(tmp_path):
    z, y, _ = _problem(0)
    x = z[:, :-1]
    model = mj.fit(jax.random.key(0), x, y, num_experts=2, prior=mj.Prior(gate_scale=1.0),
                   num_refine_iters=50, standard_errors=False)
    io.save(tmp_path / "m.npz", model)
    loaded = io.load(tmp_path / "m.npz")
    assert loaded.prior == mj.Prior(gate_scale=1.0)
    np.testing.assert_array_equal(loaded.report.effective_rows, model.report.effective_rows)
    # A report saved before effective_rows existed (format 2 of an older moejax) loads.
    old = model.__class__(model.params, model.standardizer, report=model.report._replace(
        effective_rows=None, saturated_rows=None))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        io.save(tmp_path / "old.npz", old)
    loaded = io.load(tmp_path / "old.npz")
    assert loaded.prior is None and loaded.report.effective_rows is None
    assert loaded.degeneracy() == [] or "sigma" in loaded.degeneracy()[0]
