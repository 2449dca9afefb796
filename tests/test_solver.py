import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax import solver


def _contraction(rates, dim=6):
    """m problems: F(theta) = theta* + A (theta - theta*), A diagonal with entries in
    [0, rate], L(theta) = -||theta - theta*||^2 / 2. Plain iteration converges linearly at
    `rate` (slowly for rate near 1) and never lowers L; the fixed point is theta*."""
    rates = jnp.asarray(rates, jnp.float32)
    diag = rates[:, None] * jnp.linspace(0.2, 1.0, dim)[None, :]
    target = jnp.arange(dim, dtype=jnp.float32)[None, :] * jnp.ones((len(rates), 1))

    def em_map(theta):
        (t,) = theta
        return (target + diag * (t - target),), -0.5 * jnp.sum(jnp.square(t - target), axis=1)

    return em_map, (jnp.zeros((len(rates), dim), jnp.float32),), target


@pytest.mark.parametrize("accelerate", [False, True])
def test_reaches_the_fixed_point_and_reports_it(accelerate):
    em_map, start, target = _contraction([0.9])
    (theta,), info = solver.iterate(em_map, start, tol=1e-12, max_iters=1000,
                                    accelerate=accelerate)
    assert bool(info.converged[0]) and bool(info.finite[0])
    np.testing.assert_allclose(theta, target, atol=1e-4)
    assert float(info.log_likelihood[0]) == pytest.approx(
        -0.5 * float(jnp.sum(jnp.square(theta - target))), rel=1e-5)
    trace = np.asarray(info.trace[:, 0])
    assert np.all(np.diff(trace) >= 0)
    used = int(info.num_iters[0])
    assert np.all(trace[used:] == trace[-1])
    per_iter = 2 if accelerate else 1
    assert int(info.num_passes) == 1 + per_iter * used


def test_squarem_needs_far_fewer_passes_on_a_slow_map():
    em_map, start, _ = _contraction([0.99])
    _, plain = solver.iterate(em_map, start, tol=1e-10, max_iters=5000, accelerate=False)
    _, fast = solver.iterate(em_map, start, tol=1e-10, max_iters=5000, accelerate=True)
    assert bool(plain.converged[0]) and bool(fast.converged[0])
    assert float(fast.log_likelihood[0]) >= float(plain.log_likelihood[0]) - 1e-6
    assert 5 * int(fast.num_passes) < int(plain.num_passes), (fast.num_passes, plain.num_passes)


def test_cap_reached_means_not_converged():
    em_map, start, _ = _contraction([0.99])
    _, info = solver.iterate(em_map, start, tol=1e-12, max_iters=3, accelerate=False)
    assert not bool(info.converged[0]) and int(info.num_iters[0]) == 3
    _, none = solver.iterate(em_map, start, tol=1e-12, max_iters=0)
    assert int(none.num_iters[0]) == 0 and int(none.num_passes) == 1
    assert not bool(none.converged[0]) and none.trace.shape == (0, 1)


def test_problems_in_one_batch_stop_independently():
    # A fast and a slow problem together: each gets the iterations it gets alone.
    em_map, start, _ = _contraction([0.3, 0.95])
    (both,), info = solver.iterate(em_map, start, tol=1e-10, max_iters=2000, accelerate=False)
    assert int(info.num_iters[0]) < int(info.num_iters[1])
    for j, rate in enumerate([0.3, 0.95]):
        em_one, start_one, _ = _contraction([rate])
        (alone,), one = solver.iterate(em_one, start_one, tol=1e-10, max_iters=2000,
                                       accelerate=False)
        assert int(one.num_iters[0]) == int(info.num_iters[j])
        np.testing.assert_array_equal(alone[0], both[j])


def test_a_map_that_breaks_stops_with_its_last_finite_iterate():
    # F returns NaN once theta passes 3 in its first coordinate: the run must stop there,
    # say finite = False, and return the last finite iterate instead of NaN.
    def em_map(theta):
        (t,) = theta
        new = t + 1.0
        new = jnp.where(new[:, :1] > 3.0, jnp.nan, new)
        return (new,), jnp.sum(t, axis=1)

    (theta,), info = solver.iterate(em_map, (jnp.zeros((1, 2)),), tol=1e-12, max_iters=50,
                                    accelerate=False)
    assert not bool(info.finite[0]) and not bool(info.converged[0])
    assert np.all(np.isfinite(theta)) and float(theta[0, 0]) == 3.0


def test_jit_and_vmap_agree_with_eager():
    em_map, start, _ = _contraction([0.8])
    run = lambda t: solver.iterate(em_map, (t,), tol=1e-10, max_iters=200)
    eager = run(start[0])
    jitted = jax.jit(run)(start[0])
    np.testing.assert_allclose(jitted[0][0], eager[0][0], rtol=1e-6)
    batched = jax.vmap(run)(jnp.stack([start[0], start[0] + 1.0]))
    np.testing.assert_allclose(batched[0][0][0], eager[0][0], rtol=1e-6)
    assert int(batched[1].num_iters[0, 0]) == int(eager[1].num_iters[0])


def test_screening_keeps_the_best_starts_and_runs_only_them_on():
    # One problem with five local optima T_j of heights c_j, each start in its own basin:
    # F(theta) = T + (theta - T) / 2 and L = c - ||theta - T||^2 / 2 for the nearest T.
    heights = jnp.array([0.0, 3.0, 1.0, 2.0, -1.0])
    optima = 10.0 * jnp.arange(5.0)[:, None] * jnp.ones((1, 6))

    def shifted(theta):
        (t,) = theta
        j = jnp.argmin(jnp.sum(jnp.square(t[:, None] - optima[None]), axis=-1), axis=1)
        near = optima[j]
        return (near + 0.5 * (t - near),), heights[j] - 0.5 * jnp.sum(jnp.square(t - near), 1)

    start = (optima + 1.0,)
    target = optima[jnp.array([1, 3])]
    (theta,), kept, info = solver.iterate_screened(shifted, start, tol=1e-10, max_iters=200,
                                                   screen_iters=5, keep=2, accelerate=False)
    assert np.asarray(kept).tolist() == [1, 3]
    np.testing.assert_allclose(theta, target[:2], atol=1e-3)
    used = np.asarray(info.num_iters)
    assert np.all(used[[0, 2, 4]] == 5) and np.all(used[[1, 3]] > 5)
    assert np.all(np.asarray(info.converged)[[1, 3]])
    np.testing.assert_allclose(np.asarray(info.log_likelihood)[[1, 3]], [3.0, 2.0], atol=1e-5)
    # The dropped starts' traces stop where screening left them.
    trace = np.asarray(info.trace)
    assert np.all(trace[5:, 0] == trace[-1, 0])
    assert np.all(np.diff(trace[:, 1]) >= 0)


def test_screening_with_keep_at_least_m_is_plain_iterate():
    em_map, start, _ = _contraction([0.5, 0.9])
    a, _, info_a = solver.iterate_screened(em_map, start, tol=1e-9, max_iters=100,
                                           screen_iters=5, keep=2)
    b, info_b = solver.iterate(em_map, start, tol=1e-9, max_iters=100)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(info_a.num_iters, info_b.num_iters)


def test_a_map_that_is_not_monotone_stops_on_the_size_of_the_change():
    # L falls by 1 each step: for an EM map (monotone) a fall meets the stopping rule at once;
    # for a gradient step it is not convergence, and the run goes to its cap.
    def falling(theta):
        (t,) = theta
        return (t + 1.0,), -t[:, 0]

    start = (jnp.zeros((1, 1)),)
    _, em = solver.iterate(falling, start, tol=1e-6, max_iters=20, accelerate=False)
    _, gd = solver.iterate(falling, start, tol=1e-6, max_iters=20, accelerate=False,
                           monotone=False)
    assert bool(em.converged[0]) and int(em.num_iters[0]) == 1
    assert not bool(gd.converged[0]) and int(gd.num_iters[0]) == 20
    np.testing.assert_allclose(gd.trace[:, 0], -np.arange(20.0))
