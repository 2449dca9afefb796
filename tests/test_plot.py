"""moejax.plot: the pictures draw what the model computes, and name a bad feature."""

import jax
import numpy as np
import pytest

import moejax as mj

plt = pytest.importorskip("matplotlib.pyplot")
plot = pytest.importorskip("moejax.plot")


@pytest.fixture(scope="module")
def fitted():
    # The gate depends on the first feature only, so the overview should pick it.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = np.where(x[:, 0] > 0, 2 * x[:, 1], -x[:, 2]) + 0.1 * rng.normal(size=400)
    model = mj.fit(jax.random.key(0), x, y, num_experts=2, num_refine_iters=50,
                   feature_names=["gate", "b", "c"], target_name="y")
    return model, x, y


def test_the_lines_are_the_expert_means_and_the_gate_along_the_feature(fitted):
    model, x, y = fitted
    top, bottom = plot.experts_along(model, x, y, "b")
    grid = np.tile(np.median(x, axis=0), (plot.NUM_POINTS, 1))
    grid[:, 1] = np.linspace(x[:, 1].min(), x[:, 1].max(), plot.NUM_POINTS)
    means, gates = np.asarray(model.expert_means(grid)), np.asarray(model.gate_probabilities(grid))
    dotted = [line for line in top.get_lines() if line.get_linestyle() == ":"]
    for i, line in enumerate(dotted):
        np.testing.assert_allclose(line.get_xdata(), grid[:, 1], atol=1e-5)  # float32 rows
        np.testing.assert_allclose(line.get_ydata(), means[:, i], atol=1e-5)
    for i, line in enumerate(bottom.get_lines()):
        np.testing.assert_allclose(line.get_ydata(), gates[:, i], atol=1e-5)
    assert len(dotted) == 2 and bottom.get_xlabel() == "b"
    plt.close("all")


def test_overview_picks_the_gates_feature_and_refuses_an_unknown_one(fitted):
    model, x, y = fitted
    assert plot.gating_feature(model, x) == 0
    figure = plot.overview(model, x, y)
    assert len(figure.axes) == 3 and figure.axes[1].get_xlabel() == "gate"
    with pytest.raises(ValueError, match=r"feature must be one of the model's features"):
        plot.overview(model, x, y, "zz")
    with pytest.raises(ValueError, match=r"an index in \[0, 3\), got 3"):
        plot.experts_along(model, x, y, 3)
    plt.close("all")


def test_selection_and_coefficient_exports(fitted):
    model, x, y = fitted
    scores = mj.KSelection(np.array([1, 2]), np.array([4, 11]), np.array([-1.2, -0.4]),
                           np.array([980.0, 420.0]), np.array([-1.25, -0.5]),
                           np.array([0.05, 0.04]), np.array([1.3, 0.9, 0.1]), 2, 2)
    left, right = plot.selection(scores)
    np.testing.assert_array_equal(right.get_lines()[0].get_ydata(), scores.m2_spectrum)
    assert "BIC: k = 2" in [t.get_text() for t in left.get_legend().get_texts()]
    plt.close("all")
    coefficients = model.coefficients()
    columns = coefficients.to_dict()
    assert list(columns) == [f for f in coefficients._fields if f != "problem"]
    assert columns["estimate"] == np.asarray(coefficients.estimate).tolist()
    pd = pytest.importorskip("pandas")
    frame = coefficients.to_frame()
    assert isinstance(frame, pd.DataFrame) and len(frame) == model.num_params
    assert frame.loc[frame.block == "expert", "component"].max() == 2
