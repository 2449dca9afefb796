"""Compile once: what a fit compiles, counted through JAX's public monitoring events, and what
a new row count, a long-running process and a streamed pass leave behind."""

import threading

import jax
import numpy as np
import pytest

import moejax as mj

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles = []


def _listen(event, duration, **kwargs):
    if event == _COMPILE_EVENT:
        _compiles.append(duration)


jax.monitoring.register_event_duration_secs_listener(_listen)


def _count(fn):
    """The number of XLA programs compiled while fn runs, and its result."""
    before = len(_compiles)
    out = jax.block_until_ready(fn())
    return len(_compiles) - before, out


def _table(n, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = np.where(x[:, 0] > 0, 2 * x[:, 1], -x[:, 2]) + 0.1 * rng.normal(size=n)
    return x, y


_KW = dict(num_experts=2, num_refine_iters=30, num_refine_inits=3)


def test_first_fit_is_a_few_programs_and_a_new_row_count_in_its_bucket_compiles_none():
    # A shape no other test uses (d = 7): the first fit compiles its programs (the fit, the
    # standard errors, a few key and transfer helpers), fits of other row counts in the same
    # bucket (385..512 rows) compile nothing, and neither do the model's per-row methods.
    x, y = _table(576, d=7)
    first, model = _count(lambda: mj.fit(jax.random.key(0), x[:500], y[:500], **_KW))
    assert first <= 15
    for n in (400, 457, 512):
        again, model = _count(lambda: mj.fit(jax.random.key(n), x[:n], y[:n], **_KW))
        assert again == 0, n
    calls = [lambda m, a, b: m.predict(a), lambda m, a, b: m.log_likelihood(a, b),
             lambda m, a, b: m.posteriors(a, b), lambda m, a, b: m.clusters(a, b),
             lambda m, a, b: m.predict_interval(a), lambda m, a, b: m.mixing_weights(a),
             lambda m, a, b: m.log_density(a, b), lambda m, a, b: m.predict_variance(a),
             lambda m, a, b: m.sample_response(jax.random.key(0), a),
             lambda m, a, b: m.expert_means(a)]
    for call in calls:
        _count(lambda: call(model, x[:390], y[:390]))  # compiles for the bucket, once
        for n in (401, 502, 512):
            count, out = _count(lambda: call(model, x[:n], y[:n]))
            assert count == 0
            leaves = jax.tree.leaves(out)
            assert all(v.shape[:1] in ((n,), (2,), ()) for v in leaves)


def test_padded_rows_change_nothing_in_the_per_row_methods():
    # The host pads rows to the bucket and cuts the outputs back: the same numbers as the
    # model evaluated on the rows as JAX arrays (no padding), to float rounding.
    x, y = _table(300)
    model = mj.fit(jax.random.key(1), x, y, **_KW)
    xs, ys = x[:217], y[:217]
    np.testing.assert_allclose(model.predict(xs), model.predict(jax.numpy.asarray(xs)),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.log_likelihood(xs, ys),
                               model.log_likelihood(jax.numpy.asarray(xs),
                                                    jax.numpy.asarray(ys)), rtol=1e-5)
    np.testing.assert_allclose(model.mixing_weights(xs),
                               model.mixing_weights(jax.numpy.asarray(xs)), rtol=1e-5)
    lower, upper = model.predict_interval(xs)
    assert lower.shape == upper.shape == (217,) and bool(np.all(lower < upper))


def test_many_fits_of_varying_size_keep_a_bounded_set_of_programs():
    # Thirty fits of 130..191 rows (one bucket: 129..192): the first compiles, the rest
    # reuse it, so a long-running process does not keep compiling (nor growing).
    x, y = _table(192, seed=2)
    sizes = np.random.default_rng(0).integers(130, 192, size=30)
    counts = [_count(lambda: mj.fit(jax.random.key(int(n)), x[:n], y[:n],
                                    **_KW).params)[0] for n in sizes]
    assert sum(counts[1:]) == 0, counts


def test_selection_compiles_per_bucket_not_per_fold():
    x, y = _table(240, seed=3)
    mj.select_num_experts(jax.random.key(0), x, y, max_experts=2, num_folds=2,
                          num_refine_iters=20, num_refine_inits=2)
    count, _ = _count(lambda: mj.select_num_experts(
        jax.random.key(1), x[:230], y[:230], max_experts=2, num_folds=2, num_refine_iters=20,
        num_refine_inits=2).bic)
    assert count == 0


def test_recover_on_numpy_compiles_nothing_for_a_new_row_count_in_its_bucket():
    # NumPy rows are padded to the bucket (385..512 rows) with weight-0 rows, sigma learned
    # and given; the padded estimate equals the one on the rows as JAX arrays (no padding).
    rng = np.random.default_rng(5)
    x = rng.normal(size=(512, 4))
    y = np.tanh(x @ np.array([1.0, -0.5, 0.3, 0.0])) + 0.1 * rng.normal(size=512)
    for noise_std in (None, 0.1):
        kw = dict(num_experts=2, noise_std=noise_std)
        mj.recover(jax.random.key(0), x[:400], y[:400], **kw)
        for n in (401, 457, 512):
            count, (params, info) = _count(lambda: mj.recover(jax.random.key(n), x[:n], y[:n],
                                                              **kw))
            assert count == 0, (noise_std, n)
        ref, _ = mj.recover(jax.random.key(1), jax.numpy.asarray(x[:457]),
                            jax.numpy.asarray(y[:457]), **kw)
        got, _ = mj.recover(jax.random.key(1), x[:457], y[:457], **kw)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4)
    count, _ = _count(lambda: mj.recover_experts(jax.random.key(0), x[:420], y[:420],
                                                 num_experts=2, noise_std=0.1))
    count, _ = _count(lambda: mj.recover_experts(jax.random.key(0), x[:499], y[:499],
                                                 num_experts=2, noise_std=0.1))
    assert count == 0


@pytest.mark.parametrize("read_ahead", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_a_streamed_pass_leaves_no_thread_behind(read_ahead):
    x, y = _table(2000, seed=4)
    before = set(threading.enumerate())
    for _ in range(2):  # each a new wrapper
        mj.recover(jax.random.key(0), mj.streamed(x, read_ahead=read_ahead),
                   mj.streamed(y, read_ahead=read_ahead), num_experts=2, chunk_size=512)
    for thread in set(threading.enumerate()) - before:  # the last read-ahead may be finishing
        thread.join(timeout=10)
    assert set(threading.enumerate()) <= before


def test_a_new_wrapper_of_the_same_rows_reuses_the_program_and_reports_its_own_errors(
        tmp_path):
    # Fresh streamed() wrappers of one memmap file: the first call compiles, the next compile
    # nothing and give the same estimate; each wrapper counts its own rows. A wrapper of
    # another file (same shape) reads that file's rows, not the first one's.
    x, y = _table(1500, seed=6)
    files = []
    for i, (a, b) in enumerate([(x, y), (x[::-1].copy(), y[::-1].copy())]):
        np.save(tmp_path / f"x{i}.npy", a.astype(np.float32))
        np.save(tmp_path / f"y{i}.npy", b.astype(np.float32))
        files.append((np.load(tmp_path / f"x{i}.npy", mmap_mode="r"),
                      np.load(tmp_path / f"y{i}.npy", mmap_mode="r")))

    def run(i):
        xs, ys = (mj.streamed(a) for a in files[i])
        params, _ = mj.recover(jax.random.key(0), xs, ys, num_experts=2, chunk_size=512)
        return params, xs.rows_read

    _, first_rows = run(0)
    counts, results = zip(*[_count(lambda: run(0)) for _ in range(3)])
    assert counts == (0, 0, 0)
    assert all(rows == first_rows for _, rows in results)
    for params, _ in results[1:]:
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(results[0][0])):
            np.testing.assert_array_equal(a, b)
    # The reversed rows: same moments up to summation order, so the same estimate to rounding,
    # but read from the other file: a stale wrapper would count no rows of its own.
    other, other_rows = run(1)
    assert other_rows == first_rows
    np.testing.assert_allclose(other.experts, results[0][0].experts, atol=1e-4)
