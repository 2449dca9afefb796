"""The input contract (docs/errors.md): every bad argument of a public function is a ValueError
that names it; NumPy scalars are accepted where Python ones are."""

import functools
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import moejax as mj

KEY = jax.random.key(0)
TRUTH = mj.random_params(KEY, 5, 2, noise_std=0.3)
X, Y = mj.sample(jax.random.key(1), TRUTH, 400)
NAN_PARAMS = TRUTH._replace(experts=TRUTH.experts.at[0, 0].set(jnp.nan))


@pytest.mark.parametrize("x, message", [
    (np.asarray(X).astype(str), "x must hold real numbers, got dtype <U.*x\\[0, 0\\] = '"),
    (np.vstack([np.asarray(X).astype(object)[:-1], np.full((1, X.shape[1]), "a", object)]),
     "x must hold real numbers, got dtype object .*x\\[399, 0\\] = 'a'; x\\[399, 1\\]"),
    ([[1.0, 2.0], [3.0]], "x must be a rectangular array"),
    ("1,2,3", "x must be an array of real numbers, got a string"),
])
def test_non_numeric_data_are_named(x, message):
    with pytest.raises(ValueError, match=message):
        mj.recover(KEY, x, Y, num_experts=2)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_data_are_computed_in_float32(dtype):
    x, y = np.asarray(X).astype(dtype), np.asarray(Y).astype(dtype)
    est, _ = mj.recover(KEY, x, y, num_experts=2)
    assert est.experts.dtype == jnp.float32
    # The same rounded values given as float32: the same computation.
    ref, _ = mj.recover(KEY, x.astype(np.float32), y.astype(np.float32), num_experts=2)
    np.testing.assert_allclose(est.experts, ref.experts, atol=1e-5)


def test_numpy_scalars_are_accepted():
    a, _ = mj.recover(KEY, X, Y, num_experts=np.int64(2), noise_std=np.float32(0.3),
                      num_gating_iters=np.int32(20))
    b, _ = mj.recover(KEY, X, Y, num_experts=2, noise_std=0.3, num_gating_iters=20)
    np.testing.assert_array_equal(a.experts, b.experts)


def test_traced_num_experts_says_configuration_is_static():
    with pytest.raises(ValueError, match="num_experts .* bind it with functools.partial"):
        jax.jit(mj.recover)(KEY, X, Y, num_experts=2)
    with pytest.raises(ValueError, match="num_gating_iters .* bind it with functools.partial"):
        jax.jit(functools.partial(mj.recover, num_experts=2))(KEY, X, Y, num_gating_iters=5)
    fine, info = jax.jit(functools.partial(mj.recover, num_experts=2, noise_std=0.3))(KEY, X, Y)
    assert fine.experts.shape == (2, 5) and fine.nonlinearity == "linear"
    assert info.mixing_weights.shape == (2,)


@pytest.mark.parametrize("call, message", [
    (lambda: mj.recover(KEY, X, Y, num_experts=2, num_power_inits=-2), "num_power_inits must be an integer >= 1, got -2"),
    (lambda: mj.recover(KEY, X, Y, num_experts=2, num_power_inits=0), "num_power_inits"),
    (lambda: mj.recover(KEY, X, Y, num_experts=2, num_power_iters=-1), "num_power_iters"),
    (lambda: mj.recover(KEY, X, Y, num_experts=2, num_gating_iters=0), "num_gating_iters must be"),
    (lambda: mj.recover(KEY, X, Y, num_experts=2, num_gating_inits=2.5), "num_gating_inits"),
    (lambda: mj.recover(KEY, X, Y, num_experts=2, gating_tol=float("nan")), "gating_tol must be"),
    (lambda: mj.recover(KEY, X, Y, num_experts=2, noise_std="0.1"), "noise_std must be a number, got '0.1'"),
    (lambda: mj.recover(KEY, X, Y, num_experts=2, noise_std=True), "noise_std must be a number"),
    (lambda: mj.fit_gating(KEY, X, Y, TRUTH.experts, noise_std=0.3, num_inits=2.5), "num_inits"),
    (lambda: mj.fit_gating(KEY, X, Y, TRUTH.experts, noise_std=0.3, init_scale=float("nan")), "init_scale"),
    (lambda: mj.fit_gating(KEY, X, Y, TRUTH.experts[:1], noise_std=0.3), "k >= 2"),
    (lambda: mj.fit_gating(KEY, X, Y, TRUTH.experts, noise_std=0.3, accelerate="yes"), "accelerate must be True or False"),
    (lambda: mj.sample(KEY, TRUTH, -1), "n must be an integer >= 1, got -1"),
    (lambda: mj.sample(KEY, TRUTH, 2.5), "n must be an integer"),
    (lambda: mj.random_params(KEY, 5, 2, noise_std=-1), "noise_std must be a positive"),
    (lambda: mj.random_params(KEY, 2.5, 2), "dim must be an integer"),
    (lambda: mj.random_params(KEY, 5, 2, gating_norm=float("nan")), "gating_norm"),
    (lambda: mj.random_params(KEY, 5, 2, orthogonal_gating=1), "orthogonal_gating must be True"),
    (lambda: mj.joint_em(KEY, X, Y, num_experts=2, num_iters=-1), "num_iters must be an integer >= 1"),
    (lambda: mj.joint_gd(KEY, X, Y, num_experts=2, num_iters=-3), "num_iters"),
    (lambda: mj.joint_gd(KEY, X, Y, num_experts=2, learning_rate=float("nan")), "learning_rate"),
    (lambda: mj.fit(KEY, X, Y, num_experts=2, feature_names="abcde"), "single string"),
    (lambda: mj.fit(KEY, X, Y, num_experts=2, whiten="no"), "whiten must be True or False"),
    (lambda: mj.initial_noise_std(Y.at[0].set(jnp.nan)), "y contains 1 NaN"),
    (lambda: mj.transform_features(mj.fit_standardizer(X, Y), X[:, :3]), "d = 5 columns"),
])
def test_bad_settings_are_value_errors_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("params, message", [
    (NAN_PARAMS, "params.experts contains 1 NaN"),
    (TRUTH._replace(noise_std=-1.0), "params.noise_std must be a positive"),
    (TRUTH._replace(gating=TRUTH.gating[:, :3]), "must have shapes \\(k, d\\) and \\(k, d_gate\\)"),
    (TRUTH[:2], "params must be MoEParams"),
    (TRUTH._replace(nonlinearity="softplus"), "nonlinearity must be one of"),
    ("params", "params must be MoEParams"),
])
@pytest.mark.parametrize("use", ["predict", "log_likelihood", "posteriors", "sample", "refine"])
def test_bad_params_are_named_everywhere(params, message, use):
    call = {
        "predict": lambda: mj.predict(params, X),
        "log_likelihood": lambda: mj.log_likelihood(params, X, Y),
        "posteriors": lambda: mj.posteriors(params, X, Y),
        "sample": lambda: mj.sample(KEY, params, 10),
        "refine": lambda: mj.refine(params, X, Y, num_iters=2),
    }[use]
    with pytest.raises(ValueError, match=message):
        call()


def test_a_plain_tuple_of_params_is_accepted():
    # Read as a linear model, like MoEParams(experts, gating, noise_std).
    np.testing.assert_array_equal(mj.predict(tuple(TRUTH[:3]), X), mj.predict(TRUTH, X))


def test_metrics_refuse_mismatched_shapes():
    three = jnp.concatenate([TRUTH.experts, TRUTH.experts[:1]])
    with pytest.raises(ValueError, match="true_experts must have shape .* got \\(2, 5\\)"):
        mj.expert_error(three, TRUTH.experts)
    with pytest.raises(ValueError, match="got \\(2, 5\\)"):
        mj.expert_error(TRUTH.experts[:, :3], TRUTH.experts)
    with pytest.raises(ValueError, match="est must be MoEParams"):
        mj.gating_error(TRUTH.experts, TRUTH)
    assert float(mj.gating_error(tuple(TRUTH[:3]), TRUTH)) == 0.0


def test_data_closed_over_by_a_jitted_function_are_checked():
    # Concrete arrays captured by a traced function stay concrete: the value checks run (and
    # the fit works) instead of failing on a tracer.
    fit = jax.jit(lambda key: mj.joint_em(key, X, Y, num_experts=2, num_iters=5)[0].noise_std)
    assert np.isfinite(fit(KEY))
    bad_x = X.at[0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="x contains 1 NaN"):
        jax.jit(lambda key: mj.joint_em(key, bad_x, Y, num_experts=2, num_iters=5)[0])(KEY)
    with pytest.raises(ValueError, match="experts contains 1 NaN"):
        jax.jit(jax.vmap(lambda key: mj.log_likelihood(NAN_PARAMS, X, Y)))(
            jax.random.split(KEY, 2))


@pytest.mark.parametrize("entry", [
    lambda x, y: mj.recover(KEY, x, y, num_experts=2, num_gating_iters=3),
    lambda x, y: mj.fit(KEY, x, y, num_experts=2, num_refine_iters=2, num_refine_inits=1),
    lambda x, y: mj.fit(KEY, x, y, num_experts="auto", max_experts=2, num_refine_iters=2,
                        num_refine_inits=1),
    pytest.param(lambda x, y: mj.select_num_experts(KEY, x, y, max_experts=2, num_folds=2,
                                                    num_refine_iters=2, num_refine_inits=1),
                 marks=pytest.mark.slow),  # make test-all
], ids=["recover", "fit", "fit_auto", "select_num_experts"])
def test_a_composite_entry_point_checks_x_once(entry, monkeypatch):
    # Validate at the boundary, once: the stages behind an entry point are private cores
    # that trust their inputs (x is converted and checked for finiteness one time).
    from moejax import _validate
    seen = []
    for name in ("_as_float", "_finite"):
        def counting(a, label, *args, _original=getattr(_validate, name), _name=name, **kw):
            seen.append((_name, label))
            return _original(a, label, *args, **kw)
        monkeypatch.setattr(_validate, name, counting)
    entry(X, Y)
    assert seen.count(("_as_float", "x")) == 1 and seen.count(("_finite", "x")) == 1, seen


def test_every_info_type_begins_with_the_fields_of_fit_info():
    for info in (mj.GatingInfo, mj.RecoverInfo, mj.FitReport):
        assert info._fields[:len(mj.FitInfo._fields)] == mj.FitInfo._fields, info


def test_host_side_functions_say_so_under_jit():
    x = np.random.default_rng(0).normal(size=(50, 3))
    y = x[:, 0]
    with pytest.raises(ValueError, match="fit runs on the host and cannot be traced"):
        jax.jit(lambda x, y: mj.fit(jax.random.key(0), x, y, num_experts=2).params)(x, y)
    model = mj.fit(jax.random.key(0), x, y, num_experts=1)
    with pytest.raises(ValueError, match="moejax.io.save runs on the host"):
        jax.jit(lambda m: mj.io.save("never.npz", m))(model)


def test_errors_name_the_actual_cause():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3))
    y = x[:, 0] + 0.1 * rng.normal(size=500)
    with pytest.raises(ValueError, match="constant column\\(s\\) \\[0, 1, 2\\] \\(all zero\\)"):
        mj.recover(jax.random.key(0), np.zeros((500, 3)), y, num_experts=2)
    with pytest.raises(ValueError, match="steps diverged; lower learning_rate"):
        mj.joint_gd(jax.random.key(0), x, y, num_experts=2, learning_rate=1e6)
    with pytest.raises(ValueError, match="constant in float32, JAX's default float type"):
        mj.fit(jax.random.key(0), x, 1e9 + y, num_experts=2)
    with pytest.raises(ValueError, match="est_experts contains NaN"):
        mj.expert_error(np.full((2, 3), np.nan), np.ones((2, 3)))
    with pytest.raises(ValueError, match="NumPy ufunc, which JAX cannot trace: use jnp.tanh"):
        mj.recover(jax.random.key(0), x, y, num_experts=2, nonlinearity=np.tanh)
    # A non-linearity that is NaN beyond u = 12, on rows whose a . x reach 23: named, not the
    # data's scale.
    cliff = lambda u: jnp.where(u < 12, jnp.tanh(u), jnp.nan)
    with pytest.raises(ValueError, match="the non-linearity '<lambda>' is not finite at "
                                         "u = 12 "):
        mj.joint_em(jax.random.key(0), 5 * x, y, num_experts=2, nonlinearity=cliff)


def test_a_value_beyond_float32_is_named_with_its_position():
    x = np.random.default_rng(0).normal(size=(50, 3))
    x[7, 2] = 1e39
    with pytest.raises(ValueError, match="beyond the range of float32.*x\\[7, 2\\] = 1e\\+39"):
        mj.fit(jax.random.key(0), x, x[:, 0], num_experts=1)
    x[7, 2] = np.nan
    with pytest.raises(ValueError, match="x contains 1 NaN or infinite"):
        mj.fit(jax.random.key(0), x, x[:, 0], num_experts=1)


def test_a_data_error_names_the_cells_as_the_caller_knows_them():
    error = mj.DataError("x", "contains 7 NaN or infinite value(s)", [(0, 1, "nan"), (2, 0, "inf")],
                         7, "Drop those rows")
    assert str(error) == ("x contains 7 NaN or infinite value(s): x[0, 1] = nan; x[2, 0] = inf; "
                          "and 5 more. Drop those rows.")
    named = error.named(subject="'t.csv'", columns=["a", "b"], row_label=lambda i: f"line {i + 2}")
    assert isinstance(named, ValueError) and str(named) == (
        "'t.csv' contains 7 NaN or infinite value(s): line 2, column 'b' = nan; line 4, column "
        "'a' = inf; and 5 more. Drop those rows.")
    target = mj.DataError("y", "is constant", [(4, None, "nan")]).named(target="price")
    assert str(target) == "y ('price') is constant: row 4 (from 0), column 'price' = nan."
    # A joblib worker sends its errors back pickled.
    back = pickle.loads(pickle.dumps(named))
    assert type(back) is mj.DataError and str(back) == str(named) and back.cells == named.cells


def test_no_rows_and_float32_lost_columns_are_named():
    with pytest.raises(ValueError, match=r"x has no rows \(shape \(0, 5\)\)"):
        mj.recover(KEY, np.zeros((0, 5)), np.zeros(0), num_experts=2)
    x = np.random.default_rng(0).normal(size=(200, 3))
    y = x[:, 0] + np.random.default_rng(1).normal(size=200)
    x[:, 1] += 1e12
    with pytest.raises(ValueError, match=r"vary in float64 but are constant in float32.*"
                       r"x\[:, 1\]\. Subtract"):
        mj.fit(KEY, x, y, num_experts=2)
