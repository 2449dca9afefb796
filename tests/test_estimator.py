import dataclasses
import functools
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import moejax as mj
from conftest import truth_and_data


def _affine(seed, n, nonlinearity="linear"):
    """Synthetic data in 'real' units: x = 3 z + 7 (z the model's N(0, I) inputs), y = 50 + 4 y_model."""
    truth, z, y = truth_and_data(seed, n, nonlinearity)
    return truth, 3.0 * z + 7.0, 50.0 + 4.0 * y


@pytest.mark.slow  # 50,000 rows, about 28 s; test_fit_works_in_tiny_and_huge_units and test_log_likelihood_is_in_original_units cover units
def test_fit_on_shifted_scaled_data_predicts_in_original_units():
    truth, x, y = _affine(0, 50_000)
    model = mj.fit(jax.random.key(0), x, y, num_experts=3, num_refine_inits=2)
    z_test, y_test = mj.sample(jax.random.key(99), truth, 5000)  # held out, same truth
    x_test, y_test = 3.0 * z_test + 7.0, 50.0 + 4.0 * y_test
    # Oracle: the true model on the model-scale inputs.
    oracle = 50.0 + 4.0 * mj.predict(truth, (x_test - 7.0) / 3.0)
    mse_model = float(jnp.mean(jnp.square(model.predict(x_test) - y_test)))
    mse_oracle = float(jnp.mean(jnp.square(oracle - y_test)))
    assert mse_model < 1.05 * mse_oracle
    # sigma comes back in target units, one per expert (the truth shares it): 4 * 0.1.
    assert model.noise_std.shape == (3,)
    np.testing.assert_allclose(model.noise_std, 0.4, rtol=0.1)
    # Intercepts: centred data need none, so they come back near 0.
    assert float(jnp.max(jnp.abs(model.params.experts[:, -1]))) < 0.05


@pytest.mark.slow  # 50,000 rows, about 25 s; test_one_expert_is_ordinary_least_squares_in_data_units checks intercepts in the default suite
def test_intercepts_are_estimated():
    # y = g(a_i . x) + b_i with b = (1, -1, 0.5) per expert: the refinement must find them.
    truth, z, y_model = truth_and_data(1, 50_000)
    z_assign = jnp.argmax(mj.posteriors(truth, z, y_model), axis=1)
    b = jnp.array([1.0, -1.0, 0.5])
    y = y_model + b[z_assign]
    model = mj.fit(jax.random.key(1), z, y, num_experts=3, whiten=False, num_refine_iters=200)
    scale = float(model.standardizer.y_scale)
    found = np.sort(np.asarray(model.params.experts[:, -1]) * scale + float(model.standardizer.y_mean))
    np.testing.assert_allclose(found, np.sort(np.asarray(b)), atol=0.1)


def test_log_likelihood_is_in_original_units():
    _, x, y = _affine(2, 5000)
    model = mj.fit(jax.random.key(0), x, y, num_experts=3, num_refine_iters=10, num_refine_inits=1)
    # Changing the target's units by 10 moves the density by -log 10 per row.
    shifted = mj.FittedMoE(model.params, model.standardizer._replace(
        y_mean=model.standardizer.y_mean * 10, y_scale=model.standardizer.y_scale * 10))
    np.testing.assert_allclose(shifted.log_likelihood(x, 10 * y),
                               model.log_likelihood(x, y) - np.log(10), rtol=1e-5)


def test_fitted_model_is_a_pytree_through_jit():
    _, x, y = _affine(3, 5000)
    model = mj.fit(jax.random.key(0), x, y, num_experts=3, num_refine_iters=5, feature_names=list("abcdefghij"))
    jitted = jax.jit(lambda m, x: m.predict(x))(model, x[:10])
    np.testing.assert_allclose(jitted, model.predict(x[:10]), rtol=1e-5)
    # params (3), standardizer (4), the refinement's report (10), training statistics (7).
    assert jax.tree_util.tree_structure(model).num_leaves == 24


def test_fit_rejects_bad_arguments():
    _, x, y = _affine(0, 500)
    with pytest.raises(ValueError, match="nonlinearity"):
        mj.fit(jax.random.key(0), x, y, num_experts=3, nonlinearity=jnp.tanh)
    with pytest.raises(ValueError, match="num_refine_iters"):
        mj.fit(jax.random.key(0), x, y, num_experts=3, num_refine_iters=-1)
    with pytest.raises(ValueError, match="feature_names"):
        mj.fit(jax.random.key(0), x, y, num_experts=3, feature_names=["a"])
    with pytest.raises(ValueError, match="num_experts"):
        mj.fit(jax.random.key(0), x, y, num_experts=0)


def test_fit_keeps_the_best_start_and_reports_convergence():
    truth, x, y = _affine(4, 20_000)
    # 8 starts: all are screened, REFINE_KEEP = 4 go on to convergence.
    model = mj.fit(jax.random.key(0), x, y, num_experts=3, num_refine_inits=7)
    report = model.report
    assert report.log_likelihood.shape == (8,) and report.converged.shape == (8,)
    assert int(np.sum(report.continued)) == mj.refinement.REFINE_KEEP
    best = int(report.best)
    assert bool(report.continued[best]) and bool(report.converged[best])
    assert float(report.log_likelihood[best]) >= float(np.max(report.log_likelihood)) - 1e-6
    dropped = ~np.asarray(report.continued)
    assert np.all(np.asarray(report.num_iters)[dropped] <= mj.refinement.REFINE_SCREEN_ITERS)
    assert int(np.min(np.asarray(report.num_iters)[~dropped])) > 0
    # The reported objective is that of the returned parameters (standardised scale): the
    # log-likelihood plus the default prior's log density, per row.
    z = mj.fitted.design_matrix(model.standardizer, x)
    ys = mj.transform_target(model.standardizer, y)
    pen = mj.prior.penalty(model.prior, 3, x.shape[1], jnp.float32)
    log_prior = mj.prior.log_prior(pen, model.params, True)
    assert float(mj.log_likelihood(model.params, z, ys)) + float(log_prior) / len(y) == (
        pytest.approx(float(report.log_likelihood[best]), abs=1e-5))


def test_fit_works_in_tiny_and_huge_units():
    # Standardisation is computed on rescaled columns: units of 1e-20 or 1e15 in y give the
    # same predictions, in those units, as the plain data.
    _, x, y = _affine(5, 4000)
    kw = dict(num_experts=3, num_refine_iters=50, num_refine_inits=0)
    plain = mj.fit(jax.random.key(0), x, y, **kw).predict(x[:100])
    for unit in (1e-20, 1e15):
        scaled = mj.fit(jax.random.key(0), x, y * unit, **kw).predict(x[:100])
        np.testing.assert_allclose(np.asarray(scaled) / unit, plain, rtol=2e-3, atol=2e-3)


@pytest.mark.slow  # about 24 s; test_compilation counts the same in the default suite
def test_a_new_row_count_in_the_same_bucket_does_not_recompile(monkeypatch):
    # 700 and 650 rows share the bucket of 768 rows: the second fit reuses the compiled moment
    # stage, gating EM and refinement.
    # The traces of the three compiled stages are counted, each wrapped anew for this test.
    import importlib
    estimator, gating, recover, refinement = (importlib.import_module(f"moejax.{m}") for m in
                                              ("estimator", "gating", "recover", "refinement"))
    stages = ((estimator, "_recover_experts", recover._recover_experts, (
                  "num_experts", "nonlinearity", "num_inits", "num_iters", "num_subspace_iters",
                  "layout")),
              (gating, "_fit_gating", gating._fit_gating, (
                  "nonlinearity", "num_inits", "num_iters", "learn_noise_std", "layout",
                  "matrix_free", "accelerate", "screen_iters")),
              (refinement, "refine_starts", refinement.refine_starts,
               ("num_iters", "learn", "layout", "refiner")))
    traces = {}

    def counted(name, fn):
        def traced(*args, **kwargs):
            traces[name] = traces.get(name, 0) + 1
            return fn(*args, **kwargs)
        return traced

    for module, name, jitted, static in stages:
        monkeypatch.setattr(module, name, jax.jit(counted(name, jitted.__wrapped__),
                                                  static_argnames=static))
    # A fresh fit program, so that the stages are traced here even if another test in this
    # process compiled the same shapes.
    monkeypatch.setattr(estimator, "_fit_program", mj.compilation.jit(
        estimator._fit_program.fn, static_argnames=("config", "layout")))
    _, x, y = _affine(4, 700)
    kw = dict(num_experts=2, num_refine_iters=20, num_refine_inits=2)
    first = mj.fit(jax.random.key(0), x, y, **kw)
    second = mj.fit(jax.random.key(0), x[:650], y[:650], **kw)
    assert np.isfinite(float(second.log_likelihood(x[:650], y[:650])))
    assert first.params.experts.shape == second.params.experts.shape
    assert traces == {name: 1 for _, name, _, _ in stages}  # traced by the first fit only


@pytest.mark.slow  # make test-all (two more fit compilations); refine's and recover's chunks
# are tested in the default suite
def test_fit_in_chunks_matches_one_block():
    # chunk_size reaches every pass (moment stage, gating EM, refinement); only the summation
    # order changes, so the same start wins and the fits agree to float32 rounding.
    _, x, y = _affine(4, 3000)
    kw = dict(num_experts=3, num_refine_iters=20, num_refine_inits=2)
    ref = mj.fit(jax.random.key(0), x, y, **kw)
    got = mj.fit(jax.random.key(0), x, y, chunk_size=512, **kw)
    assert int(got.report.best) == int(ref.report.best)
    assert float(got.log_likelihood(x, y)) == pytest.approx(float(ref.log_likelihood(x, y)),
                                                            abs=1e-4)
    np.testing.assert_allclose(got.predict(x[:100]), ref.predict(x[:100]), rtol=1e-3, atol=1e-3)


def test_one_expert_is_ordinary_least_squares_in_data_units():
    # fit(num_experts=1): the regression of y on x (numpy's lstsq in float64) and sigma the
    # maximum-likelihood residual sd; a given sigma is kept and has no standard error.
    rng = np.random.default_rng(5)
    x = rng.normal(size=(200, 3)) * [1.0, 10.0, 0.1] + [0.0, 50.0, -3.0]
    y = x @ np.array([1.0, 0.2, -4.0]) + 7.0 + 0.5 * rng.normal(size=200)
    model = mj.fit(jax.random.key(0), x, y, num_experts=1)
    design = np.c_[np.ones(200), x]
    beta, rss = np.linalg.lstsq(design, y, rcond=None)[:2]
    coef = model.coefficients()
    expert = coef.estimate[coef.block == "expert"]
    np.testing.assert_allclose(expert, beta, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(float(model.noise_std), np.sqrt(rss[0] / 200), rtol=1e-4)
    np.testing.assert_allclose(model.predict(x[:5]), design[:5] @ beta, rtol=1e-4)
    fixed = mj.fit(jax.random.key(0), x, y, num_experts=1, noise_std=0.7)
    assert float(fixed.noise_std) == pytest.approx(0.7) and not fixed.noise_learned
    with pytest.raises(ValueError, match="least squares .* at least d \\+ 2 = 5 rows"):
        mj.fit(jax.random.key(0), x[:4], y[:4], num_experts=1)


def test_dataframe_columns_and_series_name_become_the_model_names():
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(6)
    frame = pd.DataFrame(rng.normal(size=(120, 2)), columns=["speed", "angle"])
    target = pd.Series(frame["speed"] - frame["angle"] + 0.1 * rng.normal(size=120),
                       name="sound")
    model = mj.fit(jax.random.key(0), frame, target, num_experts=1)
    assert model.feature_names == ("speed", "angle") and model.target_name == "sound"
    named = mj.fit(jax.random.key(0), frame, target, num_experts=1, feature_names=["a", "b"],
                   target_name="t")
    assert named.feature_names == ("a", "b") and named.target_name == "t"


def test_a_dataframe_is_matched_to_the_fitted_columns_by_name():
    # The newcomer's silent case: columns in another order were read by position. Now they
    # are selected by name; missing, unknown or repeated names are refused, listed; NumPy rows
    # stay positional.
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(rng.normal(size=(300, 4)), columns=["a", "b", "c", "d"])
    y = np.where(frame.a > 0, 2 * frame.b, -frame.c) + frame.d + 0.1 * rng.normal(size=300)
    model = mj.fit(jax.random.key(0), frame, y, num_experts=2, num_refine_iters=30)
    want = model.predict(frame.to_numpy())
    reordered = frame[["d", "c", "b", "a"]]
    np.testing.assert_array_equal(model.predict(reordered), want)
    np.testing.assert_array_equal(model.log_density(reordered, y), model.log_density(frame, y))
    assert np.abs(model.predict(reordered.to_numpy()) - want).max() > 0.1  # positional
    for bad, listed in [(frame.rename(columns={"a": "z"}), "missing: ['a']; not fitted: ['z']"),
                        (frame[["a", "b", "c"]], "missing: ['d']"),
                        (frame.assign(e=1.0), "not fitted: ['e']")]:
        with pytest.raises(ValueError, match=re.escape(listed)):
            model.predict_interval(bad)


def test_data_errors_name_the_rows_and_columns_at_fault():
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(8)
    frame = pd.DataFrame(rng.normal(size=(200, 3)), columns=["speed", "angle", "chord"])
    target = pd.Series(frame.speed * 2 + 0.1 * rng.normal(size=200), name="sound")
    holes = frame.copy()
    holes.iloc[[3, 17], [1, 2]] = np.nan
    with pytest.raises(ValueError, match=re.escape(
            "x contains 4 NaN or infinite value(s): row 3 (from 0), column 'angle' = nan; "
            "row 3 (from 0), column 'chord' = nan; row 17 (from 0), column 'angle' = nan")):
        mj.fit(jax.random.key(0), holes, target, num_experts=2)
    with pytest.raises(ValueError, match=re.escape("row 0 (from 0), column 'note' = 'ok'")):
        mj.fit(jax.random.key(0), frame.assign(note="ok"), target, num_experts=2)
    with pytest.raises(ValueError, match=re.escape("y ('sound') is constant")):
        mj.fit(jax.random.key(0), frame, target * 0 + 3, num_experts=2)
    with pytest.raises(ValueError, match=re.escape("collinear columns") + ".*"
                       + re.escape("column 'speed'; column 'twice'")):
        mj.fit(jax.random.key(0), frame.assign(twice=2 * frame.speed), target, num_experts=2)
    model = mj.fit(jax.random.key(0), frame, target, num_experts=1)
    holes.iloc[5, 0] = np.inf
    with pytest.raises(ValueError, match=re.escape("row 3 (from 0), column 'angle' = nan")):
        model.predict(holes)
    # Numbers held as Python objects (a column pandas left as object) are numbers.
    np.testing.assert_allclose(model.predict(frame.astype(object)), model.predict(frame))


def test_a_huge_fit_says_what_it_costs_before_it_starts():
    # k = 300 experts on a million rows of 300 features (the audit's hang): the cost of one
    # refinement pass is announced, and a warning says it is large, before any compilation.
    from moejax.refinement import announce_cost, refinement_cost
    work, memory = refinement_cost(1_000_000, 300, 300, 17, None, 4)
    assert work == 17 * 1_000_000 * 300 * (2 * 301 + 301 ** 2)
    assert memory == 4 * 17 * 300 * (8 * 1_000_000 + 301 ** 2)
    assert refinement_cost(1_000_000, 300, 300, 17, 4096, 4)[1] < memory / 50  # chunks bound it
    lines = []
    with pytest.warns(UserWarning, match="this fit is large") as caught:
        announce_cost(1_000_000, 300, 300, 17, 3000, None, 4, lines.append)
    assert caught[0].filename == __file__
    assert lines == [f"refinement cost: {work:.2g} multiply-adds and {memory / 2**20:.0f} MiB of "
                     "temporaries per pass of its 17 starts, at most 6000 passes"]
    small = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a table-sized fit announces its cost, no warning
        announce_cost(1500, 5, 2, 17, 3000, None, 4, small.append)
    assert len(small) == 1


def test_the_refinement_reads_its_solver_from_the_refiner_registry(monkeypatch):
    # A registered refiner is what fit runs: here joint EM under another name, which must give
    # the default fit exactly, and an unknown name is refused before the data are read.
    from moejax import refinement
    monkeypatch.setitem(refinement.REFINERS, "joint_em_again", refinement.REFINERS["joint_em"])
    _, x, y = _affine(3, 400)
    kw = dict(num_experts=2, num_refine_iters=40, num_refine_inits=2, standard_errors=False)
    default = mj.fit(jax.random.key(0), x, y, **kw)
    again = mj.fit(jax.random.key(0), x, y, refiner="joint_em_again", **kw)
    np.testing.assert_array_equal(default.params.experts, again.params.experts)
    with pytest.raises(ValueError, match="refiner must be one of"):
        mj.fit(jax.random.key(0), x, y, refiner="newton", **kw)


def test_more_experts_than_features_from_random_starts():
    # One feature, three linear regimes (slopes -1, 2, 3; noise sd 0.1): k = 3 > d = 1 has no
    # moment start, and the random starts find the regimes. Over seeds 0-3 the slopes were
    # within 0.02 of the truth and sigma 0.109-0.122; thresholds 3x that.
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        x = rng.uniform(-3, 3, size=(600, 1))
        y = np.where(x[:, 0] < -1, 2 * x[:, 0] + 4,
                     np.where(x[:, 0] < 1, -x[:, 0], 3 * x[:, 0] - 4)) + 0.1 * rng.normal(size=600)
        model = mj.fit(jax.random.key(seed), x, y, num_experts=3, num_refine_iters=300)
        assert not model.moment_start and "random start" in model.summary()
        c = model.coefficients()
        slopes = np.sort(c.estimate[(c.block == "expert") & (c.term == "x1")])
        np.testing.assert_allclose(slopes, [-1.0, 2.0, 3.0], atol=0.06)
        assert np.all((0.07 < np.asarray(model.noise_std)) & (np.asarray(model.noise_std) < 0.16))
    with pytest.raises(ValueError, match="no moment start .* num_refine_iters must be positive"):
        mj.fit(jax.random.key(0), x, y, num_experts=3, num_refine_iters=0)


def test_a_prediction_far_outside_the_training_targets_is_reported(tmp_path):
    # The audit's absurd prediction (160 for a target within 5-50) is never silent: a row far
    # outside the training rows, sent by the gate to an extrapolated expert, gets a warning and
    # a flag; rows inside the training range do not. The range is saved with the model.
    rng = np.random.default_rng(9)
    x = rng.uniform(0, 1, size=(300, 2))
    y = np.where(x[:, 0] > 0.5, 5 + 40 * x[:, 1], 50 - 40 * x[:, 1]) + rng.normal(size=300)
    model = mj.fit(jax.random.key(0), x, y, num_experts=2, num_refine_iters=100)
    assert model.target_range == (float(y.astype(np.float32).min()),
                                  float(y.astype(np.float32).max()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(x)  # the training rows: no warning
    far = np.array([[0.9, 5.0], [0.2, -4.0], [0.5, 0.5]])
    with pytest.warns(UserWarning, match=r"2 of 3 predictions lie more than half the training "
                                         r"targets' range beyond it"):
        pred = model.predict(far)
    assert pred[0] > 50 + 23 and pred[1] > 50 + 23
    np.testing.assert_array_equal(model.far_predictions(far), [True, True, False])
    assert not model.far_predictions(x).any()
    mj.io.save(tmp_path / "m.npz", model)
    assert mj.io.load(tmp_path / "m.npz").target_range == model.target_range


# Binomial and Poisson experts: two regimes chosen by a soft gate on x1, each a GLM on
# another column. True coefficients [intercept, x1, x2, x3] per expert.
_GLM_TRUTH = {"binomial": ([0.5, 0.0, 1.5, 0.0], [-0.3, 0.0, 0.0, -1.2]),
              "poisson": ([1.0, 0.0, 0.7, 0.0], [0.3, 0.0, 0.0, -0.5])}


def _glm_data(family, seed, n=2000):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    first = rng.uniform(size=n) < 1 / (1 + np.exp(-3 * x[:, 0]))
    a, b = (np.asarray(t) for t in _GLM_TRUTH[family])
    eta = np.where(first, a[0] + x @ a[1:], b[0] + x @ b[1:])
    if family == "binomial":
        return x, (rng.uniform(size=n) < 1 / (1 + np.exp(-eta))).astype(float)
    return x, rng.poisson(np.exp(eta)).astype(float)


@pytest.mark.parametrize("family", ["binomial", "poisson"])
def test_a_glm_mixture_recovers_its_experts_within_their_standard_errors(family):
    # Every expert coefficient within 4 standard errors of the truth on 3 seeds (48 z-scores
    # per family: all within 4 has probability above 0.99 if the errors are calibrated), the
    # gate's slope on x1 found with the right sign, and the mean response predicted.
    for seed in range(3):
        x, y = _glm_data(family, seed)
        model = mj.fit(jax.random.key(seed), x, y, num_experts=2, family=family)
        assert model.params.family == family and not model.noise_learned
        assert not model.moment_start and "sigma" not in model.coefficients().block
        c = model.coefficients()
        experts = c.estimate[c.block == "expert"].reshape(2, 4)
        se = c.std_error[c.block == "expert"].reshape(2, 4)
        order = [0, 1] if abs(experts[0, 2]) > abs(experts[1, 2]) else [1, 0]
        z = (experts[order] - np.asarray(_GLM_TRUTH[family])) / se[order]
        assert np.all(np.abs(z) < 4), (seed, z)
        gate_x1 = c.estimate[(c.block == "gate") & (c.term == "x1")][0]
        assert (gate_x1 > 1.5) == (order == [0, 1]) and abs(gate_x1) > 1.5, gate_x1
        pred = np.asarray(model.predict(x))
        assert np.all(pred >= 0) and (family == "poisson" or np.all(pred <= 1))
        assert abs(pred.mean() - y.mean()) < 0.02 * max(1.0, y.mean())


@pytest.mark.parametrize("family", ["binomial", "poisson"])
def test_one_glm_expert_is_the_maximum_likelihood_glm(family):
    # k = 1 with prior=None: the GLM's maximum-likelihood coefficients, as a float64 BFGS on
    # the negative log-likelihood finds them.
    from scipy import optimize, stats

    x, y = _glm_data(family, 5, n=500)
    model = mj.fit(jax.random.key(0), x, y, num_experts=1, family=family, prior=None)
    z = np.concatenate([np.ones((len(y), 1)), x], axis=1)

    def nll(beta):
        eta = z @ beta
        if family == "binomial":
            return -np.sum(y * eta - np.logaddexp(0, eta))
        return -np.sum(stats.poisson.logpmf(y, np.exp(eta)))

    best = optimize.minimize(nll, np.zeros(4), method="BFGS", options=dict(gtol=1e-9)).x
    c = model.coefficients()
    np.testing.assert_allclose(c.estimate[c.block == "expert"], best, atol=2e-4)
    assert float(model.log_likelihood(x, y)) * len(y) == pytest.approx(-nll(best), abs=2e-3)
    # The deviances as R's glm defines them, from the fitted and the constant means.
    def deviance(mu):
        if family == "binomial":
            return -2 * np.sum(y * np.log(mu) + (1 - y) * np.log1p(-mu))
        return 2 * np.sum(special.xlogy(y, y / mu) - (y - mu))

    from scipy import special
    mu = np.asarray(model.predict(x), np.float64)
    assert model.deviance() == pytest.approx(deviance(mu), rel=1e-4)
    assert model.null_deviance() == pytest.approx(deviance(np.full_like(y, y.mean())),
                                                  rel=1e-6)
    assert f"deviance: {model.deviance():.2f} on {len(y) - 4} degrees" in model.summary()


def test_the_deviance_is_saved_and_refused_where_it_does_not_exist(tmp_path):
    x, y = _glm_data("poisson", 2, n=300)
    model = mj.fit(jax.random.key(0), x, y, num_experts=1, family="poisson")
    mj.io.save(tmp_path / "m.npz", model)
    assert mj.io.load(tmp_path / "m.npz").deviance() == pytest.approx(model.deviance())
    # A model saved before the deviance was kept: a clear error, the rest intact.
    old = dataclasses.replace(model, inference=model.inference._replace(
        saturated_log_likelihood=None, null_log_likelihood=None))
    mj.io.save(tmp_path / "old.npz", old)
    loaded = mj.io.load(tmp_path / "old.npz")
    assert loaded.aic() == pytest.approx(model.aic())
    with pytest.raises(ValueError, match="refit it to get the deviance"):
        loaded.deviance()
    gaussian = mj.fit(jax.random.key(0), x, np.log1p(y), num_experts=1)
    assert "deviance" not in gaussian.summary()
    with pytest.raises(ValueError, match="gaussian experts has no deviance"):
        gaussian.null_deviance()


def test_glm_families_refuse_targets_and_settings_they_cannot_hold():
    x, y = _glm_data("binomial", 0, n=200)
    bad = y.copy()
    bad[[3, 7]] = [2.0, 0.5]
    with pytest.raises(mj.DataError, match=r"must be 0 or 1 for family 'binomial': y\[3\] = 2"):
        mj.fit(jax.random.key(0), x, bad, num_experts=2, family="binomial")
    counts = y.copy()
    counts[4] = -1.0
    with pytest.raises(mj.DataError, match=r"non-negative integer count .* y\[4\] = -1"):
        mj.fit(jax.random.key(0), x, counts, num_experts=1, family="poisson")
    with pytest.raises(ValueError, match="noise_std must be None for family 'binomial'"):
        mj.fit(jax.random.key(0), x, y, num_experts=2, family="binomial", noise_std=1.0)
    with pytest.raises(ValueError, match=r"nonlinearity must be one of \('sigmoid',\) for "
                                         "family 'binomial'"):
        mj.fit(jax.random.key(0), x, y, num_experts=2, family="binomial", nonlinearity="linear")
    with pytest.raises(ValueError, match="family must be one of"):
        mj.fit(jax.random.key(0), x, y, num_experts=2, family="bernoulli")


def test_poisson_intervals_are_integers_that_cover_at_least_their_level():
    x, y = _glm_data("poisson", 1)
    model = mj.fit(jax.random.key(0), x, y, num_experts=2, family="poisson",
                   standard_errors=False)
    x_new, y_new = _glm_data("poisson", 11, n=20_000)
    lower, upper = (np.asarray(v) for v in model.predict_interval(x_new, 0.9))
    assert np.all(lower == np.round(lower)) and np.all(upper == np.round(upper))
    inside = np.mean((y_new >= lower) & (y_new <= upper))
    # A discrete interval covers at least its level (measured 0.958-0.960 on new-data seeds
    # 11-13, below 0.007 under the lower bound: counts near 0); the standard error
    # of a coverage on 20,000 rows is 0.002, and the fit's own error adds a little.
    assert inside > 0.89, inside
    binomial = mj.fit(jax.random.key(0), *_glm_data("binomial", 1, n=500), num_experts=2,
                      family="binomial", standard_errors=False)
    with pytest.raises(ValueError, match="no informative predictive interval"):
        binomial.predict_interval(x[:3])
    with pytest.raises(mj.DataError, match="must be 0 or 1"):
        binomial.log_likelihood(x[:3], np.array([0.0, 1.0, 3.0]))


def _concomitant_data(seed, n=3000):
    # Experts on (a, b); the gate on v alone, a column the experts do not see (flexmix's
    # concomitant variable): P(expert 2 | v) = sigmoid(2 (v - 10) / 3), i.e. the logit of
    # expert 1 against expert 2 is 20/3 - (2/3) v.
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    v = 10 + 3 * rng.normal(size=n)
    second = rng.uniform(size=n) < 1 / (1 + np.exp(-2 * (v - 10) / 3))
    y = np.where(second, 1 + 2 * x[:, 0], -1 - x[:, 1]) + 0.3 * rng.normal(size=n)
    return np.c_[x, v], y


def test_a_gate_on_its_own_column_recovers_the_concomitant_model():
    truth = {("expert", "a"): (0.0, 2.0), ("expert", "b"): (-1.0, 0.0),
             ("expert", "(intercept)"): (-1.0, 1.0)}
    for seed in range(3):
        x, y = _concomitant_data(seed)
        model = mj.fit(jax.random.key(seed), x, y, num_experts=2, expert_columns=["a", "b"],
                       gate_columns=["v"], feature_names=["a", "b", "v"])
        assert model.columns == mj.preprocessing.Columns(3, (0, 1), (2,))
        assert not model.moment_start and model.params.gating.shape == (2, 2)
        assert model.params.experts.shape == (2, 3)
        c = model.coefficients()
        # The experts in the order of their slope on a (the second expert's is 2).
        slope_a = c.estimate[(c.block == "expert") & (c.term == "a")]
        order = np.argsort(slope_a)
        for (block, term), values in truth.items():
            rows = (c.block == block) & (c.term == term)
            z = (c.estimate[rows][order] - np.asarray(values)) / c.std_error[rows][order]
            assert np.all(np.abs(z) < 4), (seed, term, z)
        gate = dict(zip(c.term[c.block == "gate"], c.estimate[c.block == "gate"]))
        assert set(gate) == {"(intercept)", "v"}
        sign = 1.0 if order[0] == 0 else -1.0  # gate 1 is expert 1's logit against expert 2's
        se = dict(zip(c.term[c.block == "gate"], c.std_error[c.block == "gate"]))
        assert abs(sign * gate["v"] + 2 / 3) < 4 * se["v"], (seed, gate)
        assert abs(sign * gate["(intercept)"] - 20 / 3) < 4 * se["(intercept)"], (seed, gate)
        assert "gate on v" in model.summary().splitlines()[0]


def test_gate_columns_by_position_from_a_dataframe_overlapping_or_none():
    pd = pytest.importorskip("pandas")
    x, y = _concomitant_data(0, n=1000)
    frame = pd.DataFrame(x, columns=["a", "b", "v"])
    by_name = mj.fit(jax.random.key(0), frame, y, num_experts=2, expert_columns=["a", "b"],
                     gate_columns=["v", "a"], standard_errors=False)
    by_position = mj.fit(jax.random.key(0), x, y, num_experts=2, expert_columns=[0, 1],
                         gate_columns=[2, 0], standard_errors=False)
    np.testing.assert_array_equal(by_name.predict(frame), by_position.predict(x))
    # A DataFrame's columns are matched by name, in any order.
    np.testing.assert_array_equal(by_name.predict(frame[["v", "b", "a"]]),
                                  by_name.predict(frame))
    # No gate columns: constant mixing weights, a plain mixture of regressions (flexmix's
    # default model); its BIC counts k - 1 gate intercepts.
    constant = mj.fit(jax.random.key(0), x, y, num_experts=2, expert_columns=[0, 1],
                      gate_columns=[])
    weights = np.asarray(constant.gate_probabilities(x))
    np.testing.assert_allclose(weights, np.broadcast_to(weights[:1], weights.shape), rtol=1e-6)
    assert constant.num_params == 2 * 3 + 1 + 2
    assert "gate on an intercept only" in constant.summary().splitlines()[0]
    # The gate that sees v fits better than the constant one.
    assert float(by_position.log_likelihood(x, y)) > float(constant.log_likelihood(x, y)) + 0.1
    # The experts' columns, gated by the experts' own: the model without roles.
    same = mj.fit(jax.random.key(0), x, y, num_experts=2, expert_columns=[0, 1, 2],
                  gate_columns=[0, 1, 2], standard_errors=False)
    assert same.columns is None and same.moment_start


def test_column_roles_refuse_what_they_cannot_name():
    x, y = _concomitant_data(0, n=300)
    fit = functools.partial(mj.fit, jax.random.key(0), x, y, num_experts=2)
    with pytest.raises(ValueError, match="gate_columns: 'v' is not a column of x .* no column "
                                         "names"):
        fit(gate_columns=["v"])
    with pytest.raises(ValueError, match=r"expert_columns: position 3 is not a column of x"):
        fit(expert_columns=[0, 3])
    with pytest.raises(ValueError, match="gate_columns names a column twice"):
        fit(gate_columns=[2, 2])
    with pytest.raises(ValueError, match="gate_columns must be a list"):
        fit(gate_columns="v", feature_names=["a", "b", "v"])
    with pytest.raises(ValueError, match="expert_columns must name at least one column"):
        fit(expert_columns=[])
    with pytest.raises(ValueError, match="with a gate on columns of its own has no moment "
                                         "start"):
        fit(gate_columns=[2], num_refine_iters=0)


def test_auto_chooses_k_with_the_familys_likelihood_and_no_sigma_in_the_count():
    x, y = _glm_data("poisson", 0, n=1500)
    model = mj.fit(jax.random.key(0), x, y, num_experts="auto", family="poisson",
                   max_experts=2, standard_errors=False)
    scores = model.selection
    # 4 coefficients for one expert; two experts and a gate: 2 x 4 + 4; no sigma.
    assert scores.num_params.tolist() == [4, 12] and scores.best_bic == 2
    assert model.num_experts == 2 and scores.m2_spectrum.shape == (0,)
    assert scores.log_likelihood[1] > scores.log_likelihood[0] + 0.1
