import jax
import numpy as np
import pytest

import moejax as mj
from moejax import selection

FAST = dict(num_refine_iters=300, num_refine_inits=4)


def _data(k, n, seed):
    """k linear experts (k = 1: plain linear regression) on d = 4 shifted, scaled features."""
    key_p, key_x = jax.random.split(jax.random.key(seed))
    if k == 1:
        x = np.asarray(jax.random.normal(key_x, (n, 4)))
        y = x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.3 * np.asarray(
            jax.random.normal(key_p, (n,)))
    else:
        truth = mj.random_params(key_p, 4, k, noise_std=0.1, gating_norm=3.0)
        x, y = (np.asarray(v) for v in mj.sample(key_x, truth, n))
    return 3 * x + 1, 10 * y + 5


def _check_table(sel, max_experts):
    assert sel.num_experts.tolist() == list(range(1, max_experts + 1))
    assert np.all(np.diff(sel.m2_spectrum) <= 0)
    # BIC's penalty: parameters grow by 2 (d + 1) + 1 per expert (fit's default learns one
    # sigma per expert).
    assert np.all(np.diff(sel.num_params) == 2 * 5 + 1)
    assert "| k |" in sel.table()


@pytest.mark.slow  # make test-all; the CLI test and experiments/auto_k cover choosing k
def test_linear_data_choose_one_expert_which_is_least_squares(tmp_path):
    x, y = _data(1, 2000, seed=1)
    model = mj.fit(jax.random.key(1), x, y, num_experts="auto", max_experts=2,
                   select_by="cv", feature_names=list("abcd"), **FAST)
    sel = model.selection
    _check_table(sel, 2)
    assert model.num_experts == 1 and sel.best_cv == 1 and sel.best_bic == 1, sel.table()
    # The one-expert model is least squares, in original units.
    z = np.c_[x, np.ones(len(x))]
    beta = np.linalg.lstsq(z, y, rcond=None)[0]
    np.testing.assert_allclose(model.predict(x), z @ beta, rtol=1e-4, atol=1e-3)
    mj.io.save(tmp_path / "m.npz", model)
    np.testing.assert_allclose(mj.io.load(tmp_path / "m.npz").predict(x), model.predict(x))


def test_a_k_whose_fit_dropped_an_expert_keeps_its_penalty():
    # Every k's fit dropped to least squares (what fit does to an expert with too few
    # posterior rows): each k scores with least squares' likelihood but k's own parameter
    # count (docs/selection.md), so BIC cannot tie k with k - 1 and picks k = 1.
    x, y = _data(1, 300, seed=1)
    counts = {1: 6, 2: 17, 3: 28}  # (2k - 1)(d + 1) + k, d = 4
    sel, models = selection.score(
        jax.random.key(0), x, y, selection.row_groups(x, y), max_experts=3, num_folds=0, nonlinearity="linear",
        fit_k=lambda key, x, y, k: mj.fit(key, x, y, num_experts=1),
        log_likelihood=lambda m, x, y: float(m.log_likelihood(x, y)), num_params=counts.get)
    assert [m.num_experts for m in models.values()] == [1, 1, 1]
    assert sel.num_params.tolist() == [6, 17, 28]
    np.testing.assert_allclose(np.diff(sel.bic), 11 * np.log(300), rtol=1e-9)
    assert sel.best_bic == 1


def test_bad_choices_are_named():
    x, y = _data(1, 200, seed=1)
    with pytest.raises(ValueError, match="integer or 'auto'"):
        mj.fit(jax.random.key(1), x, y, num_experts="many")
    with pytest.raises(ValueError, match="select_by"):
        mj.fit(jax.random.key(1), x, y, num_experts="auto", select_by="aic")
    with pytest.raises(ValueError, match="num_folds"):
        mj.select_num_experts(jax.random.key(1), x, y, num_folds=1)


@pytest.mark.slow
def test_both_criteria_find_three_experts():
    x, y = _data(3, 2000, seed=3)
    sel = mj.select_num_experts(jax.random.key(0), x, y, max_experts=3, **FAST)
    _check_table(sel, 3)
    assert sel.best_cv == 3 and sel.best_bic == 3, sel.table()


def test_choosing_the_largest_k_tried_is_flagged_where_k_could_be_larger():
    ks = np.arange(1, 4)
    base = dict(num_experts=ks, num_params=ks * 9, log_likelihood=np.array([-2.0, -1.5, -1.0]),
                bic=np.array([30.0, 20.0, 10.0]), cv_log_likelihood=np.full(3, np.nan),
                cv_std=np.full(3, np.nan), best_bic=3, best_cv=0)
    warned = mj.selection.KSelection(m2_spectrum=np.ones(5), **base)
    assert "BIC chose k = 3, the largest k tried" in warned.at_largest()
    assert warned.at_largest() in warned.table()
    # k = d no longer bounds k (beyond d, random starts): the largest k tried is flagged.
    assert mj.selection.KSelection(m2_spectrum=np.ones(3), **base).at_largest() is not None
    assert mj.selection.KSelection(m2_spectrum=np.ones(5), **dict(base, best_bic=2)
                                   ).at_largest() is None
    # fit warns when it returns such a k: three regimes, at most two experts tried.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4))
    y = np.select([x[:, 0] < -0.5, x[:, 0] < 0.5], [3 * x[:, 1], -3 * x[:, 2]], 3 * x[:, 3])
    with pytest.warns(UserWarning, match="the largest k tried") as caught:
        model = mj.fit(jax.random.key(0), x, y + 0.1 * rng.normal(size=400),
                       num_experts="auto", max_experts=2, num_refine_iters=50,
                       num_refine_inits=4, standard_errors=False)
    assert model.num_experts == 2
    assert caught[0].filename == __file__  # attributed to the caller's line, not moejax's


def test_copies_of_a_row_count_once_and_stay_in_one_fold():
    # The audit's case: rows that are not independent (20 distinct rows, 30 copies each) no
    # longer pass the rows rule as 600 rows, and no fold holds a row whose copy it trains on.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20, 3))
    y = np.where(x[:, 0] > 0, 2 * x[:, 1], -x[:, 2]) + 0.1 * rng.normal(size=20)
    xs, ys = np.tile(x, (30, 1)), np.tile(y, 30)
    count, groups = selection.row_groups(xs, ys)
    assert count == 20 and np.array_equal(groups[:20], groups[20:40])
    perm = rng.permutation(600)
    folds = selection._folds(perm, groups, 5)
    assert sorted(np.concatenate(folds).tolist()) == list(range(600))
    for fold in folds:
        held = set(groups[fold].tolist())
        rest = set(np.delete(groups, fold).tolist())
        assert held and not held & rest and 90 <= fold.size <= 150
    # Without copies, the folds are perm's consecutive runs of n // 5 rows, as before.
    other = rng.permutation(599)
    plain = selection._folds(other, np.arange(599), 5)
    assert [f.tolist() for f in plain] == [other[i * 119:(i + 1) * 119].tolist()
                                          for i in range(5)]
    model = mj.fit(jax.random.key(0), xs, ys, num_experts="auto", num_refine_iters=20)
    assert model.num_experts == 1 and list(model.selection.num_experts) == [1]
    with pytest.warns(UserWarning, match=r"for 14 distinct rows \(of 700: copies of a row"):
        mj.fit(jax.random.key(0), np.tile(x[:14], (50, 1)), np.tile(y[:14], 50),
               num_experts=2, num_refine_iters=5)
    with pytest.warns(UserWarning, match="the rows support k up to 1"):
        scores = mj.select_num_experts(jax.random.key(0), xs, ys, max_experts=3,
                                       num_refine_iters=5)
    assert list(scores.num_experts) == [1]


def test_auto_needs_the_rows_least_squares_needs_and_a_bool_is_no_count():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(6, 5)), rng.normal(size=6)
    for k in (1, "auto"):
        with pytest.raises(ValueError, match=r"needs at least d \+ 2 = 7 rows"):
            mj.fit(jax.random.key(0), x, y, num_experts=k)
    with pytest.raises(ValueError, match="num_experts must be an integer >= 1, got True"):
        mj.fit(jax.random.key(0), x, y, num_experts=True)
